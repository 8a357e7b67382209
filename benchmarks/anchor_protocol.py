"""Whole-model throughput by a second, independent protocol, as a check on tools/benchmark.py.

    python benchmarks/anchor_protocol.py [MODEL ...]     # on a CUDA machine; default: the three timm baselines

The protocol, step by step: random weights (drop_path_rate 0.2), one random input batch of 128 x 3 x 224²
reused for every iteration, channels_last for ConvNeXt and MambaOut, cuDNN benchmark on, TF32 off; bf16 autocast
inference under no_grad, and bf16 training as forward + cross-entropy + backward with gradients set to None (no
optimizer); 10 warm-up iterations (8 for training), a repeat length of about 0.6 s picked from 2 timed
iterations, 7 repeats bracketed by CUDA events, images/s from the median. It also measures the two device ceilings
(device-to-device copy, bf16 GEMM 8192³) and prints the GPU's clocks, so that a machine that runs slow shows it.
"""
from __future__ import annotations

import statistics
import subprocess
import sys

import torch
import torch.nn.functional as F

CHANNELS_LAST = ('convnext', 'mambaout')


def _events_ms(fn, n):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / n


def ceilings():
    x = torch.empty(2 ** 28, device='cuda')             # 1 GiB fp32
    y = torch.empty_like(x)
    copy_ms = min(_events_ms(lambda: y.copy_(x), 10) for _ in range(3))
    a = torch.randn(8192, 8192, device='cuda', dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device='cuda', dtype=torch.bfloat16)
    gemm_ms = min(_events_ms(lambda: a @ b, 10) for _ in range(3))
    del x, y, a, b
    torch.cuda.empty_cache()
    return 2 * 2 ** 30 / copy_ms / 1e6, 2 * 8192 ** 3 / gemm_ms / 1e9


def throughput(name, train, batch=128):
    import timm
    try:
        import visionssm  # noqa: F401  (our models, when asked for)
    except ImportError:
        pass
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = timm.create_model(name, drop_path_rate=0.2).cuda()
    x = torch.randn(batch, 3, 224, 224, device='cuda')
    y = torch.randint(0, 1000, (batch,), device='cuda')
    if name.startswith(CHANNELS_LAST):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model.train(train)

    def step():
        if train:
            with torch.autocast('cuda', dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            for p in model.parameters():
                p.grad = None
        else:
            with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16):
                model(x)

    for _ in range(8 if train else 10):
        step()
    torch.cuda.synchronize()
    n = max(1, round(600 / _events_ms(step, 2)))
    torch.cuda.reset_peak_memory_stats()
    times = [_events_ms(step, n) for _ in range(7)]
    peak = torch.cuda.max_memory_allocated() / 2 ** 30
    del model
    torch.cuda.empty_cache()
    return batch * 1e3 / statistics.median(times), peak


def main(names):
    names = names or ['convnext_tiny', 'swin_tiny_patch4_window7_224', 'mambaout_tiny']
    import timm
    print(f'{torch.cuda.get_device_name()}  torch {torch.__version__}  timm {timm.__version__}')
    q = 'clocks.sm,clocks.mem,clocks.max.sm,power.draw,power.limit,temperature.gpu,utilization.gpu,clocks_throttle_reasons.active'
    smi = subprocess.run(['nvidia-smi', f'--query-gpu={q}', '--format=csv'], capture_output=True, text=True)
    print(smi.stdout.strip() or smi.stderr.strip())
    copy, gemm = ceilings()
    print(f'device copy {copy:.0f} GB/s (read + write), bf16 GEMM 8192^3 {gemm:.0f} TFLOP/s')
    print('| model | bf16 inference img/s | bf16 training img/s | peak train GiB |')
    print('|---|---|---|---|')
    for name in names:
        infer, _ = throughput(name, False)
        train, peak = throughput(name, True)
        print(f'| {name} | {infer:.0f} | {train:.0f} | {peak:.2f} |', flush=True)
    smi = subprocess.run(['nvidia-smi', f'--query-gpu={q}', '--format=csv,noheader'], capture_output=True, text=True)
    print('after:', smi.stdout.strip())


if __name__ == '__main__':
    main(sys.argv[1:])
