"""A/B on the GPU: VMamba-T training step (bf16 autocast, AdamW, batch 128) with the MLP activation recomputed in
the backward (visionssm.layers.Mlp) and saved (plain fc1 -> act -> fc2), in one process; img/s and peak memory.

    python3 benchmarks/ab_mlp.py [model]
"""
import sys

import timm
import torch
import torch.nn.functional as F

import visionssm  # noqa: F401  (registers the models)
from visionssm.layers import mlp as M

name = sys.argv[1] if len(sys.argv) > 1 else 'vmamba_tiny_s1l8'
model = timm.create_model(name).cuda().train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
x = torch.randn(128, 3, 224, 224, device='cuda')
y = torch.randint(0, 1000, (128,), device='cuda')


def step():
    with torch.autocast('cuda', dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def measure(tag, repeats=5, steps=5):
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / steps)
    ms = sorted(times)[len(times) // 2]
    print(f'{name} {tag:28s} train {128 / ms * 1000:7.0f} img/s  peak {torch.cuda.max_memory_allocated() / 2**30:6.2f} GiB',
          flush=True)


recompute = M.act_linear
for tag, fn in (('activation recomputed', recompute), ('activation saved', lambda x, act, lin: lin(act(x))),
                ('activation recomputed (again)', recompute)):
    M.act_linear = fn
    measure(tag)
