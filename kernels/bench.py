"""Benchmark the Triton multi-route selective scan against the pure-PyTorch reference (one command).

    python kernels/bench.py            # from the repository root, on a CUDA machine
    python kernels/bench.py --batch 32 --no-ref
    python kernels/bench.py --sweep --only Vim   # kernel shapes of the d_state-16 sequential kernels (SEQ_SWEEP)

Each fused-op time is taken twice: eager calls (host overhead included, as a model runs them) and the replay of
the call captured in a CUDA graph (GPU time alone, as the anchors' "graph replay" column).

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
from unittest import mock

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


def graph_replay(run):
    """``run`` captured once in a CUDA graph (after warm-up on a side stream); returns the replay. Timing replays
    gives the GPU time of the call without its host overhead, the anchors' "graph replay" column."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return graph.replay


def bench_one(fn, x, plan, mean, train, graph=False):
    """Median ms of one forward (``train`` False) or forward+backward call; ``graph``: of its CUDA-graph replay."""
    if not train:
        def run():
            with torch.no_grad():
                fn(x['u'], x['delta'], x['A'], x['B'], x['C'], x['D'], x['delta_bias'], plan, mean=mean)
    else:
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
    return timeit(graph_replay(run) if graph else run)


def make_unfused(plan, x):
    """The unfused pipeline in this codebase, as the official VMamba path runs it: an explicit cross-scan copy of
    u into route order (B, L, K*W), one single-direction scan per route over its own copy (delta / B / C arrive in
    route order, as x_proj on the copied sequences produces them: permuted once here, outside the timing), fp32
    route outputs, then the cross-merge (a scatter-add back onto the map). Same signature as the fused op."""
    K, W = plan.num_routes, plan.width
    L = plan.positions[0].numel()
    pos = [p.to(x['u'].device) for p in plan.positions]
    seq_plan = R.plan_routes(tuple(R.Route('row', in_offset=k * W, out_offset=k * W) for k in range(K)),
                             1, L, W, K * W, K * W)
    delta_seq = torch.cat([x['delta'][:, pos[k], k * W:(k + 1) * W] for k in range(K)], -1)
    B_seq = torch.stack([x['B'][:, pos[k], k] for k in range(K)], 2)
    C_seq = torch.stack([x['C'][:, pos[k], k] for k in range(K)], 2)

    def run(u, delta, A, B, C, D, delta_bias, plan_, mean=False):
        xs = torch.cat([u[:, pos[k], r.in_offset:r.in_offset + W] for k, r in enumerate(plan.routes)], -1)
        ys = selective_scan_triton(xs, delta_seq, A, B_seq, C_seq, D, delta_bias, seq_plan,
                                   out_dtype=torch.float32)
        y = torch.zeros(u.shape[0], u.shape[1], plan.out_channels, device=u.device, dtype=torch.float32)
        for k, r in enumerate(plan.routes):
            y[:, :, r.out_offset:r.out_offset + W].index_add_(1, pos[k], ys[..., k * W:(k + 1) * W])
        if mean:
            y = y / plan.multiplicity
        return y.to(u.dtype)
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--batch', type=int, default=128)
    ap.add_argument('--no-ref', action='store_true', help='skip the reference timings')
    ap.add_argument('--copy-gbs', type=float, default=2999.0,
                    help='device copy bandwidth for the %% column (default: a device-to-device copy measured on an H100)')
    ap.add_argument('--only', default='', help='run only the shapes whose name contains this text')
    ap.add_argument('--sweep', action='store_true',
                    help='time the sequential kernels and several chunk shapes (BT, BD, num_warps) of the chunked ones; '
                         'at d_state 16 also shapes (BD, BT, num_warps) of the sequential ones (SEQ_SWEEP)')
    args = ap.parse_args()
    if args.sweep:
        return sweep(args.batch, args.only)
    import triton
    print(f'GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}  '
          f'batch {args.batch}  bf16')
    rows = []
    todo, batch = cases(args.batch)
    for name, plan, n_state, mean in todo:
        if args.only not in name:
            continue
        x = make_inputs(plan, batch, n_state)
        with torch.no_grad():   # the fused op against the reference at the benchmark's own shapes
            args_ = (x['u'], x['delta'], x['A'], x['B'], x['C'], x['D'], x['delta_bias'], plan)
            y = selective_scan_triton(*args_, mean=mean).float()
            y_ref = selective_scan_reference(*args_, mean=mean).float()
            err = ((y - y_ref).norm() / y_ref.norm()).item()
            del y, y_ref
        fb, tb = io_bytes(plan, batch, n_state)
        t_f = bench_one(selective_scan_triton, x, plan, mean, False)
        t_t = bench_one(selective_scan_triton, x, plan, mean, True)
        g_f = bench_one(selective_scan_triton, x, plan, mean, False, graph=True)
        g_t = bench_one(selective_scan_triton, x, plan, mean, True, graph=True)
        if not TS.keeps_states(n_state):   # the backward recomputes the checkpoints: also time them kept
            with mock.patch.dict(os.environ, VISIONSSM_SCAN_STATES='keep'):
                k_t = bench_one(selective_scan_triton, x, plan, mean, True)
                k_g = bench_one(selective_scan_triton, x, plan, mean, True, graph=True)
            print(f'  {name}: forward+backward {t_t:.3f} ms eager, {g_t:.3f} ms graph with the checkpoints '
                  f'recomputed in the backward (the default at d_state {n_state}); kept: {k_t:.3f} / {k_g:.3f} ms',
                  flush=True)
        unfused = make_unfused(plan, x)
        u_f = bench_one(unfused, x, plan, mean, False)
        u_t = bench_one(unfused, x, plan, mean, True)
        if args.no_ref:
            r_f = r_t = float('nan')
        else:
            r_f = bench_one(selective_scan_reference, x, plan, mean, False)
            r_t = bench_one(selective_scan_reference, x, plan, mean, True)
        rows.append((name, t_f, g_f, fb / g_f / 1e6, 100 * fb / g_f / 1e6 / args.copy_gbs, t_t, g_t, tb / g_t / 1e6,
                     g_t / g_f, u_f / t_f, u_t / t_t, r_f / t_f, r_t / t_t))
        print(f'  done {name}: forward relative error vs reference {err:.2e}', flush=True)
        del x, unfused
        torch.cuda.empty_cache()
    print()
    print(f'| shape (batch {batch}, bf16) | fwd ms | fwd ms, graph | fwd GB/s | % of copy BW | fwd+bwd ms '
          '| fwd+bwd ms, graph | fwd+bwd GB/s | fwd+bwd / fwd | vs unfused fwd | vs unfused fwd+bwd '
          '| vs reference fwd | vs reference fwd+bwd |')
    print('|---|---|---|---|---|---|---|---|---|---|---|---|---|')
    ratio = lambda v: '–' if v != v else f'{v:.1f}x'      # nan: not measured (--no-ref)
    for r in rows:
        print('| %s | %.3f | %.3f | %.0f | %.0f%% | %.3f | %.3f | %.0f | %.2f | %s | %s | %s | %s |'
              % (r[:9] + tuple(ratio(v) for v in r[9:])))
    print('\n"graph": the same call captured in a CUDA graph and replayed (GPU time, no host overhead); GB/s, % of '
          'copy BW and fwd+bwd / fwd use it. The "vs" ratios compare eager calls.')
    if sum(r[0].startswith('VMamba-T') for r in rows) < 4:
        return
    # the VMamba-T pass equivalent: 14 SS2D layers at depths 2/2/8/2
    depth = (2, 2, 8, 2)
    pass_ms = lambda col: sum(d * r[col] for d, r in zip(depth, rows))
    print(f'\nVMamba-T pass equivalent (2*s1 + 2*s2 + 8*s3 + 2*s4): forward {pass_ms(1):.2f} ms eager, '
          f'{pass_ms(2):.2f} ms graph; forward+backward {pass_ms(5):.2f} ms eager, {pass_ms(6):.2f} ms graph')

# chunked kernel shapes (BT, BD, num_warps): forward ones timed forward-only, backward ones in forward+backward
SWEEP = {1: dict(fwd=[(64, 32, 1), (32, 32, 1), (64, 32, 4), (128, 32, 4), (64, 64, 2)],
                 bwd=[(32, 32, 1), (16, 32, 1), (32, 32, 4), (16, 32, 2)]),
         16: dict(fwd=[(8, 16, 4), (16, 16, 1), (8, 16, 1)],
                  bwd=[(8, 16, 4), (8, 16, 1)])}
# sequential kernel shapes (BD, BT, num_warps) at d_state 16, the first of each the default: forward ones timed
# forward-only (backward at its default), backward ones in forward+backward (forward at its default), the backward
# ones with the decays kept in registers and recomputed (SEQ_KEEP_DECAY)
SEQ_SWEEP = {16: dict(fwd=[(32, 8, 4), (32, 8, 2), (32, 8, 1), (16, 8, 1), (64, 8, 4), (32, 16, 4), (32, 4, 4)],
                      bwd=[(16, 4, 2), (16, 4, 1), (8, 4, 1), (16, 2, 2), (16, 2, 1), (16, 8, 2), (32, 4, 4),
                           (32, 4, 2)])}


def sweep(batch, only=''):
    import triton
    print(f'GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}  '
          f'batch {batch}  bf16  (sweep: ms)')
    todo, _ = cases(batch)
    # diagnostic: stage 1 with the grouped pattern (4 routes, own channel groups, plain stores, no atomics)
    todo.append(('s1 grouped 4x96 (no atomics)', R.plan_routes(R.grouped_routes(96), 56, 56, 96, 384, 384), 1,
                 False))
    for name, plan, n_state, mean in todo:
        if only not in name:
            continue
        x = make_inputs(plan, batch, n_state)
        fb, tb = io_bytes(plan, batch, n_state)
        cfg = SWEEP[n_state]
        first = (cfg['fwd'][0], cfg['bwd'][0])
        variants = [(m, 'sequential', w, None) for m in ('routes', 'atomic') for w in ('fwd', 'both')]
        variants += [('routes', 'chunked', 'fwd', (c, cfg['bwd'][0])) for c in cfg['fwd']]
        variants += [('routes', 'chunked', 'both', (cfg['fwd'][0], c)) for c in cfg['bwd']]
        variants += [('atomic', 'chunked', w, first) for w in ('fwd', 'both')]
        for merge, kernel, what, over in variants:
            TS.FORCE_KERNEL, TS._CHUNK_OVERRIDE, TS.MERGE = kernel, over, merge
            label = f'{merge} ' + (kernel if over is None else f'{kernel} fwd {over[0]} bwd {over[1]}')
            try:
                if what == 'fwd':
                    t = bench_one(selective_scan_triton, x, plan, mean, False)
                    print(f'{name:36s} {label:52s} fwd     {t:8.3f} ms {fb / t / 1e6:6.0f} GB/s', flush=True)
                else:
                    t = bench_one(selective_scan_triton, x, plan, mean, True)
                    print(f'{name:36s} {label:52s} fwd+bwd {t:8.3f} ms {tb / t / 1e6:6.0f} GB/s', flush=True)
            except Exception as e:  # a shape that does not compile / fit
                print(f'{name:36s} {label:52s} {what} failed: {type(e).__name__}: {str(e)[:200]}', flush=True)
        TS.FORCE_KERNEL, TS._CHUNK_OVERRIDE, TS.MERGE = None, None, None
        if n_state in SEQ_SWEEP:
            sweep_sequential(name, plan, n_state, mean, x, fb, tb)
        del x
        torch.cuda.empty_cache()


def sweep_sequential(name, plan, n_state, mean, x, fb, tb):
    cfg = SEQ_SWEEP[n_state]
    fwd0, bwd0 = cfg['fwd'][0], cfg['bwd'][0]
    variants = [('fwd', (c, bwd0), None) for c in cfg['fwd']]
    variants += [('both', (fwd0, c), keep) for c in cfg['bwd'] for keep in (True, False)]
    saved = TS.FORCE_KERNEL, TS._SEQ_OVERRIDE, TS.SEQ_KEEP_DECAY
    TS.FORCE_KERNEL = 'sequential'
    for what, over, keep in variants:
        TS._SEQ_OVERRIDE, TS.SEQ_KEEP_DECAY = over, saved[2] if keep is None else keep
        label = f'sequential fwd {over[0]} bwd {over[1]}' + ('' if keep is None else f' keep_decay={keep}')
        try:
            if what == 'fwd':
                t = bench_one(selective_scan_triton, x, plan, mean, False)
                print(f'{name:36s} {label:60s} fwd     {t:8.3f} ms {fb / t / 1e6:6.0f} GB/s', flush=True)
            else:
                t = bench_one(selective_scan_triton, x, plan, mean, True)
                print(f'{name:36s} {label:60s} fwd+bwd {t:8.3f} ms {tb / t / 1e6:6.0f} GB/s', flush=True)
        except Exception as e:  # a shape that does not compile / fit
            print(f'{name:36s} {label:60s} {what} failed: {type(e).__name__}: {str(e)[:200]}', flush=True)
    TS.FORCE_KERNEL, TS._SEQ_OVERRIDE, TS.SEQ_KEEP_DECAY = saved


if __name__ == '__main__':
    main()
