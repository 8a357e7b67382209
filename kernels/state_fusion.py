"""Triton kernels for Spatial-Mamba's state fusion: a sum of dilated 3x3 depthwise convolutions of a channel-last
map under replicate padding, forward and backward, without padding or layout copies.

Math, for ``h (B, H, W, C)``, branches i with dilations ``d_i`` and kernels ``w_i (C, 3, 3)`` (scaling folded in)::

    out[b, y, x, c] = sum_i sum_{ky, kx} w_i[c, ky, kx] * h[b, clamp(y + (ky-1) d_i), clamp(x + (kx-1) d_i), c]

``clamp`` to ``[0, H-1]`` / ``[0, W-1]`` is replicate padding: the kernels read the clamped positions directly.

Grid of the forward and the input gradient: ``(B*H, cdiv(W, BW), cdiv(C, BC))``, one program per image row, block
of columns and block of channels; lanes run over channels (contiguous), so each of the taps is a coalesced tile
load, and the 3 x 9 taps of a tile mostly hit the cache.

Input gradient. ``out`` reads ``h`` at ``clamp(q + o_t)``, so ``dh[p] = sum_t w_t * sum_{q : clamp(q + o_t) = p} g[q]``.
Written over the padded grid ``P = q + o_t`` (the preimage of ``p`` under clamp: ``{p}`` inside, ``[-pad, 0]`` at
the first row/column and ``[H-1, H-1+pad]`` at the last), it is a plain gather, ``dh[p] = sum_{P in pre(p)} sum_t
w_t g[P - o_t]`` with ``g`` zero outside the map: no atomics. Only border rows loop over their extra preimage rows;
the first and last columns' extra preimage columns are summed as channel vectors, not tiles.

Kernel gradient: ``dw_t[c] = sum_{b, q} g[b, q, c] * h[b, clamp(q + o_t), c]``. One program per block of image rows
and block of channels accumulates all taps in a ``[32, BC]`` fp32 register tile; the per-program partials are
summed by torch (deterministic).

Every product accumulates in fp32; ``out`` and ``dh`` are stored in ``h``'s dtype, ``dw`` in fp32.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch

from .launch import HAS_TRITON as _HAS_TRITON, cdiv, next_power_of_2, on_device, on_gpu, run_kernel, tl, triton

__all__ = ['fuse_states_triton', 'supports']

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def supports(h: torch.Tensor, dilations: Sequence[int]) -> bool:
    """True where the kernels serve: CUDA tensors of fp32/bf16/fp16 whose one image has fewer than 2^31 elements
    (the offsets inside an image are int32), three branches, triton importable, and not switched off with
    ``VISIONSSM_STATE_FUSION=torch``."""
    return (_HAS_TRITON and on_gpu(h) and h.dtype in _DTYPES and len(dilations) == 3 and h.dim() == 4
            and h[:1].numel() < 2 ** 31 and os.environ.get('VISIONSSM_STATE_FUSION', 'triton') != 'torch')


if _HAS_TRITON:

    @triton.jit
    def _branch_fwd(acc, h_row0, w_ptr, y, xs, cs, cmask, H, W, C, d: tl.constexpr, i: tl.constexpr):
        # h_row0: pointer to image b's first element; acc [BW, BC]
        wmask = cmask[None, :]
        for ky in tl.static_range(3):
            yy = tl.minimum(tl.maximum(y + (ky - 1) * d, 0), H - 1)
            for kx in tl.static_range(3):
                xx = tl.minimum(tl.maximum(xs + (kx - 1) * d, 0), W - 1)
                v = tl.load(h_row0 + (yy * W + xx)[:, None] * C + cs[None, :], mask=wmask, other=0.0)
                wt = tl.load(w_ptr + (i * 9 + ky * 3 + kx) * C + cs, mask=cmask, other=0.0)
                acc += v.to(tl.float32) * wt[None, :]
        return acc

    @triton.jit
    def _fuse_fwd_kernel(h_ptr, w_ptr, out_ptr, H, W, C, BW: tl.constexpr, BC: tl.constexpr,
                         D1: tl.constexpr, D2: tl.constexpr, D3: tl.constexpr):
        row = tl.program_id(0)
        b = row // H
        y = row - b * H
        xs = tl.program_id(1) * BW + tl.arange(0, BW)
        cs = tl.program_id(2) * BC + tl.arange(0, BC)
        cmask = cs < C
        image = b.to(tl.int64) * H * W * C
        acc = tl.zeros((BW, BC), dtype=tl.float32)
        acc = _branch_fwd(acc, h_ptr + image, w_ptr, y, xs, cs, cmask, H, W, C, D1, 0)
        acc = _branch_fwd(acc, h_ptr + image, w_ptr, y, xs, cs, cmask, H, W, C, D2, 1)
        acc = _branch_fwd(acc, h_ptr + image, w_ptr, y, xs, cs, cmask, H, W, C, D3, 2)
        mask = (xs < W)[:, None] & cmask[None, :]
        tl.store(out_ptr + image + (y * W + xs)[:, None] * C + cs[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=mask)

    @triton.jit
    def _branch_bwd_h(acc, g_row0, w_ptr, py, px, lanes, cs, cmask, H, W, C, d: tl.constexpr, i: tl.constexpr):
        # adds sum_t w_t g[P - o_t] at the padded positions (py, px[lane]) of the lanes set in ``lanes`` to acc
        # [BW, BC]; g is zero outside the map. The source row qy is the same for every lane: a row outside the map
        # skips its three taps by a uniform branch (at a border row's extra preimages most taps' rows are outside,
        # and on small maps most rows are border rows), not by masked loads that still issue.
        for ky in tl.static_range(3):
            qy = py - (ky - 1) * d
            if (qy >= 0) & (qy < H):
                for kx in tl.static_range(3):
                    qx = px - (kx - 1) * d
                    ok = lanes & (qx >= 0) & (qx < W)
                    # the tap's weights as a [BW, BC] tile of one repeated row: loaded as a [BC] vector they
                    # took a layout conversion through shared memory, two barriers per tap (ptxas, sm_90)
                    wt = tl.load(w_ptr + (i * 9 + ky * 3 + kx) * C + cs[None, :] + 0 * qx[:, None],
                                 mask=cmask[None, :], other=0.0)
                    v = tl.load(g_row0 + (qy * W + qx)[:, None] * C + cs[None, :],
                                mask=ok[:, None] & cmask[None, :], other=0.0)
                    acc += v.to(tl.float32) * wt
        return acc

    @triton.jit
    def _bwd_h_at(acc, g_row0, w_ptr, py, px, lanes, cs, cmask, H, W, C,
                  D1: tl.constexpr, D2: tl.constexpr, D3: tl.constexpr):
        acc = _branch_bwd_h(acc, g_row0, w_ptr, py, px, lanes, cs, cmask, H, W, C, D1, 0)
        acc = _branch_bwd_h(acc, g_row0, w_ptr, py, px, lanes, cs, cmask, H, W, C, D2, 1)
        return _branch_bwd_h(acc, g_row0, w_ptr, py, px, lanes, cs, cmask, H, W, C, D3, 2)

    @triton.jit
    def _fuse_bwd_h_kernel(g_ptr, w_ptr, dh_ptr, H, W, C, PAD, BW: tl.constexpr, BC: tl.constexpr,
                           D1: tl.constexpr, D2: tl.constexpr, D3: tl.constexpr):
        row = tl.program_id(0)
        b = row // H
        y = row - b * H
        x0 = tl.program_id(1) * BW
        xs = x0 + tl.arange(0, BW)
        cs = tl.program_id(2) * BC + tl.arange(0, BC)
        cmask = cs < C
        image = b.to(tl.int64) * H * W * C
        # The preimage of (y, x) under clamp, as offsets (jy, jx) from it: (0, 0), and also -PAD..-1 at the first
        # row / column and 1..PAD at the last. One loop over the offsets that some lane of this program needs, with
        # one body: a column offset counts only for the lanes at that border column (both, one column wide).
        y_lo = tl.where(y == 0, -PAD, 0)
        y_hi = tl.where(y == H - 1, PAD, 0)
        x_lo = tl.where(x0 == 0, -PAD, 0)
        x_hi = tl.where((x0 <= W - 1) & (W - 1 < x0 + BW), PAD, 0)
        acc = tl.zeros((BW, BC), dtype=tl.float32)
        for jy in range(y_lo, y_hi + 1):
            for jx in range(x_lo, x_hi + 1):
                lanes = (jx == 0) | ((jx < 0) & (xs == 0)) | ((jx > 0) & (xs == W - 1))
                acc = _bwd_h_at(acc, g_ptr + image, w_ptr, y + jy, xs + jx, lanes, cs, cmask, H, W, C, D1, D2, D3)
        mask = (xs < W)[:, None] & cmask[None, :]
        tl.store(dh_ptr + image + (y * W + xs)[:, None] * C + cs[None, :], acc.to(dh_ptr.dtype.element_ty),
                 mask=mask)

    @triton.jit
    def _fuse_bwd_w_kernel(g_ptr, h_ptr, part_ptr, n_rows, H, W, C, ROWS: tl.constexpr, BW: tl.constexpr,
                           BC: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr, D3: tl.constexpr):
        # Program (r, channel block, p): the three taps (branch r // 3, kernel row r % 3, kx = 0, 1, 2) over image
        # rows [p * ROWS, (p + 1) * ROWS). Each tap's products accumulate elementwise in a [BW, BC] tile, reduced
        # over the columns once at the end: no reduction per tile. r varies fastest, so the nine programs of the
        # same rows run together and share their loads of g and h in the cache.
        r = tl.program_id(0)
        branch = r // 3
        ky = r - branch * 3
        d = tl.where(branch == 0, D1, tl.where(branch == 1, D2, D3))
        cs = tl.program_id(1) * BC + tl.arange(0, BC)
        cmask = cs < C
        left = tl.zeros((BW, BC), dtype=tl.float32)
        centre = tl.zeros((BW, BC), dtype=tl.float32)
        right = tl.zeros((BW, BC), dtype=tl.float32)
        for i in range(0, ROWS):
            row = tl.program_id(2) * ROWS + i
            live = row < n_rows
            row = tl.minimum(row, n_rows - 1)
            b = row // H
            y = row - b * H
            image = b.to(tl.int64) * H * W * C
            h_row = h_ptr + image + (tl.minimum(tl.maximum(y + (ky - 1) * d, 0), H - 1) * W).to(tl.int64) * C
            for x0 in range(0, W, BW):
                xs = x0 + tl.arange(0, BW)
                m = (live & (xs < W))[:, None] & cmask[None, :]
                g = tl.load(g_ptr + image + (y * W + xs)[:, None] * C + cs[None, :], mask=m, other=0.0)
                g = g.to(tl.float32)
                # h at the clamped columns x - d, x, x + d (no mask but the channels'). The lanes past the map's
                # last column (x >= W, their g masked to 0) are clamped too: x - d of such a lane lies past the row's
                # end, which in the last row of the last image is past the end of h (a fault on a GPU where that is
                # past the end of its allocation's segment)
                xl = tl.minimum(tl.maximum(xs - d, 0), W - 1)
                xr = tl.minimum(xs + d, W - 1)
                xc = tl.minimum(xs, W - 1)
                left += g * tl.load(h_row + xl[:, None] * C + cs[None, :], mask=cmask[None, :], other=0.0)
                centre += g * tl.load(h_row + xc[:, None] * C + cs[None, :], mask=cmask[None, :], other=0.0)
                right += g * tl.load(h_row + xr[:, None] * C + cs[None, :], mask=cmask[None, :], other=0.0)
        out = part_ptr + tl.program_id(2).to(tl.int64) * 27 * C + (r * 3) * C + cs
        tl.store(out, tl.sum(left, axis=0), mask=cmask)
        tl.store(out + C, tl.sum(centre, axis=0), mask=cmask)
        tl.store(out + 2 * C, tl.sum(right, axis=0), mask=cmask)


# (elements of a program's [BW, BC] tile, widest channel block BC, warps) of each kernel: four elements per thread.
# ptxas (sm_90) keeps the forward's 27 tap loads and weights in registers: at 16-32 elements per thread (the tile of
# 4096 before) it used 176-255 registers and spilled, which left a few warps per SM
_FWD = (512, 64, 4)
_BWD_H = (256, 128, 2)   # H100 sweep (state_fusion_bench.py --sweep): 3.08 ms against 4.36 at (512, 64, 4)
_BWD_W = (1024, 64, 4)
_PARTIALS = 256    # kernel-gradient partials per channel block (each program sums the rest of its rows itself)


def _blocks(width: int, channels: int, config: tuple) -> tuple[int, int, int]:
    """(BW, BC, warps) of a kernel's ``config``: the channel block, then as many columns as fill its tile (a power of
    2, at most the map's width rounded up)."""
    tile, widest, warps = config
    bc = min(widest, next_power_of_2(channels))
    bw = max(1, min(next_power_of_2(width), tile // bc))
    return bw, bc, warps


def _taps(weight: torch.Tensor) -> torch.Tensor:
    # (3, C, 1, 3, 3) -> (27, C) fp32, tap-major (branch, ky, kx): one contiguous C-vector per tap
    return weight.detach().reshape(3, -1, 9).permute(0, 2, 1).reshape(27, -1).float().contiguous()


def _check(h: torch.Tensor, weight: torch.Tensor, dilations: Sequence[int]) -> None:
    if h.dim() != 4 or not h.is_contiguous():
        raise ValueError(f'state fusion: h must be a contiguous (B, H, W, C) tensor, got {tuple(h.shape)} '
                         f'with strides {h.stride()}')
    if tuple(weight.shape) != (3, h.shape[-1], 1, 3, 3):
        raise ValueError(f'state fusion: weight must be (3, {h.shape[-1]}, 1, 3, 3), got {tuple(weight.shape)}')
    if len(dilations) != 3:
        raise ValueError(f'state fusion: the kernels take 3 dilations, got {tuple(dilations)}')


def fuse_forward(h: torch.Tensor, taps: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    batch, height, width, channels = h.shape
    out = torch.empty_like(h)
    bw, bc, warps = _blocks(width, channels, _FWD)
    grid = (batch * height, cdiv(width, bw), cdiv(channels, bc))
    with on_device(h.device):
        run_kernel(_fuse_fwd_kernel, grid, h, taps, out, height, width, channels, bw, bc, *dilations,
                   num_warps=warps)
    return out


def fuse_backward(grad: torch.Tensor, h: torch.Tensor, taps: torch.Tensor, dilations: Sequence[int],
                  need_h: bool = True, need_weight: bool = True):
    """``(dh, dtaps)``: ``dh`` like ``h`` (or None), ``dtaps (27, C)`` fp32 (or None)."""
    batch, height, width, channels = h.shape
    grad = grad.contiguous()
    dh = dtaps = None
    if need_h:
        dh = torch.empty_like(h)
        bw, bc, warps = _blocks(width, channels, _BWD_H)
        grid = (batch * height, cdiv(width, bw), cdiv(channels, bc))
        with on_device(h.device):
            run_kernel(_fuse_bwd_h_kernel, grid, grad, taps, dh, height, width, channels, max(dilations), bw, bc,
                       *dilations, num_warps=warps)
    if need_weight:
        bw, bc, warps = _blocks(width, channels, _BWD_W)
        n_rows = batch * height
        rows = max(1, cdiv(n_rows, _PARTIALS))
        parts = cdiv(n_rows, rows)
        partial = torch.empty(parts, 27, channels, device=h.device, dtype=torch.float32)
        with on_device(h.device):
            run_kernel(_fuse_bwd_w_kernel, (9, cdiv(channels, bc), parts), grad, h, partial, n_rows, height,
                       width, channels, rows, bw, bc, *dilations, num_warps=warps)
        dtaps = partial.sum(0)
    return dh, dtaps


class _FuseStatesTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, dilations):
        taps = _taps(weight)
        ctx.save_for_backward(h, taps)
        ctx.dilations = tuple(dilations)
        ctx.weight_dtype = weight.dtype
        return fuse_forward(h, taps, dilations)

    @staticmethod
    def backward(ctx, grad):
        h, taps = ctx.saved_tensors
        need_h, need_weight = ctx.needs_input_grad[:2]
        dh, dtaps = fuse_backward(grad, h, taps, ctx.dilations, need_h, need_weight)
        dweight = None
        if dtaps is not None:
            dweight = dtaps.view(3, 9, -1).permute(0, 2, 1).reshape(3, -1, 1, 3, 3).to(ctx.weight_dtype)
        return dh, dweight, None


def fuse_states_triton(h: torch.Tensor, weight: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """``sum_i conv_{d_i}(replicate_pad(h), weight[i])`` (depthwise 3x3, dilation ``d_i``) for a contiguous
    channel-last ``h (B, H, W, C)`` and ``weight (3, C, 1, 3, 3)``; ``(B, H, W, C)`` in ``h``'s dtype, differentiable
    in ``h`` and ``weight``."""
    _check(h, weight, dilations)
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _FuseStatesTriton.apply(h, weight, tuple(dilations))
    return fuse_forward(h, _taps(weight), tuple(dilations))
