"""Sequential vs chunked scan kernels by batch (graph replay, bf16, cross routes, N = 1): where the chunked kernels
still pay; sets ``SEQ_MIN_WARPS_PER_SM`` (kernels/triton_scan.py).

    python3 benchmarks/kernel_crossover.py      # repository root, CUDA machine
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import kernels.bench as KB  # noqa: E402
from kernels import routes as R  # noqa: E402
from kernels import triton_scan as TS  # noqa: E402

# (label, height, width, channels): VMamba-T stages 1-2 at 224², and at a 800x1333 detection input
SHAPES = [('s1 56x56 W=96', 56, 56, 96), ('s2 28x28 W=192', 28, 28, 192), ('det s1 200x334 W=96', 200, 334, 96),
          ('det s2 100x167 W=192', 100, 167, 192)]


def main():
    for name, h, w, c in SHAPES:
        plan = R.plan_routes(R.cross_routes(), h, w, c, c, c)
        for batch in ([2, 8] if h > 60 else [8, 16, 32, 64]):
            x = KB.make_inputs(plan, batch, 1)
            row = []
            for kernel in ('sequential', 'chunked'):
                TS.FORCE_KERNEL = kernel
                try:
                    fwd = KB.bench_one(TS.selective_scan_triton, x, plan, False, False, graph=True)
                    both = KB.bench_one(TS.selective_scan_triton, x, plan, False, True, graph=True)
                finally:
                    TS.FORCE_KERNEL = None
                row.append(f'{kernel} fwd {fwd:.3f} fwd+bwd {both:.3f}')
            print(f'{name:24s} batch {batch:3d}: ' + ' | '.join(row), flush=True)


if __name__ == '__main__':
    main()
