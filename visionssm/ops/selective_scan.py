"""``selective_scan``: the one scan entry point every family calls.

Checks the arguments (errors name the argument and what was expected), applies the dtype policy, resolves the
routes for the map's size (both once per call signature: a layer repeats its shapes at every step) and dispatches
to a backend. Backends live in ``visionssm.kernels``: the pure-PyTorch
reference (CPU, oracle), the Triton kernels (picked for CUDA tensors) and the loop-free export form (picked
while exporting or tracing: ONNX, torch.export, AOTInductor).

Under ``torch.compile`` the Triton backend runs as the ``torch.library`` custom ops ``visionssm::selective_scan`` /
``selective_scan_backward`` (defined in ``kernels/triton_scan.py``, with fake implementations; the routes travel as
a string key), so a whole model traces through the scan without a graph break; eagerly the same kernels run through
a plain autograd Function (``triton_scan.run_scan``). The reference is plain PyTorch and runs as it is.
"""
from __future__ import annotations

import contextlib
import importlib.util
from typing import Callable, NamedTuple, Optional, Sequence

import torch

from visionssm.kernels.export_scan import selective_scan_export
from visionssm.kernels.reference import selective_scan_reference
from visionssm.kernels.routes import Route, RoutePlan, plan_routes
from visionssm.layers.cache import onnx_exporting

__all__ = ['selective_scan', 'BACKENDS', 'count_scan_flops']

# name -> (callable with selective_scan_reference's signature, predicate: can it run on these tensors?)
BACKENDS: dict[str, tuple[Callable, Callable[[torch.Tensor], bool]]] = {
    'reference': (selective_scan_reference, lambda u: True),
    # loop-free (chunked) form: what torch.export / ONNX / AOTInductor trace; see kernels/export_scan.py
    'export': (selective_scan_export, lambda u: True),
}
# The backends written here take Δ also as (B, P, K, W) blocks (expanded, where routes share one); others get K*W.
_BUILTIN = ('reference', 'export', 'triton')


def _exporting() -> bool:
    """Inside torch.export, an ONNX export or TorchScript tracing: 'auto' then takes the traceable 'export'
    backend, and the op skips the checks that need concrete sizes (they may be symbolic)."""
    return torch.compiler.is_exporting() or torch.jit.is_tracing() or onnx_exporting()


def _register_triton_backend():
    # The Triton kernels register only where their module exists; it decides itself (``supports``) which tensors
    # it can take, so a machine without triton or CUDA simply keeps the reference. Importing it defines the
    # torch.library ops (visionssm::selective_scan) that selective_scan calls for the 'triton' backend.
    if importlib.util.find_spec('visionssm.kernels.triton_scan') is None:
        return
    from visionssm.kernels import triton_scan
    BACKENDS['triton'] = (triton_scan.selective_scan_triton, triton_scan.supports)
    global _run_triton
    _run_triton = triton_scan.run_scan


_run_triton: Optional[Callable] = None   # triton_scan.run_scan where the backend registered


_register_triton_backend()
_flop_counters: list[list[int]] = []


class _MetaScan(torch.autograd.Function):
    """The scan on the meta device: an output of the right shape, and a gradient of each input's shape, so that a
    training step's graph reaches the layers before the scan (no values exist to compute)."""

    @staticmethod
    def forward(ctx, shape, dtype, *inputs):
        ctx.specs = [(t.shape, t.dtype) if t is not None else None for t in inputs]
        return inputs[0].new_empty(shape, dtype=dtype)

    @staticmethod
    def backward(ctx, grad):
        return (None, None) + tuple(grad.new_empty(spec[0], dtype=spec[1]) if spec is not None and need else None
                                    for spec, need in zip(ctx.specs, ctx.needs_input_grad[2:]))


@contextlib.contextmanager
def count_scan_flops():
    """Collect the FLOPs of every scan run inside the block: ``with count_scan_flops() as flops: ...; sum(flops)``.

    Per route: ``9*B*L*W*N + B*L*W`` (fvcore's selective-scan count, state-spaces/mamba#110, as VMamba reports).
    """
    flops: list[int] = []
    _flop_counters.append(flops)
    try:
        yield flops
    finally:
        _flop_counters.remove(flops)


# What the scan runs while exporting (``exported_scan``): the loop-free form, or the Triton op kept opaque.
_EXPORT_SCANS = ('export', 'triton')
_export_scan = ['export']


@contextlib.contextmanager
def exported_scan(backend: str):
    """While exporting inside the block, run the scan on ``backend``:

    * ``'export'`` (the default): the loop-free form, plain ops that every exporter traces, at dynamic sizes;
    * ``'triton'``: the custom op ``visionssm::selective_scan``, kept as one opaque node. A program or AOTInductor
      package then calls visionssm's Triton kernels, so ``import visionssm`` must run in the process that loads it,
      and the map sizes are those of the example (the op plans its routes for one size).
    """
    if backend not in _EXPORT_SCANS:
        raise ValueError(f'exported scan must be one of {_EXPORT_SCANS}, got {backend!r}')
    _export_scan.append(backend)
    try:
        yield
    finally:
        _export_scan.pop()


_INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_MERGES = ('sum', 'mean')


def selective_scan(
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: Optional[torch.Tensor] = None,
        D: Optional[torch.Tensor] = None,
        delta_bias: Optional[torch.Tensor] = None,
        *,
        routes: Sequence[Route],
        merge: str = 'sum',
        delta_softplus: bool = True,
        return_hidden: bool = False,
        out_channels: Optional[int] = None,
        out_dtype: Optional[torch.dtype] = None,
        backend: str = 'auto',
) -> torch.Tensor:
    """Selective scan of a channel-last map along ``routes``, merged into one output.

    With ``K = len(routes)`` routes of ``W = A.shape[0] // K`` channels each and ``N`` states:

    Args:
        u: input map ``(B, H, W_px, C_in)``, or a sequence ``(B, L, C_in)`` (a ``1 x L`` grid). Route k reads
            channels ``[in_offset_k, in_offset_k + W)``.
        delta: ``(B, H, W_px, K*W)`` (or ``(B, L, K*W)``): route k's Δ is channel block k, at every position. Or
            ``(B, H, W_px, K, W)`` (``(B, L, K, W)``) with any strides: routes that share one Δ take it expanded
            (``delta.unsqueeze(-2).expand(..., K, W)``), and neither the forward nor the saved tensors copy it.
        A: ``(K*W, N)`` state matrix (negative for a stable scan), float32 or float64.
        B: ``(B, H, W_px, K, N)`` (or ``(B, L, K, N)``): input projection of route k, shared by its channels.
        C: like ``B``; the output projection. Must be None when ``return_hidden``.
        D: ``(K*W,)`` skip, optional.
        delta_bias: ``(K*W,)`` added to Δ before the softplus, optional.
        routes: the scan paths (``visionssm.ops.cross_routes()`` etc.); a ``Route.concat`` of orders is one scan
            through them in turn, revisiting positions.
        merge: ``'sum'`` or ``'mean'`` of the routes that write an element.
        delta_softplus: apply softplus to Δ (+ bias).
        return_hidden: return the states ``h`` instead of ``y``: shape ``(..., C_out, N)``; C and D unused.
        out_channels: output channels; default ``max(out_offset) + W`` (over the segments of concatenated routes).
        out_dtype: default the input dtype; e.g. ``torch.float32`` to keep a low-precision scan's output in fp32.
        backend: ``'auto'`` (Triton on CUDA when available, else the reference; ``'export'`` while exporting or
            tracing, and under ``torch.compile`` where the reference would run) or a name in ``BACKENDS``.

    Returns:
        ``(B, H, W_px, C_out)`` (or ``(B, L, C_out)``), plus a trailing ``N`` with ``return_hidden``.
    """
    compiling, exporting = torch.compiler.is_compiling(), _exporting()
    # A layer calls the op with the same shapes at every step: the checks and the route plan depend only on the
    # call's signature (tensor types, shapes, dtypes and devices, the routes, the options), so they run once for each.
    # Compiled and exported graphs check with symbolic sizes, every time.
    signature = None if compiling or exporting else _signature(
        (u, delta, A, B, C, D, delta_bias), routes, merge, return_hidden, out_channels, out_dtype)
    checked = _CHECKED.get(signature) if signature is not None else None
    if checked is None:
        checked = _check(u, delta, A, B, C, D, delta_bias, routes, merge, return_hidden, out_channels, out_dtype,
                         with_plan=not (compiling or exporting))
        if signature is not None:
            if len(_CHECKED) >= _MAX_CHECKED:
                _CHECKED.clear()
            _CHECKED[signature] = checked
    seq, grid, in_channels, width, n_state, out_channels, key, plan = checked
    batch, height, width_px = grid
    if plan is not None:
        for counter in _flop_counters:
            counter.append(batch * sum(p.numel() for p in plan.positions) * width * (9 * n_state + 1))
    if u.device.type == 'meta':   # shape propagation and FLOP counting: nothing to compute
        shape = grid + (out_channels,) + ((n_state,) if return_hidden else ())
        # (with return_hidden the states are returned, and D takes no part)
        out = _MetaScan.apply(shape, out_dtype or u.dtype, u, delta, A, B, C, None if return_hidden else D,
                              delta_bias)
        return out.squeeze(1) if seq else out
    name = _select_backend(backend, u)
    if delta.dim() == u.dim() + 1 and name not in _BUILTIN:   # a backend of the user's takes the K*W layout
        delta = delta.flatten(-2)
    flat = lambda t: t.flatten(1, 2) if t is not None and not seq else t
    args = (flat(u), flat(delta), A, flat(B), flat(C), D, delta_bias)
    if name == 'triton':
        traced = torch.compiler.is_compiling() or exporting
        out = _run_triton(*args, None if traced else plan, key, height, width_px, out_channels, delta_softplus,
                          return_hidden, merge == 'mean', out_dtype)
    else:  # the reference (or a backend registered by the user): plain autograd
        if name == 'export' and (exporting or compiling):   # sizes may be symbolic: positions are built in the
            # graph, unchecked
            plan = RoutePlan(tuple(routes), height, width_px, width, in_channels, out_channels, (), 0)
        elif plan is None:
            plan = plan_routes(routes, height, width_px, width, in_channels, out_channels)
        out = BACKENDS[name][0](*args, plan, delta_softplus=delta_softplus, return_hidden=return_hidden,
                                mean=(merge == 'mean'), out_dtype=out_dtype)
    return out if seq else out.unflatten(1, (height, width_px))


class _Checked(NamedTuple):
    """What the checks of a call find: the sequence form?, the grid ``(B, H, W)``, the sizes, the routes' key and the
    route plan (None inside a compiled or exported graph)."""
    seq: bool
    grid: tuple
    in_channels: int
    width: int
    n_state: int
    out_channels: int
    key: str
    plan: Optional[RoutePlan]


_CHECKED: dict = {}      # signature of a call that passed the checks -> _Checked
_MAX_CHECKED = 1024      # distinct signatures kept (cleared when full: image sizes vary in detection)


def _signature(tensors, routes, *options) -> Optional[tuple]:
    """A hashable key of everything the checks read, or None for a call that cannot have one (then it is checked
    as it comes, and fails with the error that names the problem)."""
    if not isinstance(routes, (list, tuple)):
        return None
    key = [tuple(routes), *options]
    for t in tensors:
        if t is None:
            key.append(None)
        elif isinstance(t, torch.Tensor):
            key.append((type(t), t.shape, t.dtype, t.device))
        else:
            return None
    key = tuple(key)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _check(u, delta, A, B, C, D, delta_bias, routes, merge, return_hidden, out_channels, out_dtype,
           with_plan: bool) -> _Checked:
    """Check the arguments of ``selective_scan`` (errors name the argument and what was expected)."""
    seq = _check_tensor('u', u, (3, 4), '(B, H, W, C) map or (B, L, C) sequence')
    # a sequence is checked as a 1 x L map; the backends take it as it is (their flattened form)
    batch, height, width_px, in_channels = _map_shape(u, seq)
    grid = (batch, height, width_px)
    grid_str = f'(B, L) = {(batch, width_px)}' if seq else f'(B, H, W) = {grid}'
    if u.dtype not in _INPUT_DTYPES:
        raise TypeError(f'u must be float16, bfloat16, float32 or float64, got {u.dtype}')

    _check_tensor('A', A, (2,), '(K*W, N)')
    if not isinstance(routes, (list, tuple)) or not routes or not all(isinstance(r, Route) for r in routes):
        raise ValueError(f'routes must be a non-empty list of Route, got {routes!r}')
    num_routes = len(routes)
    if A.shape[0] % num_routes:
        raise ValueError(f'A has {A.shape[0]} rows, not a multiple of the {num_routes} routes (expected K*W rows)')
    width, n_state = A.shape[0] // num_routes, A.shape[1]
    if n_state < 1:
        raise ValueError('A must have at least one state column (N >= 1)')

    if isinstance(delta, torch.Tensor) and delta.dim() == u.dim() + 1:   # one (expandable) block per route
        delta = _as_map('delta', delta, seq, (5,), grid, grid_str, (num_routes, width), '(B, H, W, K, W)')
    else:
        delta = _as_map('delta', delta, seq, (4,), grid, grid_str, (num_routes * width,), '(B, H, W, K*W)')
    B = _as_map('B', B, seq, (5,), grid, grid_str, (num_routes, n_state), '(B, H, W, K, N)')
    if return_hidden:
        if C is not None:
            raise ValueError('C must be None with return_hidden=True (the hidden states are returned before C)')
    else:
        if C is None:
            raise ValueError('C is required unless return_hidden=True')
        C = _as_map('C', C, seq, (5,), grid, grid_str, (num_routes, n_state), '(B, H, W, K, N)')
    for name, t in (('D', D), ('delta_bias', delta_bias)):
        if t is not None:
            _check_tensor(name, t, (1,), '(K*W,)')
            if t.shape[0] != num_routes * width:
                raise ValueError(f'{name} must have shape ({num_routes * width},) = (K*W,), got {tuple(t.shape)}')

    named = [('u', u), ('delta', delta), ('B', B), ('C', C)]
    for name, t in named[1:]:
        if t is not None and t.dtype != u.dtype:
            raise TypeError(f'{name} must have the dtype of u ({u.dtype}), got {t.dtype}')
    for name, t in (('A', A), ('D', D), ('delta_bias', delta_bias)):
        if t is not None and t.dtype not in (torch.float32, torch.float64):
            raise TypeError(f'{name} must be float32 or float64 (parameters stay in full precision), got {t.dtype}')
    for name, t in named[1:] + [('A', A), ('D', D), ('delta_bias', delta_bias)]:
        if t is not None and t.device != u.device:
            raise ValueError(f'{name} is on {t.device} but u is on {u.device}: all tensors must share one device')
    if merge not in _MERGES:
        raise ValueError(f'merge must be one of {_MERGES}, got {merge!r}')
    if out_dtype is not None and out_dtype not in _INPUT_DTYPES:
        raise TypeError(f'out_dtype must be a floating dtype, got {out_dtype}')

    if out_channels is None:
        out_channels = max(s.out_offset for r in routes for s in r.parts) + width
    key = '|'.join(r.key for r in routes)   # plain strings: torch.compile folds this to a constant
    # the route plan (its errors name the route); a compiled or exported graph has symbolic sizes and builds none
    plan = plan_routes(routes, height, width_px, width, in_channels, out_channels) if with_plan else None
    return _Checked(seq, grid, in_channels, width, n_state, out_channels, key, plan)


def _select_backend(backend: str, u: torch.Tensor) -> str:
    if backend == 'auto':
        if _exporting():
            if _export_scan[-1] == 'triton' and not ('triton' in BACKENDS and BACKENDS['triton'][1](u)):
                raise ValueError(f'the Triton scan cannot be exported for {u.device} tensors of dtype {u.dtype}: '
                                 "export a CUDA model (fp32, bf16 or fp16), or with the 'export' scan")
            return _export_scan[-1]
        for name in ('triton', 'reference'):
            if name in BACKENDS and BACKENDS[name][1](u):
                # torch.compile where Triton does not run (CPU, float64): the loop-free export form, which traces
                # as one graph at any size; the reference's route planning and chunk loops would break it
                return 'export' if name == 'reference' and torch.compiler.is_compiling() else name
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; available: 'auto', {', '.join(map(repr, BACKENDS))}")
    if not BACKENDS[backend][1](u):
        raise ValueError(f'backend {backend!r} cannot run on {u.device} tensors of dtype {u.dtype}')
    return backend


def _check_tensor(name, t, ranks, expected) -> bool:
    """Type and rank check; returns True when ``t`` has the lowest allowed rank (the sequence form)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f'{name} must be a torch.Tensor {expected}, got {type(t).__name__}')
    if t.dim() not in ranks:
        raise ValueError(f'{name} must be {expected} (rank {" or ".join(map(str, ranks))}), '
                         f'got rank {t.dim()} with shape {tuple(t.shape)}')
    return len(ranks) > 1 and t.dim() == ranks[0]


def _map_shape(t: torch.Tensor, seq: bool) -> tuple:
    """The shape of ``t`` as a map: a sequence ``(B, L, ...)`` is a ``(B, 1, L, ...)`` map."""
    return (t.shape[0], 1) + tuple(t.shape[1:]) if seq else tuple(t.shape)


def _as_map(name, t, seq, ranks, grid, grid_str, tail, expected):
    """Check a per-position tensor against the map's grid; returns it unchanged."""
    if seq:
        ranks = tuple(r - 1 for r in ranks)
        expected = expected.replace('H, W', 'L')
    _check_tensor(name, t, ranks, expected)
    shape = _map_shape(t, seq)
    if shape[:3] != grid:
        raise ValueError(f'{name} must match u in {grid_str}, got {name} of shape {tuple(t.shape)}')
    if shape[3:] != tail:
        raise ValueError(f'{name} must have trailing shape {tail} for {expected}, got {shape[3:]}')
    return t


# --- torch.fx and TorchScript ----------------------------------------------------------------------------------
# Under torch.fx the op is one leaf node for every model: it is in timm's notrace registry, which timm's FX feature
# extraction (``features_only=True, feature_cls='fx'``, ``timm.models.create_feature_extractor``) and any tracer
# given ``timm.models.get_notrace_functions()`` wrap. Its checks, route planning and dispatch then run when the
# graph runs, on real tensors; the routes enter the graph as ``route_from_key`` nodes (``Route.__fx_create_arg__``).
from timm.models import register_notrace_function  # noqa: E402

register_notrace_function(selective_scan)

TORCHSCRIPT_UNSUPPORTED = (
    'visionssm models cannot be compiled with TorchScript: the selective-scan op they all run '
    '(visionssm.ops.selective_scan) is Python that torch.jit.script cannot compile. It plans its Route objects '
    'into index tensors per map size and dispatches to the Triton kernels through Python autograd functions and '
    'torch.library ops; a scripted model could only call it back in Python (@torch.jit.ignore) and could then not '
    'be saved with torch.jit.save. Use torch.compile, or torch.fx (the op is a leaf of timm\'s FX tracing).'
)


def _refuse_torchscript():
    raise RuntimeError(TORCHSCRIPT_UNSUPPORTED)


# torch.jit.script calls a function's __prepare_scriptable__ before compiling it: scripting anything that reaches
# the op (the op itself, or an FX graph of a model) stops with the reason instead of a compiler error.
selective_scan.__prepare_scriptable__ = _refuse_torchscript
