"""Depthwise conv1d along the tokens of a channel-last sequence, with its SiLU: the Triton kernels of
``kernels/conv1d.py`` on CUDA, PyTorch elsewhere.

``depthwise_conv1d(x, weight, bias, left, repeats)`` convolves each channel of ``x (B, L, C)`` over the tokens with
its own ``K`` taps, ``left`` zeros of padding before the sequence and ``K - 1 - left`` after it (causal: ``left =
K - 1``; 'same': ``K // 2`` for odd K), and returns ``(B, L, repeats*C)``: ``repeats`` convs of every channel with
different weights, output channel ``r*C + c`` reading channel ``c`` (what a grouped conv over ``cat([x] * repeats)``
gives; Vim runs its forward and backward direction so).

On CUDA (not while tracing or exporting) it is one Triton kernel forward and two backward, which read ``x`` in place
(any row stride) and keep nothing but ``x`` and the weights for the backward. ``VISIONSSM_CONV1D=torch`` selects
the PyTorch form, which also serves the CPU and graph capture.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch.autograd.function import once_differentiable

from visionssm.kernels import conv1d as conv_kernels

from .cache import tracing

__all__ = ['depthwise_conv1d']


class _Conv1dTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, left, repeats, silu):
        ctx.save_for_backward(x, weight, bias)
        ctx.conv = left, repeats, silu
        return conv_kernels.conv1d_forward(x, weight, bias, left, repeats, silu)

    @staticmethod
    @once_differentiable   # the kernels build no graph: a second derivative would be silently wrong
    def backward(ctx, grad):
        x, weight, bias = ctx.saved_tensors
        left, repeats, silu = ctx.conv
        need = ctx.needs_input_grad
        dx, dw, db = conv_kernels.conv1d_backward(grad, x, weight, bias, left, repeats, silu, need_x=need[0],
                                                  need_weights=need[1] or need[2])
        return (dx, dw.to(weight.dtype) if need[1] else None, db.to(bias.dtype) if need[2] else None,
                None, None, None)


def _torch_form(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], left: int, repeats: int,
                silu: bool) -> torch.Tensor:
    taps = weight.shape[-1]
    if repeats > 1:
        x = torch.cat([x] * repeats, dim=-1)
    channels = x.shape[-1]
    # (B, L, C) seen as a (B, C, 1, L) map is channels-last (with L as the height a size-1 width would hide the
    # layout): the conv keeps it, so its output viewed back as (B, L, C) needs no copy. Padded explicitly only where
    # the two sides differ.
    x = x.transpose(1, 2).unsqueeze(2)
    right = taps - 1 - left
    if left != right:
        x = F.pad(x, (left, right))
    y = F.conv2d(x, weight.view(channels, 1, 1, taps), bias, padding=(0, left) if left == right else 0,
                 groups=channels)
    if silu:
        y = F.silu(y)
    return y.squeeze(2).transpose(1, 2).contiguous()


@register_notrace_function
def depthwise_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     left: Optional[int] = None, repeats: int = 1, silu: bool = True) -> torch.Tensor:
    """``SiLU(conv)`` (``silu=False``: the conv alone) of ``x (B, L, C)`` along L, depthwise, contiguous
    ``(B, L, repeats*C)`` in ``x``'s dtype (on the PyTorch form under autocast, autocast's: pass ``x`` in it, as
    the models do, for the same result on both).

    Args:
        x: channel-last tokens; any strides (a view of a wider projection is read in place on CUDA).
        weight: ``(repeats*C, K)`` or ``(repeats*C, 1, K)`` (a ``Conv1d``'s), in the dtype the conv runs in.
        bias: None or ``(repeats*C,)``.
        left: zeros of padding before the sequence (default ``K - 1``: causal); ``K - 1 - left`` after it.
        repeats: convs per input channel; output channel ``r*C + c`` reads channel ``c``.
    A torch.fx leaf (it picks its path by device and grad mode).
    """
    if weight.dim() == 3:   # a Conv1d's (C, 1, K)
        if weight.shape[1] != 1:
            raise ValueError(f'depthwise_conv1d: a 3-D weight must be a depthwise Conv1d\'s (C, 1, K), got '
                             f'{tuple(weight.shape)}')
        weight = weight.flatten(1)
    taps = weight.shape[-1]
    left = taps - 1 if left is None else left
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != repeats * x.shape[-1]:
        raise ValueError(f'depthwise_conv1d: x (B, L, C) and weight ({repeats} * C, K) expected, got x '
                         f'{tuple(x.shape)} and weight {tuple(weight.shape)}')
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f'depthwise_conv1d: bias must be ({weight.shape[0]},), got {tuple(bias.shape)}')
    if not 0 <= left < taps:
        raise ValueError(f'depthwise_conv1d: left padding {left} must be in [0, {taps - 1}] for {taps} taps')
    if not tracing() and conv_kernels.supports(x, taps, repeats):
        if x.stride(-1) != 1:
            x = x.contiguous()
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
            return _Conv1dTriton.apply(x, weight, bias, left, repeats, silu)
        return conv_kernels.conv1d_forward(x, weight, bias, left, repeats, silu)
    return _torch_form(x, weight, bias, left, repeats, silu)
