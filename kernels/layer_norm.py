"""Triton LayerNorm (and RMSNorm) over the last dimension for the narrow rows of vision SSMs, forward and backward.

PyTorch's CUDA LayerNorm gives each row one thread block. That suits transformer widths; the norms of these models
run over 16 to 768 channels (GroupMamba's per-group out_norm over 16 channels at stage 1), where most of a block's
threads idle: on an H200 the float32 LayerNorm kernels took 26 of the 140 ms of GPU time of a GroupMamba-T training
step (bf16, batch 128; ``benchmarks/results/h200-2026-12/official/official.json``), about ten times what the bytes
they move cost. Here one program normalizes ``BLOCK_M``
rows at once, as a ``[BLOCK_M, BLOCK_N]`` register tile of about 4096 elements.

Math, for ``x`` viewed as ``(M, N)`` rows with ``mean``, biased ``var`` and ``rstd = 1 / sqrt(var + eps)`` per row::

    y = (x - mean) * rstd * w[g] + b[g]          g = row % G

With ``RMS`` (RMSNorm, Vim's) the mean is taken as 0 and there is no bias: ``y = x * rstd * w[g]`` with ``rstd =
1 / sqrt(mean(x^2) + eps)``, and the backward below without its ``mean_n(t)`` term.

``G`` > 1 gives each of G consecutive rows its own affine (GroupMamba's per-group norms: ``(..., G, N)`` maps with
``(G, N)`` weights); ``G`` = 1 is ``F.layer_norm``. Backward, with ``x_hat = (x - mean) * rstd`` and ``t = dy * w``::

    dx = rstd * (t - mean_n(t) - x_hat * mean_n(t * x_hat))
    dw[g] = sum over the rows of group g of dy * x_hat,   db[g] = the same of dy

The weight and bias gradients are per-program partial sums (each program's ``BLOCK_M`` rows, a multiple of G, so
every program holds whole groups) that torch sums afterwards: deterministic, no atomics.

Statistics and products in fp32 whatever the input dtype; ``y`` is stored in the requested dtype (float32 for
autocast's LayerNorm policy, or the GEMM dtype that reads it next), ``dx`` in ``x``'s dtype.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch

from .launch import HAS_TRITON as _HAS_TRITON, on_device, on_gpu, sm_count, tl, triton

__all__ = ['layer_norm_forward', 'layer_norm_backward', 'supports']

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_TILE = 4096        # elements of a program's [BLOCK_M, BLOCK_N] tile
_WARPS = 8          # 16 elements of the tile per thread: no register spills (4 warps spilled in the backward)
_BWD_WAVES = 4      # backward programs per SM (each loops over tiles)
MAX_WIDTH = 4096    # widest row the kernels take; wider rows suit PyTorch's one-block-per-row kernel


def supports(x: torch.Tensor, width: int, groups: int = 1) -> bool:
    """True where the kernels serve: a CUDA tensor of fp32/bf16/fp16 with rows of at most ``MAX_WIDTH``, a power-of-2
    number of affine groups, triton importable, and not switched off with ``VISIONSSM_LAYER_NORM=torch``."""
    return (_HAS_TRITON and on_gpu(x) and x.dtype in _DTYPES and 0 < width <= MAX_WIDTH
            and groups & (groups - 1) == 0 and os.environ.get('VISIONSSM_LAYER_NORM', 'triton') != 'torch')


if _HAS_TRITON:

    @triton.jit
    def _affine_tile(ptr, rows, cols, mask, N, GROUPS: tl.constexpr):
        # the [BLOCK_M, BLOCK_N] weights of the rows: one vector broadcast, or row r's group r % GROUPS
        # (one return: compiled Triton rejects a second return of another shape even behind a constexpr branch)
        if GROUPS == 1:
            w = tl.load(ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        else:
            w = tl.load(ptr + (rows % GROUPS)[:, None] * N + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        return w

    @triton.jit
    def _ln_fwd_kernel(x_ptr, y_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, M, N, eps,
                       HAS_W: tl.constexpr, HAS_B: tl.constexpr, GROUPS: tl.constexpr, STATS: tl.constexpr,
                       RMS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_N)
        rmask = rows < M
        cmask = cols < N
        mask = rmask[:, None] & cmask[None, :]
        offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if RMS:
            mean = tl.zeros((BLOCK_M,), dtype=tl.float32)
        else:
            mean = tl.sum(x, axis=1) / N
        xc = tl.where(mask, x - mean[:, None], 0.0)
        # correctly rounded (the GPU's plain sqrt and division are approximate): the statistics match PyTorch's
        rstd = tl.div_rn(1.0, tl.sqrt_rn(tl.sum(xc * xc, axis=1) / N + eps))
        y = xc * rstd[:, None]
        if HAS_W:
            y = y * _affine_tile(w_ptr, rows, cols, mask, N, GROUPS)
        if HAS_B:
            y = y + _affine_tile(b_ptr, rows, cols, mask, N, GROUPS)
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
        if STATS:
            if not RMS:
                tl.store(mean_ptr + rows, mean, mask=rmask)
            tl.store(rstd_ptr + rows, rstd, mask=rmask)

    @triton.jit
    def _ln_bwd_kernel(x_ptr, dy_ptr, dx_ptr, w_ptr, mean_ptr, rstd_ptr, part_ptr, M, N, TILES,
                       HAS_W: tl.constexpr, NEED_WB: tl.constexpr, GROUPS: tl.constexpr, RMS: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        # a fixed grid of programs, each over tiles pid, pid + programs, ...: its weight-gradient partials stay in
        # registers, and the partials buffer has one [2, GROUPS, N] slot per program (dw, then db), not per tile
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK_N)
        cmask = cols < N
        dw = tl.zeros((GROUPS, BLOCK_N), dtype=tl.float32)
        db = tl.zeros((GROUPS, BLOCK_N), dtype=tl.float32)
        for tile in range(pid, TILES, tl.num_programs(0)):
            rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
            rmask = rows < M
            mask = rmask[:, None] & cmask[None, :]
            offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(rstd_ptr + rows, mask=rmask, other=0.0)
            if RMS:
                x_hat = tl.where(mask, x * rstd[:, None], 0.0)
            else:
                mean = tl.load(mean_ptr + rows, mask=rmask, other=0.0)
                x_hat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
            t = dy
            if HAS_W:
                t = dy * _affine_tile(w_ptr, rows, cols, mask, N, GROUPS)
            c1 = tl.sum(t * x_hat, axis=1) / N
            if RMS:
                dx = (t - x_hat * c1[:, None]) * rstd[:, None]
            else:
                c2 = tl.sum(t, axis=1) / N
                dx = (t - x_hat * c1[:, None] - c2[:, None]) * rstd[:, None]
            tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
            if NEED_WB:
                # rows tile*BLOCK_M + j*GROUPS + g summed over j: one partial per group (masked rows hold zeros)
                dw += tl.sum(tl.reshape(dy * x_hat, (BLOCK_M // GROUPS, GROUPS, BLOCK_N)), axis=0)
                db += tl.sum(tl.reshape(dy, (BLOCK_M // GROUPS, GROUPS, BLOCK_N)), axis=0)
        if NEED_WB:
            part = pid.to(tl.int64) * 2 * GROUPS * N + tl.arange(0, GROUPS)[:, None] * N + cols[None, :]
            pmask = (tl.arange(0, GROUPS) < GROUPS)[:, None] & cmask[None, :]
            tl.store(part_ptr + part, dw, mask=pmask)
            tl.store(part_ptr + GROUPS * N + part, db, mask=pmask)


def _programs(x: torch.Tensor) -> int:
    if x.is_cuda:
        return _BWD_WAVES * sm_count(x.device)
    return 3   # the interpreter: few programs, so that the tests run the loop over tiles


def _blocks(width: int, groups: int) -> Tuple[int, int]:
    block_n = triton.next_power_of_2(width)
    block_m = max(groups, _TILE // block_n)   # a power of 2 and a multiple of groups
    return block_m, block_n


def _affine(t: Optional[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    # the kernels index the weights densely; an absent one is a dummy pointer the kernel never reads
    return t.contiguous() if t is not None else x


def _rows(x: torch.Tensor, width: int) -> int:
    if not x.is_contiguous() or x.numel() % width:
        raise ValueError(f'layer norm: x must be contiguous with rows of {width}, got {tuple(x.shape)} with strides '
                         f'{x.stride()}')
    return x.numel() // width


def layer_norm_forward(x: torch.Tensor, width: int, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                       eps: float, out_dtype: Optional[torch.dtype] = None, stats: bool = True, rms: bool = False
                       ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """``(y, mean, rstd)`` of a contiguous ``x`` normalized over rows of ``width`` elements; ``weight`` / ``bias``
    None or ``(G, width)`` (G consecutive rows, a power of 2, each with its own affine; ``(width,)`` is G = 1).
    ``y`` like ``x`` in ``out_dtype`` (default ``x``'s); ``mean`` and ``rstd`` fp32, one per row (None unless
    ``stats``: inference needs no statistics, and two allocations less are host time saved). ``rms``: RMSNorm
    (no bias; ``mean`` None)."""
    if rms and bias is not None:
        raise ValueError('layer norm: an RMSNorm has no bias')
    rows = _rows(x, width)
    affine = weight if weight is not None else bias
    groups = affine.numel() // width if affine is not None else 1
    y = torch.empty_like(x, dtype=out_dtype or x.dtype)
    mean = rstd = None
    if stats:
        rstd = torch.empty(rows, device=x.device, dtype=torch.float32)
        mean = None if rms else torch.empty_like(rstd)
    block_m, block_n = _blocks(width, groups)
    with on_device(x.device):
        _ln_fwd_kernel[(triton.cdiv(rows, block_m),)](
            x, y, _affine(weight, x), _affine(bias, x), y if mean is None else mean, y if rstd is None else rstd, rows,
            width, eps, weight is not None, bias is not None, groups, stats, rms, block_m, block_n, num_warps=_WARPS)
    return y, mean, rstd


def layer_norm_backward(grad: torch.Tensor, x: torch.Tensor, width: int, weight: Optional[torch.Tensor],
                        mean: Optional[torch.Tensor], rstd: torch.Tensor, groups: int = 1,
                        need_weight_grads: bool = True, rms: bool = False
                        ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """``(dx, dw, db)`` for ``layer_norm_forward``'s ``y``: ``dx`` like ``x``; ``dw`` and ``db`` ``(groups, width)``
    fp32 sums of ``grad * x_hat`` and ``grad`` (None unless ``need_weight_grads``; ``db`` too with ``rms``, where
    ``mean`` is None)."""
    rows = _rows(x, width)
    grad = grad.contiguous()
    dx = torch.empty_like(x)
    block_m, block_n = _blocks(width, groups)
    tiles = triton.cdiv(rows, block_m)
    programs = max(1, min(tiles, _programs(x)))
    partials = dx   # a dummy pointer the kernel never writes without NEED_WB
    if need_weight_grads:   # dw's and db's partials in one buffer: one reduction launch for both
        partials = torch.empty(programs, 2, groups, width, device=x.device, dtype=torch.float32)
    with on_device(x.device):
        _ln_bwd_kernel[(programs,)](x, grad, dx, _affine(weight, x), rstd if mean is None else mean, rstd, partials,
                                    rows, width, tiles, weight is not None, need_weight_grads, groups, rms, block_m,
                                    block_n, num_warps=_WARPS)
    if not need_weight_grads:
        return dx, None, None
    dw, db = partials.sum(0).unbind(0)
    return dx, dw, None if rms else db
