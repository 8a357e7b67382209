"""Spatial-Mamba's state fusion (``kernels/state_fusion.py``) alone at Spatial-Mamba-T's four stage shapes: each
Triton kernel against the PyTorch form, and a sweep of the kernels' tiles. GPU only.

    python benchmarks/state_fusion_bench.py [--batch 128] [--dtype bf16] [--sweep]

For each stage's fused map ``(B, H, W, C)``: the forward, the input-gradient kernel and the kernel-gradient kernel
(each timed alone, as the median of CUDA-event timings of ``--iters`` calls after warm-up), and the PyTorch form's
forward and forward+backward (``VISIONSSM_STATE_FUSION=torch``: replicate padding and cuDNN's depthwise
convolutions). ``GB/s`` counts the bytes each kernel must move at least: the forward and the input gradient read
one map and write one; the kernel gradient reads two. The copy bandwidth of an H100 / H200 is 3.0 / 4.3 TB/s (read +
write counted). ``--sweep`` times each kernel at each candidate ``(tile elements, widest channel block, warps)``.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from visionssm.kernels.bench import timeit  # noqa: E402  (median of CUDA-event timings after warm-up)

SHAPES = {  # Spatial-Mamba-T's fused states per stage at 224² (height = width, channels)
    'stage 1': (56, 128), 'stage 2': (28, 256), 'stage 3': (14, 512), 'stage 4': (7, 1024),
}
DILATIONS = (1, 3, 5)
# --sweep: 2, 4 or 8 elements per thread (more make ptxas keep the forward's 27 taps in over 170 registers)
CONFIGS = [(tile, widest, warps) for tile, widest, warps in itertools.product((256, 512, 1024, 2048), (32, 64, 128),
                                                                              (2, 4, 8))
           if tile // widest >= 2 and tile // (32 * warps) in (2, 4, 8)]


def inputs(size: int, channels: int, batch: int, dtype: torch.dtype):
    g = torch.Generator(device='cuda').manual_seed(0)
    h = torch.randn(batch, size, size, channels, device='cuda', dtype=dtype, generator=g)
    weight = torch.randn(3, channels, 1, 3, 3, device='cuda', generator=g)
    grad = torch.randn(batch, size, size, channels, device='cuda', dtype=dtype, generator=g)
    return h, weight, grad


def kernel_times(kernels, h, weight, grad, iters: int, which=('fwd', 'dh', 'dw')) -> tuple:
    """ms of the Triton kernels named in ``which``: the forward, the input gradient, the kernel gradient."""
    taps = kernels._taps(weight)
    calls = {'fwd': lambda: kernels.fuse_forward(h, taps, DILATIONS),
             'dh': lambda: kernels.fuse_backward(grad, h, taps, DILATIONS, need_weight=False),
             'dw': lambda: kernels.fuse_backward(grad, h, taps, DILATIONS, need_h=False)}
    return tuple(timeit(calls[name], iters=iters) for name in which)


def torch_times(h, weight, grad, iters: int) -> tuple:
    """(forward, forward + backward) ms of the model's PyTorch form."""
    from visionssm.models.spatialmamba import StateFusion
    fusion = StateFusion(h.shape[-1]).cuda()
    x = h.detach().requires_grad_()
    os.environ['VISIONSSM_STATE_FUSION'] = 'torch'
    try:
        with torch.no_grad():
            fwd = timeit(lambda: fusion(h), iters=iters)
        both = timeit(lambda: torch.autograd.grad(fusion(x), [x] + list(fusion.parameters()), grad), iters=iters)
    finally:
        del os.environ['VISIONSSM_STATE_FUSION']
    return fwd, both


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--batch', type=int, default=128)
    ap.add_argument('--dtype', choices=('bf16', 'fp16', 'fp32'), default='bf16')
    ap.add_argument('--iters', type=int, default=20)
    ap.add_argument('--sweep', action='store_true', help="time each kernel at every candidate configuration")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit('benchmarks/state_fusion_bench.py needs a CUDA device')
    from visionssm.kernels import state_fusion as kernels
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16, 'fp32': torch.float32}[a.dtype]
    size = torch.finfo(dtype).bits // 8
    print(f'{torch.cuda.get_device_name()}, torch {torch.__version__}; batch {a.batch}, {a.dtype}; configs fwd '
          f'{kernels._FWD} input gradient {kernels._BWD_H} kernel gradient {kernels._BWD_W}')
    print('| stage | map | fwd ms | dh ms | dw ms | PyTorch fwd ms | PyTorch fwd+bwd ms | fwd GB/s | dh GB/s '
          '| dw GB/s |')
    print('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|')
    total = [0.0] * 5
    for name, (side, channels) in SHAPES.items():
        h, weight, grad = inputs(side, channels, a.batch, dtype)
        two_maps = 2 * h.numel() * size / 1e6
        times = kernel_times(kernels, h, weight, grad, a.iters) + torch_times(h, weight, grad, a.iters)
        total = [t + s for t, s in zip(total, times)]
        fwd, dh, dw, tf, tb = times
        print(f'| {name} | {side}x{side}x{channels} | {fwd:.3f} | {dh:.3f} | {dw:.3f} | {tf:.3f} | {tb:.3f} | '
              f'{two_maps / fwd:.0f} | {two_maps / dh:.0f} | {two_maps / dw:.0f} |', flush=True)
    print('| all four | | ' + ' | '.join(f'{t:.3f}' for t in total) + ' | | | |')
    if not a.sweep:
        return
    for attr, label in (('_FWD', 'fwd'), ('_BWD_H', 'dh'), ('_BWD_W', 'dw')):
        chosen = getattr(kernels, attr)
        try:
            for config in CONFIGS:
                setattr(kernels, attr, config)
                times = []
                for side, channels in SHAPES.values():
                    h, weight, grad = inputs(side, channels, a.batch, dtype)
                    try:
                        times.append(kernel_times(kernels, h, weight, grad, a.iters, (label,))[0])
                    except Exception as e:   # a configuration the compiler rejects (registers, shared memory)
                        times.append(float('nan'))
                        print(f'{label} {config}: {type(e).__name__}: {str(e)[:80]}')
                cells = ' '.join(f'{t:7.3f}' for t in times)
                print(f'{label} tile {config[0]:4d} channels {config[1]:3d} warps {config[2]}: {cells} ms, '
                      f'sum {sum(times):.3f}', flush=True)
        finally:
            setattr(kernels, attr, chosen)


if __name__ == '__main__':
    main()
