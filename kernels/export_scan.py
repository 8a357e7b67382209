"""Loop-free multi-route selective scan: the form that ``torch.export``, ONNX and AOTInductor can trace.

Same semantics as ``selective_scan_reference`` (see its docstring: softplus with threshold 20, Δ-bias, D skip,
``return_hidden``, sum/mean merge, ``out_channels`` / ``out_offset``, ``in_offset``, strided lattices, reversed
routes), built only from indexing, cumulative sums, exponentials, products and sums: no Python loop whose length
depends on the map size, no custom op. That is what makes the models exportable.

**The recurrence** ``h_t = exp(a_t) h_{t-1} + x_t`` (``a_t = Δ_t A <= 0`` per channel and state, ``x_t = Δ_t B_t
u_t``) runs in chunks of ``CHUNK = 8`` steps, recursively, the chunked form of Mamba-2's SSD:

- inside each chunk, the 8 steps are unrolled (a fixed count, not the map's length): the states from a zero start
  and the running decay products ``exp(a_0) ... exp(a_i)``, for all chunks at once;
- the chunks' end states obey the same recurrence one level up (decay = the chunk's ``sum a``), solved by the same
  form; after ``LEVELS`` levels the few remaining steps are one segment-sum (``h_t = sum_{s <= t} exp(a_{s+1} +
  ... + a_t) x_s``, the upper triangle set to ``-inf`` *before* ``exp``);
- each chunk then adds the state entering it times its running decay products.

Only ``exp`` of non-positive numbers (the decays, and at the top sums of them) is formed, the products of decays
stay in ``[0, 1]``, nothing is divided by a decay: nothing can overflow. The work is about three products and
sums per step and state in all (the levels shrink 8x), not much more than a sequential scan's, in whole-tensor
operations; each level pads to whole chunks plus one, so any (symbolic) length works and no level's length
specializes to 1. ``LEVELS = 4`` leaves at most ~70 steps at the top up to maps of 262k positions (512²). On a CPU
(one thread) this is 20-30x faster than a segment-sum inside chunks of 16 (whose work grows with the chunk), and
in onnxruntime 16-27% faster than pairs (recursive doubling, whose levels pass over the data more often).

**Positions in the graph.** A route's positions are computed from the map: ``arange(H * W).view(H, W)``, sliced to
the stride/offset sub-lattice, transposed for the column orders, every other line flipped for the zig-zag
(``_snake``) orders, flattened, flipped for ``reverse``; a concatenated route is its segments' positions in turn,
one recurrence, each segment scattering to its own channels. With symbolic ``H, W``
(``torch.export`` with ``Dim``, ONNX with dynamic axes) they stay symbolic. Routes with a *callable* order fall
back to ``route.positions(H, W)``, a constant baked into the graph: such models export for **static sizes only**
(exporting them with a dynamic ``H`` or ``W`` fails with torch.export's error about a specialized dimension).

**Structure.** Per route: gather ``u`` at the route's positions (``u_index``); gather Δ, B and C through a second
index (``dbc_index``: the same positions, or with ``params_at='step'`` the raster order); scan; scatter-add the
outputs by position (``index_add``), so a route may read Δ/B/C in another order than ``u`` or visit a position more than once without changing the core.
Routes whose lengths are equal by construction (same stride and offset) run stacked.

Cost: a few times a sequential scan's arithmetic, in whole-tensor operations (docs/deploy.md has the CPU
latencies). It is the form for exporting, not the CPU default.

``A`` must be non-positive (every family builds ``A = -exp(A_log)``); a positive ``A`` would make the decays
grow, which neither this form nor a stable scan is meant for.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .routes import Route

__all__ = ['selective_scan_export', 'chunked_recurrence', 'route_index']

CHUNK = 8   # steps per chunk, unrolled: a compile-time constant, so any (symbolic) length works by padding
LEVELS = 4   # chunk levels below the top segment-sum: at most ~70 steps remain there for maps up to 262k positions


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """``softplus`` with threshold 20 (as ``F.softplus`` and the official kernels), written so that every
    exponential is of a non-positive number: ``max(x, 0) + log1p(exp(-|x|))`` equals ``log1p(exp(x))``."""
    return torch.where(x > 20.0, x, x.clamp(min=0) + torch.log1p(torch.exp(-x.abs())))


def _segment_sum(a: torch.Tensor) -> torch.Tensor:
    """``seg[..., t, s, :] = a[..., s+1, :] + ... + a[..., t, :]`` for ``s <= t``, ``-inf`` above the diagonal.

    ``a (..., T, X)`` → ``(..., T, T, X)``. Summed by a cumulative sum of the masked decays (exact: no
    difference of two running sums).
    """
    steps = a.shape[-2]
    idx = torch.arange(steps, device=a.device)
    strictly_below = (idx[:, None] > idx[None, :]).unsqueeze(-1)         # (T, T, 1): rows t, columns s
    on_or_below = (idx[:, None] >= idx[None, :]).unsqueeze(-1)
    rows = a.unsqueeze(-2).expand(*a.shape[:-1], steps, a.shape[-1])      # rows[t, s] = a[t]
    seg = torch.where(strictly_below, rows, 0.0).cumsum(-3)             # sum over t' in (s, t]
    return torch.where(on_or_below, seg, float('-inf'))


def chunked_recurrence(a: torch.Tensor, x: torch.Tensor, levels: int = LEVELS, chunk: int = CHUNK) -> torch.Tensor:
    """All states of ``h_t = exp(a_t) * h_{t-1} + x_t`` along dim -2 (``h_{-1} = 0``), loop-free.

    ``a`` (log-decays, <= 0) and ``x`` have shape ``(..., L, X)``. ``levels`` levels of ``chunk``-step chunks, then
    one segment-sum over the remaining steps (see the module docstring).
    """
    length = a.shape[-2]
    if levels == 0:
        return (torch.exp(_segment_sum(a)) * x.unsqueeze(-3)).sum(-2)
    # Pad with identity steps (decay exp(0) = 1, no input) to whole chunks, and one chunk more than needed: the
    # count is a ceil-division (no modulo for a tracer to reason about) and provably >= 2, so a symbolic length
    # never specializes to a single chunk.
    num_chunks = (length + chunk - 1) // chunk + 1
    pad = num_chunks * chunk - length
    a = F.pad(a, (0, 0, 0, pad)).unflatten(-2, (num_chunks, chunk))         # (..., nc, T, X)
    x = F.pad(x, (0, 0, 0, pad)).unflatten(-2, (num_chunks, chunk))
    decays, inputs = torch.exp(a).unbind(-2), x.unbind(-2)
    local, running = [inputs[0]], [decays[0]]       # states from a zero start; decay products since the chunk began
    for t in range(1, chunk):
        local.append(decays[t] * local[-1] + inputs[t])
        running.append(running[-1] * decays[t])
    ends = chunked_recurrence(a.sum(-2), local[-1], levels - 1, chunk)    # the chunks' end states
    incoming = F.pad(ends, (0, 0, 1, 0))[..., :-1, :]                      # state entering chunk c = end of c - 1
    h = torch.stack([h_t + p_t * incoming for h_t, p_t in zip(local, running)], -2)
    return h.flatten(-3, -2)[..., :length, :]


def route_index(route: Route, height, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u_index, dbc_index)`` of a plain (not concatenated) route: the flat positions where it reads ``u`` (and
    writes its output), and where step ``t`` reads Δ, B and C (the same positions, or with ``params_at='step'`` the
    same set in raster order). Built from ``arange`` of the map for the built-in orders, so symbolic ``height`` /
    ``width`` stay symbolic; callable orders use ``route.positions`` (concrete sizes only)."""
    if callable(route.order):
        pos = route.positions(int(height), int(width)).to(device)
        return pos, route.param_positions(int(height), int(width)).to(device)
    grid = torch.arange(height * width, device=device).view(height, width)
    grid = grid[route.offset[0]::route.stride[0], route.offset[1]::route.stride[1]]
    raster = grid.reshape(-1)                      # ascending: the raster order of the route's positions
    lines = grid.t() if route.order.startswith('col') else grid
    if route.order.endswith('_snake'):             # every other line walked back
        odd = (torch.arange(lines.shape[0], device=device) % 2 == 1).unsqueeze(-1)
        lines = torch.where(odd, lines.flip(1), lines)
    pos = lines.reshape(-1)
    if route.reverse:
        pos = pos.flip(0)
    return pos, (raster if route.params_at == 'step' else pos)


def _route_parts(route: Route, height, width, device):
    """``(u_index, dbc_index, parts)``; ``parts`` lists ``(segment, length)`` in visiting order: a concatenated
    route is one recurrence over its segments' positions in turn, each segment writing its own channels."""
    indices = [route_index(r, height, width, device) for r in route.parts]
    parts = [(r, ui.shape[0]) for r, (ui, _) in zip(route.parts, indices)]
    if len(indices) == 1:
        return indices[0][0], indices[0][1], parts
    return torch.cat([ui for ui, _ in indices]), torch.cat([di for _, di in indices]), parts


def _group_key(k: int, route: Route):
    # Lengths equal by construction (not by comparing possibly symbolic sizes): same sub-lattice, built-in order.
    if route.segments:
        return ('concat', k)
    return ('custom', k) if callable(route.order) else (route.stride, route.offset)


def selective_scan_export(
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: Optional[torch.Tensor],
        D: Optional[torch.Tensor],
        delta_bias: Optional[torch.Tensor],
        plan,
        delta_softplus: bool = True,
        return_hidden: bool = False,
        mean: bool = False,
        out_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """``selective_scan_reference``'s contract (layout ``(B, H*W, ...)``, returns ``(B, H*W, C_out[, N])``).

    ``plan`` needs only ``routes``, ``height``, ``width_px`` (ints or symbolic sizes), ``width`` and
    ``out_channels``; positions and coverage are not read from it, so it may be an unchecked plan built while
    exporting. ``mean`` divides by the number of route visits of each output element, counted in the graph.
    """
    if delta.dim() == u.dim() + 1:   # (B, P, K, W), e.g. one Δ expanded for every route: the K*W layout
        delta = delta.flatten(-2)
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    out_dtype = out_dtype or u.dtype
    batch, num_pos = u.shape[0], u.shape[1]
    width, n_state, out_channels = plan.width, A.shape[-1], plan.out_channels
    num_routes = len(plan.routes)

    u, delta, B = u.to(compute), delta.to(compute), B.to(compute)
    C = C.to(compute) if C is not None else None
    A = A.to(compute).unflatten(0, (num_routes, width))                   # (K, W, N)
    D = D.to(compute).unflatten(0, (num_routes, width)) if D is not None else None
    bias = delta_bias.to(compute).unflatten(0, (num_routes, width)) if delta_bias is not None else None

    tail = (n_state,) if return_hidden else ()
    out = u.new_zeros((batch, num_pos, out_channels) + tail)
    visits = u.new_zeros((num_pos, out_channels)) if mean else None

    groups: dict = {}
    for k, route in enumerate(plan.routes):
        groups.setdefault(_group_key(k, route), []).append(k)
    for ks in groups.values():
        index = [_route_parts(plan.routes[k], plan.height, plan.width_px, u.device) for k in ks]
        u_k = torch.stack([u.index_select(1, ui)[..., plan.routes[k].in_offset:plan.routes[k].in_offset + width]
                           for (ui, _, _), k in zip(index, ks)], 1)       # (B, G, L, W)
        dt = torch.stack([delta.index_select(1, di)[..., k * width:(k + 1) * width]
                          for (_, di, _), k in zip(index, ks)], 1)
        B_k = torch.stack([B.index_select(1, di)[:, :, k] for (_, di, _), k in zip(index, ks)], 1)   # (B, G, L, N)
        if bias is not None:
            dt = dt + bias[ks].unsqueeze(1)
        if delta_softplus:
            dt = _softplus(dt)

        log_decay = dt.unsqueeze(-1) * A[ks].unsqueeze(1)                  # (B, G, L, W, N), <= 0
        drive = (dt * u_k).unsqueeze(-1) * B_k.unsqueeze(-2)
        h = chunked_recurrence(log_decay.flatten(-2), drive.flatten(-2)).unflatten(-1, (width, n_state))

        if return_hidden:
            y = h
        else:
            C_k = torch.stack([C.index_select(1, di)[:, :, k] for (_, di, _), k in zip(index, ks)], 1)
            y = (h * C_k.unsqueeze(-2)).sum(-1)
            if D is not None:
                y = y + D[ks].unsqueeze(1) * u_k
        for g, k in enumerate(ks):
            u_index, _, parts = index[g]
            start = 0
            for part, length in parts:   # one part, or a concatenated route's segments (each its own channels)
                lo = part.out_offset
                channels = (lo, out_channels - lo - width)
                y_p = y[:, g] if len(parts) == 1 else y[:, g, start:start + length]
                p_index = u_index if len(parts) == 1 else u_index[start:start + length]
                if channels != (0, 0):
                    y_p = F.pad(y_p, ((0, 0) if return_hidden else ()) + channels)
                out = out.index_add(1, p_index, y_p)
                if visits is not None:
                    visits = visits.index_add(0, p_index, F.pad(u.new_ones((length, width)), channels))
                start = start + length
    if visits is not None:
        out = out / (visits.unsqueeze(-1) if return_hidden else visits)
    return out.to(out_dtype)
