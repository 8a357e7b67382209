"""Triton multi-route selective scan: forward and backward kernels, plugged into ``visionssm.ops.selective_scan``.

Math (per route k, channel d of the route's W channels, state n; see ``reference.py``)::

    dt_t = softplus(delta_t + delta_bias)          (threshold 20)
    h_t  = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
    y_t  = sum_n C_t[n] * h_t[n] + D * u_t         (or h_t itself with return_hidden)

Layout (flattened channel-last, exactly the reference's; the last dim of every map must have stride 1):

    u      (Bt, P, C_in)      P = H*W positions, route k reads channels [in_offset_k, in_offset_k + W)
    delta  (Bt, P, K*W)       route k reads channel block k; or (Bt, P, K, W) with any route stride (0: one Δ)
    B, C   (Bt, P, K, N)      route k reads group k
    A      (K*W, N) fp32;  D, delta_bias (K*W,) fp32
    out    (Bt, P, C_out) or (Bt, P, C_out, N)

Grid (forward and backward alike): ``(Bt, K, cdiv(W, BD))``: one program per (batch, route, block of BD channels).
The route is a pointer schedule: all routes' positions are concatenated into one int32 index (``pos``) and a
``(K, 6)`` int32 table holds (start in ``pos``, length, in_offset, out_offset, du offset, start of the Δ / B / C read
positions) per route. Routes with ``params_at='step'`` read Δ, B and C at a second list of positions appended to
``pos`` (``SPLIT``, a constexpr: the other routes' kernels are unchanged), and the backward writes their gradients
there. A program walks its route in chunks of BT steps unrolled at compile time: all loads of a chunk (one
contiguous BD-vector of u / delta per step, lanes over channels, coalesced for every route order, and the N-vectors
of B / C) are issued before its arithmetic, and the state ``h [BD, BN]`` stays in fp32 registers. Loads carry no
mask where none is needed (BD divides W; steps past the route's end re-read its last position). No per-route copy
is materialized: the routes merge inside the kernel, by plain stores when every output element is written by exactly
one route (grouped / lattice / one route), and otherwise (cross / bidirectional / snake) into one block per route of
a buffer that torch sums (``MERGE``, or fp32 ``atomic_add`` into one zeroed buffer); ``mean`` scales inside the
kernel. Offsets are int64 except a position's offset inside one image, int32 where the host checked it fits.

Backward: the forward saves the state before every chunk of the backward (``ckpt (Bt, K, n_chunks, W, N)``, only
when a gradient is needed), where those checkpoints are small; where they are not (``keeps_states``: more than one
fp32 state per step and channel, as at N = 16), the forward saves none and the backward first runs the forward
kernel again to write them, so that they exist for one scan's backward at a time. The backward program walks its
route's chunks from last to first: it loads the chunk (dy and C included; with ``SEQ_PREFETCH`` the next chunk's loads are issued before the current chunk's arithmetic),
recomputes its states from the checkpoint into registers, then walks the rows backwards with
the adjoint ``g_t = dy_t C_t + a_{t+1} g_{t+1}`` carried in registers across chunks. Per step it writes ddelta
(plain store: route k owns delta block k), du (route blocks or fp32 atomic: several routes may read one u element),
and dB / dC reduced over the program's BD channels with ``tl.sum`` before one atomic per (position, block). dA, dD
and ddelta_bias accumulate in registers over the whole route and are written once per (batch, route, block) as
partials, summed over the batch by torch (deterministic).

Chunked variant (``_scan_*_chunked_kernel``, chosen by ``_use_chunked`` for long routes at N = 1 when there are too
few (batch, route, block) programs to fill the GPU, e.g. detection maps at small batch): one program per
chunk of BT steps of one (batch, route, channel block); the chunk's ``[BT, BD, BN]`` decay / drive are formed at once
and scanned along time with ``tl.associative_scan``, and chunks are chained through their boundary states (ticket
order, one flag per slot). The backward recomputes each chunk from its checkpoint and scans the adjoint backwards as
two affine maps of the carry ``q = a g`` (``_adjoint_order``), chained the same way. All atomics are
``sem='relaxed'`` (plain commutative adds; the default acq_rel made them the dominant cost). See kernels/README.md.

Concatenated routes (``Route.concat``: one scan through several orders, revisiting positions) run on the sequential
kernels only, behind two compile-time flags that leave every other plan's code unchanged: ``SEG`` adds each step's
output channel offset (its segment's, from a per-step int32 table ``shift`` beside ``pos``) to the output / dy
pointer, and ``DD_ATOMIC`` adds ddelta in an fp32 buffer instead of storing it; du then merges by fp32 atomics, and
the forward too where one route writes an element twice (segments sharing positions and channels). ``SPLIT`` and
``SEG`` combine in one plan (a PlainMamba-style route beside a concatenated one); a concatenated route itself never
splits (``Route.concat`` rejects ``params_at='step'``).

float64 inputs are handed to the reference (the oracle is exact there; the kernels compute in fp32).
"""
from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple, Optional

import torch

from .launch import held, on_device, on_gpu, run_kernel, sm_count
from .reference import selective_scan_reference
from .routes import RoutePlan, plan_routes, route_from_key

# Without a GPU, triton can only run kernels in its interpreter (TRITON_INTERPRET=1, read when kernels are
# decorated): the tests set it before anything imports triton (tests/conftest.py).

try:  # the module must import on machines without triton / CUDA
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
    _FAST_LOG = tl.constexpr(os.environ.get('TRITON_INTERPRET', '0') != '1')
    _HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the machine
    triton = None
    tl = None
    _HAS_TRITON = False

__all__ = ['selective_scan_triton', 'supports']


def supports(u: torch.Tensor) -> bool:
    """True for CUDA tensors of dtype fp32/bf16/fp16 when triton imports; never raises."""
    try:
        return (_HAS_TRITON and isinstance(u, torch.Tensor) and on_gpu(u)
                and u.dtype in (torch.float32, torch.bfloat16, torch.float16))
    except Exception:  # pragma: no cover
        return False


if _HAS_TRITON:

    @triton.jit
    def _exp2(x):
        # 2^x. On the GPU the flush-to-zero hardware instruction: tl.exp2 / tl.exp also rescale denormal arguments
        # (a compare and two predicated multiplies per call), which the scan does not need (its decays are <= 1).
        if _FAST_LOG:
            return tl.inline_asm_elementwise('ex2.approx.ftz.f32 $0, $1;', '=r,r', [x], dtype=tl.float32,
                                             is_pure=True, pack=1)
        else:
            return tl.exp2(x)

    @triton.jit
    def _softplus(z):
        # softplus with threshold 20 (as F.softplus). Below z = -3 it is log1p(e) as its series to e^4
        # (truncation < 1.3e-6 relative): log(1 + e) there loses Δ's relative precision to the rounding of 1 + e
        # (17% at z = -15, 0.1% at z = -10; small Δ are common). Above, on the GPU the log is the hardware
        # approximation (tl.log is a libdevice polynomial of ~20 instructions, a sixth of the forward's per-element
        # cost); the interpreter has no libdevice.
        e = _exp2(z * 1.4426950408889634)
        if _FAST_LOG:
            sp = libdevice.fast_logf(1.0 + e)
        else:
            sp = tl.log(1.0 + e)
        small = e * (1.0 - e * (0.5 - e * (0.3333333333333333 - e * 0.25)))
        return tl.where(z > 20.0, z, tl.where(z < -3.0, small, sp))

    @triton.jit
    def _to_dt(z, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
        # dt = softplus(delta + delta_bias) in fp32, from delta as loaded
        z = z.to(tl.float32)
        if HAS_BIAS:
            z = z + bias
        if SOFTPLUS:
            z = _softplus(z)
        return z

    @triton.jit
    def _load(ptrs, mask, FULL: tl.constexpr):
        # a load whose mask is known to be all true at compile time is issued without one: predicated loads cost
        # predicate registers, and with many rows in flight ptxas then serialises them
        if FULL:
            return tl.load(ptrs)
        else:
            return tl.load(ptrs, mask=mask, other=0.0)

    @triton.jit
    def _route_meta(meta_ptr, k, VEC: tl.constexpr):
        # row k of the (K, 6) route table: start in pos, length, input / output / du channel offsets (the offsets
        # are multiples of VEC, which lets the compiler vectorize channel loads); column 5: see _param_start
        row = meta_ptr + k * 6
        start = tl.load(row).to(tl.int64)
        length = tl.load(row + 1)
        in_off = tl.multiple_of(tl.load(row + 2), VEC).to(tl.int64)
        out_off = tl.multiple_of(tl.load(row + 3), VEC).to(tl.int64)
        du_off = tl.multiple_of(tl.load(row + 4), VEC).to(tl.int64)
        return start, length, in_off, out_off, du_off

    @triton.jit
    def _param_start(meta_ptr, k, start, SPLIT: tl.constexpr):
        # where route k's Δ / B / C read positions start in pos: its own positions unless the plan splits them
        # (params_at='step'), then a second list appended to pos
        if SPLIT:
            start = tl.load(meta_ptr + k * 6 + 5).to(tl.int64)
        return start

    @triton.jit
    def _position(ptr, OFF64: tl.constexpr):
        # a route position; offsets inside one image are int32 unless the host found one that could overflow
        p = tl.load(ptr)
        if OFF64:
            p = p.to(tl.int64)
        return p

    @triton.jit
    def _out_shift(sh_ptr, start, t, length, N, SEG: tl.constexpr, HIDDEN: tl.constexpr):
        # output offset of step t of a concatenated route (its segment's output channels, relative to the route's
        # out_offset); 0 for every other route (SEG is a compile-time flag: plain routes load nothing)
        s = 0
        if SEG:
            s = tl.load(sh_ptr + start + tl.minimum(t, length - 1))
            if HIDDEN:
                s = s * N
        return s

    @triton.jit
    def _chunk_loads(pos_ptr, start, pstart, t0, length, u_base, d_base, B_base, C_base, o_base, su_p, sd_p, sB_p,
                     sC_p, so_p, md, mn, mdn, BT: tl.constexpr, OFF64: tl.constexpr, EVEN_D: tl.constexpr,
                     EVEN_N: tl.constexpr, WITH_C: tl.constexpr, WITH_DY: tl.constexpr, HIDDEN: tl.constexpr, sh_ptr, N,
                     SEG: tl.constexpr, SPLIT: tl.constexpr):
        # Every load of the chunk of BT steps from t0, as one flat tuple: (position, u, delta, B, C, dy, q) per step, C
        # and dy only where asked (u stands in for them otherwise); q is where delta, B and C are read (the position
        # unless SPLIT). Steps past the route's end read its last position.
        rows = ()
        for i in tl.static_range(BT):
            step = tl.minimum(t0 + i, length - 1)
            p = _position(pos_ptr + start + step, OFF64)
            q = p
            if SPLIT:
                q = _position(pos_ptr + pstart + step, OFF64)
            u = _load(u_base + p * su_p, md, EVEN_D)
            Ct = u
            dy = u
            if WITH_C:
                Ct = _load(C_base + q * sC_p, mn, EVEN_N)
            if WITH_DY:
                o_ptrs = o_base + p * so_p + _out_shift(sh_ptr, start, t0 + i, length, N, SEG, HIDDEN)
                if HIDDEN:
                    dy = _load(o_ptrs, mdn, EVEN_D and EVEN_N)
                else:
                    dy = _load(o_ptrs, md, EVEN_D)
            rows = rows + (p, u, _load(d_base + q * sd_p, md, EVEN_D), _load(B_base + q * sB_p, mn, EVEN_N), Ct, dy, q)
        return rows

    @triton.jit
    def _scan_fwd_kernel(
            u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, out_ptr, ckpt_ptr, pos_ptr, meta_ptr, sh_ptr,
            su_b, su_p, sd_b, sd_p, sd_k, sB_b, sB_p, sB_k, sC_b, sC_p, sC_k, so_b, so_p,
            W, N, K, NCK, scale,
            BD: tl.constexpr, BN: tl.constexpr, BT: tl.constexpr, CK: tl.constexpr, OFF64: tl.constexpr,
            EVEN_D: tl.constexpr, EVEN_N: tl.constexpr, PREFETCH: tl.constexpr,
            HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HIDDEN: tl.constexpr,
            ATOMIC: tl.constexpr, SAVE: tl.constexpr, SEG: tl.constexpr, SPLIT: tl.constexpr,
            WRITE_OUT: tl.constexpr):
        # One program walks its route chunk by chunk. A chunk is BT steps unrolled at compile time: every load of
        # the chunk is issued before its arithmetic (BT independent rows in flight, not one memory latency per
        # step), and the state stays in registers as a [BD, BN] tile, one channel per lane along BD. Loads carry
        # no mask where none is needed (EVEN_D: BD divides W; EVEN_N: BN == N; rows past the route's end read its
        # last position again).
        b = tl.program_id(0).to(tl.int64)
        k = tl.program_id(1)
        blk = tl.program_id(2)
        start, length, in_off, out_off, _ = _route_meta(meta_ptr, k, 1)
        pstart = _param_start(meta_ptr, k, start, SPLIT)

        d = blk * BD + tl.arange(0, BD)
        n = tl.arange(0, BN)
        md = d < W
        mn = n < N
        mdn = md[:, None] & mn[None, :]
        ch = k * W + d                                                   # parameter rows of route k
        A2 = tl.load(A_ptr + ch[:, None].to(tl.int64) * N + n[None, :], mask=mdn, other=0.0) * 1.4426950408889634
        if HAS_D:
            Dv = tl.load(D_ptr + ch, mask=md, other=0.0)
        bias = 0.0
        if HAS_BIAS:
            bias = tl.load(bias_ptr + ch, mask=md, other=0.0)

        u_base = u_ptr + b * su_b + in_off + d
        d_base = delta_ptr + b * sd_b + k * sd_k + d                    # route k's Δ block (sd_k 0: shared)
        B_base = B_ptr + b * sB_b + k * sB_k + n
        C_base = C_ptr + b * sC_b + k * sC_k + n
        if HIDDEN:
            o_base = out_ptr + b * so_b + (out_off + d)[:, None] * N + n[None, :]
        else:
            o_base = out_ptr + b * so_b + out_off + d
        ck_base = ckpt_ptr + ((b * K + k) * NCK) * W * N + d[:, None] * N + n[None, :]

        # rows past the route's end (last chunk) read its last position again: their outputs are not stored, and the
        # state they leave is never read (no checkpoint lies past the end). With PREFETCH the loads of chunk c + 1 are
        # issued before chunk c's arithmetic and stores (loop-carried), so their latency overlaps it.
        h = tl.zeros([BD, BN], dtype=tl.float32)
        if SAVE:   # slot 0: the zero state entering the first chunk (the buffer is not zero-filled)
            tl.store(ck_base, h, mask=mdn)
        WITH_C: tl.constexpr = WRITE_OUT and not HIDDEN   # C is read for the output only
        n_chunks = tl.cdiv(length, BT)
        if PREFETCH:
            rows = _chunk_loads(pos_ptr, start, pstart, 0, length, u_base, d_base, B_base, C_base, u_base, su_p, sd_p,
                                sB_p, sC_p, 0, md, mn, mdn, BT, OFF64, EVEN_D, EVEN_N, WITH_C, False, HIDDEN, sh_ptr, N,
                                False, SPLIT)
        for c in range(0, n_chunks):
            t0 = c * BT
            if PREFETCH:
                cur = rows
                rows = _chunk_loads(pos_ptr, start, pstart, tl.minimum(c + 1, n_chunks - 1) * BT, length, u_base,
                                    d_base, B_base, C_base, u_base, su_p, sd_p, sB_p, sC_p, 0, md, mn, mdn, BT, OFF64,
                                    EVEN_D, EVEN_N, WITH_C, False, HIDDEN, sh_ptr, N, False, SPLIT)
            else:
                cur = _chunk_loads(pos_ptr, start, pstart, t0, length, u_base, d_base, B_base, C_base, u_base, su_p,
                                   sd_p, sB_p, sC_p, 0, md, mn, mdn, BT, OFF64, EVEN_D, EVEN_N, WITH_C, False, HIDDEN,
                                   sh_ptr, N, False, SPLIT)
            # each row's output is stored as it is reduced. Gathered into a [BD, BT] tile and stored once per chunk
            # instead, the layout conversions went (ptxas, sm_90: 16 barriers per chunk of 8 rows at four warps, 2
            # after) but the gathering's selects cost more: Vim-T / Vim-S inference ran at 0.88x / 0.86x on an H100
            # (benchmarks/ab.py); the backward keeps its tiles
            for i in tl.static_range(BT):
                ok = t0 + i < length
                u = cur[7 * i + 1].to(tl.float32)
                dt = _to_dt(cur[7 * i + 2], bias, HAS_BIAS, SOFTPLUS)
                h = _exp2(dt[:, None] * A2) * h + (dt * u)[:, None] * cur[7 * i + 3].to(tl.float32)[None, :]
                if WRITE_OUT:   # off: the backward's recomputation, which wants the checkpoints only
                    ptrs = o_base + cur[7 * i] * so_p + _out_shift(sh_ptr, start, t0 + i, length, N, SEG, HIDDEN)
                    if HIDDEN:
                        y = h * scale
                        m = ok & mdn
                    else:
                        y = tl.sum(h * cur[7 * i + 4].to(tl.float32)[None, :], axis=1)
                        if HAS_D:
                            y = y + Dv * u
                        y = y * scale
                        if EVEN_D:
                            m = ok
                        else:
                            m = ok & md
                    if ATOMIC:
                        tl.atomic_add(ptrs, y, mask=m, sem='relaxed')
                    else:
                        tl.store(ptrs, y.to(out_ptr.dtype.element_ty), mask=m)
                if SAVE:   # slot j holds the state entering the backward's chunk j, every CK steps
                    if BT % CK == 0:
                        if (i + 1) % CK == 0:
                            slot = (t0 + i + 1) // CK
                            tl.store(ck_base + slot.to(tl.int64) * W * N, h, mask=mdn & (slot < NCK) & ok)
            if SAVE:
                if BT % CK != 0:   # CK a multiple of BT
                    slot = (t0 + BT) // CK
                    tl.store(ck_base + slot.to(tl.int64) * W * N, h,
                             mask=mdn & ((t0 + BT) % CK == 0) & (slot < NCK) & (t0 + BT <= length))

    @triton.jit
    def _scan_bwd_kernel(
            u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, dout_ptr, ckpt_ptr, pos_ptr, meta_ptr, sh_ptr,
            du_ptr, ddelta_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
            su_b, su_p, sd_b, sd_p, sd_k, sB_b, sB_p, sB_k, sC_b, sC_p, sC_k, so_b, so_p, sdu_b, sdu_p,
            sdd_b, sdd_p, sdB_b, sdB_p, sdB_k, s_part,
            W, N, K, NCK, scale,
            BD: tl.constexpr, BN: tl.constexpr, BT: tl.constexpr, OFF64: tl.constexpr,
            EVEN_D: tl.constexpr, EVEN_N: tl.constexpr, PREFETCH: tl.constexpr,
            HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HIDDEN: tl.constexpr,
            DU_ATOMIC: tl.constexpr, SEG: tl.constexpr, DD_ATOMIC: tl.constexpr, SPLIT: tl.constexpr,
            KEEP_DECAY: tl.constexpr, DBC_PART: tl.constexpr):
        # Chunks from last to first, each BT steps unrolled: recompute the chunk's states from its checkpoint
        # (forward over the rows, each row's incoming state kept in registers), then walk the rows backwards with
        # the adjoint carry q = a_{t+1} g_{t+1} in registers across chunks. Rows past the route's end read its last
        # position again with dy = 0: their adjoint, and the carry they pass on, are zero; their stores are masked.
        b = tl.program_id(0).to(tl.int64)
        k = tl.program_id(1)
        blk = tl.program_id(2)
        start, length, in_off, out_off, du_off = _route_meta(meta_ptr, k, 1)
        pstart = _param_start(meta_ptr, k, start, SPLIT)

        d = blk * BD + tl.arange(0, BD)
        n = tl.arange(0, BN)
        md = d < W
        mn = n < N
        mdn = md[:, None] & mn[None, :]
        ch = k * W + d
        A = tl.load(A_ptr + ch[:, None].to(tl.int64) * N + n[None, :], mask=mdn, other=0.0)
        A2 = A * 1.4426950408889634
        if HAS_D:
            Dv = tl.load(D_ptr + ch, mask=md, other=0.0)
        bias = 0.0
        if HAS_BIAS:
            bias = tl.load(bias_ptr + ch, mask=md, other=0.0)

        # same layout as the forward. The gradients have strides of their own: delta, B and C are often strided
        # views of one projection (read in place), their gradients are contiguous (dB and dC alike)
        u_base = u_ptr + b * su_b + in_off + d
        du_base = du_ptr + b * sdu_b + du_off + d
        d_base = delta_ptr + b * sd_b + k * sd_k + d                    # route k's Δ block (sd_k 0: shared)
        dd_base = ddelta_ptr + b * sdd_b + ch
        B_base = B_ptr + b * sB_b + k * sB_k + n
        dB_base = dB_ptr + b * sdB_b + k * sdB_k + n
        C_base = C_ptr + b * sC_b + k * sC_k + n
        dC_base = dC_ptr + b * sdB_b + k * sdB_k + n
        if DBC_PART:   # this channel block's own slot of the (batch, position, route, block, N) partials
            dB_base += blk * N
            dC_base += blk * N
        if HIDDEN:
            o_base = dout_ptr + b * so_b + (out_off + d)[:, None] * N + n[None, :]
        else:
            o_base = dout_ptr + b * so_b + out_off + d
        ck_base = ckpt_ptr + ((b * K + k) * NCK) * W * N + d[:, None] * N + n[None, :]

        dA_acc = tl.zeros([BD, BN], dtype=tl.float32)
        dD_acc = tl.zeros([BD], dtype=tl.float32)
        dbias_acc = tl.zeros([BD], dtype=tl.float32)
        carry = tl.zeros([BD, BN], dtype=tl.float32)    # a_{t+1} * g_{t+1}
        n_chunks = tl.cdiv(length, BT)
        # every load of a chunk, dy and C included, is issued before its arithmetic: inside the row loop below they
        # would wait for the previous rows' atomics (the compiler cannot prove that dB / dC do not alias them). With
        # PREFETCH the loads of the next chunk (c - 1) are issued before chunk c's arithmetic, loop-carried.
        if PREFETCH:
            rows = _chunk_loads(pos_ptr, start, pstart, (n_chunks - 1) * BT, length, u_base, d_base, B_base, C_base,
                                o_base, su_p, sd_p, sB_p, sC_p, so_p, md, mn, mdn, BT, OFF64, EVEN_D, EVEN_N,
                                not HIDDEN, True, HIDDEN, sh_ptr, N, SEG, SPLIT)
        for cj in range(0, n_chunks):
            c = n_chunks - 1 - cj
            t0 = c * BT
            if PREFETCH:
                cur = rows
                rows = _chunk_loads(pos_ptr, start, pstart, tl.maximum(c - 1, 0) * BT, length, u_base, d_base, B_base,
                                    C_base, o_base, su_p, sd_p, sB_p, sC_p, so_p, md, mn, mdn, BT, OFF64, EVEN_D,
                                    EVEN_N, not HIDDEN, True, HIDDEN, sh_ptr, N, SEG, SPLIT)
            else:
                cur = _chunk_loads(pos_ptr, start, pstart, t0, length, u_base, d_base, B_base, C_base, o_base, su_p,
                                   sd_p, sB_p, sC_p, so_p, md, mn, mdn, BT, OFF64, EVEN_D, EVEN_N, not HIDDEN, True,
                                   HIDDEN, sh_ptr, N, SEG, SPLIT)
            # 1) the chunk's states from its checkpoint; row i keeps h_{t0+i-1}, or with KEEP_DECAY its decay
            # a = exp(dt A) and a h_{t0+i-1} (one more tile per row in registers, one exp2 less per element)
            h = tl.load(ck_base + c.to(tl.int64) * W * N, mask=mdn & (c > 0), other=0.0)
            us, dts, Bs, hs, decays = (), (), (), (), ()
            for i in tl.static_range(BT):
                u = cur[7 * i + 1].to(tl.float32)
                dt = _to_dt(cur[7 * i + 2], bias, HAS_BIAS, SOFTPLUS)
                Bt = cur[7 * i + 3].to(tl.float32)
                a = _exp2(dt[:, None] * A2)
                if KEEP_DECAY:
                    h = a * h
                    decays = decays + (a,)
                us, dts, Bs, hs = us + (u,), dts + (dt,), Bs + (Bt,), hs + (h,)
                if KEEP_DECAY:
                    h = h + (dt * u)[:, None] * Bt[None, :]
                else:
                    h = a * h + (dt * u)[:, None] * Bt[None, :]
            # 2) the rows backwards. Their gradients are gathered into [BD, BT] / [BT, BN] tiles in the layout of
            # the state tile and written once per chunk: written per row, each reduced vector took a layout
            # conversion through shared memory before its store (ptxas, sm_90: 50 barriers per chunk of 4 rows
            # at two warps, 26 after: a conversion per tile and the atomics' own)
            col = tl.arange(0, BT)[None, :]       # row i of the chunk as a column of the [BD, BT] tiles
            row = tl.arange(0, BT)[:, None]       # ... and as a row of the [BT, BN] tiles
            du_rows = tl.zeros([BD, BT], dtype=tl.float32)
            dz_rows = tl.zeros([BD, BT], dtype=tl.float32)
            dB_rows = tl.zeros([BT, BN], dtype=tl.float32)
            dC_rows = tl.zeros([BT, BN], dtype=tl.float32)
            p_cols = tl.zeros([1, BT], dtype=cur[0].dtype)
            q_cols = tl.zeros([1, BT], dtype=cur[6].dtype)
            q_rows = tl.zeros([BT, 1], dtype=cur[6].dtype)
            for i in tl.static_range(BT - 1, -1, -1):
                ok = t0 + i < length
                p, q, u, dt, Bt = cur[7 * i], cur[7 * i + 6], us[i], dts[i], Bs[i]
                p_cols = tl.where(col == i, p, p_cols)
                q_cols = tl.where(col == i, q, q_cols)
                q_rows = tl.where(row == i, q, q_rows)
                if KEEP_DECAY:
                    a, ah = decays[i], hs[i]
                else:
                    a = _exp2(dt[:, None] * A2)
                    ah = a * hs[i]
                dy = tl.where(ok, cur[7 * i + 5].to(tl.float32) * scale, 0.0)
                if HIDDEN:
                    g = dy + carry
                else:
                    Ct = cur[7 * i + 4].to(tl.float32)
                    h_t = ah + (dt * u)[:, None] * Bt[None, :]
                    g = dy[:, None] * Ct[None, :] + carry
                    dC_rows = tl.where(row == i, tl.sum(dy[:, None] * h_t, axis=0)[None, :], dC_rows)
                gB = tl.sum(g * Bt[None, :], axis=1)
                du = gB * dt
                if HAS_D:
                    if not HIDDEN:
                        du += Dv * dy
                        dD_acc += dy * u
                du_rows = tl.where(col == i, du[:, None], du_rows)
                dB_rows = tl.where(row == i, tl.sum(g * (dt * u)[:, None], axis=0)[None, :], dB_rows)
                gah = g * ah
                ddt = tl.sum(gah * A, axis=1) + gB * u
                dA_acc += gah * dt[:, None]
                carry = a * g
                if SOFTPLUS:   # d softplus(z) / dz = sigmoid(z) = 1 - exp(-softplus(z)); its series where dt is tiny
                    dz = ddt * tl.where(dt < 1e-2, dt * (1.0 - dt * (0.5 - dt / 6.0)),
                                        1.0 - _exp2(dt * -1.4426950408889634))
                else:
                    dz = ddt
                dbias_acc += dz
                dz_rows = tl.where(col == i, dz[:, None], dz_rows)
            # 3) the chunk's gradients, rows past the route's end masked
            ok_cols = t0 + col < length
            ok_rows = t0 + row < length
            if EVEN_D:
                m = ok_cols
            else:
                m = ok_cols & md[:, None]
            mnr = ok_rows & mn[None, :]
            if DU_ATOMIC:
                tl.atomic_add(du_base[:, None] + p_cols * sdu_p, du_rows, mask=m, sem='relaxed')
            else:
                tl.store(du_base[:, None] + p_cols * sdu_p, du_rows.to(du_ptr.dtype.element_ty), mask=m)
            if DD_ATOMIC:   # a route that revisits positions adds to its delta's gradient there
                tl.atomic_add(dd_base[:, None] + q_cols * sdd_p, dz_rows, mask=m, sem='relaxed')
            else:
                tl.store(dd_base[:, None] + q_cols * sdd_p, dz_rows.to(ddelta_ptr.dtype.element_ty), mask=m)
            if DBC_PART:
                tl.store(dB_base[None, :] + q_rows * sdB_p, dB_rows, mask=mnr)
                if not HIDDEN:
                    tl.store(dC_base[None, :] + q_rows * sdB_p, dC_rows, mask=mnr)
            else:
                tl.atomic_add(dB_base[None, :] + q_rows * sdB_p, dB_rows, mask=mnr, sem='relaxed')
                if not HIDDEN:
                    tl.atomic_add(dC_base[None, :] + q_rows * sdB_p, dC_rows, mask=mnr, sem='relaxed')

        # per-batch partials, one row of s_part per batch element: dA (K*W, N), dD (K*W), dbias (K*W)
        tl.store(dA_ptr + b * s_part + ch[:, None] * N + n[None, :], dA_acc, mask=mdn)
        if HAS_D:
            tl.store(dD_ptr + b * s_part + ch, dD_acc, mask=md)
        if HAS_BIAS:
            tl.store(dbias_ptr + b * s_part + ch, dbias_acc, mask=md)


    @triton.jit
    def _dt(ptrs, mask, bias_ptr, ch, md, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
        # dt of a [BT, BD] tile loaded here (the chunked kernels)
        z = tl.load(ptrs, mask=mask, other=0.0)
        bias = 0.0
        if HAS_BIAS:
            bias = tl.load(bias_ptr + ch, mask=md, other=0.0)[None, :]
        return _to_dt(z, bias, HAS_BIAS, SOFTPLUS)

    @triton.jit
    def _first_order(a1, b1, a2, b2):
        # (a1, b1) is the accumulated prefix in scan direction, (a2, b2) the current element: h = a2 * h_prev + b2
        return a1 * a2, a2 * b1 + b2

    @triton.jit
    def _adjoint_order(s1, o1, i1, j1, s2, o2, i2, j2):
        # Reverse scan of the adjoint without a look-ahead decay. Element t holds two affine maps of the carry
        # q_{t+1} = a_{t+1} g_{t+1}: q_t = a_t (beta_t + q_{t+1}) (slope s, offset o) and g_t = beta_t + q_{t+1}
        # (slope i, offset j). Composed with the later part (s1, o1) of the scan, both take its output.
        return s2 * s1, s2 * o1 + o2, i2 * s1, i2 * o1 + j2

    @triton.jit
    def _row(x, r, i):
        # row i of a [BT, BD, BN] tile (a reduction over the time axis: rows live in different threads)
        return tl.sum(tl.where((r == i)[:, None, None], x, 0.0), axis=0)

    @triton.jit
    def _publish(ptrs, value, mask, flag_ptr):
        # every thread's part of the slot is stored before one thread raises the slot's flag (release)
        tl.store(ptrs, value, mask=mask)
        tl.debug_barrier()
        tl.atomic_xchg(flag_ptr, 1, sem='release')

    @triton.jit
    def _wait_for(ptrs, mask, flag_ptr):
        # one thread spins on the flag (acquire; its value reaches every thread through the program's barrier), then
        # every thread loads its part of the slot past L1
        f = tl.atomic_add(flag_ptr, 0, sem='acquire')
        while f == 0:
            f = tl.atomic_add(flag_ptr, 0, sem='acquire')
        return tl.load(ptrs, mask=mask, other=0.0, volatile=True)

    @triton.jit
    def _chunk(ticket_ptr, seqs, K, NBLK, NCK, REVERSE: tl.constexpr):
        # Tickets hand out the chunks in chunk-major order (all sequences' first chunks, then their second, ...;
        # last to first for the backward): a program that waits for its neighbour chunk holds a later ticket than
        # that chunk's program, which has therefore started and cannot be starved by waiting programs.
        ticket = tl.atomic_add(ticket_ptr, 1)
        c = ticket // seqs
        if REVERSE:
            c = NCK - 1 - c
        s = ticket % seqs
        blk = s % NBLK
        k = (s // NBLK) % K
        b = (s // (NBLK * K)).to(tl.int64)
        return b, k, blk, c, s

    @triton.jit
    def _chunk_positions(pos_ptr, start, pstart, t, mt, SPLIT: tl.constexpr):
        # [BT, 1] positions of a chunk's steps (u read, y written) and where they read delta, B and C
        p = tl.load(pos_ptr + start + t, mask=mt, other=0).to(tl.int64)[:, None]
        q = p
        if SPLIT:
            q = tl.load(pos_ptr + pstart + t, mask=mt, other=0).to(tl.int64)[:, None]
        return p, q

    @triton.jit
    def _scan_fwd_chunked_kernel(
            u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, out_ptr, state_ptr, sync_ptr, pos_ptr, meta_ptr,
            su_b, su_p, sd_b, sd_p, sd_k, sB_b, sB_p, sB_k, sC_b, sC_p, sC_k, so_b, so_p,
            W, N, K, NBLK, NCK, seqs, scale,
            BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, VEC: tl.constexpr,
            HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HIDDEN: tl.constexpr,
            ATOMIC: tl.constexpr, SPLIT: tl.constexpr, WRITE_OUT: tl.constexpr):
        # One program per chunk of BT steps of one (batch, route, channel block): load the chunk's [BT, BD] of
        # u / delta and [BT, BN] of B / C at once, scan it along time from a zero state (pa: decay products,
        # sx: states), then take the state entering the chunk from the previous chunk's program (slot c of
        # ``state``, once its flag is up), publish the state leaving it (slot c + 1) and write the outputs.
        # The slots are the backward's checkpoints.
        b, k, blk, c, s = _chunk(sync_ptr, seqs, K, NBLK, NCK, False)
        flags = sync_ptr + 1 + s * NCK          # flag of slot j: flags + j
        start, length, in_off, out_off, _ = _route_meta(meta_ptr, k, VEC)
        pstart = _param_start(meta_ptr, k, start, SPLIT)

        r = tl.arange(0, BT)
        d = blk * BD + tl.arange(0, BD)
        n = tl.arange(0, BN)
        md = d < W
        mn = n < N
        mdn = md[:, None] & mn[None, :]
        ch = k * W + d
        A = tl.load(A_ptr + ch[:, None].to(tl.int64) * N + n[None, :], mask=mdn, other=0.0)[None, :, :]

        t = c * BT + r
        mt = t < length
        p, q = _chunk_positions(pos_ptr, start, pstart, t, mt, SPLIT)
        mtd = mt[:, None] & md[None, :]
        mtn = mt[:, None] & mn[None, :]
        u = tl.load(u_ptr + b * su_b + in_off + d[None, :] + p * su_p, mask=mtd, other=0.0).to(tl.float32)
        dt = _dt(delta_ptr + b * sd_b + k * sd_k + d[None, :] + q * sd_p, mtd, bias_ptr, ch, md, HAS_BIAS, SOFTPLUS)
        Bt = tl.load(B_ptr + b * sB_b + k * sB_k + n[None, :] + q * sB_p, mask=mtn, other=0.0).to(tl.float32)
        if WRITE_OUT and not HIDDEN:
            Ct = tl.load(C_ptr + b * sC_b + k * sC_k + n[None, :] + q * sC_p, mask=mtn, other=0.0).to(tl.float32)
        a = tl.where(mt[:, None, None], tl.exp(dt[:, :, None] * A), 1.0)    # past the route's end: identity
        x = (dt * u)[:, :, None] * Bt[:, None, :]
        pa, sx = tl.associative_scan((a, x), 0, _first_order)

        slot = ((b * K + k) * NCK + c) * W * N + d[:, None] * N + n[None, :]
        if c > 0:
            h_in = _wait_for(state_ptr + slot, mdn, flags + c)
        else:   # slot 0 (the buffer is not zero-filled)
            h_in = tl.zeros([BD, BN], dtype=tl.float32)
            tl.store(state_ptr + slot, h_in, mask=mdn)
        if c + 1 < NCK:   # publish first: the next chunk's program waits for it
            h_out = _row(pa, r, BT - 1) * h_in + _row(sx, r, BT - 1)
            _publish(state_ptr + slot + W * N, h_out, mdn, flags + c + 1)

        if WRITE_OUT:   # off: the backward's recomputation, which wants the checkpoints (the slots) only
            hs = pa * h_in[None, :, :] + sx                                 # [BT, BD, BN]
            if HIDDEN:
                y = hs * scale
                ptrs = (out_ptr + b * so_b + ((out_off + d)[:, None] * N + n[None, :])[None, :, :]
                        + p[:, :, None] * so_p)
                m3 = mt[:, None, None] & mdn[None, :, :]
                if ATOMIC:
                    tl.atomic_add(ptrs, y, mask=m3, sem='relaxed')
                else:
                    tl.store(ptrs, y.to(out_ptr.dtype.element_ty), mask=m3)
            else:
                y = tl.sum(hs * Ct[:, None, :], axis=2)
                if HAS_D:
                    y = y + tl.load(D_ptr + ch, mask=md, other=0.0)[None, :] * u
                y = y * scale
                ptrs = out_ptr + b * so_b + out_off + d[None, :] + p * so_p
                if ATOMIC:
                    tl.atomic_add(ptrs, y, mask=mtd, sem='relaxed')
                else:
                    tl.store(ptrs, y.to(out_ptr.dtype.element_ty), mask=mtd)

    @triton.jit
    def _scan_bwd_chunked_kernel(
            u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, dout_ptr, ckpt_ptr, carry_ptr, sync_ptr,
            pos_ptr, meta_ptr,
            du_ptr, ddelta_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
            su_b, su_p, sd_b, sd_p, sd_k, sB_b, sB_p, sB_k, sC_b, sC_p, sC_k, so_b, so_p, sdu_b, sdu_p,
            sdd_b, sdd_p, sdB_b, sdB_p, sdB_k, s_part,
            W, N, K, NBLK, NCK, seqs, scale,
            BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, VEC: tl.constexpr,
            HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HIDDEN: tl.constexpr,
            DU_ATOMIC: tl.constexpr, SPLIT: tl.constexpr):
        # Chunks from last to first. A program recomputes its chunk's states from the forward's checkpoint (slot c
        # of ``ckpt``), scans the adjoint g_t = dy_t C_t + a_{t+1} g_{t+1} backwards over the chunk from zero,
        # takes the adjoint carried in from the next chunk's program (slot c of ``carry``), publishes its own
        # first-step adjoint for the previous chunk (slot c - 1), then forms every gradient of the chunk.
        b, k, blk, c, s = _chunk(sync_ptr, seqs, K, NBLK, NCK, True)
        flags = sync_ptr + 1 + s * NCK          # flag of slot j: flags + j
        start, length, in_off, out_off, du_off = _route_meta(meta_ptr, k, VEC)
        pstart = _param_start(meta_ptr, k, start, SPLIT)

        r = tl.arange(0, BT)
        d = blk * BD + tl.arange(0, BD)
        n = tl.arange(0, BN)
        md = d < W
        mn = n < N
        mdn = md[:, None] & mn[None, :]
        ch = k * W + d
        A = tl.load(A_ptr + ch[:, None].to(tl.int64) * N + n[None, :], mask=mdn, other=0.0)[None, :, :]

        t = c * BT + r
        mt = t < length
        p, q = _chunk_positions(pos_ptr, start, pstart, t, mt, SPLIT)
        mtd = mt[:, None] & md[None, :]
        mtn = mt[:, None] & mn[None, :]
        u_off = b * su_b + in_off + d[None, :] + p * su_p
        d_off = b * sd_b + k * sd_k + d[None, :] + q * sd_p
        B_off = b * sB_b + k * sB_k + n[None, :] + q * sB_p
        C_off = b * sC_b + k * sC_k + n[None, :] + q * sC_p
        # Registers decide this kernel's speed (at 255 it spilled ~2 GB per stage-1 call, ncu on the H100): only
        # ah = a_t h_{t-1} stays live across the adjoint scan; u, delta, B and dy are loaded again after it (L1 hits)
        dt = _dt(delta_ptr + d_off, mtd, bias_ptr, ch, md, HAS_BIAS, SOFTPLUS)
        a = tl.where(mt[:, None, None], tl.exp(dt[:, :, None] * A), 1.0)
        u = tl.load(u_ptr + u_off, mask=mtd, other=0.0).to(tl.float32)
        Bt = tl.load(B_ptr + B_off, mask=mtn, other=0.0).to(tl.float32)
        x = (dt * u)[:, :, None] * Bt[:, None, :]
        # 1) the chunk's states, from its checkpoint
        slot = ((b * K + k) * NCK + c) * W * N + d[:, None] * N + n[None, :]
        h0 = tl.load(ckpt_ptr + slot, mask=mdn & (c > 0), other=0.0)
        pa, sx = tl.associative_scan((a, x), 0, _first_order)
        hs = pa * h0[None, :, :] + sx
        ah = hs - x                                          # a_t * h_{t-1}
        # 2) the adjoint
        if HIDDEN:
            m3 = mt[:, None, None] & mdn[None, :, :]
            o_ptrs = dout_ptr + b * so_b + ((out_off + d)[:, None] * N + n[None, :])[None, :, :] + p[:, :, None] * so_p
            beta = tl.load(o_ptrs, mask=m3, other=0.0).to(tl.float32) * scale
        else:
            dy = tl.load(dout_ptr + b * so_b + out_off + d[None, :] + p * so_p, mask=mtd, other=0.0)
            dy = dy.to(tl.float32) * scale
            Ct = tl.load(C_ptr + C_off, mask=mtn, other=0.0).to(tl.float32)
            beta = dy[:, :, None] * Ct[:, None, :]
            tl.atomic_add(dC_ptr + b * sdB_b + k * sdB_k + n[None, :] + q * sdB_p, tl.sum(dy[:, :, None] * hs, axis=1),
                          mask=mtn, sem='relaxed')
        qs, qo, gs, go = tl.associative_scan((a, a * beta, tl.full([BT, BD, BN], 1.0, tl.float32), beta), 0,
                                             _adjoint_order, reverse=True)
        if c + 1 < NCK:
            q_in = _wait_for(carry_ptr + slot, mdn, flags + c)
        else:
            q_in = tl.zeros([BD, BN], dtype=tl.float32)
        if c > 0:
            _publish(carry_ptr + slot - W * N, _row(qs, r, 0) * q_in + _row(qo, r, 0), mdn, flags + c - 1)
        g = go + gs * q_in[None, :, :]
        # 3) the gradients of the chunk (positions and offsets formed again: 64-bit, they cost 2 registers per step)
        p, q = _chunk_positions(pos_ptr, start, pstart, t, mt, SPLIT)
        u_off = b * su_b + in_off + d[None, :] + p * su_p
        d_off = b * sd_b + k * sd_k + d[None, :] + q * sd_p
        B_off = b * sB_b + k * sB_k + n[None, :] + q * sB_p
        dt = _dt(delta_ptr + d_off, mtd, bias_ptr, ch, md, HAS_BIAS, SOFTPLUS)
        u = tl.load(u_ptr + u_off, mask=mtd, other=0.0).to(tl.float32)
        Bt = tl.load(B_ptr + B_off, mask=mtn, other=0.0).to(tl.float32)
        gB = tl.sum(g * Bt[:, None, :], axis=2)               # [BT, BD]
        du = gB * dt
        if HAS_D:
            if not HIDDEN:
                dy = tl.load(dout_ptr + b * so_b + out_off + d[None, :] + p * so_p, mask=mtd, other=0.0)
                dy = dy.to(tl.float32) * scale
                du += tl.load(D_ptr + ch, mask=md, other=0.0)[None, :] * dy
                dD = tl.sum(dy * u, axis=0)
        du_ptrs = du_ptr + b * sdu_b + du_off + d[None, :] + p * sdu_p
        if DU_ATOMIC:
            tl.atomic_add(du_ptrs, du, mask=mtd, sem='relaxed')
        else:
            tl.store(du_ptrs, du.to(du_ptr.dtype.element_ty), mask=mtd)
        tl.atomic_add(dB_ptr + b * sdB_b + k * sdB_k + n[None, :] + q * sdB_p, tl.sum(g * (dt * u)[:, :, None], axis=1),
                      mask=mtn, sem='relaxed')
        gah = g * ah
        ddt = tl.sum(gah * A, axis=2) + gB * u
        if SOFTPLUS:   # d softplus(z) / dz = sigmoid(z) = 1 - exp(-softplus(z)); its series where dt is tiny
            dz = ddt * tl.where(dt < 1e-2, dt * (1.0 - dt * (0.5 - dt / 6.0)), 1.0 - tl.exp(-dt))
        else:
            dz = ddt
        dz = tl.where(mtd, dz, 0.0)
        tl.store(ddelta_ptr + b * sdd_b + ch[None, :] + q * sdd_p, dz.to(ddelta_ptr.dtype.element_ty), mask=mtd)
        # per-(batch, chunk) partials of the parameter gradients, one row of s_part each, summed by torch
        row = (b * NCK + c) * s_part
        tl.store(dA_ptr + row + ch[:, None] * N + n[None, :], tl.sum(gah * dt[:, :, None], axis=0), mask=mdn)
        if HAS_D:
            if not HIDDEN:
                tl.store(dD_ptr + row + ch, dD, mask=md)
        if HAS_BIAS:
            tl.store(dbias_ptr + row + ch, tl.sum(dz, axis=0), mask=md)


# ----------------------------------------------------------------------------------------------------------------
# host side

@functools.lru_cache(maxsize=256)
def _route_tables(plan: RoutePlan, device: torch.device, out_step: int = 0, du_step: int = 0):
    """(pos int32, meta int32 (K, 6), shift), cached. Row k of meta: start in pos, length, input channel offset,
    output channel offset + k * out_step, du channel offset (the input's) + k * du_step, start of the route's Δ / B / C
    read positions in pos; the steps place each route's output / du in its own block of a per-route buffer
    (``MERGE = 'routes'``). pos holds every route's positions (sum L_k); where the plan splits the read positions
    (``plan.split_params``) they follow, as many again; otherwise they are the positions. ``shift`` (int32, aligned
    with the first sum L_k entries of pos) is each step's output channel offset relative to its route's, where a plan
    has concatenated routes (their segments write their own channels); otherwise pos stands in for it (never read)."""
    lists = plan.positions + (plan.param_positions if plan.split_params else ())
    pos = torch.cat([p.to(torch.int32) for p in lists]).to(device)
    total = sum(p.numel() for p in plan.positions) if plan.split_params else 0
    meta, start = [], 0
    for k, (r, p) in enumerate(zip(plan.routes, plan.positions)):
        meta.append((start, p.numel(), r.in_offset, r.out_offset + k * out_step, r.in_offset + k * du_step,
                     start + total))
        start += p.numel()
    shift = pos
    if _segmented(plan):
        shift = torch.cat([(s - r.out_offset if s is not None else torch.zeros_like(p)).to(torch.int32)
                           for r, p, s in zip(plan.routes, plan.positions, plan.out_steps)]).to(device)
    return pos, torch.tensor(meta, dtype=torch.int32).to(device), shift   # shift: on the device too (it may be pos)


def _segmented(plan: RoutePlan) -> bool:
    """Whether a route of the plan writes several output channel blocks (a concatenated route)."""
    return any(s is not None and bool((s != r.out_offset).any()) for r, s in zip(plan.routes, plan.out_steps))


@functools.lru_cache(maxsize=256)
def _rewrites(plan: RoutePlan) -> bool:
    """Whether one route writes some output element more than once (segments sharing positions and channels)."""
    if not plan.revisits:
        return False
    num_pos = plan.height * plan.width_px
    for p, s in zip(plan.positions, plan.out_steps):
        keys = p if s is None else s * num_pos + p
        if torch.unique(keys).numel() != keys.numel():
            return True
    return False


@functools.lru_cache(maxsize=256)
def _input_sharing(plan: RoutePlan) -> tuple[int, bool]:
    """(most routes reading one input element, whether every input element is read) for du's merge."""
    num_pos = plan.height * plan.width_px
    W = plan.width
    bounds = sorted({0, plan.in_channels} | {r.in_offset for r in plan.routes} | {r.in_offset + W for r in plan.routes})
    most, covered = 0, True
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        count = torch.zeros(num_pos, dtype=torch.int32)
        for r, p in zip(plan.routes, plan.positions):
            if r.in_offset <= lo and hi <= r.in_offset + W:
                count.index_add_(0, p, torch.ones_like(p, dtype=torch.int32))   # a revisiting route reads again
        most, covered = max(most, int(count.max())), covered and bool(count.min() > 0)
    return most, covered


@functools.lru_cache(maxsize=256)
def _every_route_writes_everything(plan: RoutePlan) -> bool:
    num_pos = plan.height * plan.width_px
    return plan.width == plan.out_channels and all(
        r.out_offset == 0 and p.numel() == num_pos for r, p in zip(plan.routes, plan.positions))


@functools.lru_cache(maxsize=256)
def _every_route_reads_everything(plan: RoutePlan) -> bool:
    num_pos = plan.height * plan.width_px
    return plan.width == plan.in_channels and all(
        r.in_offset == 0 and p.numel() == num_pos for r, p in zip(plan.routes, plan.positions))


def _pow2(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, x))))


def _config(width: int, n_state: int, backward: bool, route_len: int):
    """(BD, BN, BT, num_warps) of a sequential kernel: a [BD, BN] state tile over 32 * num_warps threads and BT steps
    unrolled per chunk (the backward's BT is also the spacing of its checkpoints). BD divides the width where it can,
    so that the loads need no mask. Measured on the H100 at VMamba-T / Vim-S shapes (benchmarks/tune_sequential.py)."""
    bn = _pow2(n_state)
    if _SEQ_OVERRIDE is not None:
        bd, bt, nw = _SEQ_OVERRIDE[1 if backward else 0]
        return min(bd, max(16, _pow2(width))), bn, bt, nw
    if bn <= 4:      # one warp, one or two channels per lane
        bd = next((x for x in (64, 32, 16) if width % x == 0 and x * bn <= 128), min(32, max(16, _pow2(width))))
        if backward:
            bt = 8 if route_len >= 2048 else 4
        else:
            bt = 16 if route_len >= 512 else 8
    else:            # Vim / EfficientVMamba: N = 16. The backward's BT = 4, not the faster-per-kernel 2: its
        # checkpoints (B, routes, L / BT, D, 16) fp32 dominate Vim's training memory; on the H100 BT 2 -> 4 took
        # Vim-S (batch 128, bf16) from 45.6 to 31.8 GiB at 579 -> 560 img/s (model fwd+bwd, one process)
        bd, bt = (16, 4) if backward else (32, 8)
    return bd, bn, bt, max(1, min(4, bd * bn // 128))


# Kernel choice (``_use_chunked``): the chunked kernels (one program per chunk of BT steps, chunks chained through
# their states) where they measured faster, the sequential kernels elsewhere. ``FORCE_KERNEL`` ('chunked' /
# 'sequential') and ``_CHUNK_OVERRIDE`` ((BT, BD, warps) forward, (BT, BD, warps) backward) are for tests and
# benchmarks.
FORCE_KERNEL = None
_CHUNK_OVERRIDE = None
_SEQ_OVERRIDE = None     # ((BD, BT, warps) forward, (BD, BT, warps) backward) of the sequential kernels
# The sequential kernels can issue the loads of the next chunk (forward c + 1, backward c - 1) before computing chunk c.
# None: as measured on the H100: always in the backward (stage-1 fwd+bwd 2.49 -> 2.24 ms, Vim-S 5.19 ->
# 4.44), in the forward only on routes of >= 2048 steps (stage 1 0.78 -> 0.73 ms; stage 2 0.30 -> 0.35, slower).
SEQ_PREFETCH = None
# Where several routes write one element (the cross and bidirectional outputs; du where routes read the same input),
# 'routes' gives each route its own block of a buffer that torch sums afterwards (plain stores, deterministic, the
# buffer in the output's / input's dtype, summed with fp32 accumulation); 'atomic' adds into one fp32 buffer inside
# the kernel. None: 'routes', the faster for both kernels on the H100 (kernels/README.md).
MERGE = None


# The sequential backward recomputes each chunk's decays a = exp(dt A) from its checkpoint before walking it backwards;
# KEEP_DECAY keeps them (and a h) in registers for the backward walk instead of exponentiating again: one exp2 and two
# multiplies less per (channel, state, step) for one more state tile per unrolled step. Off until measured on a GPU
# (the extra registers may spill at d_state 16); `kernels/bench.py --sweep` times both settings. None: on where N > 4.
SEQ_KEEP_DECAY = False


# The sequential backward reduces dB and dC over a program's BD channels, then adds them at each (position, route)
# with one fp32 atomic per channel block: at d_state 16 and Vim-S's width, 48 blocks add to every position's B and C,
# at about the same time. With SEQ_DBC_PARTIALS each block stores its sums in its own slot of a (batch, position,
# route, block, N) fp32 buffer that torch sums afterwards (no atomics, deterministic; one more pass over the buffer).
# Off until measured on a GPU; ``VISIONSSM_SCAN_DBC=partials`` / ``atomic`` (read at each call) overrides it. Plans
# whose routes revisit positions keep the atomics (one program adds to a position twice).
SEQ_DBC_PARTIALS = False


def _dbc_partials() -> bool:
    choice = os.environ.get('VISIONSSM_SCAN_DBC')
    if choice is None:
        return bool(SEQ_DBC_PARTIALS)
    if choice not in ('partials', 'atomic'):
        raise ValueError(f"VISIONSSM_SCAN_DBC must be 'partials' or 'atomic', got {choice!r}")
    return choice == 'partials'


def _keep_decay(n_state: int) -> bool:
    return SEQ_KEEP_DECAY if SEQ_KEEP_DECAY is not None else n_state > 4


def _prefetch(backward: bool, route_len: int) -> bool:
    return SEQ_PREFETCH if SEQ_PREFETCH is not None else (backward or route_len >= 2048)


def _merge() -> str:
    return MERGE or 'routes'


# The sequential kernels fill the GPU when there are enough (batch, route, channel block) programs: below this many
# warps per SM, long routes go to the chunked kernels (detection maps, small batches). Measured on the H100
# (benchmarks/kernel_crossover.py): at 56x56 the chunked kernels win up to batch 64 (5.8 warps per SM), the sequential ones
# from batch 128 (11.6); at 28x28 the crossing lies between batch 32 and 64.
SEQ_MIN_WARPS_PER_SM = 8


def _use_chunked(n_state: int, route_len: int, seq_warps: int, device) -> bool:
    if FORCE_KERNEL is not None:
        return FORCE_KERNEL == 'chunked'
    if _CHUNK_OVERRIDE is not None:
        return True
    return n_state == 1 and route_len >= 512 and seq_warps < SEQ_MIN_WARPS_PER_SM * sm_count(device)


def _sequential_only(plan: RoutePlan) -> bool:
    # the chunked kernels take neither concatenated routes' output offsets nor revisits (their chunks of one route
    # run in parallel and would race on a revisited position): those plans always run the sequential kernels
    return plan.revisits or _segmented(plan)


def _chunk_config(width: int, n_state: int, backward: bool):
    """(BT, BD, BN, num_warps) of a chunked kernel."""
    bn = _pow2(n_state)
    if _CHUNK_OVERRIDE is not None:
        bt, bd, nw = _CHUNK_OVERRIDE[1 if backward else 0]
    elif bn == 1:   # measured on the H100: BD = 16 in the backward leaves it 140 registers
        bt, bd, nw = (32, 16, 1) if backward else (32, 32, 1)
    elif bn <= 4:
        bt, bd, nw = 16, 16, 4
    else:
        bt, bd, nw = 8, 16, 4
    return bt, min(bd, max(8, _pow2(width))), bn, nw


def _knobs() -> tuple:
    """The module-level settings above (tests and benchmarks change them): part of every launch cache's key."""
    return (FORCE_KERNEL, _CHUNK_OVERRIDE, _SEQ_OVERRIDE, SEQ_PREFETCH, MERGE, SEQ_MIN_WARPS_PER_SM, SEQ_KEEP_DECAY,
            _dbc_partials())


def _kernel_config(plan: RoutePlan, n_state: int, backward: bool, batch: int, device):
    """(chunked?, BT, BD, BN, num_warps, number of checkpoints) of the forward or backward kernel of a plan."""
    if not (isinstance(batch, int) and isinstance(n_state, int)):    # symbolic sizes (the fake implementation under
        # dynamic shapes)
        return _kernel_config_uncached(plan, n_state, backward, batch, device)
    return _kernel_config_cached(plan, n_state, backward, batch, device, _knobs())


@functools.lru_cache(maxsize=1024)
def _kernel_config_cached(plan: RoutePlan, n_state: int, backward: bool, batch: int, device, knobs):
    return _kernel_config_uncached(plan, n_state, backward, batch, device)


def _kernel_config_uncached(plan: RoutePlan, n_state: int, backward: bool, batch: int, device):
    Lmax = plan.max_len
    BD, BN, BT, num_warps = _config(plan.width, n_state, backward, Lmax)
    if not _sequential_only(plan) and _use_chunked(
            n_state, Lmax, batch * plan.num_routes * -(-plan.width // BD) * num_warps, device):
        BT, BD, BN, num_warps = _chunk_config(plan.width, n_state, backward)
        return True, BT, BD, BN, num_warps, -(-Lmax // BT)
    return False, BT, BD, BN, num_warps, max(1, -(-Lmax // BT))


def keeps_states(n_state: int) -> bool:
    """Whether a forward that needs a gradient keeps the backward's state checkpoints (``checkpoint_shape``), or
    saves none and leaves the backward to recompute them with one more forward kernel.

    Kept for N <= 4, where they hold at most one fp32 state per step and channel (the backward's chunks, their
    spacing, are at least 4 steps; at N = 1 they are half the bytes of a bf16 Δ); recomputed for larger N (at N = 16
    they are 8x Δ's bytes: PlainMamba-L1's training step, bf16, batch 128, 224², took 22.4 GiB on an H200, of which
    about 14.8 were checkpoints). ``VISIONSSM_SCAN_STATES=keep`` / ``recompute`` overrides the choice."""
    choice = os.environ.get('VISIONSSM_SCAN_STATES', 'auto')
    if choice == 'auto':
        return n_state <= 4
    if choice not in ('keep', 'recompute'):
        raise ValueError(f"VISIONSSM_SCAN_STATES must be 'auto', 'keep' or 'recompute', got {choice!r}")
    return choice == 'keep'


def checkpoint_shape(batch: int, plan: RoutePlan, n_state: int, device) -> tuple:
    """Shape of the fp32 states ``triton_forward`` saves for the backward (``need_grad=True``): the state entering
    every chunk of the backward's chunk length."""
    nck = _kernel_config(plan, n_state, True, batch, device)[-1]
    return batch, plan.num_routes, nck, plan.width, n_state


def _vec(plan: RoutePlan) -> int:
    """Largest power of two (<= 8) dividing every channel offset: lets the compiler vectorize channel loads."""
    g = math.gcd(plan.width, 8, *(r.in_offset for r in plan.routes), *(r.out_offset for r in plan.routes))
    return g & -g


class _Launch(NamedTuple):
    """What the plan, the state size, the batch and the settings decide about one kernel call. Computed once per
    distinct call (``_forward_launch`` / ``_backward_launch``): the short scans of stages 3-4 are host-bound, and a
    compiled training step spent more host time in these decisions than the GPU spent in the scans."""
    chunked: bool
    kernel: object        # the jitted kernel
    grid: tuple
    consts: dict          # constexpr arguments and num_warps
    nck: int              # checkpoints (states saved for the backward) per sequence
    nblk: int             # channel blocks
    seqs: int             # chunked kernels: (batch, route, block) sequences
    merge: str            # where several routes write one output (forward) / read one input (backward): 'routes',
                          # 'atomic', or 'none'
    zero: bool            # whether that buffer must be zero-filled (some of its elements are written by no route)
    zero_grad_delta: bool  # backward: whether ddelta must be zero-filled (a route skips some positions)
    parts: int            # backward: rows of the parameter gradients' partial sums
    pos: torch.Tensor
    meta: torch.Tensor
    shift: torch.Tensor   # sequential kernels: per-step output offsets of concatenated routes (see _route_tables)


def _grid_and_constants(plan, n_state, batch, backward, chunked, BT, BD, BN, num_warps, nck):
    """(grid, constexpr kwargs, channel blocks, chunked sequences) of a launch."""
    nblk = -(-plan.width // BD)
    if chunked:
        seqs = batch * plan.num_routes * nblk
        return (seqs * nck,), dict(BT=BT, BD=BD, BN=BN, VEC=_vec(plan), SPLIT=plan.split_params,
                                   num_warps=num_warps), nblk, seqs
    consts = dict(BD=BD, BN=BN, BT=BT, EVEN_D=plan.width % BD == 0, EVEN_N=BN == n_state,
                  PREFETCH=_prefetch(backward, plan.max_len), SPLIT=plan.split_params, num_warps=num_warps)
    return (batch, plan.num_routes, nblk), consts, nblk, 0


@functools.lru_cache(maxsize=1024)
def _forward_launch(plan: RoutePlan, n_state: int, batch: int, device, need_grad: bool, knobs) -> _Launch:
    chunked, BT, BD, BN, num_warps, nck = _kernel_config(plan, n_state, False, batch, device)
    CK = BT
    if need_grad:   # the checkpoints are the states entering the backward's chunks
        _, CK, _, _, _, nck = _kernel_config(plan, n_state, True, batch, device)
        BT = CK if chunked else BT
    grid, consts, nblk, seqs = _grid_and_constants(plan, n_state, batch, False, chunked, BT, BD, BN, num_warps, nck)
    if not chunked:
        consts.update(CK=CK, SAVE=need_grad)
        consts.update(SEG=_segmented(plan))
    merge = _merge() if plan.multiplicity > 1 else 'none'
    if _rewrites(plan):   # one route adds to an element it wrote before: only the fp32 accumulation can do that
        merge = 'atomic'
    zero = merge == 'atomic' or (merge == 'routes' and not _every_route_writes_everything(plan))
    pos, meta, shift = _route_tables(plan, device, plan.out_channels if merge == 'routes' else 0)
    return _Launch(chunked, _scan_fwd_chunked_kernel if chunked else _scan_fwd_kernel, grid, consts, nck, nblk, seqs,
                   merge, zero, False, 0, pos, meta, shift)


@functools.lru_cache(maxsize=1024)
def _backward_launch(plan: RoutePlan, n_state: int, batch: int, device, knobs) -> _Launch:
    chunked, BT, BD, BN, num_warps, nck = _kernel_config(plan, n_state, True, batch, device)
    grid, consts, nblk, seqs = _grid_and_constants(plan, n_state, batch, True, chunked, BT, BD, BN, num_warps, nck)
    readers, covered = _input_sharing(plan)
    merge = _merge() if readers > 1 else 'none'
    if plan.revisits:   # a route reads one input element more than once: its du adds up inside one program
        merge = 'atomic'
    if not chunked:
        consts.update(SEG=_segmented(plan), DD_ATOMIC=plan.revisits, KEEP_DECAY=_keep_decay(n_state),
                      DBC_PART=knobs[-1] and not plan.revisits)
    zero = merge == 'atomic' or (merge == 'routes' and not _every_route_reads_everything(plan)) or (
        merge == 'none' and not covered)
    # route k's delta block is written at the route's positions: zeros only where a route skips some, or adds
    # (revisits, into an fp32 buffer)
    num_pos = plan.height * plan.width_px
    zero_grad_delta = plan.revisits or not all(p.numel() == num_pos for p in plan.positions)
    pos, meta, shift = _route_tables(plan, device, 0, plan.in_channels if merge == 'routes' else 0)
    return _Launch(chunked, _scan_bwd_chunked_kernel if chunked else _scan_bwd_kernel, grid, consts, nck, nblk, seqs,
                   merge, zero, zero_grad_delta, batch * nck if chunked else batch, pos, meta, shift)


def _off64(num_pos: int, *position_strides: int) -> bool:
    """Whether a position's offset inside one image (position * stride) can pass int32."""
    return num_pos * max(position_strides) >= 2 ** 31


def _prep(t: Optional[torch.Tensor]):
    """The kernels read any strides but need the channel dim unit-strided."""
    return t if t is None or t.stride(-1) == 1 else t.contiguous()


def _route_stride(delta: torch.Tensor, width: int) -> int:
    """Elements between two routes' Δ blocks: ``(B, P, K*W)`` blocks follow each other; a ``(B, P, K, W)`` Δ has its
    own stride, 0 where every route reads one Δ (expanded)."""
    return delta.stride(2) if delta.dim() == 4 else width


def _f32(t: Optional[torch.Tensor]):
    if t is None or (t.dtype == torch.float32 and t.is_contiguous()):
        return t
    return t.detach().float().contiguous()


def triton_forward(u, delta, A, B, C, D, delta_bias, plan: RoutePlan, delta_softplus: bool, return_hidden: bool,
                   mean: bool, out_dtype: Optional[torch.dtype], need_grad: bool, states_only: bool = False):
    """Forward kernel on flattened maps: returns ``(out, ckpt)``, ``ckpt`` the states saved for
    ``triton_backward`` (an empty tensor when ``need_grad`` is False). ``states_only`` (with ``need_grad``): the
    checkpoints alone, ``out`` None; the kernel neither reads C nor writes an output (the backward's
    recomputation)."""
    if states_only and not need_grad:
        raise ValueError('triton_forward: states_only computes the checkpoints, which need need_grad=True')
    u, delta, B, C = _prep(u), _prep(delta), _prep(B), _prep(C)
    batch, num_pos, _ = u.shape
    dev = u.device
    K, W, N = plan.num_routes, plan.width, A.shape[-1]
    launch = held(_forward_launch(plan, N, batch, dev, bool(need_grad), _knobs()))   # its tables: see held
    A32, D32, bias32 = _f32(A), _f32(D), _f32(delta_bias)
    scale = 1.0 / plan.multiplicity if (mean and plan.multiplicity > 1) else 1.0
    out_dtype = out_dtype or u.dtype
    hidden = (N,) if return_hidden else ()
    alloc = torch.zeros if launch.zero else torch.empty
    if states_only:                   # no output: a pointer the kernel never writes through
        out = A32.new_empty((1, 1))
    elif launch.merge == 'routes':    # one output block per route, summed below
        out = alloc((batch, num_pos, K * plan.out_channels) + hidden, device=dev, dtype=out_dtype)
    else:
        out = alloc((batch, num_pos, plan.out_channels) + hidden, device=dev,
                    dtype=torch.float32 if launch.merge == 'atomic' else out_dtype)
    Cx = C if C is not None else B
    su, sd, sB, sC, so = u.stride(), delta.stride(), B.stride(), Cx.stride(), out.stride()
    args = (u, delta, A32, B, Cx, D32 if D32 is not None else A32, bias32 if bias32 is not None else A32, out)
    strides = (su[0], su[1], sd[0], sd[1], _route_stride(delta, W), sB[0], sB[1], sB[2], sC[0], sC[1], sC[2], so[0],
               so[1])
    flags = dict(HAS_D=D is not None and not return_hidden, HAS_BIAS=delta_bias is not None,
                 SOFTPLUS=bool(delta_softplus), HIDDEN=bool(return_hidden), ATOMIC=launch.merge == 'atomic',
                 WRITE_OUT=not states_only)
    # the states entering every chunk (slot 0 written by the kernels): the backward's checkpoints, and the chunked
    # kernels' chain
    ckpt = torch.empty((batch, K, launch.nck, W, N) if (need_grad or launch.chunked) else (0,), device=dev,
                       dtype=torch.float32)
    if launch.chunked:
        sync = torch.zeros(1 + launch.seqs * launch.nck, device=dev, dtype=torch.int32)
        with on_device(dev):
            run_kernel(launch.kernel, launch.grid, *args, ckpt, sync, launch.pos, launch.meta, *strides, W, N, K,
                       launch.nblk, launch.nck, launch.seqs, scale, **launch.consts, **flags)
        if not need_grad:
            ckpt = ckpt.new_empty(0)
    else:
        with on_device(dev):
            run_kernel(launch.kernel, launch.grid, *args, ckpt if need_grad else out, launch.pos, launch.meta,
                       launch.shift, *strides, W, N, K, launch.nck, scale,
                       OFF64=_off64(num_pos, su[1], sd[1], sB[1], sC[1], so[1]), **launch.consts, **flags)
    if states_only:
        return None, ckpt
    if launch.merge == 'routes':
        out = out.view(batch, num_pos, K, plan.out_channels, *hidden).sum(2)
    if out.dtype != out_dtype:
        out = out.to(out_dtype)
    return out, ckpt


def triton_backward(dout, u, delta, A, B, C, D, delta_bias, ckpt, plan: RoutePlan, delta_softplus: bool,
                    return_hidden: bool, mean: bool):
    """Backward kernel: ``(du, ddelta, dA, dB, dC, dD, ddelta_bias)`` in the dtypes of the inputs (None for an
    absent input; dD is None with ``return_hidden``, where D is unused). The inputs are read in place (delta, B and
    C are typically strided views of one projection); the gradients are contiguous."""
    if ckpt.numel() == 0:   # the forward kept no checkpoints (keeps_states): write them now, for this scan only
        ckpt = triton_forward(u, delta, A, B, C, D, delta_bias, plan, delta_softplus, return_hidden, mean, None,
                              True, states_only=True)[1]
    dout, u, delta, B, C = _prep(dout), _prep(u), _prep(delta), _prep(B), _prep(C)
    batch, num_pos, in_ch = u.shape
    dev = u.device
    K, W, N = plan.num_routes, plan.width, A.shape[-1]
    launch = held(_backward_launch(plan, N, batch, dev, _knobs()))
    scale = 1.0 / plan.multiplicity if (mean and plan.multiplicity > 1) else 1.0
    A32, D32, bias32 = _f32(A), _f32(D), _f32(delta_bias)
    has_d = D32 is not None and not return_hidden
    alloc = torch.zeros if launch.zero else torch.empty
    if launch.merge == 'routes':      # one du block per route, summed below
        du = alloc((batch, num_pos, K * in_ch), device=dev, dtype=u.dtype)
    else:
        du = alloc(u.shape, device=dev, dtype=torch.float32 if launch.merge == 'atomic' else u.dtype)
    ddelta = (torch.zeros if launch.zero_grad_delta else torch.empty)(
        delta.shape, device=dev, dtype=torch.float32 if plan.revisits else delta.dtype)
    dbc_part = launch.consts.get('DBC_PART', False)
    if dbc_part:   # one slot per channel block, summed below; zeros where a route skips positions (no store there)
        bc_shape = B.shape[:-1] + (launch.nblk, N)
        bc_alloc = torch.zeros if launch.zero_grad_delta else torch.empty
        dB = bc_alloc(bc_shape, device=dev, dtype=torch.float32)
        dC = bc_alloc(bc_shape, device=dev, dtype=torch.float32) if C is not None else dB
    else:
        dB = torch.zeros(B.shape, device=dev, dtype=torch.float32)
        dC = torch.zeros(B.shape, device=dev, dtype=torch.float32) if C is not None else dB
    # per-batch (sequential) or per-(batch, chunk) (chunked) partials of dA, dD and ddelta_bias, one row each of one
    # buffer, summed below
    KW = K * W
    part = torch.empty((launch.parts, KW * (N + has_d + (bias32 is not None))), device=dev, dtype=torch.float32)
    dA = part[:, :KW * N]
    dD = part[:, KW * N:KW * (N + 1)] if has_d else dA
    dbias = part[:, part.shape[1] - KW:] if bias32 is not None else dA
    Cx = C if C is not None else B
    su, sd, sB, sC, so, sdu, sdd, sdB = (
        u.stride(), delta.stride(), B.stride(), Cx.stride(), dout.stride(), du.stride(), ddelta.stride(), dB.stride())
    strides = (su[0], su[1], sd[0], sd[1], _route_stride(delta, W), sB[0], sB[1], sB[2], sC[0], sC[1], sC[2], so[0],
               so[1], sdu[0], sdu[1], sdd[0], sdd[1], sdB[0], sdB[1], sdB[2])
    args = (u, delta, A32, B, Cx, D32 if D32 is not None else A32, bias32 if bias32 is not None else A32, dout, ckpt)
    grads = (du, ddelta, dB, dC, dA, dD, dbias)
    flags = dict(HAS_D=has_d, HAS_BIAS=bias32 is not None, SOFTPLUS=bool(delta_softplus), HIDDEN=bool(return_hidden),
                 DU_ATOMIC=launch.merge == 'atomic')
    if launch.chunked:
        carry = torch.empty((batch, K, launch.nck, W, N), device=dev, dtype=torch.float32)
        sync = torch.zeros(1 + launch.seqs * launch.nck, device=dev, dtype=torch.int32)
        with on_device(dev):
            run_kernel(launch.kernel, launch.grid, *args, carry, sync, launch.pos, launch.meta, *grads, *strides,
                       part.stride(0), W, N, K, launch.nblk, launch.nck, launch.seqs, scale, **launch.consts, **flags)
    else:
        with on_device(dev):
            run_kernel(launch.kernel, launch.grid, *args, launch.pos, launch.meta, launch.shift, *grads, *strides,
                       part.stride(0), W, N, K, launch.nck, scale,
                       OFF64=_off64(num_pos, su[1], sd[1], sB[1], sC[1], so[1], sdu[1], sdd[1], sdB[1]),
                       **launch.consts, **flags)
    gA = dA.sum(0).view(KW, N).to(A.dtype)
    gD = dD.sum(0).to(D.dtype) if has_d else None
    gbias = dbias.sum(0).to(delta_bias.dtype) if bias32 is not None else None
    if launch.merge == 'routes':
        du = du.view(batch, num_pos, K, in_ch).sum(2)
    if dbc_part:
        dB, dC = dB.sum(-2), (dC.sum(-2) if C is not None else None)
    dC = dC.to(C.dtype) if C is not None else None
    return du.to(u.dtype), ddelta.to(delta.dtype), gA, dB.to(B.dtype), dC, gD, gbias


def selective_scan_triton(
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: Optional[torch.Tensor],
        D: Optional[torch.Tensor],
        delta_bias: Optional[torch.Tensor],
        plan: RoutePlan,
        delta_softplus: bool = True,
        return_hidden: bool = False,
        mean: bool = False,
        out_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Triton backend with ``selective_scan_reference``'s signature and semantics; differentiable.

    Runs on CUDA tensors, or on CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1`` set before triton
    is imported; used by the tests). float64 inputs go to the reference.
    """
    if not _HAS_TRITON or u.dtype == torch.float64:
        return selective_scan_reference(u, delta, A, B, C, D, delta_bias, plan, delta_softplus=delta_softplus,
                                        return_hidden=return_hidden, mean=mean, out_dtype=out_dtype)
    return run_scan(u, delta, A, B, C, D, delta_bias, plan, '|'.join(r.key for r in plan.routes), plan.height,
                    plan.width_px, plan.out_channels, delta_softplus, return_hidden, mean, out_dtype)


def run_scan(u, delta, A, B, C, D, delta_bias, plan: Optional[RoutePlan], key: str, height: int, width_px: int,
             out_channels: int, delta_softplus: bool, return_hidden: bool, mean: bool,
             out_dtype: Optional[torch.dtype]) -> torch.Tensor:
    """The kernels on flattened maps, differentiable. Under ``torch.compile`` they run through the custom op (one
    opaque node per scan; ``plan`` may be None there, the op rebuilds it from ``key`` and the grid); eagerly through
    ``_EagerScan``, the same forward and backward without the custom op's dispatch, whose Python overhead made the
    short scans of stages 3-4 host-bound (kernels/README.md)."""
    tensors = (u, delta, A, B, C, D, delta_bias)
    need_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if plan is None or torch.compiler.is_compiling():
        out, _ = torch.ops.visionssm.selective_scan(u, delta, A, B, C, D, delta_bias, key, height, width_px,
                                                    out_channels, bool(delta_softplus), bool(return_hidden),
                                                    bool(mean), out_dtype, need_grad)
        return out
    if not need_grad:
        return triton_forward(u, delta, A, B, C, D, delta_bias, plan, delta_softplus, return_hidden, mean, out_dtype,
                              False)[0]
    return _EagerScan.apply(u, delta, A, B, C, D, delta_bias, plan, bool(delta_softplus), bool(return_hidden),
                            bool(mean), out_dtype)


def _recomputing() -> bool:
    """Whether this forward runs inside the autograd engine's backward with no saved-tensor hooks active: a
    recomputation (reentrant ``torch.utils.checkpoint``, Vim's mixer) whose own backward follows at once. Under
    hooks (non-reentrant ``torch.utils.checkpoint``'s recomputation, offloading) the saved tensors go where the
    hooks put them, and the backward that reads them is not this node's."""
    if torch._C._current_graph_task_id() == -1:
        return False
    hooks = getattr(torch._C._autograd, '_top_saved_tensors_default_hooks', None)
    return hooks is not None and hooks(False) is None


class _EagerScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, plan, delta_softplus, return_hidden, mean, out_dtype):
        keep = keeps_states(A.shape[-1])
        # A recomputation in the backward writes its checkpoints whatever their size (its backward follows at once)
        # and holds them on ctx, off the saved tensors: those look alike in every forward, as non-reentrant
        # torch.utils.checkpoint requires, and saved-tensor hooks (offloading) never see a checkpoint.
        recomputing = not keep and _recomputing()
        out, states = triton_forward(u, delta, A, B, C, D, delta_bias, plan, delta_softplus, return_hidden, mean,
                                     out_dtype, keep or recomputing)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, states if keep else states.new_empty(0))
        ctx.states = states if recomputing else None
        ctx.config = (plan, delta_softplus, return_hidden, mean)
        return out

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B, C, D, delta_bias, saved = ctx.saved_tensors
        if ctx.states is not None:
            saved, ctx.states = ctx.states, None
        grads = triton_backward(dout.contiguous(), u, delta, A, B, C, D, delta_bias, saved, *ctx.config)
        return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad)) + (None,) * 5


# ---------------------------------------------------------------------------------------------------------------
# torch.library ops: the one way the kernels are called (``selective_scan_triton`` and ``visionssm.ops``), so
# torch.compile sees one opaque node per scan. The routes travel as their keys joined by '|' (a schema cannot carry
# Python objects); the op rebuilds the (cached) plan from them and the grid.

if not hasattr(torch.ops.visionssm, 'selective_scan'):   # one definition per process (see above)
    _PLANS: dict = {}

    def _plan(key, height, width_px, A, u, out_channels):
        # The fake implementation needs the plan too (the checkpoint's shape). Building one runs real ops on real
        # CPU tensors (positions, torch.unique checks): outside fake mode, or dynamo, tracing the op with fake
        # tensors, hits a data-dependent op and breaks the graph at every scan whose plan is not cached yet; the
        # compiled blocks then recompile per stage with dynamic shapes (an Inductor assertion).
        # Looked up by plain values first: the op runs once per scan and step.
        args = (key, int(height), int(width_px), int(A.shape[0]), int(u.shape[-1]), int(out_channels))
        plan = _PLANS.get(args)
        if plan is None:
            from torch._subclasses.fake_tensor import unset_fake_temporarily
            routes = tuple(route_from_key(k) for k in key.split('|'))
            with unset_fake_temporarily():
                plan = plan_routes(routes, args[1], args[2], args[3] // len(routes), args[4], args[5])
            _PLANS[args] = plan
        return plan


    @torch.library.custom_op('visionssm::selective_scan', mutates_args=())
    def _scan_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: Optional[torch.Tensor],
                 D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], routes_key: str, height: int,
                 width_px: int, out_channels: int, delta_softplus: bool, return_hidden: bool, mean: bool,
                 out_dtype: Optional[torch.dtype], need_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Flattened maps in; ``(out, saved)`` out, ``saved`` the kernels' checkpoint states for the backward (empty
        without ``need_grad``, and where ``keeps_states`` leaves them to the backward)."""
        return triton_forward(u, delta, A, B, C, D, delta_bias, _plan(routes_key, height, width_px, A, u, out_channels),
                              delta_softplus, return_hidden, mean, out_dtype, need_grad and keeps_states(A.shape[1]))


    @_scan_op.register_fake
    def _(u, delta, A, B, C, D, delta_bias, routes_key, height, width_px, out_channels, delta_softplus,
          return_hidden, mean, out_dtype, need_grad):
        n_state = A.shape[1]
        out = u.new_empty((u.shape[0], u.shape[1], out_channels) + ((n_state,) if return_hidden else ()),
                          dtype=out_dtype or u.dtype)
        plan = _plan(routes_key, height, width_px, A, u, out_channels)
        _prepare_launches(plan, n_state, u.shape[0], u.device, need_grad)
        if not (need_grad and keeps_states(n_state)):
            return out, u.new_empty(0, dtype=torch.float32)
        return out, u.new_empty(checkpoint_shape(u.shape[0], plan, n_state, u.device), dtype=torch.float32)


    def _prepare_launches(plan, n_state, batch, device, need_grad):
        # Build the launch decisions and their device-side route tables while tracing, before the compiled code
        # first runs: under mode='reduce-overhead' that first run is a CUDA-graph warm-up whose allocations come
        # from the graphs' private memory pool, and cached tables allocated there (kept alive by the cache, owned
        # by no graph) failed the pool's check on the H100.
        if not (isinstance(batch, int) and isinstance(n_state, int)):
            return
        from torch._subclasses.fake_tensor import unset_fake_temporarily
        with unset_fake_temporarily():
            _forward_launch(plan, n_state, batch, device, False, _knobs())
            if need_grad:   # the forward that writes checkpoints (in the backward where keeps_states says so)
                _forward_launch(plan, n_state, batch, device, True, _knobs())
                _backward_launch(plan, n_state, batch, device, _knobs())


    @torch.library.custom_op('visionssm::selective_scan_backward', mutates_args=())
    def _scan_backward_op(dout: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                          C: Optional[torch.Tensor], D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
                          saved: torch.Tensor, routes_key: str, height: int, width_px: int, out_channels: int,
                          delta_softplus: bool, return_hidden: bool, mean: bool) -> list[torch.Tensor]:
        """Gradients of (u, delta, A, B, C, D, delta_bias); an empty tensor stands for an absent input's."""
        grads = triton_backward(dout, u, delta, A, B, C, D, delta_bias, saved,
                                _plan(routes_key, height, width_px, A, u, out_channels),
                                delta_softplus, return_hidden, mean)
        return [g if g is not None else u.new_empty(0) for g in grads]


    @_scan_backward_op.register_fake
    def _(dout, u, delta, A, B, C, D, delta_bias, saved, routes_key, height, width_px, out_channels, delta_softplus,
          return_hidden, mean):
        # the real gradients are contiguous whatever the inputs' strides (a permuted or expanded Δ, a strided u)
        like = lambda t, present=True: t.new_empty(t.shape) if t is not None and present else u.new_empty(0)
        return [like(u), like(delta), like(A), like(B), like(C), like(D, not return_hidden), like(delta_bias)]


    def _setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:7], output[1])
        ctx.config = inputs[7:14]     # routes_key .. mean (out_dtype and need_grad are not needed)


    def _backward(ctx, dout, _dsaved):
        u, delta, A, B, C, D, delta_bias, saved = ctx.saved_tensors
        grads = torch.ops.visionssm.selective_scan_backward(dout.contiguous(), u, delta, A, B, C, D, delta_bias, saved,
                                                            *ctx.config)
        inputs = (u, delta, A, B, C, D, delta_bias)
        grads = [g if t is not None and g.shape == t.shape else None for g, t in zip(grads, inputs)]
        return tuple(grads) + (None,) * 9


    torch.library.register_autograd('visionssm::selective_scan', _backward, setup_context=_setup_context)
