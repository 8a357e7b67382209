"""Fused building blocks shared by families: one autograd node or one GEMM where the plain form takes several
kernels, and less kept for the backward. Each equals its plain form (tests/test_*_lean.py check the gradients in
float64)."""
from __future__ import annotations

import contextlib
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function

from .cache import onnx_exporting, tracing

__all__ = ['autocast_dtype', 'autocast_enabled', 'autocast_off', 'block_diagonal', 'conv_silu', 'group_projections']


class _BlockDiagonal(torch.autograd.Function):
    """``block_diagonal`` as one autograd node: zeros with the blocks copied onto their diagonal; the gradient is
    the diagonal blocks of the incoming one (a view, no kernel)."""

    @staticmethod
    def forward(ctx, weight):
        *lead, groups, out_dim, in_dim = ctx.shape = weight.shape
        dense = weight.new_zeros(*lead, groups, out_dim, groups, in_dim)
        dense.diagonal(0, -4, -2).copy_(weight.movedim(-3, -1))
        return dense.view(*lead, groups * out_dim, groups * in_dim)

    @staticmethod
    def backward(ctx, grad):
        *lead, groups, out_dim, in_dim = ctx.shape
        return grad.reshape(*lead, groups, out_dim, groups, in_dim).diagonal(0, -4, -2).movedim(-1, -3)


def block_diagonal(weight: torch.Tensor) -> torch.Tensor:
    """``(..., G, O, I)`` per-group weights → ``(..., G*O, G*I)``: group g's block at rows ``g*O``, columns ``g*I``,
    zeros elsewhere. Under autograd one node (``_BlockDiagonal``); else (and while compiling or exporting) a
    product with the identity."""
    if torch.is_grad_enabled() and weight.requires_grad and not (
            torch.compiler.is_compiling() or torch.compiler.is_exporting()):
        return _BlockDiagonal.apply(weight)
    groups = weight.shape[-3]
    eye = torch.eye(groups, dtype=weight.dtype, device=weight.device)
    return (weight.unsqueeze(-2) * eye[:, None, :, None]).flatten(-4, -3).flatten(-2)


def autocast_enabled(x: torch.Tensor) -> bool:
    """Whether autocast is on for ``x``'s device type."""
    device = x.device.type
    if device in ('cuda', 'cpu'):
        # autocast always exists there: torch.amp.is_autocast_available is a builtin that Dynamo cannot trace (torch
        # 2.11), and each call broke a compiled VMamba-T into another graph (60 breaks, benchmarks/compile_probe.py)
        return torch.is_autocast_enabled(device)
    return torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)


def autocast_off(x: torch.Tensor):
    """A context with autocast switched off for ``x``'s device type where it is on (nothing otherwise): small ops
    on float32 parameters then stay in float32, with none of autocast's casts around them."""
    return torch.autocast(x.device.type, enabled=False) if autocast_enabled(x) else contextlib.nullcontext()


@register_notrace_function
def autocast_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast runs ``x``'s GEMMs in (bfloat16 / float16), or ``x``'s own where autocast is off."""
    return torch.get_autocast_dtype(x.device.type) if autocast_enabled(x) else x.dtype


@register_notrace_function
def group_projections(
        x: torch.Tensor,
        x_proj_weight: torch.Tensor,
        dt_projs_weight: torch.Tensor,
        d_state: int,
        dense: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Δ ``(B, H, W, G*D)``, B and C ``(B, H, W, G, N)`` of the inner map ``x (B, H, W, G*D)``, group g from channel
    group g with ``x_proj_weight[g] (R+2N, D)`` and ``dt_projs_weight[g] (D, R)``.

    As ``visionssm.layers.ss2d.route_projections``: dt_proj composed with the first R rows of x_proj into a D x D
    matrix per group, and all groups' Δ, B and C from one block-diagonal GEMM; Δ, B and C are strided views of its
    output, which the scan reads in place. ``dense``: that weight already built (``group_weights``). On the meta
    device, the original two low-rank steps per group.
    """
    groups, rank, n = x_proj_weight.shape[0], dt_projs_weight.shape[-1], d_state
    if x.device.type == 'meta':
        x_dbl = torch.einsum('...gd,gcd->...gc', x.unflatten(-1, (groups, x_proj_weight.shape[-1])), x_proj_weight)
        dts, B, C = torch.split(x_dbl, [rank, n, n], dim=-1)
        return torch.einsum('...gr,gdr->...gd', dts, dt_projs_weight).flatten(-2), B, C
    if dense is None:
        w_dt, w_bc = x_proj_weight.split([rank, 2 * n], dim=1)   # split, not slices: one op, and a cat backward
        dense = torch.cat([block_diagonal(torch.matmul(dt_projs_weight, w_dt)), block_diagonal(w_bc)])
    dts, BC = F.linear(x, dense).split([x.shape[-1], groups * 2 * n], dim=-1)
    B, C = BC.unflatten(-1, (groups, 2 * n)).split(n, dim=-1)
    return dts, B, C


class _ConvSiLU(torch.autograd.Function):
    """``conv_silu`` whose backward recomputes the convolution's output (one depthwise conv) instead of keeping it:
    the convolution keeps its input anyway."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding, groups):
        ctx.save_for_backward(x, weight, bias)
        ctx.conv = (padding, groups)
        return F.silu(F.conv2d(x, weight.to(x.dtype), _cast(bias, x.dtype), padding=padding, groups=groups))

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias = ctx.saved_tensors
        padding, groups = ctx.conv
        w = weight.to(x.dtype)
        y = F.conv2d(x, w, _cast(bias, x.dtype), padding=padding, groups=groups)
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            torch.ops.aten.silu_backward(grad, y), x, w, None if bias is None else bias.shape, (1, 1), padding, (1, 1),
            False, (0, 0), groups, (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None))
        return grad_x, _cast(grad_w, weight.dtype), _cast(grad_b, None if bias is None else bias.dtype), None, None


def _cast(t: Optional[torch.Tensor], dtype: Optional[torch.dtype]) -> Optional[torch.Tensor]:
    return None if t is None else t.to(dtype)


@register_notrace_function
def conv_silu(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``SiLU(conv(x))`` for a stride-1 conv with bias, in x's dtype (autocast's choice for the conv). A torch.fx
    leaf (it picks its autograd by grad mode)."""
    if not torch.is_grad_enabled() or tracing() or onnx_exporting():
        return F.silu(conv(x))
    return _ConvSiLU.apply(x, conv.weight, conv.bias, conv.padding, conv.groups)
