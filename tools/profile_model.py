"""Where the time goes in one model: torch.profiler over a few inference or training steps, top CUDA kernels.

    python tools/profile_model.py vmamba_tiny_s1l8 --batch 128 --mode infer --precision bf16
    python tools/profile_model.py vmamba_tiny_s1l8 --mode train --channels-last --compile

Prints images/s (CUDA events, median of the profiled steps excluded: a separate timed loop) and the kernels
sorted by total CUDA time, grouped by name. GPU only.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

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
        model = torch.compile(model)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device='cuda').to(memory_format=fmt)
    target = torch.randint(0, 1000, (args.batch,), device='cuda')
    amp = torch.autocast('cuda', dtype=torch.bfloat16, enabled=args.precision == 'bf16')

    def step():
        if train:
            with amp:
                loss = torch.nn.functional.cross_entropy(model(x), target)
            loss.backward()
            for p in model.parameters():
                p.grad = None
        else:
            with torch.no_grad(), amp:
                model(x)

    for _ in range(5 if not args.compile else 10):
        step()
    torch.cuda.synchronize()
    times = []
    torch.cuda.reset_peak_memory_stats()
    for _ in range(args.steps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        step()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    ms = statistics.median(times)
    print(f'{args.model} {args.mode} {args.precision} bs{args.batch} {args.img_size}px '
          f'{"channels_last " if args.channels_last else ""}{"compiled " if args.compile else ""}'
          f': {ms:.2f} ms/step, {args.batch / ms * 1e3:.0f} img/s, '
          f'peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB')

    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    # kernels only (CPU-side op events carry their children's device time too)
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.device_time_total for e in events) / 3
    print(f'CUDA kernel time per step: {total / 1e3:.2f} ms')
    rows = sorted(events, key=lambda e: -e.device_time_total)[:args.top]
    for e in rows:
        t = e.device_time_total / 3
        print(f'{t / 1e3:8.3f} ms {100 * t / total:5.1f}%  x{e.count // 3:<4d} {e.key[:110]}')


if __name__ == '__main__':
    main()
