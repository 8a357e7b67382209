"""The token conv1d (``visionssm.layers.conv1d``) alone at the models' shapes: the Triton kernels against the
PyTorch form they replace, forward and forward+backward, and a sweep of the kernels' tiles. GPU only.

    python benchmarks/conv1d_bench.py [--batch 128] [--dtype bf16] [--sweep] [--sweep-bwd [--shapes Vim-T ...]]

Shapes: Vim-T and Vim-S (both directions' 7-tap convs over a chunk of ``in_proj``'s output, two repeats, bias) and
MambaVision-T's stage-3 mixer ('same' 3-tap conv, no bias) at 224². Times are medians of CUDA-event timings of
``--iters`` calls after warm-up. ``GB/s`` counts the bytes a fused conv must move (forward: read x, write y;
backward: read x and dy, write dx) over the measured time; the copy bandwidth of an H100 / H200 is 3.0 / 4.3 TB/s
(read + write counted). ``--sweep`` times each candidate tile ``(steps, widest channel block, warps)`` of the four
kernels (``kernels/conv1d.py``'s ``_FWD``, ``_GP``, ``_DW``, ``_DX``) at each shape; ``--sweep-bwd`` the backward
over the weight-gradient kernel's tiles and its programs per SM (``_DW_WAVES``).
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from visionssm.kernels.bench import timeit  # noqa: E402  (median of CUDA-event timings after warm-up)

SHAPES = {  # name: (tokens, channels, taps, left padding, repeats, bias, the row stride of x over its channels)
    'Vim-T': (197, 384, 7, 3, 2, True, 2),
    'Vim-S': (197, 768, 7, 3, 2, True, 2),
    'MambaVision-T s3': (196, 320, 3, 1, 1, False, 1),
}
TILES = [(steps, widest, warps) for steps, widest, warps in itertools.product((8, 16, 32), (32, 64), (4, 8))]
BWD_WAVES = (4, 8, 16)   # --sweep-bwd: programs per SM of the weight-gradient kernel


def inputs(shape, batch: int, dtype: torch.dtype):
    length, channels, taps, left, repeats, bias, stride = shape
    g = torch.Generator(device='cuda').manual_seed(0)
    xz = torch.randn(batch, length, stride * channels, device='cuda', dtype=dtype, generator=g)
    x = xz[..., :channels].requires_grad_()
    w = (torch.randn(repeats * channels, taps, device='cuda', generator=g) / taps).to(dtype).requires_grad_()
    b = torch.randn(repeats * channels, device='cuda', generator=g).to(dtype).requires_grad_() if bias else None
    dy = torch.randn(batch, length, repeats * channels, device='cuda', dtype=dtype, generator=g)
    return x, w, b, dict(left=left, repeats=repeats), dy


def measure(shape, batch: int, dtype: torch.dtype, iters: int, path: str) -> tuple:
    """(forward ms, forward+backward ms) of one path: 'triton' or 'torch'."""
    from visionssm.layers.conv1d import depthwise_conv1d
    os.environ['VISIONSSM_CONV1D'] = path
    try:
        x, w, b, kw, dy = inputs(shape, batch, dtype)
        with torch.no_grad():
            fwd = timeit(lambda: depthwise_conv1d(x, w, b, **kw), iters=iters)
        params = [t for t in (x, w, b) if t is not None]
        both = timeit(lambda: torch.autograd.grad(depthwise_conv1d(x, w, b, **kw), params, dy), iters=iters)
    finally:
        del os.environ['VISIONSSM_CONV1D']
    return fwd, both


def sweep(shapes: dict, batch: int, dtype: torch.dtype, iters: int, settings, apply, label):
    """Time the kernels at each shape under each setting: ``apply(setting)`` sets their tiles, ``label(setting)``
    names the row. The backward's time is the forward + backward's minus the forward's."""
    for name, shape in shapes.items():
        for setting in settings:
            apply(setting)
            try:
                fwd, both = measure(shape, batch, dtype, iters, 'triton')
            except Exception as e:   # a tile the compiler rejects (registers, shared memory)
                print(f'{name} {label(setting)}: {type(e).__name__}: {str(e)[:80]}')
                continue
            print(f'{name} {label(setting)}: fwd {fwd:.3f} ms, bwd {both - fwd:.3f} ms', flush=True)


def tile_label(tile) -> str:
    return f'steps {tile[0]:2d} channels {tile[1]:2d} warps {tile[2]}'


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--batch', type=int, default=128)
    ap.add_argument('--dtype', choices=('bf16', 'fp16', 'fp32'), default='bf16')
    ap.add_argument('--iters', type=int, default=20)
    ap.add_argument('--sweep', action='store_true', help="time every candidate tile of the three kernels")
    ap.add_argument('--sweep-bwd', action='store_true',
                    help='time the backward over the weight-gradient kernel\'s tiles and programs per SM (_DW_WAVES), '
                         'the other kernels at their chosen tiles')
    ap.add_argument('--shapes', nargs='+', default=list(SHAPES), choices=list(SHAPES), help='of --sweep-bwd')
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit('benchmarks/conv1d_bench.py needs a CUDA device')
    from visionssm.kernels import conv1d as kernels
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16, 'fp32': torch.float32}[a.dtype]
    size = torch.finfo(dtype).bits // 8
    print(f'{torch.cuda.get_device_name()}, torch {torch.__version__}; batch {a.batch}, {a.dtype}; '
          f'tiles fwd {kernels._FWD} gp {kernels._GP} dw {kernels._DW} dx {kernels._DX}, dw waves {kernels._DW_WAVES}')
    print('| shape | Triton fwd ms | PyTorch fwd ms | Triton fwd+bwd ms | PyTorch fwd+bwd ms | fwd GB/s '
          '| fwd+bwd GB/s |')
    print('|---|---:|---:|---:|---:|---:|---:|')
    for name, shape in SHAPES.items():
        length, channels, _, _, repeats, _, _ = shape
        x_bytes = a.batch * length * channels * size
        fwd_bytes = x_bytes * (1 + repeats)
        bwd_bytes = x_bytes * (2 + repeats)        # read x and dy, write dx
        tf, tb = measure(shape, a.batch, dtype, a.iters, 'triton')
        pf, pb = measure(shape, a.batch, dtype, a.iters, 'torch')
        print(f'| {name} | {tf:.3f} | {pf:.3f} | {tb:.3f} | {pb:.3f} | {fwd_bytes / tf / 1e6:.0f} | '
              f'{(fwd_bytes + bwd_bytes) / tb / 1e6:.0f} |', flush=True)
    if a.sweep_bwd:   # the backward over the weight-gradient kernel's tiles and programs per SM
        chosen = kernels._DW, kernels._DW_WAVES

        def set_backward(setting):
            kernels._DW, kernels._DW_WAVES = setting
        try:
            sweep({n: SHAPES[n] for n in a.shapes}, a.batch, dtype, a.iters, list(itertools.product(TILES, BWD_WAVES)),
                  set_backward, lambda s: f'bwd {tile_label(s[0])} waves {s[1]:2d}')
        finally:
            set_backward(chosen)
    if not a.sweep:
        return
    chosen = kernels._FWD, kernels._GP, kernels._DW, kernels._DX

    def set_all(tile):   # one tile for all four kernels; the rows compare
        kernels._FWD = kernels._GP = kernels._DW = kernels._DX = tile
    try:
        sweep(SHAPES, a.batch, dtype, a.iters, TILES, set_all, tile_label)
    finally:
        kernels._FWD, kernels._GP, kernels._DW, kernels._DX = chosen


if __name__ == '__main__':
    main()
