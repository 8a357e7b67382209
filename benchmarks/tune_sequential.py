"""Tile sweep of the sequential scan kernels against the chunked ones (graph replay, bf16, batch 128).

    python3 benchmarks/tune_sequential.py [shape substring]     # repository root, CUDA machine

First a float32 check of forward and every gradient against the float64 reference at three small shapes, then per
kernel-bench shape: the chunked kernels (stages 1-2), the sequential forward at each FWD tile and forward+backward
at each BWD tile ((BD, BT, warps), set through ``_SEQ_OVERRIDE``). Its results chose the tiles of ``_config`` in
kernels/triton_scan.py.
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import kernels.bench as KB  # noqa: E402
from kernels import routes as R  # noqa: E402
from kernels import triton_scan as TS  # noqa: E402
from kernels.reference import selective_scan_reference  # noqa: E402

# (BD, BT, warps) by n_state
FWD = {1: [(32, 16, 1), (32, 8, 1), (64, 16, 1), (64, 8, 1)], 16: [(32, 4, 4), (32, 2, 4), (16, 4, 2), (32, 8, 4)]}
BWD = {1: [(32, 4, 1), (32, 8, 1), (64, 4, 1), (32, 2, 1), (64, 8, 2)],
       16: [(32, 2, 4), (32, 1, 4), (16, 2, 2), (32, 4, 4)]}


def check(plan, batch, n_state, mean):
    """Relative max errors of the sequential kernels (fp32) against the float64 reference, output and gradients."""
    TS.FORCE_KERNEL = 'sequential'
    x = KB.make_inputs(plan, batch, n_state, dtype=torch.float32)
    ours = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}
    ref = {k: v.detach().double().clone().requires_grad_(True) for k, v in x.items()}
    y = TS.selective_scan_triton(*ours.values(), plan, mean=mean)
    y_ref = selective_scan_reference(*ref.values(), plan, mean=mean)
    dy = torch.randn_like(y)
    y.backward(dy)
    y_ref.backward(dy.double())
    TS.FORCE_KERNEL = None
    errs = {'out': ((y - y_ref).abs().max() / y_ref.abs().max()).item()}
    for k in ours:
        errs[k] = ((ours[k].grad - ref[k].grad).abs().max() / ref[k].grad.abs().max().clamp_min(1e-6)).item()
    print('check', plan.height, plan.width_px, plan.width, n_state, {k: f'{v:.1e}' for k, v in errs.items()},
          flush=True)


def timed(name, x, plan, mean, label, train, kernel, seq=None):
    TS.FORCE_KERNEL, TS._SEQ_OVERRIDE = kernel, seq
    try:
        t = KB.bench_one(TS.selective_scan_triton, x, plan, mean, train, graph=True)
        print(f'{name:34s} {label:44s} {"fwd+bwd" if train else "fwd":7s} {t:7.3f} ms', flush=True)
    except Exception as e:  # a tile that does not compile / fit
        print(f'{name:34s} {label:44s} failed {type(e).__name__}: {str(e)[:300]}', flush=True)
    finally:
        TS.FORCE_KERNEL, TS._SEQ_OVERRIDE = None, None


def main(only=''):
    import triton
    print(f'GPU {torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}', flush=True)
    start = time.time()
    check(R.plan_routes(R.cross_routes(), 14, 14, 96, 96, 96), 2, 1, False)
    check(R.plan_routes(R.cross_routes(), 13, 11, 40, 40, 40), 2, 1, False)
    check(R.plan_routes(R.bidirectional_routes(192), 1, 197, 192, 384, 192), 2, 16, True)
    todo, batch = KB.cases(128)
    for name, plan, n, mean in todo:
        if only not in name:
            continue
        x = KB.make_inputs(plan, batch, n)
        if n == 1 and plan.height >= 28:
            for train in (False, True):
                timed(name, x, plan, mean, 'chunked default', train, 'chunked')
        for f in FWD[n]:
            timed(name, x, plan, mean, f'seq fwd {f}', False, 'sequential', (f, BWD[n][0]))
        for b in BWD[n]:
            timed(name, x, plan, mean, f'seq fwd {FWD[n][0]} bwd {b}', True, 'sequential', (FWD[n][0], b))
        del x
        torch.cuda.empty_cache()
    print(f'total {time.time() - start:.0f}s', flush=True)


if __name__ == '__main__':
    main(sys.argv[1] if len(sys.argv) > 1 else '')
