"""The optimizer step's host work, cut: parameter groups merged by their options, and a multi-tensor EMA.

``GroupedOptimWrapperConstructor``: mmengine's optimizer constructor with one parameter group per set of options.

With a ``paramwise_cfg`` (no weight decay on norms and biases, as the papers' recipes do), mmengine's
``DefaultOptimWrapperConstructor`` gives every parameter a group of its own: 276 for VMamba-T. PyTorch's optimizers
then run their per-group work once per parameter (AdamW's multi-tensor update, the learning-rate schedule, the loss
scaler's unscaling), which is host time on every step. This constructor computes the same
per-parameter options and then merges the parameters whose options are equal, in order of appearance. The updates are
those of the per-parameter groups; an optimizer state saved with one grouping does not load into the other.

Use it in an ``optim_wrapper`` with ``constructor='visionssm.GroupedOptimWrapperConstructor'``.

``ForeachExponentialMovingAverage``: mmengine's ``ExponentialMovingAverage`` (the ``EMAHook`` default), whose update
is one ``lerp_`` per parameter and one ``copy_`` per buffer at every step, as multi-tensor operations: a few kernel
launches per step instead of one per tensor, and without reading the ``steps`` buffer (on the GPU) to decide
what a step does: mmengine's tests ``self.steps == 0`` and ``self.steps % interval`` on it, which makes the host
wait for the GPU at every step. The step count is mirrored on the host (read once, and again after a state dict is
loaded). The same values. Use it as
``dict(type='EMAHook', ema_type='visionssm.ForeachExponentialMovingAverage', momentum=...)``.
"""
from __future__ import annotations

import types
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from mmengine.model import ExponentialMovingAverage
from mmengine.optim import DefaultOptimWrapperConstructor

from ..registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS
from .hooks import defer_scalar

__all__ = ['GroupedOptimWrapperConstructor', 'ForeachExponentialMovingAverage']


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class GroupedOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` whose parameter groups are merged by their options (see the module), and
    whose wrapper logs the clipped gradient norm without reading it on the host at every step (mmengine's
    ``float(grad_norm)`` made the host wait for the GPU's backward; ``hooks.DeferredRuntimeInfoHook`` reads it with
    the other scalars, and without that hook it is read at once, as before)."""

    def __call__(self, model: nn.Module):
        wrapper = super().__call__(model)
        if hasattr(wrapper, '_clip_grad') and hasattr(wrapper, 'clip_func'):
            wrapper._clip_grad = types.MethodType(_clip_grad_deferred, wrapper)
        return wrapper

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '',
                   is_dcn_module: Optional[Union[int, float]] = None) -> None:
        if prefix:   # the recursion over submodules: per-parameter groups, merged once at the top
            return super().add_params(params, module, prefix, is_dcn_module)
        single: List[dict] = []
        super().add_params(single, module, prefix, is_dcn_module)
        merged, seen = {}, set()
        for group in single:
            for p in group['params']:
                # mmengine's groups hold a shared (tied) parameter twice unless bypass_duplicate; as separate groups
                # torch refuses them, merged into one it would update the parameter twice per step: refuse here
                if id(p) in seen:
                    raise ValueError('a parameter appears twice in the model (tied weights?): set '
                                     "paramwise_cfg=dict(bypass_duplicate=True) to keep its first occurrence")
                seen.add(id(p))
            options = {k: v for k, v in group.items() if k != 'params'}
            key = tuple(sorted((k, _option_key(v)) for k, v in options.items()))
            if key not in merged:
                merged[key] = dict(options, params=[])
                params.append(merged[key])
            merged[key]['params'].extend(group['params'])


def _clip_grad_deferred(self) -> None:
    # mmengine's OptimWrapper._clip_grad, with the norm handed to defer_scalar instead of float()
    params = [p for group in self.optimizer.param_groups for p in group['params']
              if p.requires_grad and p.grad is not None]
    if params:
        norm = self.clip_func(params, **self.clip_grad_kwargs)
        if norm is not None:   # clip_grad_value_ returns None
            defer_scalar(self.message_hub, f'train/{self.grad_name}', norm)


def _option_key(value):
    """A hashable stand-in for an option's value: plain values as they are, anything else by identity (never
    merged with another object, whatever its printed form)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)) and all(v is None or isinstance(v, (bool, int, float, str)) for v in value):
        return tuple(value)
    return ('object', id(value))

def _by_device_and_dtype(pairs) -> Dict[tuple, Tuple[List[torch.Tensor], List[torch.Tensor]]]:
    groups: Dict[tuple, Tuple[List[torch.Tensor], List[torch.Tensor]]] = {}
    for dst, src in pairs:
        dsts, srcs = groups.setdefault((dst.device, dst.dtype, src.dtype), ([], []))
        dsts.append(dst)
        srcs.append(src)
    return groups


@MODELS.register_module()
class ForeachExponentialMovingAverage(ExponentialMovingAverage):
    """``ExponentialMovingAverage`` updated with multi-tensor operations (see the module)."""

    _host_steps: Optional[int] = None   # ``steps`` as a Python int; None: read it from the buffer

    def _load_from_state_dict(self, *args, **kwargs):
        self._host_steps = None   # a loaded (resumed) state brings its own count
        return super()._load_from_state_dict(*args, **kwargs)

    def update_parameters(self, model: nn.Module) -> None:
        if self._host_steps is None:
            self._host_steps = int(self.steps)
        first, between = self._host_steps == 0, self._host_steps % self.interval != 0
        source = model.state_dict() if self.update_buffers else dict(model.named_parameters())
        pairs = [(avg.data, source[name].data.to(avg.device)) for name, avg in self.avg_parameters.items()
                 if first or (avg.dtype.is_floating_point and not between)]
        with torch.no_grad():
            for averaged, current in _by_device_and_dtype(pairs).values():
                if first:    # the first step copies every tensor, the integer ones too
                    torch._foreach_copy_(averaged, current)
                else:
                    torch._foreach_lerp_(averaged, current, self.momentum)
            if not self.update_buffers:   # the buffers follow the source model's at every step, as in mmengine
                pairs = [(avg.data, src.data.to(avg.device)) for avg, src in zip(self.module.buffers(), model.buffers())]
                for averaged, current in _by_device_and_dtype(pairs).values():
                    torch._foreach_copy_(averaged, current)
        self.steps += 1
        self._host_steps += 1
