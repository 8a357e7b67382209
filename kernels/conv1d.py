"""Triton kernels for a depthwise conv1d along the tokens of a channel-last sequence, fused with its SiLU, forward
and backward.

Vim's mixer runs both directions' convs (the causal one of ``x`` and the anti-causal one, each followed by SiLU) as
one grouped conv over ``[x, x]``. With PyTorch that is a concatenation, a transpose to ``(B, 2E, L)``, PyTorch's
generic depthwise kernel (cuDNN does not take that layout), a SiLU and a transpose back with a copy: on an H200 the
three depthwise-conv kernels alone took 13.2 of the 137 ms of a Vim-T training step (bf16, batch 128;
``benchmarks/results/h200-2026-12/profile_train_vim.log``), several times what their bytes cost, and the copies
around them more. Here the forward is one pass that reads ``x`` in place (any row stride: a chunk of a wider
projection) and writes the activated output once; the backward is three.

Math, for ``x (B, L, C)``, ``R`` repeats of it, weights ``w (R*C, K)``, bias ``b (R*C,)`` and ``P`` zeros of padding
before the sequence (``K - 1 - P`` after it, so that the output has ``L`` steps), output channel ``j = r*C + c``::

    pre[b, t, j] = b[j] + sum_k w[j, k] * x[b, t + k - P, c]        (x is zero outside [0, L))
    y = silu(pre)                                                   (or pre)

Backward, with ``gp = dy * silu'(pre)`` (``pre`` recomputed from ``x``, not kept)::

    dx[b, t, c] = sum_r sum_k w[r*C + c, k] * gp[b, t - k + P, r*C + c]
    dw[j, k] = sum_{b, t} gp[b, t, j] * x[b, t + k - P, c],        db[j] = sum_{b, t} gp[b, t, j]

The backward is three kernels. The first recomputes ``pre`` and writes ``gp`` (fp32; without the SiLU, ``gp`` is
``dy`` itself and the kernel does not run). The second accumulates the weight and bias gradients: each program owns
one tap of one repeat and a share of the (batch, step block) tiles of its channel block, multiplies ``gp`` by ``x``
shifted by its tap elementwise and reduces its tile once, at the end (the partials are summed by torch:
deterministic, no atomics). A single kernel that reduced every tap of every tile had to synchronize its warps for
each of them. The programs of one channel block and tile range run side by side, so their reads of ``gp`` and
``x`` mostly hit the cache. The third gathers ``dx`` from ``gp``. Lanes run over channels, so every tap is a
coalesced tile load. Products accumulate in fp32; ``y`` and ``dx`` are stored in ``x``'s dtype, ``dw`` / ``db`` in
fp32.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch

from .launch import (HAS_TRITON as _HAS_TRITON, cdiv, next_power_of_2, on_device, on_gpu, run_kernel, sm_count, tl,
                     triton)

__all__ = ['conv1d_forward', 'conv1d_backward', 'supports']

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# (steps per tile, widest channel block, warps) of each kernel: no register spills for sm_90 at Vim's 7 taps and two
# repeats (ptxas -v)
_FWD = (32, 64, 4)
_GP = (16, 32, 4)   # the tile that needs no layout conversion through shared memory (ptxas: 1 barrier, 96 registers)
_DW = (32, 64, 4)
_DX = (16, 64, 4)
_DW_WAVES = 8       # weight-gradient programs per SM (each loops over tiles)
MAX_TAPS = 64


def supports(x: torch.Tensor, taps: int, repeats: int = 1) -> bool:
    """True where the kernels serve: a CUDA ``(B, L, C)`` tensor of fp32/bf16/fp16 with a batch within a grid
    axis (65535), at most ``MAX_TAPS`` taps, a power-of-2 number of repeats, triton importable, and not switched off
    with ``VISIONSSM_CONV1D=torch``."""
    return (_HAS_TRITON and on_gpu(x) and x.dtype in _DTYPES and x.dim() == 3 and x.shape[0] <= 65535
            and 0 < taps <= MAX_TAPS and repeats > 0 and repeats & (repeats - 1) == 0
            and os.environ.get('VISIONSSM_CONV1D', 'triton') != 'torch')


if _HAS_TRITON:

    @triton.jit
    def _pre_activation(x_row, w_ptr, b_ptr, ts, cs, L, C, stride_t, stride_wj, stride_wk,
                        HAS_BIAS: tl.constexpr, R: tl.constexpr, K: tl.constexpr, PAD: tl.constexpr,
                        BT: tl.constexpr, BC: tl.constexpr):
        # pre [BT, R, BC] at the steps ts and channels cs, for every repeat r: one load of x per tap serves all R
        cmask = cs < C
        wcol = tl.arange(0, R)[:, None] * C + cs[None, :]          # output channel j = r*C + c, [R, BC]
        wmask = (tl.arange(0, R) < R)[:, None] & cmask[None, :]
        acc = tl.zeros((BT, R, BC), dtype=tl.float32)
        if HAS_BIAS:
            acc += tl.load(b_ptr + wcol, mask=wmask, other=0.0).to(tl.float32)[None, :, :]
        for k in tl.static_range(K):
            pos = ts + (k - PAD)
            m = ((pos >= 0) & (pos < L))[:, None] & cmask[None, :]
            xk = tl.load(x_row + pos.to(tl.int64)[:, None] * stride_t + cs[None, :], mask=m, other=0.0)
            wk = tl.load(w_ptr + wcol * stride_wj + k * stride_wk, mask=wmask, other=0.0)
            acc += xk.to(tl.float32)[:, None, :] * wk.to(tl.float32)[None, :, :]
        return acc

    @triton.jit
    def _conv_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, L, C, stride_b, stride_t, stride_wj, stride_wk,
                         HAS_BIAS: tl.constexpr, SILU: tl.constexpr, R: tl.constexpr, K: tl.constexpr,
                         PAD: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
        ts = tl.program_id(0) * BT + tl.arange(0, BT)   # step blocks on axis 0: the one without a 65535 cap
        b = tl.program_id(1).to(tl.int64)
        cs = tl.program_id(2) * BC + tl.arange(0, BC)
        pre = _pre_activation(x_ptr + b * stride_b, w_ptr, b_ptr, ts, cs, L, C, stride_t, stride_wj, stride_wk,
                              HAS_BIAS, R, K, PAD, BT, BC)
        y = pre * tl.sigmoid(pre) if SILU else pre
        wcol = tl.arange(0, R)[:, None] * C + cs[None, :]
        offs = (b * L + ts)[:, None, None] * (R * C) + wcol[None, :, :]
        mask = (ts < L)[:, None, None] & (cs < C)[None, None, :]
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _conv_gp_kernel(x_ptr, w_ptr, b_ptr, g_ptr, gp_ptr, L, C, stride_b, stride_t, stride_wj, stride_wk,
                        HAS_BIAS: tl.constexpr, R: tl.constexpr, K: tl.constexpr, PAD: tl.constexpr,
                        BT: tl.constexpr, BC: tl.constexpr):
        # gp = dy * silu'(pre), pre recomputed from x
        ts = tl.program_id(0) * BT + tl.arange(0, BT)   # step blocks on axis 0: the one without a 65535 cap
        b = tl.program_id(1).to(tl.int64)
        cs = tl.program_id(2) * BC + tl.arange(0, BC)
        pre = _pre_activation(x_ptr + b * stride_b, w_ptr, b_ptr, ts, cs, L, C, stride_t, stride_wj, stride_wk,
                              HAS_BIAS, R, K, PAD, BT, BC)
        wcol = tl.arange(0, R)[:, None] * C + cs[None, :]
        offs = (b * L + ts)[:, None, None] * (R * C) + wcol[None, :, :]
        mask = (ts < L)[:, None, None] & (cs < C)[None, None, :]
        s = tl.sigmoid(pre)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(gp_ptr + offs, g * s * (1.0 + pre * (1.0 - s)), mask=mask)

    @triton.jit
    def _conv_dw_kernel(x_ptr, gp_ptr, part_ptr, L, C, stride_b, stride_t, T_TILES, TILES,
                        HAS_BIAS: tl.constexpr, R: tl.constexpr, K: tl.constexpr, PAD: tl.constexpr,
                        BT: tl.constexpr, BC: tl.constexpr):
        # program (k * R + r, channel block, p): dw[r*C + c, k] (and db at k = 0) over the tiles p, p + programs, ...
        kr = tl.program_id(0)
        k = kr // R
        r = kr - k * R
        cs = tl.program_id(1) * BC + tl.arange(0, BC)
        cmask = cs < C
        p = tl.program_id(2)
        dw = tl.zeros((BT, BC), dtype=tl.float32)
        db = tl.zeros((BT, BC), dtype=tl.float32)
        for tile in range(p, TILES, tl.num_programs(2)):
            b = (tile // T_TILES).to(tl.int64)
            ts = (tile % T_TILES) * BT + tl.arange(0, BT)
            g = tl.load(gp_ptr + (b * L + ts)[:, None] * (R * C) + r * C + cs[None, :],
                        mask=(ts < L)[:, None] & cmask[None, :], other=0.0).to(tl.float32)
            pos = ts + (k - PAD)
            m = ((pos >= 0) & (pos < L))[:, None] & cmask[None, :]
            xk = tl.load(x_ptr + b * stride_b + pos.to(tl.int64)[:, None] * stride_t + cs[None, :], mask=m, other=0.0)
            dw += g * xk.to(tl.float32)
            if HAS_BIAS:
                db += g
        # partials (programs, R*C, K + 1): per output channel its K taps of dw, then db; summed over the programs,
        # the taps are a row-major (R*C, K) view, the weight's own layout
        slot = part_ptr + (p.to(tl.int64) * (R * C) + r * C + cs) * (K + 1)
        tl.store(slot + k, tl.sum(dw, axis=0), mask=cmask)
        if HAS_BIAS:
            tl.store(slot + K, tl.sum(db, axis=0), mask=cmask & (k == 0))

    @triton.jit
    def _conv_dx_kernel(gp_ptr, w_ptr, dx_ptr, L, C, stride_wj, stride_wk,
                        R: tl.constexpr, K: tl.constexpr, PAD: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
        # dx[t, c] = sum_k sum_r w[r*C + c, k] * gp[t - k + PAD, r*C + c]
        ts = tl.program_id(0) * BT + tl.arange(0, BT)   # step blocks on axis 0: the one without a 65535 cap
        b = tl.program_id(1).to(tl.int64)
        cs = tl.program_id(2) * BC + tl.arange(0, BC)
        cmask = cs < C
        wcol = tl.arange(0, R)[:, None] * C + cs[None, :]
        wmask = (tl.arange(0, R) < R)[:, None] & cmask[None, :]
        acc = tl.zeros((BT, BC), dtype=tl.float32)
        for k in tl.static_range(K):
            pos = ts - (k - PAD)
            m = ((pos >= 0) & (pos < L))[:, None, None] & wmask[None, :, :]
            gk = tl.load(gp_ptr + (b * L + pos)[:, None, None] * (R * C) + wcol[None, :, :], mask=m, other=0.0)
            wk = tl.load(w_ptr + wcol * stride_wj + k * stride_wk, mask=wmask, other=0.0).to(tl.float32)
            acc += tl.sum(gk * wk[None, :, :], axis=1)
        mask = (ts < L)[:, None] & cmask[None, :]
        tl.store(dx_ptr + (b * L + ts)[:, None] * C + cs[None, :], acc.to(dx_ptr.dtype.element_ty), mask=mask)


def _block_c(channels: int, widest: int) -> int:
    return min(widest, next_power_of_2(channels))


def _unit_channel_stride(x: torch.Tensor):
    # the one layout the kernels need; the shapes and padding are checked once, by the caller
    # (``visionssm.layers.conv1d.depthwise_conv1d``)
    if x.stride(-1) != 1:
        raise ValueError(f'conv1d: x must have a unit channel stride, got strides {x.stride()}')


def conv1d_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], left: int,
                   repeats: int = 1, silu: bool = True) -> torch.Tensor:
    """``y (B, L, repeats*C)``, contiguous in ``x``'s dtype, of ``x (B, L, C)`` (unit channel stride, any other
    strides) with ``weight (repeats*C, K)`` (any strides), ``bias`` None or ``(repeats*C,)`` and ``left`` zeros of
    padding before the sequence, ``0 <= left < K`` (the module docstring gives the math)."""
    _unit_channel_stride(x)
    taps = weight.shape[1]
    bias = bias.contiguous() if bias is not None else None
    batch, length, channels = x.shape
    y = x.new_empty(batch, length, repeats * channels)
    if y.numel() == 0:
        return y
    steps, widest, warps = _FWD
    block_c = _block_c(channels, widest)
    with on_device(x.device):
        run_kernel(_conv_fwd_kernel, (cdiv(length, steps), batch, cdiv(channels, block_c)),
            x, weight, weight if bias is None else bias, y, length, channels, x.stride(0), x.stride(1),
            weight.stride(0), weight.stride(1), bias is not None, silu, repeats, taps, left, steps, block_c,
            num_warps=warps)
    return y


def _programs(x: torch.Tensor, others: int) -> int:
    """Weight-gradient programs per (tap, repeat, channel block): ``_DW_WAVES`` per SM in all."""
    if x.is_cuda:
        return max(1, _DW_WAVES * sm_count(x.device) // others)
    return 3   # the interpreter: few programs, so that the tests run the loop over tiles


def conv1d_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    left: int, repeats: int = 1, silu: bool = True, need_x: bool = True, need_weights: bool = True
                    ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """``(dx, dw, db)`` for ``conv1d_forward``'s output gradient ``grad``: ``dx`` contiguous like ``x`` (None
    unless ``need_x``), ``dw (repeats*C, K)`` and ``db (repeats*C,)`` fp32 (None unless ``need_weights``; ``db``
    also None without a bias)."""
    _unit_channel_stride(x)
    taps = weight.shape[1]
    bias = bias.contiguous() if bias is not None else None
    batch, length, channels = x.shape
    width = repeats * channels
    grad = grad.contiguous()
    if x.numel() == 0:
        dw = weight.new_zeros(width, taps, dtype=torch.float32) if need_weights else None
        db = weight.new_zeros(width, dtype=torch.float32) if need_weights and bias is not None else None
        return (torch.zeros_like(x, memory_format=torch.contiguous_format) if need_x else None), dw, db
    if not (need_x or need_weights):
        return None, None, None
    gp = grad   # dy * silu'(pre), or dy itself without the SiLU
    with on_device(x.device):
        if silu:
            steps, widest, warps = _GP
            block_c = _block_c(channels, widest)
            gp = torch.empty(batch, length, width, device=x.device, dtype=torch.float32)
            run_kernel(_conv_gp_kernel, (cdiv(length, steps), batch, cdiv(channels, block_c)),
                x, weight, weight if bias is None else bias, grad, gp, length, channels, x.stride(0), x.stride(1),
                weight.stride(0), weight.stride(1), bias is not None, repeats, taps, left, steps, block_c,
                num_warps=warps)
        dw = db = None
        if need_weights:
            steps, widest, warps = _DW
            block_c = _block_c(channels, widest)
            t_tiles = cdiv(length, steps)
            others = taps * repeats * cdiv(channels, block_c)
            programs = min(batch * t_tiles, _programs(x, others))
            partials = torch.empty(programs, width, taps + 1, device=x.device, dtype=torch.float32)
            run_kernel(_conv_dw_kernel, (taps * repeats, cdiv(channels, block_c), programs),
                x, gp, partials, length, channels, x.stride(0), x.stride(1), t_tiles, batch * t_tiles,
                bias is not None, repeats, taps, left, steps, block_c, num_warps=warps)
            sums = partials.sum(0)
            dw, db = sums[:, :taps], (sums[:, taps] if bias is not None else None)
        dx = None
        if need_x:
            steps, widest, warps = _DX
            block_c = _block_c(channels, widest)
            dx = torch.empty(batch, length, channels, device=x.device, dtype=x.dtype)
            run_kernel(_conv_dx_kernel, (cdiv(length, steps), batch, cdiv(channels, block_c)),
                gp, weight, dx, length, channels, weight.stride(0), weight.stride(1), repeats, taps, left, steps,
                block_c, num_warps=warps)
    return dx, dw, db
