"""Weights derived from parameters (composed projections, ``A = -exp(A_log)``, fused kernels, autocast's casts),
kept between calls while autograd is off.

An eager inference step is bound by the host's kernel launches at small batches; recomposing a layer's weights on
every call costs several launches per layer for values that only change when a parameter does. While gradients
are enabled, while tracing (torch.fx, TorchScript), compiling or exporting, nothing is kept: the weights are
computed in the graph as usual.

``CastCachedLinear`` / ``CastCachedConv2d`` apply this to autocast: under ``torch.autocast`` every call of a linear
layer or convolution casts its float32 weight (and bias) to the autocast dtype again, one kernel launch each, on
every forward; while inferring these layers keep the cast copy instead (the same values: the same cast, done once),
for the memory of one low-precision copy of their weights.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence, Tuple, TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from visionssm.kernels.launch import held

__all__ = ['tracing', 'exporting', 'onnx_exporting', 'cached_while_inferring', 'cached_constants', 'autocast_weights',
           'CastCachedLinear', 'CastCachedConv2d']

T = TypeVar('T')


def _fx_tracing_flag() -> Callable[[], bool]:
    """torch.fx's "symbolically tracing" flag as a cheap read. ``is_fx_symbolic_tracing()`` costs more than the
    other tracing checks together (~0.4 µs), and the checks run several times per layer call on the host path
    of an eager step; its public form is the fallback where torch keeps the flag elsewhere."""
    tls = getattr(torch.fx._symbolic_trace, '_is_fx_tracing_tls', None)
    if tls is None:
        return torch.fx._symbolic_trace.is_fx_symbolic_tracing
    # the thread's own attributes: getattr with a default raises and catches an AttributeError in every thread
    # that never traced (~0.4 µs)
    return lambda: tls.__dict__.get('flag', False)


def _onnx_export_flags() -> Callable[[], bool]:
    """``torch.onnx.is_in_onnx_export()`` without its two imports at every call (~1 µs): the same two flags, read
    directly; the public function where torch keeps them elsewhere."""
    try:
        from torch.onnx._internal.exporter import _flags
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
    except ImportError:
        return torch.onnx.is_in_onnx_export
    if not (hasattr(GLOBALS, 'in_onnx_export') and hasattr(_flags, '_is_onnx_exporting')):
        return torch.onnx.is_in_onnx_export
    return lambda: GLOBALS.in_onnx_export or _flags._is_onnx_exporting


_fx_tracing = _fx_tracing_flag()
_onnx_exporting = _onnx_export_flags()


def onnx_exporting() -> bool:
    """Inside an ONNX export: ``torch.onnx.is_in_onnx_export()``, cheaper to call eagerly. Under ``torch.compile``
    the public function itself, which Dynamo knows; the flags' module is one it refuses to trace (a graph break)."""
    if torch.compiler.is_compiling():
        return torch.onnx.is_in_onnx_export()
    return _onnx_exporting()


def tracing() -> bool:
    """Inside ``torch.compile``, an export, TorchScript tracing or ``torch.fx`` symbolic tracing."""
    # torch.fx's flag last: is_fx_symbolic_tracing() is the flag and "not compiling", checked first here
    return (torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()
            or _fx_tracing())


def exporting() -> bool:
    """Inside ``torch.export`` (also under the ONNX exporter), where sizes may be symbolic."""
    return torch.compiler.is_exporting()


def cached_constants(maxsize: int = 64) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """``functools.lru_cache`` for functions that build constant tensors from sizes (gather indices, codes) reused
    by every later call: the function runs outside inference mode, so that a tensor first built under
    ``torch.inference_mode()`` can still be saved for the backward of a later training step (an inference tensor
    cannot). A CUDA graph captured meanwhile keeps what it looked up (``visionssm.kernels.launch.held``)."""
    def wrap(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.lru_cache(maxsize=maxsize)
        def build(*args):
            with torch.inference_mode(False):
                return fn(*args)

        @functools.wraps(fn)
        def cached(*args):
            return held(build(*args))
        cached.cache_clear, cached.cache_info = build.cache_clear, build.cache_info
        return cached
    return wrap


def cached_while_inferring(module: nn.Module, params: Sequence[torch.Tensor], dtype: torch.dtype,
                           build: Callable[[], T]) -> T:
    """``build()``, kept on ``module`` while autograd is off and reused until a parameter in ``params`` changes
    (updated in place, e.g. by ``load_state_dict`` or an optimizer, or replaced) or ``dtype`` does.

    The key holds each parameter's storage address, version counter and device, so it costs no device work.
    """
    if torch.is_grad_enabled() or tracing():
        return build()
    return _kept(module, params, dtype, build)


def _kept(module: nn.Module, params: Sequence[torch.Tensor], dtype: torch.dtype, build: Callable[[], T]) -> T:
    # cached_while_inferring past its checks; runs once per layer call, so it is kept to a few attribute reads
    key = (dtype, [(p.data_ptr(), p._version, p.device) for p in params])
    cache = module.__dict__.get('_inference_cache')   # a plain attribute: not a buffer, not in the state dict
    if cache is not None and cache[0] == key:
        return cache[1]
    value = build()
    if not any(p.device.type == 'meta' for p in params):   # meta tensors (FLOP counting) share no values
        module.__dict__['_inference_cache'] = (key, value)
    return value


def autocast_weights(module: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]
                     ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``module``'s ``weight`` and ``bias`` for an input ``x``: cast to autocast's dtype and kept on ``module`` while
    inferring; as they are where autocast would not cast them (autograd on, tracing, autocast off for ``x``'s
    device, float64 or already cast weights, weights on another device). Autocast leaves the cast weights as they
    are and casts ``x`` as before, so the result is the same.

    It runs at every call of a linear layer, so its checks are ordered cheapest first and ``tracing()`` is spelled
    out: torch.fx's flag costs more to read than the rest together, and a torch.fx input is a ``Proxy``.
    """
    if (torch.is_grad_enabled() or isinstance(x, torch.fx.Proxy) or torch.compiler.is_compiling()
            or torch.compiler.is_exporting() or torch.jit.is_tracing()):
        return weight, bias
    device = x.device.type
    if device == 'meta' or not torch.is_autocast_enabled(device):   # autocast knows no meta device (it raises)
        return weight, bias
    dtype = torch.get_autocast_dtype(device)
    if weight.dtype in (dtype, torch.float64) or x.dtype == torch.float64 or weight.device.type != device:
        return weight, bias
    params = (weight,) if bias is None else (weight, bias)
    return _kept(module, params, dtype, lambda: (weight.to(dtype), None if bias is None else bias.to(dtype)))


class CastCachedLinear(nn.Linear):
    """``nn.Linear`` whose weights, cast by autocast, are kept while inferring (``autocast_weights``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, *autocast_weights(self, x, self.weight, self.bias))


class CastCachedConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose weights, cast by autocast, are kept while inferring (``autocast_weights``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, *autocast_weights(self, x, self.weight, self.bias))
