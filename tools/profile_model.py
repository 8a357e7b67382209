"""Where the time goes in one model: torch.profiler over a few inference or training steps, top CUDA kernels.

    python tools/profile_model.py vmamba_tiny_s1l8 --batch 128 --mode infer --precision bf16
    python tools/profile_model.py vmamba_tiny_s1l8 --mode train --optimizer adamw --compile

Prints images/s (CUDA events, median over a timed loop separate from the profiled steps), the host time to enqueue
one step (a step whose host time reaches its GPU time leaves the GPU idle: launch-bound), the GPU time spent in
kernels per step, the kernels sorted by total CUDA time, grouped by name, and then the host side: the operators
sorted by their own CPU time per step, beside the step's enqueue time (the difference is Python between operators).
GPU only.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('model')
    ap.add_argument('--batch', type=int, default=128)
    ap.add_argument('--img-size', type=int, default=224)
    ap.add_argument('--mode', choices=('infer', 'train'), default='infer')
    ap.add_argument('--precision', choices=('fp32', 'tf32', 'bf16'), default='bf16')
    ap.add_argument('--channels-last', action='store_true')
    ap.add_argument('--compile', action='store_true')
    ap.add_argument('--compile-mode', default=None, help="torch.compile mode, e.g. 'reduce-overhead'")
    ap.add_argument('--optimizer', choices=('none', 'adamw', 'adamw-fused'), default='none',
                    help='train mode: add an AdamW step (torch default implementation, or fused=True)')
    ap.add_argument('--steps', type=int, default=20, help='timed steps')
    ap.add_argument('--top', type=int, default=25)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit('tools/profile_model.py needs a CUDA device')

    import timm
    import visionssm  # noqa: F401  (registers the models)

    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.precision == 'tf32'
    train = args.mode == 'train'
    model = timm.create_model(args.model, drop_path_rate=0.2 if train else 0.0).cuda().train(train)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    if args.compile:
        model = torch.compile(model, mode=args.compile_mode)
    optimizer = None
    if train and args.optimizer != 'none':
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-7, fused=args.optimizer == 'adamw-fused' or None)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device='cuda').to(memory_format=fmt)
    target = torch.randint(0, 1000, (args.batch,), device='cuda')
    amp = torch.autocast('cuda', dtype=torch.bfloat16, enabled=args.precision == 'bf16')

    def step():
        if train:
            with amp:
                loss = torch.nn.functional.cross_entropy(model(x), target)
            loss.backward()
            if optimizer is not None:
                optimizer.step()
            for p in model.parameters():
                p.grad = None
        else:
            with torch.no_grad(), amp:
                model(x)

    for _ in range(5 if not args.compile else 10):
        step()
    torch.cuda.synchronize()
    times, host = [], []
    torch.cuda.reset_peak_memory_stats()
    for _ in range(args.steps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        t0 = time.perf_counter()
        step()
        host.append((time.perf_counter() - t0) * 1e3)
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    ms = statistics.median(times)
    print(f'{args.model} {args.mode} {args.precision} bs{args.batch} {args.img_size}px '
          f'{"channels_last " if args.channels_last else ""}'
          f'{"compiled (%s) " % (args.compile_mode or "default") if args.compile else ""}'
          f'{"+%s " % args.optimizer if optimizer is not None else ""}'
          f': {ms:.2f} ms/step ({min(times):.2f}-{max(times):.2f}), {args.batch / ms * 1e3:.0f} img/s, '
          f'host enqueue {statistics.median(host):.2f} ms/step, '
          f'peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB')

    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    # kernels only (CPU-side op events carry their children's device time too)
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.device_time_total for e in events) / 3
    print(f'CUDA kernel time per step: {total / 1e3:.2f} ms ({100 * total / 1e3 / ms:.0f}% of the timed step; '
          f'the rest is the GPU waiting for the host, or kernels overlapping)')
    rows = sorted(events, key=lambda e: -e.device_time_total)[:args.top]
    for e in rows:
        t = e.device_time_total / 3
        print(f'{t / 1e3:8.3f} ms {100 * t / total:5.1f}%  x{e.count // 3:<4d} {e.key[:110]}')

    # the host side, which bounds small batches: operators by their own CPU time (the profiler adds a few µs to
    # each, so read it as a ranking); what the operators do not account for is Python between them
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(3):
            step()
        enqueue = (time.perf_counter() - t0) / 3 * 1e6
        torch.cuda.synchronize()
    ops = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CPU]
    leaves = sum(e.self_cpu_time_total for e in ops) / 3
    print(f'host per step (profiled): {enqueue / 1e3:.2f} ms enqueue, {leaves / 1e3:.2f} ms in operators\' own CPU '
          f'time, {sum(e.count for e in ops if e.key.startswith("aten::")) // 3} aten calls')
    for e in sorted(ops, key=lambda e: -e.self_cpu_time_total)[:args.top]:
        t = e.self_cpu_time_total / 3
        print(f'{t / 1e3:8.3f} ms {100 * t / enqueue:5.1f}%  x{e.count // 3:<4d} '
              f'{t / max(1, e.count // 3):6.1f} µs/call  {e.key[:90]}')


if __name__ == '__main__':
    main()
