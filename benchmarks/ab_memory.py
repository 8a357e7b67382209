"""A/B of two training-memory choices on the H100 (bf16 autocast, batch 128, 224², one process):

1. the sequential backward's tile for d_state 16 (Vim): its BT is also the spacing of the fp32 state checkpoints the
   forward saves, so BT = 2 keeps (B, routes, L/2, D, 16) fp32 per layer; larger BT trades speed for memory;
2. the layout of Spatial-Mamba's state fusion (padded map NHWC or NCHW; the per-branch F.pad form it replaced).

    python3 benchmarks/ab_memory.py        # repository root, CUDA machine
"""
import contextlib
import os
import sys
import time

import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import visionssm  # noqa: E402,F401
from visionssm.kernels import triton_scan as TS  # noqa: E402
from visionssm.models import spatialmamba as SM  # noqa: E402


def measure(name, train, batch=128, iters=6, warmup=3):
    torch.manual_seed(0)
    model = timm.create_model(name).cuda().train(train)
    x = torch.randn(batch, 3, 224, 224, device='cuda')
    opt = contextlib.nullcontext() if train else torch.no_grad()

    def step():
        with opt, torch.autocast('cuda', dtype=torch.bfloat16):
            y = model(x)
        if train:
            y.float().sum().backward()
            model.zero_grad(set_to_none=True)
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(iters):
            step()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) / iters)
    ms = sorted(times)[1] * 1e3
    peak = torch.cuda.max_memory_allocated() / 2 ** 30
    del model
    torch.cuda.empty_cache()
    return f'{ms:8.2f} ms  {batch / ms * 1e3:7.0f} img/s  peak {peak:6.2f} GiB'


def fusion_pad_per_branch(self, h):    # the form before 7814366
    with torch.autocast('cuda', enabled=False):
        h = h.permute(0, 3, 1, 2)
        out = None
        for alpha, kernel, d in zip(self.alpha, (self.kernel_3, self.kernel_3_1, self.kernel_3_2), self.dilations):
            branch = alpha.to(h.dtype) * F.conv2d(F.pad(h, (d,) * 4, mode='replicate'), kernel.to(h.dtype),
                                                  dilation=d, groups=self.dim)
            out = branch if out is None else out + branch
    return out.permute(0, 2, 3, 1)


def fusion_gather_nhwc(self, h):    # 7814366: the current form (the model's), but gathered in NHWC
    with torch.autocast('cuda', enabled=False):
        pad = max(self.dilations)
        height, width = h.shape[1:3]
        for dim, size in ((1, height), (2, width)):
            h = h.index_select(dim, torch.arange(-pad, size + pad, device=h.device).clamp_(0, size - 1))
        padded = h.permute(0, 3, 1, 2)
        out = None
        for alpha, kernel, d in zip(self.alpha, (self.kernel_3, self.kernel_3_1, self.kernel_3_2), self.dilations):
            view = padded[:, :, pad - d:pad + height + d, pad - d:pad + width + d]
            branch = F.conv2d(view, (alpha * kernel).to(h.dtype), dilation=d, groups=self.dim)
            out = branch if out is None else out + branch
    return out.permute(0, 2, 3, 1)


if __name__ == '__main__':
    print(torch.cuda.get_device_name(), torch.__version__)
    for bwd in [None, (16, 4, 2), (32, 4, 4), (16, 8, 2)]:
        TS._SEQ_OVERRIDE = None if bwd is None else ((32, 8, 4), bwd)
        for name in ('vim_tiny', 'vim_small'):
            print(f'{name:18} seq bwd tile {str(bwd or "default (16, 2, 2)"):20} fwd+bwd', measure(name, True),
                  flush=True)
    TS._SEQ_OVERRIDE = None
    original = SM.StateFusion.forward
    for label, fn in [('pad per branch', fusion_pad_per_branch), ('gather NHWC (7814366)', fusion_gather_nhwc),
                      ('gather NCHW', original)]:
        SM.StateFusion.forward = fn
        for train in (False, True):
            print(f'spatialmamba_tiny  fusion {label:22} {"fwd+bwd" if train else "infer  "}',
                  measure('spatialmamba_tiny', train), flush=True)
    SM.StateFusion.forward = original
