"""One forward+backward of the scan at a benchmark shape, bracketed for Nsight Compute (CUDA machine).

    ncu --profile-from-start off --set full --import-source yes -k regex:_scan_bwd -c 1 -o s1_bwd \
        python3 benchmarks/profile_scan.py s1 [--kernel chunked|looped|sequential] [--tile BT,BD,WARPS]

The shape names are ``kernels/bench.py``'s (s1..s4: VMamba-T stages at batch 128, vim: Vim-S), bf16. One untimed
forward+backward compiles the kernels first; only the second one runs inside cudaProfilerStart/Stop, so
``--profile-from-start off`` profiles exactly one launch of each kernel.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'kernels'))
from bench import TS, cases, make_inputs, selective_scan_triton  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('shape', choices=['s1', 's2', 's3', 's4', 'vim'])
    ap.add_argument('--kernel', choices=['chunked', 'looped', 'sequential'], default=None,
                    help="force a kernel (default: the backend's own choice)")
    ap.add_argument('--tile', default=None, help='BT,BD,WARPS of the chunked / looped kernels (forward and backward)')
    ap.add_argument('--batch', type=int, default=128)
    ap.add_argument('--timeline', action='store_true',
                    help='instead of the Nsight bracket: torch.profiler over 5 forward+backward steps, printing GPU '
                         'time per kernel and the steps\' wall time (what runs besides the scan kernels)')
    args = ap.parse_args()
    todo, batch = cases(args.batch)
    name, plan, n_state, mean = todo[['s1', 's2', 's3', 's4', 'vim'].index(args.shape)]
    TS.FORCE_KERNEL = args.kernel
    if args.tile:
        tile = tuple(int(v) for v in args.tile.split(','))
        TS._CHUNK_OVERRIDE = (tile, tile)
    x = make_inputs(plan, batch, n_state)
    leaves = {k: v.detach().requires_grad_(True) for k, v in x.items()}

    def step():
        for v in leaves.values():
            v.grad = None
        y = selective_scan_triton(leaves['u'], leaves['delta'], leaves['A'], leaves['B'], leaves['C'], leaves['D'],
                                  leaves['delta_bias'], plan, mean=mean)
        y.backward(torch.ones_like(y))
    step()
    torch.cuda.synchronize()
    if args.timeline:
        return timeline(step, name)
    torch.cuda.cudart().cudaProfilerStart()
    step()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    print(f'profiled {name} kernel={args.kernel or "default"} tile={args.tile}', flush=True)


def timeline(step, name, steps=5):
    from torch.profiler import ProfilerActivity, profile
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start.record()
        for _ in range(steps):
            step()
        end.record()
        torch.cuda.synchronize()
    wall = start.elapsed_time(end) / steps
    events = [e for e in prof.key_averages() if e.device_time_total > 0 and e.device_type.name == 'CUDA']
    gpu = sum(e.device_time_total for e in events) / 1e3 / steps
    print(f'{name}: {wall:.3f} ms per forward+backward (CUDA events, under the profiler), '
          f'{gpu:.3f} ms of it on the GPU; per step:')
    for e in sorted(events, key=lambda e: -e.device_time_total):
        print(f'  {e.device_time_total / 1e3 / steps:8.3f} ms  x{e.count // steps:<3d} {e.key[:90]}')
    print(prof.key_averages().table(sort_by='cpu_time_total', row_limit=12, max_name_column_width=60))


if __name__ == '__main__':
    main()
