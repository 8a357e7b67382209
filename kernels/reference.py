"""Pure-PyTorch multi-route selective scan: the CPU path and the oracle the Triton kernels are tested against.

Per route k, channel d and state n, along the route's positions t = 0..L_k-1:

    dt_t = softplus(delta_t + delta_bias)                 (softplus with threshold 20, as the official kernels)
    h_t  = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t      (h_{-1} = 0)
    y_t  = sum_n C_t[n] * h_t[n] + D * u_t

where u_t is read (and y_t written) at the route's t-th position and delta_t, B_t, C_t at its t-th parameter position
(the same, unless the route has ``params_at='step'``); each output element is the sum (or mean) of what the routes
write there. A concatenated route (``Route.concat``) is one such recurrence over all its segments' positions in turn;
each segment writes its own output channels, and what several visits write to one element is summed. The state and
all arithmetic are float32, or float64 for float64 inputs; the result is exact up to rounding in that dtype and
differentiable by autograd. Layout: ``u (B, H*W, C_in)``, ``delta (B, H*W, K*W_r)``, ``B/C (B, H*W, K, N)``,
``A (K*W_r, N)``.

The recurrence runs as a two-level scan: a sequential pass inside chunks of ``chunk`` steps (vectorized over all
chunks at once), then a pass over the chunk carries, then a correction ``h += P * carry``. Both passes only
multiply decays, so nothing is divided and no exponent can overflow; the sequential depth is ``chunk + L/chunk``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .routes import RoutePlan

__all__ = ['selective_scan_reference', 'linear_recurrence']


def linear_recurrence(a: torch.Tensor, b: torch.Tensor, chunk: Optional[int] = None) -> torch.Tensor:
    """``h_t = a_t * h_{t-1} + b_t`` along dim -2 with ``h_{-1} = 0``; returns all ``h_t``."""
    length = a.shape[-2]
    if chunk is None:
        chunk = max(1, int(math.isqrt(length)))
    num_chunks = -(-length // chunk)
    pad = num_chunks * chunk - length
    if pad:  # identity steps at the end do not change earlier states
        a = F.pad(a, (0, 0, 0, pad), value=1.0)
        b = F.pad(b, (0, 0, 0, pad), value=0.0)
    a = a.unflatten(-2, (num_chunks, chunk))
    b = b.unflatten(-2, (num_chunks, chunk))

    # Local scan inside every chunk, all chunks at once; decay products P alongside.
    h, p = b[..., 0, :], a[..., 0, :]
    local, decay = [h], [p]
    for t in range(1, chunk):
        h = a[..., t, :] * h + b[..., t, :]
        p = a[..., t, :] * p
        local.append(h)
        decay.append(p)
    local = torch.stack(local, dim=-2)
    decay = torch.stack(decay, dim=-2)

    # Carry the state across chunks, then add each chunk's incoming state, decayed.
    carry = torch.zeros_like(local[..., 0, 0, :])
    carries = []
    for c in range(num_chunks):
        carries.append(carry)
        carry = local[..., c, -1, :] + decay[..., c, -1, :] * carry
    incoming = torch.stack(carries, dim=-2).unsqueeze(-2)
    h = local + decay * incoming
    return h.flatten(-3, -2)[..., :length, :]


def selective_scan_reference(
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
    """Run ``plan``'s routes over flattened maps (see module docstring); returns ``(B, H*W, C_out[, N])``.

    Inputs are assumed validated (``visionssm.ops.selective_scan`` does that).
    """
    if delta.dim() == u.dim() + 1:   # (B, P, K, W), e.g. one Δ expanded for every route: the K*W layout
        delta = delta.flatten(-2)
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    out_dtype = out_dtype or u.dtype
    batch, num_pos, _ = u.shape
    width, n_state = plan.width, A.shape[-1]

    u, delta, B = u.to(compute), delta.to(compute), B.to(compute)
    C = C.to(compute) if C is not None else None
    A = A.to(compute).unflatten(0, (plan.num_routes, width))          # (K, W, N)
    D = D.to(compute).unflatten(0, (plan.num_routes, width)) if D is not None else None
    bias = delta_bias.to(compute).unflatten(0, (plan.num_routes, width)) if delta_bias is not None else None

    shape = (batch, num_pos, plan.out_channels) + ((n_state,) if return_hidden else ())
    out = u.new_zeros(shape)
    positions = plan.positions_on(u.device)
    param_positions = plan.param_positions_on(u.device)

    # Routes of equal length run stacked, so the sequential loop is shared (VMamba: all four at once).
    groups: dict[int, list[int]] = {}
    for k, pos in enumerate(positions):
        groups.setdefault(pos.numel(), []).append(k)
    for ks in groups.values():
        pos = torch.stack([positions[k] for k in ks])                                  # (G, L)
        ppos = torch.stack([param_positions[k] for k in ks]) if plan.split_params else pos   # Δ, B, C read here
        u_k = torch.stack([u[:, p, r.in_offset:r.in_offset + width]
                           for p, r in zip(pos, (plan.routes[k] for k in ks))], 1)      # (B, G, L, W)
        dt = torch.stack([delta[:, p, k * width:(k + 1) * width] for p, k in zip(ppos, ks)], 1)
        if bias is not None:
            dt = dt + bias[ks].unsqueeze(1)
        if delta_softplus:
            dt = F.softplus(dt, beta=1.0, threshold=20.0)
        B_k = torch.stack([B[:, p, k] for p, k in zip(ppos, ks)], 1)                   # (B, G, L, N)

        decay = torch.exp(dt.unsqueeze(-1) * A[ks].unsqueeze(1))                       # (B, G, L, W, N)
        drive = (dt * u_k).unsqueeze(-1) * B_k.unsqueeze(-2)
        h = linear_recurrence(decay.flatten(-2), drive.flatten(-2)).unflatten(-1, (width, n_state))

        if return_hidden:
            y = h
        else:
            C_k = torch.stack([C[:, p, k] for p, k in zip(ppos, ks)], 1)
            y = (h * C_k.unsqueeze(-2)).sum(-1)
            if D is not None:
                y = y + D[ks].unsqueeze(1) * u_k
        for g, k in enumerate(ks):
            # a concatenated route writes each segment's steps at that segment's output channels
            steps = plan.out_steps[k] if plan.out_steps else None
            if steps is None:
                runs = [(plan.routes[k].out_offset, pos.shape[1])]
            else:
                runs = zip(*(t.tolist() for t in torch.unique_consecutive(steps, return_counts=True)))
            start = 0
            for lo, length in runs:
                y_g = y[:, g, start:start + length]
                if lo != 0 or width != plan.out_channels:
                    pad = (0, 0) if return_hidden else ()
                    y_g = F.pad(y_g, pad + (lo, plan.out_channels - lo - width))
                out = out.index_add(1, pos[g, start:start + length], y_g)
                start += length
    if mean and plan.multiplicity > 1:
        out = out / plan.multiplicity
    return out.to(out_dtype)
