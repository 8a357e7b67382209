"""EfficientVMamba: atrous selective scan for light-weight visual Mamba.

Paper: "EfficientVMamba: Atrous Selective Scan for Light Weight Visual Mamba", Pei et al., 2024 —
https://arxiv.org/abs/2403.09977
Official code and weights: https://github.com/TerryPei/EfficientVMamba (Apache 2.0 licence, per its README), read at
commit 0bc5ee28; weights on the Hugging Face hub (TerryPei/EfficientVMamba-{Tiny,Small,Base}).

A four-stage hierarchy. Stages 1-2 are EVSS blocks: ``x + SE(ES2D(LN x)) + SE(ConvBranch(LN x))`` with one shared
channel attention (SE) for both branches and no MLP in the released models. ES2D is SS2D whose four routes are the
stride-2 sub-lattices of the map ("atrous" scan: each pixel is scanned exactly once, by one of four sequences of a
quarter of the length). Stages 3-4 are MobileNetV2 inverted residuals with squeeze-excitation.

This is a re-implementation on visionssm's shared scan op (the routes are ``lattice_routes()``), channel-last
throughout. Official checkpoints convert at load time in ``checkpoint_filter_fn``; ``from_official`` builds the
model equal to an official ``EfficientVSSM(**kwargs)``.

Training keeps little for the backward (``benchmarks/cpu_step_proxy.py``): ES2D scans the sub-lattices laid side
by side in channels, so Δ, B and C are projected only where a route reads them; the depthwise convs' outputs, the
normed and gated maps, the BN-activation maps and the SE-scaled maps are recomputed in the backward by small
autograd functions (``mixer_output``, ``bn_act_conv``, ``bn_act``, ``scale_conv``, ``norm_mean``) whose values and
gradients are those of the plain modules.

``forward_features`` returns a channel-last map (``output_fmt = 'NHWC'``). torch.fx traces the model (the scan op
and a few size- or dtype-dependent helpers are leaves). TorchScript is not supported, because the shared scan op
cannot be scripted: ``torch.jit.script``, or building under timm's ``set_scriptable(True)``, raises
``visionssm.ops.selective_scan.TORCHSCRIPT_UNSUPPORTED``, which says why.
"""
from __future__ import annotations

import logging
import re
from collections import OrderedDict
from typing import Any, Dict, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ClassifierHead, DropPath, register_notrace_function, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._efficientnet_blocks import InvertedResidual, SqueezeExcite

from visionssm.layers import SS2D, ConvDownsample, Mlp, PatchEmbed, PatchMerging, full_precision, pad_to_even, \
    scan_out_dtype
from visionssm.layers.cache import cached_while_inferring, tracing
from visionssm.layers.fused import autocast_dtype, autocast_enabled, block_diagonal, conv_silu, group_projections
from visionssm.layers.norm import layer_norm_gate, layer_norm_gate_backward, norm_to
from visionssm.ops import Route, lattice_routes, selective_scan
from ._checkpoint import load_through_model
from ._hierarchical import HierarchicalBackbone

__all__ = ['EfficientVMamba', 'AtrousSS2D', 'EVSSBlock', 'BiAttn', 'MBConv', 'EfficientVMambaStage',
           'checkpoint_filter_fn', 'from_official']

_logger = logging.getLogger(__name__)


@register_notrace_function
def to_lattices(x: torch.Tensor) -> torch.Tensor:
    """The four stride-2 sub-lattices of a channel-last map ``(B, H, W, D)`` side by side in channels:
    ``(B, ceil(H/2), ceil(W/2), 4*D)``, block ``a + 2*b`` holding ``x[:, a::2, b::2]`` (odd maps zero-padded at the
    bottom/right first, as the original pads them). One copy."""
    x = pad_to_even(x)
    b, h, w, d = x.shape
    return x.view(b, h // 2, 2, w // 2, 2, d).permute(0, 1, 3, 4, 2, 5).reshape(b, h // 2, w // 2, 4 * d)


@register_notrace_function
def from_lattices(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of ``to_lattices``: the ``(B, height, width, D)`` map, contiguous (one copy; two for odd maps)."""
    b, h, w, d = x.shape
    d //= 4
    x = x.view(b, h, w, 2, 2, d).permute(0, 1, 4, 2, 3, 5).reshape(b, 2 * h, 2 * w, d)
    return x if (height, width) == (2 * h, 2 * w) else x[:, :height, :width].contiguous()


def lattice_weight(x_proj_weight: torch.Tensor, dt_projs_weight: torch.Tensor) -> torch.Tensor:
    """The projection of the side-by-side lattices: each route's composed Δ rows and its B / C rows as
    block-diagonal matrices, ``(K*D + K*2N, K*D)`` (what ``group_projections`` builds)."""
    rank, n2 = dt_projs_weight.shape[-1], x_proj_weight.shape[1] - dt_projs_weight.shape[-1]
    w_dt, w_bc = x_proj_weight.split([rank, n2], dim=1)
    return torch.cat([block_diagonal(torch.matmul(dt_projs_weight, w_dt)), block_diagonal(w_bc)])


@register_notrace_function
def lattice_projections(xs: torch.Tensor, x_proj_weight: torch.Tensor, dt_projs_weight: torch.Tensor, d_state: int,
                        weight: Optional[torch.Tensor] = None):
    """Δ ``(B, h, w, K*D)``, B and C ``(B, h, w, K, N)`` of the side-by-side lattices ``xs (B, h, w, K*D)``: each
    position gets only the projections of the route that scans it (a quarter of what projecting the whole map for
    every route computes and keeps). ``weight``: ``lattice_weight``, when already built; not used on the meta
    device, where FLOP counting takes the architecture's per-route products (``group_projections``)."""
    if weight is None or xs.device.type == 'meta':
        return group_projections(xs, x_proj_weight, dt_projs_weight, d_state)
    k, n = x_proj_weight.shape[0], d_state
    dts, BC = F.linear(xs, weight).split([xs.shape[-1], k * 2 * n], dim=-1)
    B, C = BC.unflatten(-1, (k, 2 * n)).split(n, dim=-1)
    return dts, B, C


class _MixerOutput(torch.autograd.Function):
    """``mixer_output``, saving only ``y`` (the scan's output) and ``z`` (part of in_proj's output, kept anyway):
    the norm's statistics and the gated map that out_proj reads are recomputed in the backward, in the pass that
    gives the gradients of the norm and the gate (``layer_norm_gate_backward``)."""

    @staticmethod
    def forward(ctx, y, z, weight, bias, eps, proj_weight):
        gated = layer_norm_gate(y, z, weight, bias, eps)
        proj = proj_weight.to(autocast_dtype(gated))   # cast once (the backward runs outside autocast), kept
        ctx.eps, ctx.proj_dtype = eps, proj_weight.dtype
        ctx.save_for_backward(y, z, weight, bias, proj)
        return F.linear(gated.to(proj.dtype), proj)

    @staticmethod
    def backward(ctx, grad):
        y, z, weight, bias, proj = ctx.saved_tensors
        need = ctx.needs_input_grad
        grad = grad.to(proj.dtype)
        grad_y, grad_z, grad_w, grad_b, gated = layer_norm_gate_backward(
            grad.matmul(proj), y, z, weight, bias, ctx.eps, need_weight_grads=need[2] or need[3],
            out_dtype=proj.dtype if need[5] else None)
        grad_proj = grad.flatten(0, -2).t().mm(gated.flatten(0, -2)).to(ctx.proj_dtype) if need[5] else None
        return grad_y, grad_z, grad_w, grad_b, None, grad_proj


def _cast(t: Optional[torch.Tensor], dtype: Optional[torch.dtype]) -> Optional[torch.Tensor]:
    return None if t is None or dtype is None else t.to(dtype)


@register_notrace_function
def mixer_output(y: torch.Tensor, z: torch.Tensor, norm: nn.LayerNorm, proj: nn.Linear) -> torch.Tensor:
    """``proj(norm(y) * silu(z))`` written in ``z``'s dtype: the norm in ``y``'s dtype (the scan's full-precision
    output), the product at that precision, rounded once (``layer_norm_gate``; one kernel on CUDA). Under autograd
    only ``y`` and ``z`` are kept (and ``proj``'s weight in its compute dtype), for an affine ``norm`` and a
    bias-free ``proj``. A torch.fx leaf."""
    if not isinstance(norm, nn.LayerNorm) or len(norm.normalized_shape) != 1:
        return proj(norm_to(norm, y, z.dtype) * F.silu(z))
    if (torch.is_grad_enabled() and norm.weight is not None and norm.bias is not None and proj.bias is None
            and any(t.requires_grad for t in (y, z, norm.weight, norm.bias, proj.weight))):
        return _MixerOutput.apply(y, z, norm.weight, norm.bias, norm.eps, proj.weight)
    return proj(layer_norm_gate(y, z, norm.weight, norm.bias, norm.eps))


class AtrousSS2D(SS2D):
    """SS2D over the four stride-2 sub-lattices (the official ES2D with step 2), gated, conv with bias.

    Routes: ``[0::2, 0::2]`` row-major, ``[1::2, 0::2]`` column-major, ``[0::2, 1::2]`` row-major,
    ``[1::2, 1::2]`` column-major; they tile the map, so the merge is a plain scatter.

    The scan runs on the lattices laid side by side in channels (``to_lattices``): route k scans channel block k of a
    half-size map, so Δ, B and C are projected only where a route reads them, the way the original gathers its
    sequences before projecting. Under autograd the depthwise conv's output and the normed, gated map are recomputed
    in the backward (SiLU activation); what is kept is in_proj's output, the lattices, their projections and the
    scan's output (out_proj without bias).
    """

    def __init__(self, dim: int, **kwargs):
        super().__init__(dim, routes=lattice_routes(), **kwargs)
        d = self.d_inner
        # the same routes over the side-by-side lattices: route k reads and writes channel block k
        self.lattice_routes = tuple(Route(r.order, in_offset=k * d, out_offset=k * d)
                                    for k, r in enumerate(self.routes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(self.act, nn.SiLU):
            return super().forward(x)
        x = self.in_proj(x)
        if self.gate:
            x, z = x.chunk(2, dim=-1)
        x = x.permute(0, 3, 1, 2)   # NHWC viewed as NCHW with channels-last strides
        x = (conv_silu(x, self.conv) if isinstance(self.conv, nn.Conv2d) else F.silu(x)).permute(0, 2, 3, 1)
        y = self.scan(x)
        y = mixer_output(y, z, self.out_norm, self.out_proj) if self.gate else self.out_proj(
            self.out_norm(y).to(x.dtype))
        return self.proj_drop(y)

    def scan(self, x: torch.Tensor) -> torch.Tensor:
        # The original pads odd maps with zeros at the bottom/right before forming the sub-lattices, so every
        # sequence has ceil(H/2) * ceil(W/2) steps and the padded zeros sit inside the scans (they decay the
        # state). Padding the map itself reproduces that exactly: the projections of zero are zero there too.
        height, width = x.shape[1:3]
        xs = to_lattices(x)
        if torch.is_grad_enabled() or tracing():
            # SS2D.scan_parameters, written out: under torch.fx its module's leaves would not be wrapped here
            weight, A, D = None, -torch.exp(full_precision(self.A_logs)), full_precision(self.Ds)
            delta_bias = full_precision(self.dt_projs_bias).flatten()
        else:  # inference: the projection (cast once to x's dtype) and A, D, Δ-bias kept between calls; the
            # parameters in another order than SS2D.scan's, whose projection of the whole map differs
            weight, A, D, delta_bias = cached_while_inferring(
                self, (self.dt_projs_weight, self.x_proj_weight, self.A_logs, self.Ds, self.dt_projs_bias), x.dtype,
                lambda: (lattice_weight(self.x_proj_weight, self.dt_projs_weight).to(x.dtype),
                         *self.scan_parameters()))
        dts, B, C = lattice_projections(xs, self.x_proj_weight, self.dt_projs_weight, self.d_state, weight)
        # Autocast may leave the projections in another dtype than x (CPU autocast keeps some matmuls in fp32).
        dts, B, C = (t.to(xs.dtype) for t in (dts, B, C))
        y = selective_scan(xs, dts, A, B, C, D, delta_bias, routes=self.lattice_routes, merge='sum',
                           delta_softplus=True, out_dtype=scan_out_dtype(xs))
        return from_lattices(y, height, width)


class _NormMean(torch.autograd.Function):
    """The mean over H, W of ``layer_norm(x)`` (channel-last), in at least float32; keeps only ``x`` (which the
    gate keeps anyway) and the statistics, not a float32 copy of ``x`` and the normed map."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        xf = full_precision(x)
        normed, mean, rstd = torch.native_layer_norm(xf, x.shape[-1:], weight.to(xf.dtype), bias.to(xf.dtype), eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        return normed.mean((1, 2), keepdim=True)

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        xf = full_precision(x)
        grad = (grad / (x.shape[1] * x.shape[2])).expand_as(xf)
        grad_x, grad_w, grad_b = torch.ops.aten.native_layer_norm_backward(
            grad, xf, x.shape[-1:], mean, rstd, weight.to(xf.dtype), bias.to(xf.dtype),
            (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]))
        return _cast(grad_x, x.dtype), _cast(grad_w, weight.dtype), _cast(grad_b, bias.dtype), None


@register_notrace_function
def norm_mean(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """``norm(x).mean((1, 2), keepdim=True)`` for a channel-last ``x``. Under autograd the norm runs in at least
    float32 (autocast's policy for norms on CUDA) and keeps only ``x`` and its statistics. A torch.fx leaf."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, norm.weight, norm.bias)):
        out = _NormMean.apply(x, norm.weight, norm.bias, norm.eps)
        return out if autocast_enabled(x) else out.to(x.dtype)
    return norm(x).mean((1, 2), keepdim=True)


# Activations whose backward the recomputing functions below apply themselves: module type -> (forward, backward
# from the activation's input).
_ACTS = {
    nn.ReLU: (F.relu, lambda grad, x: torch.ops.aten.threshold_backward(grad, x, 0)),
    nn.GELU: (F.gelu, lambda grad, x: torch.ops.aten.gelu_backward(grad, x)),
    nn.SiLU: (F.silu, lambda grad, x: torch.ops.aten.silu_backward(grad, x)),
}


def _act_fns(act: nn.Module):
    """(forward, backward) of a plain ReLU / exact GELU / SiLU module, else None."""
    if type(act) in _ACTS and getattr(act, 'approximate', 'none') == 'none':
        return _ACTS[type(act)]
    return None


class _BatchNormActConv(torch.autograd.Function):
    """``conv(act(batch_norm(x)))`` with batch statistics, keeping only ``x``: the normed map (with its statistics)
    and the activation, the convolution's input, are recomputed in the backward. The running statistics are updated
    in the forward, as ``nn.BatchNorm2d`` updates them."""

    @staticmethod
    def forward(ctx, x, bn_weight, bn_bias, running_mean, running_var, momentum, eps, act_fns, conv_weight,
                conv_bias, conv_args):
        normed = torch.ops.aten.native_batch_norm(x, bn_weight, bn_bias, running_mean, running_var, True, momentum,
                                                  eps)[0]
        act = act_fns[0](normed)
        dtype = autocast_dtype(act)   # the convolution's compute dtype; its weight is cast once, kept for the backward
        weight = conv_weight.to(dtype)
        out = F.conv2d(act.to(dtype), weight, _cast(conv_bias, dtype), *conv_args)
        ctx.act_fns, ctx.conv_args, ctx.eps = act_fns, conv_args, eps
        ctx.conv_dtypes = (conv_weight.dtype, None if conv_bias is None else conv_bias.dtype)
        ctx.save_for_backward(x, bn_weight, bn_bias, weight)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, bn_weight, bn_bias, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        act_fn, act_bwd = ctx.act_fns
        stride, padding, dilation, groups = ctx.conv_args
        # the forward's normed map again, bit for bit: the batch statistics of the same x
        normed, mean, invstd = torch.ops.aten.native_batch_norm(x, bn_weight, bn_bias, None, None, True, 0., ctx.eps)
        weight_dtype, bias_dtype = ctx.conv_dtypes
        grad_act, grad_cw, grad_cb = torch.ops.aten.convolution_backward(
            grad.to(weight.dtype), act_fn(normed).to(weight.dtype), weight, None if bias_dtype is None else [
                weight.shape[0]], stride, padding, dilation, False, (0, 0), groups,
            (True, need[8], bias_dtype is not None and need[9]))
        grad_x, grad_bw, grad_bb = torch.ops.aten.native_batch_norm_backward(
            act_bwd(grad_act.to(normed.dtype), normed), x, bn_weight, None, None, mean, invstd, True, ctx.eps,
            (need[0], need[1], need[2]))
        return (grad_x, grad_bw, grad_bb, None, None, None, None, None, _cast(grad_cw, weight_dtype),
                _cast(grad_cb, bias_dtype), None)


def _batch_momentum(bn: nn.BatchNorm2d) -> float:
    """Count the batch and return the running statistics' update factor, as ``nn.BatchNorm2d.forward`` does."""
    bn.num_batches_tracked.add_(1)
    return 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum


def _recomputable(bn: nn.BatchNorm2d, act: nn.Module):
    """The activation's (forward, backward) where ``act(bn(x))`` can be recomputed in the backward: training with
    batch statistics and autograd on, an affine BatchNorm, a known activation. Else None."""
    if not (torch.is_grad_enabled() and bn.training and bn.track_running_stats and bn.affine):
        return None
    return _act_fns(act)


def _norm_act(x: torch.Tensor, bn: nn.BatchNorm2d, act: nn.Module) -> torch.Tensor:
    """``act(bn(x))`` by the modules. timm's ``BatchNormAct2d`` applies its own activation, and ``act`` is that one:
    applied a second time, its in-place ReLU overwrote the output that the first one's backward keeps, and a backward
    through an evaluation-mode forward (an input's gradient, a saliency map) failed."""
    y = bn(x)
    return y if act is getattr(bn, 'act', None) else act(y)


def _plain_conv(conv: nn.Module) -> bool:
    return type(conv) is nn.Conv2d and conv.padding_mode == 'zeros' and not isinstance(conv.padding, str)


@register_notrace_function
def bn_act_conv(x: torch.Tensor, bn: nn.BatchNorm2d, act: nn.Module, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(act(bn(x)))`` (NCHW). While training with autograd on, only ``x`` is kept for the backward;
    otherwise (evaluation, other activations or layers) the modules themselves. A torch.fx leaf."""
    fns = _recomputable(bn, act)
    if fns is None or not _plain_conv(conv):
        return conv(_norm_act(x, bn, act))
    return _BatchNormActConv.apply(
        x, bn.weight, bn.bias, bn.running_mean, bn.running_var, _batch_momentum(bn), bn.eps, fns, conv.weight,
        conv.bias, (conv.stride, conv.padding, conv.dilation, conv.groups))


class _BatchNormAct(torch.autograd.Function):
    """``act(batch_norm(x))`` with batch statistics, keeping only ``x``: the normed map is recomputed in the
    backward. Nothing here keeps the output; its consumer keeps it or recomputes it (``scale_conv``'s ``source``).
    The running statistics are updated in the forward, as ``nn.BatchNorm2d`` updates them."""

    @staticmethod
    def forward(ctx, x, bn_weight, bn_bias, running_mean, running_var, momentum, eps, act_fns):
        normed = torch.ops.aten.native_batch_norm(x, bn_weight, bn_bias, running_mean, running_var, True, momentum,
                                                  eps)[0]
        ctx.act_fns, ctx.eps = act_fns, eps
        ctx.save_for_backward(x, bn_weight, bn_bias)
        return act_fns[0](normed)

    @staticmethod
    def backward(ctx, grad):
        x, bn_weight, bn_bias = ctx.saved_tensors
        need = ctx.needs_input_grad
        normed, mean, invstd = torch.ops.aten.native_batch_norm(x, bn_weight, bn_bias, None, None, True, 0., ctx.eps)
        grad_x, grad_w, grad_b = torch.ops.aten.native_batch_norm_backward(
            ctx.act_fns[1](grad.to(normed.dtype), normed), x, bn_weight, None, None, mean, invstd, True, ctx.eps,
            (need[0], need[1], need[2]))
        return grad_x, grad_w, grad_b, None, None, None, None, None


@register_notrace_function
def bn_act(x: torch.Tensor, bn: nn.BatchNorm2d, act: nn.Module) -> torch.Tensor:
    """``act(bn(x))`` (NCHW). While training with autograd on, only ``x`` is kept for the backward (pass
    ``source=(x, bn, act)`` to the ``scale_conv`` that reads the output). A torch.fx leaf."""
    fns = _recomputable(bn, act)
    if fns is None:
        return _norm_act(x, bn, act)
    return _BatchNormAct.apply(x, bn.weight, bn.bias, bn.running_mean, bn.running_var, _batch_momentum(bn), bn.eps,
                               fns)


class _ScaleConv(torch.autograd.Function):
    """``conv(x * scale)``, keeping ``x`` and ``scale`` (which the scale's own gradient needs anyway), not the
    product; or, given ``source``, ``source`` instead of ``x``, from which ``x = act(batch_norm(source))`` is
    recomputed (``x``'s gradient still flows to where ``x`` was computed)."""

    @staticmethod
    def forward(ctx, x, scale, conv_weight, conv_bias, conv_args, source, bn_weight, bn_bias, eps, act_fns):
        scaled = x * scale
        dtype = autocast_dtype(scaled)   # the convolution's compute dtype; its weight is cast once, kept
        weight = conv_weight.to(dtype)
        ctx.conv_args, ctx.eps, ctx.act_fns = conv_args, eps, act_fns
        ctx.conv_dtypes = (conv_weight.dtype, None if conv_bias is None else conv_bias.dtype)
        ctx.save_for_backward(*((x,) if source is None else (source, bn_weight, bn_bias)), scale, weight)
        return F.conv2d(scaled.to(dtype), weight, _cast(conv_bias, dtype), *conv_args)

    @staticmethod
    def backward(ctx, grad):
        *kept, scale, weight = ctx.saved_tensors
        if len(kept) == 1:
            x = kept[0]
        else:   # the forward's x again, bit for bit: the batch statistics of the same source
            source, bn_weight, bn_bias = kept
            x = ctx.act_fns[0](torch.ops.aten.native_batch_norm(
                source, bn_weight, bn_bias, None, None, True, 0., ctx.eps)[0])
        need = ctx.needs_input_grad
        stride, padding, dilation, groups = ctx.conv_args
        weight_dtype, bias_dtype = ctx.conv_dtypes
        scaled = x * scale
        grad_in, grad_cw, grad_cb = torch.ops.aten.convolution_backward(
            grad.to(weight.dtype), scaled.to(weight.dtype), weight, None if bias_dtype is None else [weight.shape[0]],
            stride, padding, dilation, False, (0, 0), groups,
            (need[0] or need[1], need[2], bias_dtype is not None and need[3]))
        grad_in = None if grad_in is None else grad_in.to(scaled.dtype)
        grad_x = (grad_in * scale).to(x.dtype) if need[0] else None
        grad_scale = (grad_in * x).sum((2, 3), keepdim=True).to(scale.dtype) if need[1] else None
        return (grad_x, grad_scale, _cast(grad_cw, weight_dtype), _cast(grad_cb, bias_dtype)) + (None,) * 6


@register_notrace_function
def scale_conv(x: torch.Tensor, scale: torch.Tensor, conv: nn.Conv2d,
               source: Optional[Tuple[torch.Tensor, nn.BatchNorm2d, nn.Module]] = None) -> torch.Tensor:
    """``conv(x * scale)`` for a per-channel ``scale (B, C, 1, 1)`` (NCHW). With autograd on, the product is
    recomputed in the backward instead of kept; with ``source = (s, bn, act)``, where ``x = bn_act(s, bn, act)``,
    so is ``x`` (``s`` is kept instead). A torch.fx leaf."""
    if not torch.is_grad_enabled() or not _plain_conv(conv):
        return conv(x * scale)
    fns = None if source is None else _recomputable(source[1], source[2])
    src, bn = (source[0], source[1]) if fns is not None else (None, None)
    return _ScaleConv.apply(x, scale, conv.weight, conv.bias, (conv.stride, conv.padding, conv.dilation, conv.groups),
                            src, bn and bn.weight, bn and bn.bias, bn and bn.eps, fns)


class BiAttn(nn.Module):
    """Channel attention of the EVSS block: ``x * sigmoid(fc2(act(fc1(mean_hw(norm(x))))))``, channel-last.

    The pooled statistic is taken from the normed input, the gate multiplies the un-normed one.
    """

    def __init__(self, dim: int, rd_ratio: float = 0.125, act_layer: Type[nn.Module] = nn.GELU,
                 gate_layer: Type[nn.Module] = nn.Sigmoid):
        super().__init__()
        rd_dim = int(dim * rd_ratio)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, rd_dim)
        self.act = act_layer()
        self.fc2 = nn.Linear(rd_dim, dim)
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gates(x)[0]

    def gates(self, *maps: torch.Tensor) -> Sequence[torch.Tensor]:
        """The gate of each map, ``(B, 1, 1, C)``; the pooled statistics of all maps through one pass of fc1 / fc2."""
        s = torch.cat([norm_mean(x, self.norm) for x in maps]) if len(maps) > 1 else norm_mean(maps[0], self.norm)
        return self.gate(self.fc2(self.act(self.fc1(s)))).unflatten(0, (len(maps), -1)).unbind(0)


class EVSSBlock(nn.Module):
    """``x + DropPath(SE(ES2D(n)) + SE(ConvBranch(n)))`` with ``n = norm1(x)`` and one SE module shared by both
    branches; then ``x + MLP(norm2(x))`` when ``mlp_ratio > 0`` (0 in every released model)."""

    def __init__(
            self,
            dim: int,
            d_state: int = 16,
            ssm_ratio: float = 2.0,
            dt_rank: Union[int, str] = 'auto',
            d_conv: int = 3,
            mlp_ratio: float = 0.,
            drop_path: float = 0.,
            proj_drop: float = 0.,
            norm_layer: Type[nn.Module] = nn.LayerNorm,
            act_layer: Type[nn.Module] = nn.GELU,
            ssm_act_layer: Type[nn.Module] = nn.SiLU,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.mixer = AtrousSS2D(
            dim, d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=d_conv, conv_bias=True, gate=True,
            act_layer=ssm_act_layer, proj_drop=proj_drop,
        )
        self.conv_branch = nn.Sequential(OrderedDict(
            conv_dw=nn.Conv2d(dim, dim, 3, padding=1, groups=dim),
            bn=nn.BatchNorm2d(dim),
            act=nn.GELU(),
            conv_pw=nn.Conv2d(dim, dim, 1),
        ))
        self.se = BiAttn(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        if mlp_ratio > 0:
            self.norm2 = norm_layer(dim)
            self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        else:
            self.norm2 = self.mlp = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = norm_to(self.norm1, x)   # in the GEMMs' dtype once for both branches (autocast would cast it for each)
        ssm = self.mixer(y)
        cb = self.conv_branch
        conv = bn_act_conv(cb.conv_dw(y.permute(0, 3, 1, 2)), cb.bn, cb.act, cb.conv_pw).permute(0, 2, 3, 1)
        gate_ssm, gate_conv = self.se.gates(ssm, conv)   # one SE module for both branches
        x = x + self.drop_path(torch.addcmul(ssm * gate_ssm, conv, gate_conv))
        if self.mlp is not None:
            x = x + self.drop_path(self.mlp(norm_to(self.norm2, x)))
        return x


class MBConv(InvertedResidual):
    """MobileNetV2 block of stages 3-4: 1x1 expand (x4) → BN-ReLU → 3x3 depthwise → BN-ReLU → SE (ReLU, reduction
    ``max(1, int(0.125 * mid))``) → 1x1 project → BN, plus the residual. NCHW.

    timm's ``InvertedResidual`` (same modules and names) whose training step recomputes in the backward the two
    activations (from the expansion's and the depthwise conv's outputs, which BatchNorm's backward keeps anyway) and
    the SE-scaled map (the projection's input)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_s2d is not None or not isinstance(self.se, SqueezeExcite):
            return super().forward(x)
        shortcut = x
        x = bn_act_conv(self.conv_pw(x), self.bn1, self.bn1.act, self.conv_dw) if isinstance(
            self.bn1.drop, nn.Identity) else self.conv_dw(self.bn1(self.conv_pw(x)))
        source = None
        if isinstance(self.bn2.drop, nn.Identity) and isinstance(self.aa, nn.Identity):
            source = (x, self.bn2, self.bn2.act)
            x = bn_act(*source)
        else:
            x = self.aa(self.bn2(x))
        se = self.se
        scale = se.gate(se.conv_expand(se.act1(se.conv_reduce(x.mean((2, 3), keepdim=True)))))
        x = self.bn3(scale_conv(x, scale, self.conv_pwl, source))
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        return x


def _inverted_residual(dim: int, drop_path: float) -> MBConv:
    return MBConv(dim, dim, dw_kernel_size=3, exp_ratio=4.0, act_layer=nn.ReLU, se_layer=_se_layer,
                  drop_path_rate=drop_path)


def _se_layer(chs: int, **kwargs) -> SqueezeExcite:
    return SqueezeExcite(chs, rd_channels=max(1, int(chs * 0.125)), **kwargs)


class EfficientVMambaStage(nn.Module):
    """Downsample (none in the first stage), then ``depth`` EVSS blocks (``ssm=True``) or inverted residuals.
    Channel-last in and out."""

    def __init__(
            self,
            in_dim: int,
            dim: int,
            depth: int,
            ssm: bool = True,
            downsample: Optional[str] = None,
            drop_path: Sequence[float] = (),
            norm_layer: Type[nn.Module] = nn.LayerNorm,
            **block_kwargs,
    ):
        super().__init__()
        self.grad_checkpointing = False
        self.ssm = ssm
        if downsample is None:
            self.downsample = nn.Identity()
        elif downsample == 'v1':
            self.downsample = PatchMerging(in_dim, dim, norm_layer=norm_layer)
        elif downsample == 'v2':
            self.downsample = ConvDownsample(in_dim, dim, kernel_size=2, norm_layer=norm_layer)
        else:
            raise ValueError(f"downsample must be 'v1' or 'v2', got {downsample!r}")
        dpr = [drop_path[i] if drop_path else 0. for i in range(depth)]
        if ssm:
            blocks = [EVSSBlock(dim, drop_path=dpr[i], norm_layer=norm_layer, **block_kwargs) for i in range(depth)]
        else:
            blocks = [_inverted_residual(dim, dpr[i]) for i in range(depth)]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if not self.ssm:
            x = x.permute(0, 3, 1, 2)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x if self.ssm else x.permute(0, 2, 3, 1)


class EfficientVMamba(HierarchicalBackbone):
    """EfficientVMamba backbone and classifier.

    Args:
        in_chans: input image channels.
        num_classes: classifier outputs (0 for none).
        global_pool: 'avg', 'max', ... or '' (timm's SelectAdaptivePool2d types).
        depths: blocks per stage.
        dims: widths per stage, or the first width (doubled at every stage).
        ssm_stages: how many leading stages are EVSS stages; the rest are inverted-residual stages (2 in the
            released models).
        d_state: SSM states per channel (16 in every official model: its constructor ignores the argument).
        ssm_ratio: ES2D inner width over model width.
        dt_rank: rank of the Δ projection ('auto' = ceil(dim / 16)).
        ssm_conv: ES2D depthwise conv size.
        mlp_ratio: MLP hidden width over model width in the EVSS blocks; 0 for none (the released models).
        downsample: 'v1' (patch merging, the released models) or 'v2' (2x2 stride-2 conv).
        patch_size: stem stride, 4.
        drop_rate: dropout before the classifier.
        proj_drop_rate: dropout after ES2D and in the MLP.
        drop_path_rate: stochastic depth, linearly increasing over blocks.
        norm_layer: norm for the blocks, stem, downsampling and the final norm.
        act_layer: MLP activation.
        ssm_act_layer: ES2D activation.
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            depths: Sequence[int] = (2, 2, 4, 2),
            dims: Union[int, Sequence[int]] = 48,
            ssm_stages: int = 2,
            d_state: int = 16,
            ssm_ratio: float = 2.0,
            dt_rank: Union[int, str] = 'auto',
            ssm_conv: int = 3,
            mlp_ratio: float = 0.,
            downsample: str = 'v1',
            patch_size: int = 4,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.1,
            norm_layer: Type[nn.Module] = nn.LayerNorm,
            act_layer: Type[nn.Module] = nn.GELU,
            ssm_act_layer: Type[nn.Module] = nn.SiLU,
    ):
        super().__init__()
        num_stages = len(depths)
        if isinstance(dims, int):
            dims = [dims * 2 ** i for i in range(num_stages)]
        if len(dims) != num_stages:
            raise ValueError(f'dims has {len(dims)} entries but depths has {num_stages}')
        if downsample not in ('v1', 'v2'):
            raise ValueError(f"downsample must be 'v1' or 'v2', got {downsample!r}")
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = dims[-1]
        self.drop_rate = drop_rate

        self.stem = PatchEmbed(in_chans, dims[0], patch_size=patch_size, norm_layer=norm_layer)
        dpr = [x.tolist() for x in torch.linspace(0, drop_path_rate, sum(depths), device='cpu').split(list(depths))]
        self.stages = nn.Sequential()
        self.feature_info = []
        for i in range(num_stages):
            ssm = i < ssm_stages
            block_kwargs = dict(
                d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=ssm_conv, mlp_ratio=mlp_ratio,
                proj_drop=proj_drop_rate, act_layer=act_layer, ssm_act_layer=ssm_act_layer,
            ) if ssm else {}
            self.stages.append(EfficientVMambaStage(
                dims[max(i - 1, 0)], dims[i], depths[i], ssm=ssm, downsample=downsample if i > 0 else None,
                drop_path=dpr[i], norm_layer=norm_layer, **block_kwargs,
            ))
            self.feature_info.append(dict(num_chs=dims[i], reduction=patch_size * 2 ** i, module=f'stages.{i}'))
        self.norm = norm_layer(self.num_features)
        self.head = ClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt='NHWC')
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module):
        # As the original: trunc-normal Linear layers, unit LayerNorms; convolutions keep PyTorch's init.
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def load_pretrained(self, checkpoint_path: str):
        """Load an official (or our own) checkpoint file, converting it; used by ``pretrained=True``."""
        self._load_checkpoint(checkpoint_path, checkpoint_filter_fn, 'stem.proj', containers=('state_dict', 'model'))


# Official state-dict names → ours. The official loader also renames pre-refactor VMamba names (inherited
# ``VSSM._load_from_state_dict``); those are first brought to the current official names.
_LEGACY_RENAMES = (
    (r'^patch_embed\.proj\.', 'patch_embed.0.'),
    (r'^patch_embed\.norm\.', 'patch_embed.2.'),
    (r'^(layers\.\d+\.blocks\.\d+)\.ln_1\.', r'\1.norm.'),
    (r'^(layers\.\d+\.blocks\.\d+)\.self_attention\.', r'\1.op.'),
    (r'^norm\.', 'classifier.norm.'),
    (r'^head\.', 'classifier.head.'),
)
# Inside an EVSS block (after ``layers.i.blocks.j.``) and inside an inverted residual (after ``layers.i.j.``).
_EVSS_RENAMES = (
    (r'^norm\.', 'norm1.'),
    (r'^op\.conv2d\.', 'mixer.conv.'),
    (r'^op\.', 'mixer.'),
    (r'^conv_branch\.0\.', 'conv_branch.conv_dw.'),
    (r'^conv_branch\.1\.', 'conv_branch.bn.'),
    (r'^conv_branch\.3\.', 'conv_branch.conv_pw.'),
    (r'^se\.global_reduce\.', 'se.fc1.'),
    (r'^se\.channel_select\.', 'se.fc2.'),
)
_IR_RENAMES = (
    (r'^conv_pw\.0\.', 'conv_pw.'),
    (r'^conv_pw\.1\.', 'bn1.'),
    (r'^conv_dw\.0\.', 'conv_dw.'),
    (r'^conv_dw\.1\.', 'bn2.'),
    (r'^conv_pw2\.0\.', 'conv_pwl.'),
    (r'^conv_pw2\.1\.', 'bn3.'),
    (r'^se\.', 'se.'),
)
# The official downsample ends stage i (``layers.i.downsample`` in EVSS stages, the last entry of the
# ``Sequential(Permute, IR..., Permute, downsample)`` in IR stages); ours starts stage i + 1.
_DOWNSAMPLE_RENAMES = (
    (r'^(reduction|norm)\.', r'\1.'),  # v1: PatchMerging2D
    (r'^1\.', 'conv.'),  # v2: Sequential(Permute, Conv2d, Permute, LayerNorm)
    (r'^3\.', 'norm.'),
)


def _rename(key: str, rules) -> Optional[str]:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return None


def _convert_key(key: str) -> Optional[str]:
    """Our name for an official key, or None when no rule applies."""
    key = _rename(key, _LEGACY_RENAMES) or key
    if key.startswith('patch_embed.0.'):
        return 'stem.proj.' + key[len('patch_embed.0.'):]
    if key.startswith('patch_embed.2.'):
        return 'stem.norm.' + key[len('patch_embed.2.'):]
    if key.startswith('classifier.norm.'):
        return 'norm.' + key[len('classifier.norm.'):]
    if key.startswith('classifier.head.'):
        return 'head.fc.' + key[len('classifier.head.'):]
    m = re.match(r'^layers\.(\d+)\.blocks\.(\d+)\.(.*)$', key)
    if m:
        rest = _rename(m[3], _EVSS_RENAMES) or m[3]  # norm2 / mlp.fc1 / mlp.fc2 keep their names
        return f'stages.{m[1]}.blocks.{m[2]}.{rest}'
    m = re.match(r'^layers\.(\d+)\.downsample\.(.*)$', key)
    if m:
        rest = _rename(m[2], _DOWNSAMPLE_RENAMES)
        return rest and f'stages.{int(m[1]) + 1}.downsample.{rest}'
    m = re.match(r'^layers\.(\d+)\.(\d+)\.(.*)$', key)
    if m:
        rest = _rename(m[3], _IR_RENAMES)
        if rest is not None:  # index 0 is a Permute: IR j sits at j + 1
            return f'stages.{m[1]}.blocks.{int(m[2]) - 1}.{rest}'
        rest = _rename(m[3], _DOWNSAMPLE_RENAMES)
        return rest and f'stages.{int(m[1]) + 1}.downsample.{rest}'
    return None


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: EfficientVMamba) -> Dict[str, torch.Tensor]:
    """Convert an official EfficientVMamba state dict to this module tree.

    Accepts the keys with or without the ``module.module.`` prefix of the released training wrapper (the official
    loader strips it). Our own state dicts pass through unchanged; the mm backbone's ``outnorm{i}`` are dropped.

    Raises:
        ValueError: a key that no official name maps from (names it).
    """
    state_dict = {re.sub(r'^(module\.)+', '', k): v for k, v in state_dict.items()}
    if any(k.startswith(('stem.', 'stages.')) for k in state_dict):
        return dict(state_dict)
    out = {}
    for key, value in state_dict.items():
        if key.startswith('outnorm'):  # the official mm backbone's output norms; not part of a classifier
            continue
        new = _convert_key(key)
        if new is None:
            raise ValueError(f'official EfficientVMamba key {key!r} has no counterpart in {type(model).__name__}')
        out[new] = value
    return out


def _create_efficientvmamba(variant: str, pretrained: bool = False, **kwargs) -> EfficientVMamba:
    load_through_model(kwargs)  # official files need the safe loader and the conversion
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3))
    return build_model_with_cfg(
        EfficientVMamba, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


# --- from_official: the official EfficientVSSM constructor's arguments, mapped to ours ----------------------------

# Accepted by EfficientVSSM but never reaching a layer (its _make_layer swallows them, or nothing reads them): the
# official model is the same whatever they are. d_state and dt_rank are fixed at 16 and 'auto'.
_IGNORED = dict(d_state=16, dt_rank='auto', attn_drop_rate=0., shared_ssm=False, softmax_version=False, drop_rate=0.)


def from_official(checkpoint: Optional[str] = None, **official_kwargs) -> EfficientVMamba:
    """The EfficientVMamba equal to the official ``EfficientVSSM(**official_kwargs)``, optionally loaded from an
    official file.

    Raises ValueError for arguments that select code the released models do not use.
    """
    kw = dict(official_kwargs)
    for name, used in _IGNORED.items():
        if name in kw and kw.pop(name) != used:
            _logger.warning('EfficientVSSM ignores %s=%r (the official model always behaves as %r); so do we',
                            name, official_kwargs[name], used)
    step_size = kw.pop('step_size', 2)
    if step_size != 2:
        raise ValueError(f'step_size must be 2 (the official scan/merge only tile the map for 2), got {step_size}')
    if not kw.pop('patch_norm', True):
        raise ValueError('patch_norm=False is not supported (no released EfficientVMamba uses it)')
    norm_layer = kw.pop('norm_layer', nn.LayerNorm)
    use_checkpoint = kw.pop('use_checkpoint', False)
    renames = dict(
        patch_size='patch_size', in_chans='in_chans', num_classes='num_classes', depths='depths', dims='dims',
        ssm_ratio='ssm_ratio', mlp_ratio='mlp_ratio', drop_path_rate='drop_path_rate',
        downsample_version='downsample',
    )
    unknown = sorted(set(kw) - set(renames))
    if unknown:
        raise ValueError(f'unknown EfficientVSSM arguments: {unknown}')
    args: Dict[str, Any] = dict(  # the official EfficientVSSM's own defaults, where they differ from ours
        depths=(2, 2, 9, 2), dims=(96, 192, 384, 768), mlp_ratio=4.0, downsample='v2', norm_layer=norm_layer)
    args.update({renames[k]: v for k, v in kw.items()})
    model = EfficientVMamba(**args)
    model.set_grad_checkpointing(use_checkpoint)
    if checkpoint is not None:
        model.load_pretrained(checkpoint)
    return model


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return {
        'url': url, 'custom_load': True,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'fixed_input_size': False,
        'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225),
        'first_conv': 'stem.proj', 'classifier': 'head.fc',
        'license': 'apache-2.0', 'origin_url': 'https://github.com/TerryPei/EfficientVMamba',
        'paper_ids': 'arXiv:2403.09977',
        'paper_name': 'EfficientVMamba: Atrous Selective Scan for Light Weight Visual Mamba',
        **kwargs,
    }


# The official README links these hub repos; a direct url because timm's custom-load path (needed to unwrap and
# convert the .ckpt safely) downloads urls only.
_HF = 'https://huggingface.co/TerryPei/'

default_cfgs = generate_default_cfgs({
    'efficientvmamba_tiny.in1k': _cfg(_HF + 'EfficientVMamba-Tiny/resolve/main/efficient_vmamba_tiny.ckpt'),
    'efficientvmamba_small.in1k': _cfg(_HF + 'EfficientVMamba-Small/resolve/main/efficient_vmamba_small.ckpt'),
    'efficientvmamba_base.in1k': _cfg(_HF + 'EfficientVMamba-Base/resolve/main/efficient_vmamba_base.ckpt'),
    'test_efficientvmamba.untrained': _cfg(input_size=(3, 64, 64), pool_size=(2, 2)),
})

# Released models: EVSS stages 1-2 (ES2D, d_state 16, ssm_ratio 2, no MLP), inverted-residual stages 3-4, patch
# merging. Widths and depths from the training logs (the repo's small yaml says 96; the checkpoint has 64).
_RELEASED = dict(ssm_stages=2, d_state=16, ssm_ratio=2.0, mlp_ratio=0.0, downsample='v1')


@register_model
def efficientvmamba_tiny(pretrained: bool = False, **kwargs) -> EfficientVMamba:
    """EfficientVMamba-T (6.5M)."""
    model_args = dict(depths=(2, 2, 4, 2), dims=48, drop_path_rate=0.1, **_RELEASED)
    return _create_efficientvmamba('efficientvmamba_tiny', pretrained, **dict(model_args, **kwargs))


@register_model
def efficientvmamba_small(pretrained: bool = False, **kwargs) -> EfficientVMamba:
    """EfficientVMamba-S (11.3M)."""
    model_args = dict(depths=(2, 2, 4, 2), dims=64, drop_path_rate=0.1, **_RELEASED)
    return _create_efficientvmamba('efficientvmamba_small', pretrained, **dict(model_args, **kwargs))


@register_model
def efficientvmamba_base(pretrained: bool = False, **kwargs) -> EfficientVMamba:
    """EfficientVMamba-B (33.7M)."""
    model_args = dict(depths=(2, 2, 9, 2), dims=96, drop_path_rate=0.1, **_RELEASED)
    return _create_efficientvmamba('efficientvmamba_base', pretrained, **dict(model_args, **kwargs))


@register_model
def test_efficientvmamba(pretrained: bool = False, **kwargs) -> EfficientVMamba:
    """A tiny EfficientVMamba for tests and demos."""
    model_args = dict(depths=(1, 2, 1, 1), dims=16, drop_path_rate=0.0, **_RELEASED)
    return _create_efficientvmamba('test_efficientvmamba', pretrained, **dict(model_args, **kwargs))
