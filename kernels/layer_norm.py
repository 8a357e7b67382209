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

from .launch import (HAS_TRITON as _HAS_TRITON, cdiv, next_power_of_2, on_device, on_gpu, run_kernel, sm_count, tl,
                     triton)

__all__ = ['layer_norm_forward', 'layer_norm_backward', 'gated_layer_norm_backward', 'supports']

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
    def _row_stats(x, mask, N, eps, RMS: tl.constexpr):
        # (mean, x centred, rstd) of a [BLOCK_M, BLOCK_N] tile holding whole rows, masked elements zeros; RMS
        # centres nothing (its mean is not used)
        mean = tl.sum(x, axis=1) / N
        if RMS:
            xc = x
        else:
            xc = tl.where(mask, x - mean[:, None], 0.0)
        # correctly rounded (the GPU's plain sqrt and division are approximate): the statistics match PyTorch's
        rstd = tl.div_rn(1.0, tl.sqrt_rn(tl.sum(xc * xc, axis=1) / N + eps))
        return mean, xc, rstd

    @triton.jit
    def _gate_offsets(rows, cols, N, z_stride, Z_ROWS: tl.constexpr):
        # the gate's elements of the tile: each position's Z_ROWS rows of N at a row stride of z_stride (a chunk of
        # a wider map, e.g. in_proj's output, is read in place). Z_ROWS is a constexpr: a division by a runtime
        # value cost the forward three times the registers (ptxas, sm_90)
        pos = (rows // Z_ROWS).to(tl.int64)
        return (pos * z_stride + (rows % Z_ROWS) * N)[:, None] + cols[None, :]

    @triton.jit
    def _ln_fwd_kernel(x_ptr, y_ptr, w_ptr, b_ptr, z_ptr, mean_ptr, rstd_ptr, M, N, eps, z_stride,
                       Z_ROWS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, GROUPS: tl.constexpr,
                       STATS: tl.constexpr, RMS: tl.constexpr, GATE: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_N)
        rmask = rows < M
        cmask = cols < N
        mask = rmask[:, None] & cmask[None, :]
        offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        mean, xc, rstd = _row_stats(x, mask, N, eps, RMS)
        y = xc * rstd[:, None]
        if HAS_W:
            y = y * _affine_tile(w_ptr, rows, cols, mask, N, GROUPS)
        if HAS_B:
            y = y + _affine_tile(b_ptr, rows, cols, mask, N, GROUPS)
        if GATE:   # times SiLU(z), in fp32, rounded once
            z = tl.load(z_ptr + _gate_offsets(rows, cols, N, z_stride, Z_ROWS), mask=mask, other=0.0).to(tl.float32)
            y = y * (z * tl.sigmoid(z))
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
        if STATS:
            if not RMS:
                tl.store(mean_ptr + rows, mean, mask=rmask)
            tl.store(rstd_ptr + rows, rstd, mask=rmask)

    @triton.jit
    def _ln_bwd_kernel(x_ptr, dy_ptr, dx_ptr, w_ptr, b_ptr, z_ptr, dz_ptr, y_ptr, mean_ptr, rstd_ptr, part_ptr, M, N,
                       TILES, eps, z_stride, Z_ROWS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                       NEED_WB: tl.constexpr, GROUPS: tl.constexpr, RMS: tl.constexpr, GATE: tl.constexpr,
                       OUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        # a fixed grid of programs, each over tiles pid, pid + programs, ...: its weight-gradient partials stay in
        # registers, and the partials buffer has one [2, GROUPS, N] slot per program (dw, then db), not per tile.
        # GATE: dy is the gradient of y * SiLU(z); the statistics are recomputed from x (a tile holds whole rows),
        # dz is written, and with OUT the gated forward output too (for the GEMM's weight gradient that follows).
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
            if GATE:
                _, xc, rstd = _row_stats(x, mask, N, eps, RMS)
                x_hat = xc * rstd[:, None]
                a = x_hat
                if HAS_W:
                    a = a * _affine_tile(w_ptr, rows, cols, mask, N, GROUPS)
                if HAS_B:
                    a = a + _affine_tile(b_ptr, rows, cols, mask, N, GROUPS)
                z = tl.load(z_ptr + _gate_offsets(rows, cols, N, z_stride, Z_ROWS), mask=mask,
                            other=0.0).to(tl.float32)
                sig = tl.sigmoid(z)
                silu = z * sig
                if OUT:
                    tl.store(y_ptr + offs, (a * silu).to(y_ptr.dtype.element_ty), mask=mask)
                tl.store(dz_ptr + offs, (dy * a * sig * (1.0 + z * (1.0 - sig))).to(dz_ptr.dtype.element_ty),
                         mask=mask)
                dy = dy * silu
            else:
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


def _blocks(width: int, groups: int, gate: bool = False) -> Tuple[int, int]:
    block_n = next_power_of_2(width)
    # a power of 2 and a multiple of groups; half the tile with a gate, whose backward holds twice the maps
    block_m = max(groups, (_TILE // 2 if gate else _TILE) // block_n)
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
                       eps: float, out_dtype: Optional[torch.dtype] = None, stats: bool = True, rms: bool = False,
                       gate: Optional[torch.Tensor] = None
                       ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """``(y, mean, rstd)`` of a contiguous ``x`` normalized over rows of ``width`` elements; ``weight`` / ``bias``
    None or ``(G, width)`` (G consecutive rows, a power of 2, each with its own affine; ``(width,)`` is G = 1;
    ``(G * width,)`` is read as ``(G, width)``).
    ``y`` like ``x`` in ``out_dtype`` (default ``x``'s); ``mean`` and ``rstd`` fp32, one per row (None unless
    ``stats``: inference needs no statistics, and two allocations less are host time saved). ``rms``: RMSNorm
    (no bias; ``mean`` None). ``gate`` (``x``'s shape, unit stride in the last dimension; a chunk of a wider map
    is read in place): ``y`` is the norm's output times ``SiLU(gate)``, computed in fp32 and rounded once."""
    if rms and bias is not None:
        raise ValueError('layer norm: an RMSNorm has no bias')
    rows = _rows(x, width)
    z, z_stride = _gate_rows(gate, x)
    affine = weight if weight is not None else bias
    groups = affine.numel() // width if affine is not None else 1
    y = torch.empty_like(x, dtype=out_dtype or x.dtype)
    mean = rstd = None
    if stats:
        rstd = torch.empty(rows, device=x.device, dtype=torch.float32)
        mean = None if rms else torch.empty_like(rstd)
    block_m, block_n = _blocks(width, groups, gate is not None)
    with on_device(x.device):
        run_kernel(_ln_fwd_kernel, (cdiv(rows, block_m),),
            x, y, _affine(weight, x), _affine(bias, x), z, y if mean is None else mean, y if rstd is None else rstd,
            rows, width, eps, z_stride, x.shape[-1] // width if gate is not None else 1, weight is not None,
            bias is not None, groups, stats, rms, gate is not None, block_m, block_n, num_warps=_WARPS)
    return y, mean, rstd


def _gate_rows(gate: Optional[torch.Tensor], x: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """``gate`` as rows of ``x.shape[-1]`` with unit column stride, read in place where it is one (a chunk of a
    wider contiguous map), and their stride; without a gate ``x`` as the dummy pointer the kernels never read."""
    if gate is None:
        return x, 0
    if gate.shape != x.shape or gate.device != x.device or gate.dtype not in _DTYPES:
        raise ValueError(f'layer norm: the gate must be a fp32/bf16/fp16 tensor of x\'s shape {tuple(x.shape)} on '
                         f'{x.device}, got {tuple(gate.shape)} {gate.dtype} on {gate.device}')
    rows = gate.reshape(-1, x.shape[-1])     # a view where the strides allow it
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    return rows, rows.stride(0)


def _backward(grad, x, width, weight, bias, mean, rstd, eps, groups, need_weight_grads, rms, gate, out_dtype):
    rows = _rows(x, width)
    grad = grad.contiguous()
    dx = torch.empty_like(x)
    dz = y = dx   # dummy pointers the kernel never writes without GATE / an output dtype
    z, z_stride = _gate_rows(gate, x)
    if gate is not None:
        dz = torch.empty(x.shape, device=x.device, dtype=gate.dtype)
        if out_dtype is not None:
            y = torch.empty(x.shape, device=x.device, dtype=out_dtype)
    block_m, block_n = _blocks(width, groups, gate is not None)
    tiles = cdiv(rows, block_m)
    programs = max(1, min(tiles, _programs(x)))
    partials = dx   # a dummy pointer the kernel never writes without NEED_WB
    if need_weight_grads:   # dw's and db's partials in one buffer: one reduction launch for both
        partials = torch.empty(programs, 2, groups, width, device=x.device, dtype=torch.float32)
    stat = rstd if rstd is not None else dx
    with on_device(x.device):
        run_kernel(_ln_bwd_kernel, (programs,),
            x, grad, dx, _affine(weight, x), _affine(bias, x), z, dz, y, stat if mean is None else mean, stat,
            partials, rows, width, tiles, eps, z_stride, x.shape[-1] // width if gate is not None else 1,
            weight is not None, bias is not None, need_weight_grads, groups, rms, gate is not None, y is not dx,
            block_m, block_n, num_warps=_WARPS)
    dw = db = None
    if need_weight_grads:
        dw, db = partials.sum(0).unbind(0)
    return dx, dw, None if rms else db, dz, y


def layer_norm_backward(grad: torch.Tensor, x: torch.Tensor, width: int, weight: Optional[torch.Tensor],
                        mean: Optional[torch.Tensor], rstd: torch.Tensor, groups: int = 1,
                        need_weight_grads: bool = True, rms: bool = False
                        ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """``(dx, dw, db)`` for ``layer_norm_forward``'s ``y``: ``dx`` like ``x``; ``dw`` and ``db`` ``(groups, width)``
    fp32 sums of ``grad * x_hat`` and ``grad`` (None unless ``need_weight_grads``; ``db`` too with ``rms``, where
    ``mean`` is None)."""
    return _backward(grad, x, width, weight, None, mean, rstd, 0.0, groups, need_weight_grads, rms, None, None)[:3]


def gated_layer_norm_backward(grad: torch.Tensor, x: torch.Tensor, gate: torch.Tensor, width: int,
                              weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float,
                              need_weight_grads: bool = True, out_dtype: Optional[torch.dtype] = None):
    """``(dx, dw, db, dgate, y)`` for ``layer_norm_forward(..., gate=gate)``'s output, from ``x`` and ``gate``
    alone: the statistics are recomputed (no ``mean`` / ``rstd`` to keep). ``dgate`` like ``gate``; ``y``, the
    forward's output again in ``out_dtype``, only where one is given (else None): what the GEMM that read it needs
    for its weight gradient, in the same pass."""
    affine = weight if weight is not None else bias
    groups = affine.numel() // width if affine is not None else 1
    dx, dw, db, dz, y = _backward(grad, x, width, weight, bias, None, None, eps, groups, need_weight_grads, False,
                                  gate, out_dtype)
    return dx, dw, db, dz, y if out_dtype is not None else None
