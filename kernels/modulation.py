"""Triton kernels for a channel-last map modulated by a per-image channel gate, ``out = s * x * a``, forward and
backward: GroupMamba's mixer, where ``s`` is the grouped scan's output, ``x`` the normed input and ``a (B, C)`` the
channel-affinity gate computed from ``mean_hw(x)``.

In PyTorch the product is two elementwise kernels, one of them broadcasting ``a`` over the map, and its backward
several more: the gate's gradient is a broadcast product and a reduction, and the pooled branch's gradient, a
``(B, 1, 1, C)`` view expanded over the map, is added to the map's other gradient by a broadcasting add. On an H200
that add alone took 9.0 of the 100.6 ms of GPU time of a GroupMamba-T training step (bf16, batch 128), many times
what its bytes cost. Here the forward is one pass, and the backward two:

    da[b, c] = sum_{h, w} g * s * x                        (pass 1: per-program partial sums, summed by torch)
    ds = g * x * a;  dx = g * s * a + dm[b, c]             (pass 2, after the caller turned da into dm)

where ``dm`` is the gradient that reaches ``x`` through the gate (for GroupMamba: through the gate's two small
layers and the spatial mean, already divided by H * W), added here instead of by a broadcasting add. Products
accumulate in fp32; ``out``, ``ds`` and ``dx`` are stored in the maps' dtype, ``da`` in fp32.

Grid: programs over blocks of ``BM`` positions (rows of the flattened ``(B * H * W, C)`` map) and ``BC`` channels;
the gate and ``dm`` are gathered per row from their small ``(B, C)`` tables. Pass 1 runs one program per image,
channel block and split of the image's positions, and reduces its tile once, at the end.
"""
from __future__ import annotations

import os

import torch

from .launch import HAS_TRITON as _HAS_TRITON, cdiv, next_power_of_2, on_device, on_gpu, run_kernel, tl, triton

__all__ = ['gate_grad', 'modulate_backward', 'modulate_forward', 'supports']

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_TILE = (32, 64, 4)   # (positions, widest channel block, warps) of each program
_SPLITS = 8           # pass 1: programs per image and channel block


def supports(x: torch.Tensor) -> bool:
    """True where the kernels serve: a CUDA ``(B, H, W, C)`` map of fp32/bf16/fp16, triton importable, and not
    switched off with ``VISIONSSM_MODULATION=torch``."""
    return (_HAS_TRITON and on_gpu(x) and x.dtype in _DTYPES and x.dim() == 4
            and os.environ.get('VISIONSSM_MODULATION', 'triton') != 'torch')


if _HAS_TRITON:

    @triton.jit
    def _modulate_fwd_kernel(s_ptr, x_ptr, a_ptr, out_ptr, M, HW, C, BM: tl.constexpr, BC: tl.constexpr):
        rows = tl.program_id(0).to(tl.int64) * BM + tl.arange(0, BM)
        cs = tl.program_id(1) * BC + tl.arange(0, BC)
        mask = (rows < M)[:, None] & (cs < C)[None, :]
        offs = rows[:, None] * C + cs[None, :]
        a = tl.load(a_ptr + (rows // HW)[:, None] * C + cs[None, :], mask=mask, other=0.0).to(tl.float32)
        s = tl.load(s_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + offs, (s * x * a).to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _gate_grad_kernel(g_ptr, s_ptr, x_ptr, part_ptr, HW, C, ROWS, BM: tl.constexpr, BC: tl.constexpr):
        # program (split, channel block, image b): sum of g * s * x over positions [split * ROWS, (split + 1) * ROWS)
        # of image b, accumulated elementwise and reduced once
        split = tl.program_id(0)
        cs = tl.program_id(1) * BC + tl.arange(0, BC)
        b = tl.program_id(2).to(tl.int64)
        cmask = cs < C
        acc = tl.zeros((BM, BC), dtype=tl.float32)
        end = tl.minimum(split * ROWS + ROWS, HW)
        for p0 in range(split * ROWS, end, BM):
            ps = p0 + tl.arange(0, BM)
            mask = (ps < end)[:, None] & cmask[None, :]
            offs = (b * HW + ps)[:, None] * C + cs[None, :]
            g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            s = tl.load(s_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            acc += g * s * x
        tl.store(part_ptr + (b * tl.num_programs(0) + split) * C + cs, tl.sum(acc, axis=0), mask=cmask)

    @triton.jit
    def _modulate_bwd_kernel(g_ptr, s_ptr, x_ptr, a_ptr, dm_ptr, ds_ptr, dx_ptr, M, HW, C, BM: tl.constexpr,
                             BC: tl.constexpr):
        rows = tl.program_id(0).to(tl.int64) * BM + tl.arange(0, BM)
        cs = tl.program_id(1) * BC + tl.arange(0, BC)
        mask = (rows < M)[:, None] & (cs < C)[None, :]
        offs = rows[:, None] * C + cs[None, :]
        table = (rows // HW)[:, None] * C + cs[None, :]
        a = tl.load(a_ptr + table, mask=mask, other=0.0).to(tl.float32)
        dm = tl.load(dm_ptr + table, mask=mask, other=0.0).to(tl.float32)
        ga = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32) * a
        s = tl.load(s_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(ds_ptr + offs, (ga * x).to(ds_ptr.dtype.element_ty), mask=mask)
        tl.store(dx_ptr + offs, (ga * s + dm).to(dx_ptr.dtype.element_ty), mask=mask)


def _check(s: torch.Tensor, x: torch.Tensor, table: torch.Tensor, name: str) -> None:
    if s.shape != x.shape or x.dim() != 4 or not (s.is_contiguous() and x.is_contiguous()):
        raise ValueError(f'modulation: s and x must be contiguous (B, H, W, C) maps of one shape, got '
                         f'{tuple(s.shape)} and {tuple(x.shape)}')
    if tuple(table.shape) != (x.shape[0], x.shape[-1]) or not table.is_contiguous():
        raise ValueError(f'modulation: {name} must be a contiguous (B, C) = {(x.shape[0], x.shape[-1])} tensor, '
                         f'got {tuple(table.shape)}')


def _grid_rows(x: torch.Tensor):
    rows, widest, warps = _TILE
    channels = x.shape[-1]
    block_c = min(widest, next_power_of_2(channels))
    return rows, block_c, warps, cdiv(channels, block_c)


def modulate_forward(s: torch.Tensor, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``s * x * a[:, None, None]`` for maps ``s, x (B, H, W, C)`` and the gate ``a (B, C)``, in the maps' dtype
    (``out``'s dtype is ``x``'s), computed in fp32."""
    _check(s, x, a, 'the gate')
    out = torch.empty_like(x)
    if out.numel() == 0:
        return out
    rows, block_c, warps, c_blocks = _grid_rows(x)
    positions = x.shape[0] * x.shape[1] * x.shape[2]
    with on_device(x.device):
        run_kernel(_modulate_fwd_kernel, (cdiv(positions, rows), c_blocks), s, x, a, out, positions,
                   x.shape[1] * x.shape[2], x.shape[-1], rows, block_c, num_warps=warps)
    return out


def gate_grad(grad: torch.Tensor, s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(grad * s * x).sum((1, 2))`` in fp32 for the contiguous maps ``s, x (B, H, W, C)``: ``(B, C)``, the gate's
    gradient."""
    if grad.shape != x.shape:
        raise ValueError(f'modulation: grad must have the maps\' shape {tuple(x.shape)}, got {tuple(grad.shape)}')
    batch, height, width, channels = x.shape
    hw = height * width
    if grad.numel() == 0:
        return grad.new_zeros(batch, channels, dtype=torch.float32)
    grad = grad.contiguous()
    rows, block_c, warps, c_blocks = _grid_rows(x)
    per_split = max(rows, cdiv(cdiv(hw, _SPLITS), rows) * rows)
    splits = cdiv(hw, per_split)
    partial = torch.empty(batch, splits, channels, device=x.device, dtype=torch.float32)
    with on_device(x.device):
        run_kernel(_gate_grad_kernel, (splits, c_blocks, batch), grad, s, x, partial, hw, channels, per_split,
                   rows, block_c, num_warps=warps)
    return partial.sum(1)


def modulate_backward(grad: torch.Tensor, s: torch.Tensor, x: torch.Tensor, a: torch.Tensor,
                      dm: torch.Tensor) -> tuple:
    """``(ds, dx)`` of ``modulate_forward``, with ``dm (B, C)`` added to every position of ``dx``: ``ds = grad * x *
    a``, ``dx = grad * s * a + dm[:, None, None]``, in the maps' dtypes."""
    _check(s, x, a, 'the gate')
    _check(s, x, dm, 'dm')
    grad = grad.contiguous()
    ds, dx = torch.empty_like(s), torch.empty_like(x)
    if x.numel() == 0:
        return ds, dx
    rows, block_c, warps, c_blocks = _grid_rows(x)
    positions = x.shape[0] * x.shape[1] * x.shape[2]
    with on_device(x.device):
        run_kernel(_modulate_bwd_kernel, (cdiv(positions, rows), c_blocks), grad, s, x, a, dm, ds, dx, positions,
                   x.shape[1] * x.shape[2], x.shape[-1], rows, block_c, num_warps=warps)
    return ds, dx
