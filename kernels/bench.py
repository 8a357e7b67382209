"""Benchmark the Triton multi-route selective scan against the pure-PyTorch reference (one command).

    python kernels/bench.py            # from the repository root, on a CUDA machine
    python kernels/bench.py --batch 32 --no-ref

Shapes: the four VMamba-T stages at batch 128 (4 cross routes, d_state 1, W = 96/192/384/768 at
L = 56²/28²/14²/7²) and Vim-S (2 routes, d_state 16, L = 197, C = 768, mean merge), bf16 in and out, fp32 A / D /
delta_bias. Times are medians of CUDA-event timings after warm-up. "GB/s" counts the minimal bytes of the op
(forward: read u, delta, B, C, write y; backward: read u, delta, B, C, dy, write du, ddelta, dB, dC), i.e. the
bytes a fused kernel must move, divided by the measured time; the kernels' extra traffic (fp32 atomics buffer,
checkpoints, scratch) is not counted.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

try:
    from visionssm.kernels import routes as R
    from visionssm.kernels.reference import selective_scan_reference
    from visionssm.kernels.triton_scan import selective_scan_triton
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from kernels import routes as R
    from kernels.reference import selective_scan_reference
    from kernels.triton_scan import selective_scan_triton
    from kernels import triton_scan as TS
else:
    from visionssm.kernels import triton_scan as TS


def cases(batch):
    out = []
    for stage, (hw, w) in enumerate([(56, 96), (28, 192), (14, 384), (7, 768)], 1):
        out.append((f'VMamba-T s{stage} L={hw * hw} W={w} N=1', R.cross_routes(), hw, hw, w, w, w, 1, False))
    out.append(('Vim-S L=197 C=768 N=16 (2 routes)', R.bidirectional_routes(768), 1, 197, 768, 1536, 768, 16, True))
    return [(name, R.plan_routes(routes, h, wp, w, cin, cout), n, mean) for name, routes, h, wp, w, cin, cout, n, mean
            in out], batch


def make_inputs(plan, batch, n_state, dtype=torch.bfloat16, device='cuda'):
    K, W, P = plan.num_routes, plan.width, plan.height * plan.width_px
    g = torch.Generator(device=device).manual_seed(0)
    r = lambda *s: torch.randn(*s, device=device, generator=g)
    return dict(
        u=r(batch, P, plan.in_channels).to(dtype),
        delta=(r(batch, P, K * W) * 0.5 - 1.0).to(dtype),
        A=-torch.exp(r(K * W, n_state) * 0.5),
        B=r(batch, P, K, n_state).to(dtype),
        C=r(batch, P, K, n_state).to(dtype),
        D=r(K * W),
        delta_bias=r(K * W) * 0.1,
    )


def io_bytes(plan, batch, n_state, elt=2):
    K, W, P = plan.num_routes, plan.width, plan.height * plan.width_px
    u = batch * P * plan.in_channels * elt
    delta = batch * P * K * W * elt
    bc = 2 * batch * P * K * n_state * elt
    y = batch * P * plan.out_channels * elt
    fwd = u + delta + bc + y
    bwd = (u + delta + bc + y) + (u + delta + bc)   # reads incl. dy, then writes of du, ddelta, dB, dC
    return fwd, fwd + bwd


def timeit(fn, warmup=3, iters=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    times.sort()
    return times[len(times) // 2]


def bench_one(fn, x, plan, mean, train):
    if not train:
        def run():
            with torch.no_grad():
                fn(x['u'], x['delta'], x['A'], x['B'], x['C'], x['D'], x['delta_bias'], plan, mean=mean)
        return timeit(run)
    leaves = {k: v.detach().requires_grad_(True) for k, v in x.items()}
    dy = None

    def run():
        nonlocal dy
        for v in leaves.values():
            v.grad = None
        y = fn(leaves['u'], leaves['delta'], leaves['A'], leaves['B'], leaves['C'], leaves['D'],
               leaves['delta_bias'], plan, mean=mean)
        if dy is None:
            dy = torch.randn_like(y)
        y.backward(dy)
    return timeit(run)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--batch', type=int, default=128)
    ap.add_argument('--no-ref', action='store_true', help='skip the reference timings')
    ap.add_argument('--sweep', action='store_true',
                    help='time the sequential kernels and several tile shapes (BT, BD, num_warps) of the tiled ones')
    args = ap.parse_args()
    if args.sweep:
        return sweep(args.batch)
    import triton
    print(f'GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}  '
          f'batch {args.batch}  bf16')
    rows = []
    todo, batch = cases(args.batch)
    for name, plan, n_state, mean in todo:
        x = make_inputs(plan, batch, n_state)
        fb, tb = io_bytes(plan, batch, n_state)
        t_f = bench_one(selective_scan_triton, x, plan, mean, False)
        t_t = bench_one(selective_scan_triton, x, plan, mean, True)
        if args.no_ref:
            r_f = r_t = float('nan')
        else:
            r_f = bench_one(selective_scan_reference, x, plan, mean, False)
            r_t = bench_one(selective_scan_reference, x, plan, mean, True)
        rows.append((name, t_f, fb / t_f / 1e6, r_f, r_f / t_f, t_t, tb / t_t / 1e6, r_t, r_t / t_t))
        print('  done', name, flush=True)
        del x
        torch.cuda.empty_cache()
    print()
    print('| shape (batch %d, bf16) | fwd ms | fwd GB/s | ref fwd ms | fwd speedup | fwd+bwd ms | fwd+bwd GB/s '
          '| ref fwd+bwd ms | fwd+bwd speedup |' % batch)
    print('|---|---|---|---|---|---|---|---|---|')
    for r in rows:
        print('| %s | %.3f | %.0f | %.2f | %.1fx | %.3f | %.0f | %.2f | %.1fx |' % r)


SWEEP_N1 = [(32, 32, 4, 2), (32, 32, 4, 4), (64, 32, 4, 2), (16, 32, 2, 2), (32, 16, 2, 2), (32, 64, 4, 4)]
SWEEP_N16 = [(8, 16, 4, 4), (16, 16, 4, 4), (8, 8, 2, 2), (4, 16, 2, 2)]


def sweep(batch):
    import triton
    print(f'GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}  '
          f'batch {batch}  bf16  (sweep: ms fwd / fwd+bwd)')
    todo, _ = cases(batch)
    # diagnostic: stage 1 with the grouped pattern (4 routes, own channel groups, plain stores, no atomics)
    todo.append(('s1 grouped 4x96 (no atomics)', R.plan_routes(R.grouped_routes(96), 56, 56, 96, 384, 384), 1,
                 False))
    for name, plan, n_state, mean in todo:
        x = make_inputs(plan, batch, n_state)
        fb, tb = io_bytes(plan, batch, n_state)
        variants = [('sequential', None)] + [(f'tiled BT={c[0]} BD={c[1]} w={c[2]}/{c[3]}', c)
                                             for c in (SWEEP_N1 if n_state == 1 else SWEEP_N16)]
        for vname, cfg in variants:
            TS.FORCE_KERNEL = 'sequential' if cfg is None else 'tiled'
            TS._TILE_OVERRIDE = cfg
            try:
                t_f = bench_one(selective_scan_triton, x, plan, mean, False)
                t_t = bench_one(selective_scan_triton, x, plan, mean, True)
                print(f'{name:38s} {vname:28s} fwd {t_f:8.3f} ms {fb / t_f / 1e6:6.0f} GB/s   '
                      f'fwd+bwd {t_t:8.3f} ms {tb / t_t / 1e6:6.0f} GB/s', flush=True)
            except Exception as e:  # a tile shape that does not compile / fit
                print(f'{name:38s} {vname:28s} failed: {type(e).__name__}: {str(e)[:200]}', flush=True)
        TS.FORCE_KERNEL, TS._TILE_OVERRIDE = None, None
        del x
        torch.cuda.empty_cache()


if __name__ == '__main__':
    main()
