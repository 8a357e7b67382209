"""LayerNorm for narrow rows, and RMSNorm: the Triton kernels of ``kernels/layer_norm.py`` on CUDA, PyTorch elsewhere.

``layer_norm`` normalizes ``x`` over consecutive segments of ``width`` channels of its last dimension (the whole
last dimension by default), each of the G = ``x.shape[-1] / width`` segments with its own affine, and writes the
result in ``out_dtype``: a norm whose output a GEMM reads under autocast can hand it over in the GEMM's dtype, with
no float32 map written and cast. Statistics are float32 either way.

``rms_norm`` (and the ``RMSNorm`` module, Vim's) does the same for RMSNorm over the last dimension, computed in at
least float32.

``gated_layer_norm`` is the mixers' output norm and gate, ``layer_norm(y) * SiLU(z)`` in ``z``'s dtype (VMamba v0,
EfficientVMamba, GroupMamba, Spatial-Mamba); ``layer_norm_gate`` / ``layer_norm_gate_backward`` are its two halves for
autograd functions that also fuse the projection after it. The product is computed at the norm's precision and
rounded once, as the official code rounds its float32 product when out_proj reads it; the backward keeps only ``y``
and ``z`` and recomputes the statistics.

On CUDA (not while tracing or exporting) each is one Triton kernel forward and one backward, which keeps only ``x``,
the weights and float32 statistics per row. ``VISIONSSM_LAYER_NORM=torch`` selects the PyTorch form, which also
serves the CPU and graph capture.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch.autograd.function import once_differentiable

from visionssm.kernels import layer_norm as norm_kernels

from .cache import tracing
from .fused import autocast_dtype, autocast_enabled

__all__ = ['RMSNorm', 'layer_norm', 'rms_norm', 'norm_to', 'gated_layer_norm', 'layer_norm_gate',
           'layer_norm_gate_backward']

_LOW_PRECISION = (torch.float16, torch.bfloat16)


class _LayerNormTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, width, eps, out_dtype):
        groups = x.shape[-1] // width
        w = None if weight is None else weight.view(groups, width)
        b = None if bias is None else bias.view(groups, width)
        y, mean, rstd = norm_kernels.layer_norm_forward(x, width, w, b, eps, out_dtype)
        ctx.save_for_backward(x, w, mean, rstd)
        ctx.width, ctx.groups, ctx.has_bias = width, groups, bias is not None
        ctx.dtypes = (None if weight is None else weight.dtype, None if bias is None else bias.dtype)
        return y

    @staticmethod
    @once_differentiable   # the kernels build no graph: a second derivative would be silently wrong
    def backward(ctx, grad):
        x, w, mean, rstd = ctx.saved_tensors
        need = ctx.needs_input_grad
        dx, dw, db = norm_kernels.layer_norm_backward(grad, x, ctx.width, w, mean, rstd, ctx.groups,
                                                      need_weight_grads=need[1] or need[2])
        grad_w = dw.flatten().to(ctx.dtypes[0]) if need[1] else None
        grad_b = db.flatten().to(ctx.dtypes[1]) if need[2] and ctx.has_bias else None
        return dx if need[0] else None, grad_w, grad_b, None, None, None


class _RMSNormTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps, out_dtype):
        width = x.shape[-1]
        w = None if weight is None else weight.view(1, width)
        y, _, rstd = norm_kernels.layer_norm_forward(x, width, w, None, eps, out_dtype, rms=True)
        ctx.save_for_backward(x, w, rstd)
        ctx.weight_dtype = None if weight is None else weight.dtype
        return y

    @staticmethod
    @once_differentiable   # the kernels build no graph: a second derivative would be silently wrong
    def backward(ctx, grad):
        x, w, rstd = ctx.saved_tensors
        need = ctx.needs_input_grad
        dx, dw, _ = norm_kernels.layer_norm_backward(grad, x, x.shape[-1], w, None, rstd,
                                                     need_weight_grads=need[1], rms=True)
        return dx if need[0] else None, dw.flatten().to(ctx.weight_dtype) if need[1] else None, None, None


@register_notrace_function
def rms_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None, eps: float = 1e-5,
             out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """RMSNorm of ``x`` over its last dimension, computed in at least float32 (float64 stays float64), the weight
    cast to that precision, written in ``out_dtype`` (default: the precision computed in). On CUDA (not while
    tracing or exporting) one Triton kernel each way (``kernels/layer_norm.py``), which writes ``out_dtype``
    directly: a GEMM's low-precision input without a float32 map and its cast. A torch.fx leaf."""
    width = x.shape[-1]
    if weight is not None and weight.numel() != width:
        raise ValueError(f'rms_norm: weight has {weight.numel()} elements, the last dimension {width}')
    compute = torch.float32 if x.dtype in _LOW_PRECISION else x.dtype
    out_dtype = out_dtype or compute
    if not tracing() and norm_kernels.supports(x, width):
        if torch.is_grad_enabled() and (x.requires_grad or (weight is not None and weight.requires_grad)):
            return _RMSNormTriton.apply(x.contiguous(), weight, eps, out_dtype)
        # the kernel reads the (width,) weight as is: no view (an op of host time per call)
        return norm_kernels.layer_norm_forward(x.contiguous(), width, weight, None, eps, out_dtype, stats=False,
                                               rms=True)[0]
    x = x.to(compute)
    return F.rms_norm(x, (width,), _to(weight, compute), eps).to(out_dtype)


class RMSNorm(nn.Module):
    """RMSNorm without bias, computed in at least float32 (the precision of Mamba's fused Triton norm), output in
    the weight's dtype; ``norm_to`` hands it to a GEMM in autocast's dtype instead."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, self.weight.dtype)


def _to(t: Optional[torch.Tensor], dtype: Optional[torch.dtype]) -> Optional[torch.Tensor]:
    return None if t is None or dtype is None else t.to(dtype)


@register_notrace_function
def layer_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
               eps: float = 1e-5, width: Optional[int] = None, out_dtype: Optional[torch.dtype] = None
               ) -> torch.Tensor:
    """LayerNorm of ``x`` over segments of ``width`` channels (default: all of the last dimension), in ``out_dtype``
    (default: autocast's float32 under autocast, else ``x``'s dtype). Asked for in ``x``'s low-precision dtype, the
    PyTorch form also computes in it (float32 statistics), as a model converted with ``.half()`` does.

    ``weight`` and ``bias`` (None or ``(x.shape[-1],)``): segment g's affine is ``weight[g*width:(g+1)*width]``.
    With ``width`` the last dimension this is ``F.layer_norm(x, x.shape[-1:], weight, bias, eps)`` as autocast runs
    it, cast to ``out_dtype``. A torch.fx leaf.
    """
    channels = x.shape[-1]
    width = width or channels
    if channels % width:
        raise ValueError(f'layer_norm: the last dimension ({channels}) is not a multiple of width {width}')
    for name, t in (('weight', weight), ('bias', bias)):
        if t is not None and t.numel() != channels:
            raise ValueError(f'layer_norm: {name} has {t.numel()} elements, the last dimension {channels}')
    device = x.device.type
    autocast = autocast_enabled(x)
    if out_dtype is None:
        out_dtype = torch.float32 if autocast else x.dtype
    groups = channels // width
    if not tracing() and norm_kernels.supports(x, width, groups):
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
            return _LayerNormTriton.apply(x.contiguous(), weight, bias, width, eps, out_dtype)
        # the kernel reads the (groups * width,) weights as (groups, width) rows: no views (host time per call)
        return norm_kernels.layer_norm_forward(x.contiguous(), width, weight, bias, eps, out_dtype, stats=False)[0]
    if not autocast:   # a model converted with .half(): its weights in x's dtype or cast to it (InputDtypeLayerNorm)
        weight, bias = _to(weight, x.dtype), _to(bias, x.dtype)
    if groups == 1:
        if autocast and out_dtype == x.dtype != torch.float32:
            # in x's low-precision dtype: autocast's float32 policy would copy x to float32 and keep the copy
            with torch.autocast(device, enabled=False):
                return F.layer_norm(x, (width,), _to(weight, x.dtype), _to(bias, x.dtype), eps)
        return F.layer_norm(x, (width,), weight, bias, eps).to(out_dtype)
    y = F.layer_norm(x.unflatten(-1, (groups, width)), (width,), None, None, eps)
    if weight is not None:
        y = y * weight.view(groups, width)
    if bias is not None:
        y = y + bias.view(groups, width)
    return y.flatten(-2).to(out_dtype)


@register_notrace_function
def norm_to(norm: nn.Module, x: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``norm(x).to(dtype)`` for a norm whose output a GEMM reads in ``dtype`` (default: autocast's dtype, else
    ``x``'s; an ``RMSNorm``'s weight dtype without autocast): a LayerNorm over the last dimension and an
    ``RMSNorm`` write it in ``dtype`` directly (``layer_norm``, ``rms_norm``), not a float32 map and then its cast.
    Other norms run as they are. A torch.fx leaf."""
    if isinstance(norm, RMSNorm):
        return rms_norm(x, norm.weight, norm.eps, dtype or (
            autocast_dtype(x) if autocast_enabled(x) else norm.weight.dtype))
    dtype = dtype or autocast_dtype(x)
    if isinstance(norm, nn.LayerNorm) and len(norm.normalized_shape) == 1:
        return layer_norm(x, norm.weight, norm.bias, norm.eps, out_dtype=dtype)
    return norm(x).to(dtype)


def _gate_args(y: torch.Tensor, z: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
               width: Optional[int]):
    channels = y.shape[-1]
    width = width or channels
    if z.shape != y.shape:
        raise ValueError(f'gated layer norm: z {tuple(z.shape)} and y {tuple(y.shape)} differ in shape')
    if channels % width:
        raise ValueError(f'gated layer norm: the last dimension ({channels}) is not a multiple of width {width}')
    for name, t in (('weight', weight), ('bias', bias)):
        if t is not None and t.numel() != channels:
            raise ValueError(f'gated layer norm: {name} has {t.numel()} elements, the last dimension {channels}')
    return width, channels // width


def _gate_triton(y: torch.Tensor, z: torch.Tensor, width: int, groups: int) -> bool:
    return not tracing() and norm_kernels.supports(y, width, groups) and norm_kernels.supports(z, width, groups)


def _view(t: Optional[torch.Tensor], groups: int, width: int) -> Optional[torch.Tensor]:
    return None if t is None else t.reshape(groups, width)


def _normalized(y, weight, bias, eps, width, groups):
    """PyTorch form: (affine output, x_hat, mean, rstd) at the precision of ``y`` promoted with the weights'."""
    compute = torch.promote_types(y.dtype, weight.dtype) if weight is not None else y.dtype
    x_hat, mean, rstd = torch.native_layer_norm(y.to(compute).unflatten(-1, (groups, width)), (width,), None, None, eps)
    a = x_hat
    if weight is not None:
        a = a * _view(weight, groups, width).to(compute)
    if bias is not None:
        a = a + _view(bias, groups, width).to(compute)
    return a.flatten(-2), x_hat, mean, rstd


def layer_norm_gate(y: torch.Tensor, z: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                    eps: float, width: Optional[int] = None) -> torch.Tensor:
    """``layer_norm(y) * SiLU(z)`` without autograd, written in ``z``'s dtype: the norm over segments of ``width``
    channels (default all; ``layer_norm``'s grouped affine), at ``y``'s precision promoted with the weights', the
    product at that precision, rounded once. One Triton kernel on CUDA."""
    width, groups = _gate_args(y, z, weight, bias, width)
    if _gate_triton(y, z, width, groups):
        return norm_kernels.layer_norm_forward(y.contiguous(), width, _view(weight, groups, width),
                                               _view(bias, groups, width), eps, z.dtype, stats=False,
                                               gate=z)[0]
    a = _normalized(y, weight, bias, eps, width, groups)[0]
    return (a * F.silu(z.to(a.dtype))).to(z.dtype)


def layer_norm_gate_backward(grad: torch.Tensor, y: torch.Tensor, z: torch.Tensor, weight: Optional[torch.Tensor],
                             bias: Optional[torch.Tensor], eps: float, width: Optional[int] = None,
                             need_weight_grads: bool = True, out_dtype: Optional[torch.dtype] = None):
    """``(dy, dz, dweight, dbias, out)`` for ``layer_norm_gate``'s output gradient ``grad``, from ``y`` and ``z``
    alone: ``dy`` in ``y``'s dtype, ``dz`` in ``z``'s, the weights' gradients in their dtypes (None unless
    ``need_weight_grads``, or where a weight is None); ``out``, the forward's output again in ``out_dtype``, only
    where one is given: what a GEMM that read it needs for its weight gradient, from the same pass. One Triton kernel
    on CUDA."""
    width, groups = _gate_args(y, z, weight, bias, width)
    dtypes = (None if weight is None else weight.dtype, None if bias is None else bias.dtype)
    if _gate_triton(y, z, width, groups):
        dy, dw, db, dz, out = norm_kernels.gated_layer_norm_backward(
            grad, y.contiguous(), z, width, _view(weight, groups, width), _view(bias, groups, width),
            eps, need_weight_grads, out_dtype)
    else:
        a, x_hat, mean, rstd = _normalized(y, weight, bias, eps, width, groups)
        compute = a.dtype
        zc = z.to(compute)
        sig = torch.sigmoid(zc)
        silu = zc * sig
        g = grad.to(compute)
        dz = (g * a * sig * (1 + zc * (1 - sig))).to(z.dtype)
        g = (g * silu).unflatten(-1, (groups, width))
        out = (a * silu).to(out_dtype) if out_dtype is not None else None
        rows = tuple(range(g.ndim - 2))
        dw = (g * x_hat).sum(rows) if need_weight_grads else None
        db = g.sum(rows) if need_weight_grads else None
        t = g * _view(weight, groups, width).to(compute) if weight is not None else g
        dy = torch.ops.aten.native_layer_norm_backward(t, y.to(compute).unflatten(-1, (groups, width)), (width,),
                                                       mean, rstd, None, None, (True, False, False))[0]
        dy = dy.flatten(-2).to(y.dtype)
    dw = _to(dw, dtypes[0]).view(-1) if dw is not None and weight is not None else None
    db = _to(db, dtypes[1]).view(-1) if db is not None and bias is not None else None
    return dy, dz, dw, db, out


class _GatedLayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, z, weight, bias, eps, width):
        ctx.eps, ctx.width = eps, width
        ctx.save_for_backward(y, z, weight, bias)
        return layer_norm_gate(y, z, weight, bias, eps, width)

    @staticmethod
    @once_differentiable   # the kernels build no graph: a second derivative would be silently wrong
    def backward(ctx, grad):
        y, z, weight, bias = ctx.saved_tensors
        need = ctx.needs_input_grad
        dy, dz, dw, db, _ = layer_norm_gate_backward(grad, y, z, weight, bias, ctx.eps, ctx.width,
                                                     need_weight_grads=need[2] or need[3])
        return (dy if need[0] else None, dz if need[1] else None, dw if need[2] else None, db if need[3] else None,
                None, None)


@register_notrace_function
def gated_layer_norm(y: torch.Tensor, z: torch.Tensor, weight: Optional[torch.Tensor] = None,
                     bias: Optional[torch.Tensor] = None, eps: float = 1e-5, width: Optional[int] = None
                     ) -> torch.Tensor:
    """``layer_norm(y, weight, bias, eps, width) * SiLU(z)`` in ``z``'s dtype (``layer_norm_gate``), keeping only
    ``y`` and ``z`` for the backward, which recomputes the statistics. A torch.fx leaf."""
    if (not tracing() and torch.is_grad_enabled()
            and any(t is not None and t.requires_grad for t in (y, z, weight, bias))):
        return _GatedLayerNorm.apply(y, z, weight, bias, eps, width)
    return layer_norm_gate(y, z, weight, bias, eps, width)   # traced: PyTorch's ops, differentiable
