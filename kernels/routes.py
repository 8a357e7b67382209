"""Scan routes over a token grid, and the plan the kernels execute.

A *route* is one scan path: the order in which it visits the positions of an ``H x W`` grid, the block of input
channels it reads, and the block of output channels it writes. Every family is a list of routes over the same
channel-last map ``(B, H, W, C)``; the kernels read the map at each route's positions (no cross-scan copy) and
merge the routes into one output. Route ``k`` uses the ``k``-th block of every per-route tensor (Δ, A, D, Δ-bias,
B, C): the routes' parameters are stacked, exactly as the official ``A_logs (K*D, N)`` already are.

Positions are flat indices ``h * W + w``. Built-in orders are computed arithmetically: row- and column-major
rasters and their continuous zig-zags (``'row_snake'``, ``'col_snake'``: every other row / column reversed, so
consecutive steps are neighbours, as PlainMamba scans); any other pattern (local windows) is a callable
``order(H, W) -> LongTensor`` and needs no change to the kernels' core loop.

A route normally reads Δ, B and C where it reads u, at its positions (``params_at='route'``). With
``params_at='step'``, step t reads them at the t-th of the route's positions in raster (ascending) order instead —
on a full grid at flat index t — while u is still read, and y written, at the route's position: PlainMamba's
official code gathers only the input into scan order and leaves Δ, B and C in raster order.

A route visits each position at most once, except a *concatenated* route (``Route.concat``): several orders walked
one after the other by one scan whose state runs on from each into the next (MSVMamba's half-resolution scan). It
revisits positions by construction; each of its segments visits a position at most once and writes its own output
channels, and elements written by several segments are summed like elements written by several routes. Its
segments read Δ, B and C at their own positions (``params_at='step'`` is not defined for a concatenated route).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch

__all__ = [
    'Route', 'RoutePlan', 'plan_routes',
    'cross_routes', 'bidirectional_routes', 'lattice_routes', 'grouped_routes', 'multiscale_routes',
    'snake_routes',
]

Order = Union[str, Callable[[int, int], torch.Tensor]]
_ORDERS = ('row', 'col', 'row_snake', 'col_snake')
_PARAMS_AT = ('route', 'step')


_BY_KEY: dict = {}


def route_from_key(key: str) -> 'Route':
    """The route whose ``key`` is ``key`` (every Route registers itself when constructed)."""
    return _BY_KEY[key]


@dataclass(frozen=True)
class Route:
    """One scan path over an ``H x W`` grid.

    Args:
        order: ``'row'`` (row-major raster), ``'col'`` (column-major raster), ``'row_snake'`` (row-major, every
            odd row right to left), ``'col_snake'`` (column-major, every odd column bottom to top), or a callable
            ``(H, W) -> positions`` returning distinct flat indices ``h * W + w`` in visiting order.
        reverse: visit the positions of ``order`` back to front.
        stride: visit only the sub-lattice ``h = offset[0] + i * stride[0], w = offset[1] + j * stride[1]``
            (EfficientVMamba's atrous routes); ``order`` then ranks positions within the sub-lattice.
        offset: origin of the sub-lattice.
        in_offset: first channel of the input map this route reads.
        out_offset: first channel of the output this route writes.
        params_at: where step t reads Δ, B and C: ``'route'`` (at the route's position, as u) or ``'step'`` (at
            the t-th of the route's positions in raster order; see the module docstring). Plain routes only.
        segments: the routes a concatenated route walks in turn (build it with ``Route.concat``); empty otherwise.
    """
    order: Order = 'row'
    reverse: bool = False
    stride: tuple[int, int] = (1, 1)
    offset: tuple[int, int] = (0, 0)
    in_offset: int = 0
    out_offset: int = 0
    params_at: str = 'route'
    segments: tuple['Route', ...] = ()

    @classmethod
    def concat(cls, *segments: 'Route') -> 'Route':
        """One route that walks ``segments`` one after the other, its state running on across them.

        The segments share the route's input channels and parameters (one route's Δ, A, B, C, D); each writes its
        own ``out_offset``. Positions visited by several segments are read once per visit, and the segments'
        outputs there are summed where their output channels coincide.
        """
        if len(segments) < 2 or not all(isinstance(s, Route) and not s.segments for s in segments):
            raise ValueError(f'Route.concat takes two or more plain (not concatenated) routes, got {segments!r}')
        if any(s.params_at != 'route' for s in segments):
            raise ValueError("the segments of a concatenated route read Δ, B and C at their own positions: "
                             "params_at='step' is not supported in Route.concat")
        if len({s.in_offset for s in segments}) != 1:
            raise ValueError(f'the segments of a concatenated route must read the same input channels, got '
                             f'in_offset {[s.in_offset for s in segments]}')
        return cls(segments=tuple(segments), in_offset=segments[0].in_offset,
                   out_offset=min(s.out_offset for s in segments))

    @property
    def parts(self) -> tuple['Route', ...]:
        """The segments of a concatenated route, else the route itself."""
        return self.segments or (self,)

    def __post_init__(self):
        if self.segments:
            seg = tuple(self.segments)
            object.__setattr__(self, 'segments', seg)
            if (len(seg) < 2 or not all(isinstance(s, Route) and not s.segments for s in seg)
                    or (self.order, self.reverse, self.stride, self.offset, self.params_at)
                    != ('row', False, (1, 1), (0, 0), 'route')
                    or any(s.params_at != 'route' for s in seg)
                    or self.in_offset != seg[0].in_offset or self.out_offset != min(s.out_offset for s in seg)):
                raise ValueError('build a concatenated route with Route.concat(*segments): its orders, channels '
                                 'and offsets are those of its segments')
        stride = (self.stride, self.stride) if isinstance(self.stride, int) else tuple(self.stride)
        offset = (self.offset, self.offset) if isinstance(self.offset, int) else tuple(self.offset)
        object.__setattr__(self, 'stride', stride)
        object.__setattr__(self, 'offset', offset)
        if not callable(self.order) and self.order not in _ORDERS:
            raise ValueError(f"route order must be one of {_ORDERS} or a callable (H, W) -> positions, got {self.order!r}")
        if self.params_at not in _PARAMS_AT:
            raise ValueError(f'route params_at must be one of {_PARAMS_AT}, got {self.params_at!r}')
        if len(stride) != 2 or min(stride) < 1:
            raise ValueError(f'route stride must be two integers >= 1, got {self.stride}')
        if len(offset) != 2 or min(offset) < 0 or offset[0] >= stride[0] or offset[1] >= stride[1]:
            raise ValueError(f'route offset must satisfy 0 <= offset < stride, got offset {offset} with stride {stride}')
        if self.in_offset < 0 or self.out_offset < 0:
            raise ValueError(f'route channel offsets must be >= 0, got in {self.in_offset}, out {self.out_offset}')
        # a string naming this route, for op schemas that cannot carry Python objects (see route_from_key)
        object.__setattr__(self, 'key', repr(self))
        _BY_KEY.setdefault(self.key, self)

    def __fx_create_arg__(self, tracer):
        # In a torch.fx graph a route is its key, looked up when the graph runs: the same object, whatever its
        # order (a callable order could not be written into the graph's code).
        return tracer.create_node('call_function', route_from_key, (self.key,), {})

    def positions(self, height: int, width: int) -> torch.Tensor:
        """Flat positions ``h * width + w`` in visiting order (int64, CPU); all segments' for a concatenated route."""
        if self.segments:
            return torch.cat([s.positions(height, width) for s in self.segments])
        rows = torch.arange(self.offset[0], height, self.stride[0])
        cols = torch.arange(self.offset[1], width, self.stride[1])
        if callable(self.order):
            sub = torch.as_tensor(self.order(len(rows), len(cols)), dtype=torch.long).flatten()
            if sub.numel() and (sub.min() < 0 or sub.max() >= len(rows) * len(cols)):
                raise ValueError(f'custom route order returned positions outside a {len(rows)}x{len(cols)} grid')
            grid = (rows[:, None] * width + cols[None, :]).flatten()
            pos = grid[sub]
        else:
            grid = rows[:, None] * width + cols[None, :]            # (rows, cols) of the sub-lattice
            if self.order.startswith('col'):
                grid = grid.t()                                     # one line per column
            if self.order.endswith('_snake'):
                grid = grid.clone()
                grid[1::2] = grid[1::2].flip(1)                     # every other line walked back
            pos = grid.flatten()
        return pos.flip(0) if self.reverse else pos

    def param_positions(self, height: int, width: int) -> torch.Tensor:
        """Where each step reads Δ, B and C (see ``params_at``): the positions, or the same set in raster order."""
        pos = self.positions(height, width)
        return pos.sort().values if self.params_at == 'step' else pos


@dataclass(frozen=True)
class RoutePlan:
    """Routes resolved for one grid and channel layout: what a kernel needs to run them.

    ``positions[k]`` are route k's flat positions (CPU int64); ``param_positions[k]`` where its steps read Δ, B
    and C (the same tensors as ``positions`` unless a route has ``params_at='step'``); ``width`` is the channel width
    of every route; ``multiplicity`` is how many routes (segments of a concatenated route counted apart) write each
    output element (uniform by construction). ``out_steps[k]`` is None, or for a concatenated route the output
    channel offset of each of its steps (CPU int64); ``revisits``: some route visits a position more than once (then
    a kernel must accumulate, not store, what one route reads or writes at a position).
    """
    routes: tuple[Route, ...]
    height: int
    width_px: int
    width: int
    in_channels: int
    out_channels: int
    positions: tuple[torch.Tensor, ...]
    multiplicity: int
    out_steps: tuple[Optional[torch.Tensor], ...] = ()
    revisits: bool = False
    param_positions: Optional[tuple[torch.Tensor, ...]] = None

    def __post_init__(self):
        if self.param_positions is None:
            object.__setattr__(self, 'param_positions', self.positions)

    def __hash__(self):
        # plans key the kernels' launch caches on every call: hash the fields once, not once per lookup
        h = self.__dict__.get('_hash')
        if h is None:
            h = hash((self.routes, self.height, self.width_px, self.width, self.in_channels, self.out_channels,
                      self.positions, self.multiplicity, self.revisits, self.param_positions))
            self.__dict__['_hash'] = h
        return h

    @property
    def num_routes(self) -> int:
        return len(self.routes)

    @functools.cached_property
    def max_len(self) -> int:
        """Steps of the longest route."""
        return max(p.numel() for p in self.positions)

    @functools.cached_property
    def split_params(self) -> bool:
        """Whether some route reads Δ, B and C elsewhere than at its positions."""
        return any(q is not p and not torch.equal(q, p) for p, q in zip(self.positions, self.param_positions))

    def positions_on(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        return _positions_on(self, torch.device(device))

    def param_positions_on(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        return _positions_on(self, torch.device(device), True)


@functools.lru_cache(maxsize=256)
def _positions_on(plan: RoutePlan, device: torch.device, params: bool = False) -> tuple[torch.Tensor, ...]:
    return tuple(p.to(device) for p in (plan.param_positions if params else plan.positions))


def plan_routes(
        routes: Sequence[Route],
        height: int,
        width_px: int,
        width: int,
        in_channels: int,
        out_channels: int,
) -> RoutePlan:
    """Resolve and check ``routes`` for an ``height x width_px`` grid; cached per distinct arguments.

    Raises ValueError when a route reads or writes outside the channels, visits a position twice (a concatenated
    route: when one of its segments does), or when the routes together leave output elements unwritten or write
    some more often than others (the merge would then be wrong for those elements).
    """
    routes = tuple(routes)
    if not routes or not all(isinstance(r, Route) for r in routes):
        raise ValueError(f'routes must be a non-empty sequence of Route, got {routes!r}')
    return _plan_routes(routes, int(height), int(width_px), int(width), int(in_channels), int(out_channels))


@functools.lru_cache(maxsize=256)
def _plan_routes(routes, height, width_px, width, in_channels, out_channels) -> RoutePlan:
    num_pos = height * width_px
    positions, param_positions, out_steps = [], [], []
    writers = []    # (output channel offset, positions) per segment
    for k, route in enumerate(routes):
        if route.in_offset + width > in_channels:
            raise ValueError(
                f'route {k} reads input channels [{route.in_offset}, {route.in_offset + width}) '
                f'but the input has {in_channels} channels')
        parts = []
        for j, part in enumerate(route.parts):
            what = f'route {k}' + (f' segment {j}' if route.segments else '')
            if part.out_offset + width > out_channels:
                raise ValueError(
                    f'{what} writes output channels [{part.out_offset}, {part.out_offset + width}) '
                    f'but the output has {out_channels} channels')
            pos = part.positions(height, width_px)
            if pos.numel() == 0:
                raise ValueError(f'{what} visits no position of a {height}x{width_px} grid')
            if torch.unique(pos).numel() != pos.numel():
                raise ValueError(f'{what} visits some positions of a {height}x{width_px} grid more than once '
                                 f'(a scan that revisits positions on purpose is a Route.concat of orders)')
            parts.append(pos)
            writers.append((part.out_offset, pos))
        positions.append(torch.cat(parts).contiguous())
        param_positions.append(positions[-1] if route.params_at == 'route' else pos.sort().values.contiguous())
        out_steps.append(torch.cat([torch.full_like(p, s.out_offset) for p, s in zip(parts, route.segments)])
                         if route.segments else None)
    revisits = any(torch.unique(p).numel() != p.numel() for p in positions)

    # Coverage per output channel segment: between consecutive writer channel boundaries every channel is written
    # by the same set of writers, so one position count per segment decides.
    bounds = sorted({0, out_channels} | {o for o, _ in writers} | {o + width for o, _ in writers})
    multiplicity = None
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        count = torch.zeros(num_pos, dtype=torch.int32)
        for offset, pos in writers:
            if offset <= lo and hi <= offset + width:
                count[pos] += 1
        cmin, cmax = int(count.min()), int(count.max())
        if cmin == 0:
            missing = int((count == 0).sum())
            raise ValueError(
                f'routes do not cover the map: {missing} of {num_pos} positions of output channels [{lo}, {hi}) '
                f'are visited by no route')
        if cmin != cmax or (multiplicity is not None and cmin != multiplicity):
            seen = sorted({cmin, cmax} | ({multiplicity} if multiplicity else set()))
            raise ValueError(
                f'routes overlap unevenly: output elements are written by between {seen[0]} and {seen[-1]} routes; '
                f'every element must be written by the same number of routes for the merge to be defined')
        multiplicity = cmin
    return RoutePlan(routes, height, width_px, width, in_channels, out_channels, tuple(positions), multiplicity,
                     tuple(out_steps), revisits, tuple(param_positions))


# Route patterns of the families (DESIGN.md's table). Each is a plain tuple of Route: new patterns are new tuples.

def cross_routes() -> tuple[Route, ...]:
    """VMamba's SS2D: row, column, row reversed, column reversed; all channels; summed."""
    return (Route('row'), Route('col'), Route('row', reverse=True), Route('col', reverse=True))


def bidirectional_routes(channels: int) -> tuple[Route, ...]:
    """Vim: forward and reversed over a 1-D sequence (H = 1). Each direction has its own input block of
    ``channels`` (its own conv1d output), both write the same output channels (merge with ``'mean'``)."""
    return (Route('row'), Route('row', reverse=True, in_offset=channels))


def lattice_routes() -> tuple[Route, ...]:
    """EfficientVMamba's ES2D: the four stride-2 sub-lattices, each scanned once; they tile the map."""
    return (
        Route('row', stride=2, offset=(0, 0)),
        Route('col', stride=2, offset=(1, 0)),
        Route('row', stride=2, offset=(0, 1)),
        Route('col', stride=2, offset=(1, 1)),
    )


def grouped_routes(group_channels: int) -> tuple[Route, ...]:
    """GroupMamba: four channel groups of ``group_channels``, group k scanned in direction k; concatenated."""
    orders = (('row', False), ('col', False), ('row', True), ('col', True))
    return tuple(
        Route(order, reverse=rev, in_offset=k * group_channels, out_offset=k * group_channels)
        for k, (order, rev) in enumerate(orders))


def multiscale_routes(channels: int, summed: bool = False) -> tuple[Route, ...]:
    """MSVMamba's half-resolution scan: ONE route through the reversed row-major, the column-major and the reversed
    column-major orders in turn (the state runs on across them). Each order writes its own block of ``channels``
    output channels (the master branch normalizes each before summing them), or with ``summed`` all three write
    the same ``channels`` and are summed there (the v2 branch)."""
    orders = (('row', True), ('col', False), ('col', True))
    return (Route.concat(*(Route(order, reverse=rev, out_offset=0 if summed else j * channels)
                           for j, (order, rev) in enumerate(orders))),)


def snake_routes(params_at: str = 'route') -> tuple[Route, ...]:
    """PlainMamba: the continuous zig-zag over rows, its reverse, the zig-zag over columns, its reverse; all
    channels; summed. ``params_at='step'`` is the official code's reading of Δ, B and C (see the module docstring)."""
    orders = (('row_snake', False), ('row_snake', True), ('col_snake', False), ('col_snake', True))
    return tuple(Route(order, reverse=rev, params_at=params_at) for order, rev in orders)
