"""Weights derived from parameters (composed projections, ``A = -exp(A_log)``, fused kernels), kept between calls
while autograd is off.

An eager inference step is bound by the host's kernel launches at small batches; recomposing a layer's weights on
every call costs several launches per layer for values that only change when a parameter does. While gradients
are enabled, while tracing (torch.fx, TorchScript), compiling or exporting, nothing is kept: the weights are
computed in the graph as usual.
"""
from __future__ import annotations

from typing import Callable, Sequence, Tuple, TypeVar

import torch
import torch.nn as nn

__all__ = ['tracing', 'cached_while_inferring']

T = TypeVar('T')


def tracing() -> bool:
    """Inside ``torch.compile``, an export, TorchScript tracing or ``torch.fx`` symbolic tracing."""
    return (torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()
            or torch.fx._symbolic_trace.is_fx_symbolic_tracing())


def cached_while_inferring(module: nn.Module, params: Sequence[torch.Tensor], dtype: torch.dtype,
                           build: Callable[[], T]) -> T:
    """``build()``, kept on ``module`` while autograd is off and reused until a parameter in ``params`` changes
    (updated in place, e.g. by ``load_state_dict`` or an optimizer, or replaced) or ``dtype`` does.

    The key holds each parameter's storage address, version counter and device, so it costs no device work.
    """
    if torch.is_grad_enabled() or tracing() or any(p.device.type == 'meta' for p in params):
        return build()
    key: Tuple = (dtype, tuple((p.data_ptr(), p._version, p.device) for p in params))
    cache = module.__dict__.get('_inference_cache')   # a plain attribute: not a buffer, not in the state dict
    if cache is not None and cache[0] == key:
        return cache[1]
    value = build()
    module.__dict__['_inference_cache'] = (key, value)
    return value
