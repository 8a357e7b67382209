"""GroupMamba: parameter-efficient and accurate group visual state space model.

Paper: "GroupMamba: Efficient Group-Based Visual State Space Model", Shaker et al., CVPR 2025 —
https://arxiv.org/abs/2407.13772
Official code and weights: https://github.com/Amshaker/GroupMamba (MIT licence), read at commit c1800ed2.

A hierarchical backbone whose token mixer, the modulated group Mamba layer, splits the channels into four groups and
scans group k in direction k (row, column, row reversed, column reversed), each group with its own SSM parameters;
the concatenated result is multiplied by the normed input and by a channel-affinity modulation (CAM, a squeeze-and-
excitation gate), normed again with the same LayerNorm and projected. After the last stage a "class block" runs the
same layer (on a 1x1 map) and an MLP on the mean token; a classification head and a DeiT distillation head read it.

This is a re-implementation on visionssm's shared scan op: the four per-group SS2D modules of the original are one
``GroupedSS2D`` whose parameters are stacked over the groups and whose scan is a single ``selective_scan`` call over
``grouped_routes`` (channel group k read and written along route k). Everything is channel-last. Official
checkpoints (raw EMA state dicts, per-group ``mamba_g{1..4}`` keys) convert at load time in ``checkpoint_filter_fn``;
``from_official`` builds the model equal to an official ``GroupMamba(**kwargs)``.

Differences from the original, all deliberate:

* Gradients are correct on non-square maps: the official ``CrossScan_2/_4.backward`` reshape the gradient as
  (H, W) instead of (W, H), so it trains with wrong gradients whenever H != W. Here the routes are index maps of
  the one op, whose backward is the exact adjoint.
* The distillation head (``head_dist``, the official ``dist_head``) is kept by default (``distillation=True``):
  parameter counts equal the official ones and eval logits are ``(head + head_dist) / 2`` as in the original.
  With ``distillation=False`` there is no second head and an official checkpoint's two heads are folded into
  ``head`` (their average: the same eval logits, since both are linear). In training the original returns the pair
  ``(head, dist_head)``; here that happens only after ``set_distilled_training(True)`` (timm's DeiT convention), so
  the model is a plain classifier by default.
* The original casts float16 inputs of each group layer to float32; here the scan itself runs in full precision
  for low-precision inputs (the shared op's policy) and the rest follows the input dtype.
* Under autocast the mixer keeps its maps in the autocast dtype where the original, through autocast's float32
  LayerNorm, computed (and kept for the backward) float32 maps: the normed input is cast once to the GEMMs'
  dtype, the CAM/skip products and the mixer's second LayerNorm run in that dtype. out_norm normalizes the scan's
  full-precision output and applies its affine in float32, and the product with the gate is rounded once to the
  autocast dtype (as the original's float32 product is when out_proj reads it). The CAM's pooling and two small
  layers run in float32 (they act on ``(B, C)`` only).
* The residual stream and the two norms reading it (the mixer's first LayerNorm and ``norm2``) compute in float32
  under autocast (their outputs are written in the autocast dtype that the GEMMs after them read), by measurement: with the stream and those norms in bfloat16 (as MambaVision's hybrid blocks), the
  logits of GroupMamba-T (random init with perturbed norm affines, 64², three seeds, CUDA's autocast policy for
  the other norms) differ from a float64 run by 3.30e-2 (relative), against 2.41e-2 as here. A LayerNorm of a
  bfloat16 input loses the low bits of ``x - mean`` where the channels share a large offset, and a bfloat16 stream
  is rounded at every residual sum (38 in GroupMamba-T).
  Without autocast every step computes as in the original.

Training cost, same values: each per-group projection is one GEMM with a block-diagonal weight, the three weights
of a ``GroupedSS2D`` made by one autograd node in the GEMMs' dtype (``group_weights``: one zeroed buffer, a cast
copy per projection); the weights that autocast would cast one by one (the mixer's proj, depthwise conv and second
norm; the MLP's) are cast together by one kernel, with one cast of their gradients back (``cast_weights``); drop
path and the residual sum are one ``addcmul`` (``add_residual``). On CUDA the LayerNorms, whose rows here are 16
to 448 channels, run as Triton kernels (``visionssm.layers.norm``), out_norm with its per-group affine in one. The
backward recomputes what is cheap to recompute instead of keeping it: the MLP's hidden maps (``conv_mlp``) and the
maps between out_norm and the gate (``norm_gate``).

``forward_features`` returns a channel-last map (``output_fmt = 'NHWC'``). torch.fx traces the model (the scan op
and a few size- or dtype-dependent helpers are leaves). TorchScript is not supported, because the shared scan op
cannot be scripted: ``torch.jit.script``, or building under timm's ``set_scriptable(True)``, raises
``visionssm.ops.selective_scan.TORCHSCRIPT_UNSUPPORTED``, which says why.
"""
from __future__ import annotations

import math
import re
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from timm.models import (build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model,
                         register_notrace_function)
from timm.models._features import feature_take_indices

from visionssm.layers import ConvDownsample, Mlp, ScanLayer, full_precision, init_dt_bias, scan_out_dtype
from visionssm.layers.cache import cached_while_inferring
from visionssm.layers.fused import autocast_dtype, autocast_off, block_diagonal, group_projections
from visionssm.layers.mlp import _act_backward
from visionssm.layers.norm import gated_layer_norm, layer_norm, norm_to
from visionssm.ops import grouped_routes, selective_scan
from ._checkpoint import extract_state_dict, load_checkpoint_file, load_converted, load_through_model

__all__ = [
    'GroupMamba', 'GroupedSS2D', 'GroupMambaMixer', 'GroupMambaBlock', 'GroupMambaStage', 'ClassBlock',
    'autocast_dtype', 'layer_norm_in_dtype', 'cast_weights', 'block_diagonal', 'grouped_linear', 'group_projections',
    'group_weights', 'norm_gate', 'channel_affinity', 'conv_mlp', 'add_residual',
    'checkpoint_filter_fn', 'from_official',
]

_NUM_GROUPS = 4  # one per scan direction of grouped_routes


@register_notrace_function
def layer_norm_in_dtype(norm: nn.LayerNorm, x: torch.Tensor, weight: Optional[torch.Tensor] = None,
                        bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``norm(x)`` in ``x``'s dtype also under autocast, whose float32 policy for LayerNorm would copy a
    low-precision ``x`` to float32, keep that copy for the backward and return float32. (The statistics are
    accumulated in float32 either way.) ``weight`` and ``bias``, when given, are ``norm``'s already in ``x``'s
    dtype (``cast_weights``)."""
    if weight is None and bias is None:
        weight, bias = norm.weight, norm.bias
    return layer_norm(x, weight, bias, norm.eps, out_dtype=x.dtype)


@register_notrace_function
def cast_weights(module: nn.Module, params: Sequence[Optional[torch.Tensor]],
                 dtype: torch.dtype) -> List[Optional[torch.Tensor]]:
    """``params`` in ``dtype``, for layers that would each have autocast cast their weights: the low-precision
    copies come from one concatenation and one cast (and their gradients go back by one concatenation and one cast),
    where autocast launches a cast per tensor, and another per gradient. Kept on ``module`` while inferring.
    Parameters already in ``dtype`` (autocast off) are returned as they are."""
    present = [p for p in params if p is not None]
    if all(p.dtype == dtype for p in present):
        return list(params)

    def build():   # (vectors need no reshaping: fewer view ops on the host)
        flat = torch.cat([p if p.ndim == 1 else p.reshape(-1) for p in present]).to(dtype)
        views = iter(flat.split([p.numel() for p in present]))
        return [None if p is None else next(views) if p.ndim == 1 else next(views).view(p.shape) for p in params]

    return cached_while_inferring(module, present, dtype, build)


@register_notrace_function
def grouped_linear(x: torch.Tensor, weight: torch.Tensor, dense: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Group g of ``x (..., G*I)`` through ``weight[p, g] (O x I)`` for every p: ``(..., P*G*O)``, ordered (p, g, o).

    One GEMM over all groups with the block-diagonal weight: the input and output are read and written where they
    are, with the full width's alignment, where per-group products need copies of odd-width channel slices (87 at
    GroupMamba-T's stage 3) and run as unaligned GEMMs. The zero blocks add exact zeros. ``dense``: that weight
    already built (``group_weights``). On the meta device (FLOP counting) the per-group products, so the count stays
    the architecture's.
    """
    parts, groups, out_dim, in_dim = weight.shape
    if x.device.type == 'meta':
        return torch.einsum('...gi,pgoi->...pgo', x.unflatten(-1, (groups, in_dim)), weight).flatten(-3)
    return F.linear(x, block_diagonal(weight).flatten(0, 1) if dense is None else dense)


class _GroupWeights(torch.autograd.Function):
    """``group_weights`` as one autograd node: one zeroed buffer in the compute dtype, each projection's blocks
    copied (and cast) onto its diagonal by one kernel, dt_proj composed with x_proj's Δ rows by one batched GEMM in
    the parameters' dtype. The backward reads the diagonal blocks of the incoming gradients only."""

    @staticmethod
    def forward(ctx, in_w, x_proj_w, dt_w, out_w, dtype):
        groups, two_d, group_dim = in_w.shape
        d, rank = two_d // 2, dt_w.shape[-1]
        n2 = x_proj_w.shape[1] - rank
        w_dt, w_bc = x_proj_w.split([rank, n2], dim=1)
        with autocast_off(in_w):
            w_delta = torch.bmm(dt_w, w_dt)                                   # (G, D, D)
        sizes = (2 * groups * d * groups * group_dim, (groups * d + groups * n2) * groups * d,
                 groups * group_dim * groups * d)
        w_in, w_dbl, w_out = in_w.new_zeros(sum(sizes), dtype=dtype).split(sizes)
        # each block-diagonal view (rows p, g, o x columns g, i) with its diagonal over g last, as the copies read
        w_in.view(2, groups, d, groups, group_dim).diagonal(0, 1, 3).copy_(
            in_w.unflatten(1, (2, d)).permute(1, 2, 3, 0))
        dense_dbl = w_dbl.view(groups * (d + n2), groups * d)
        dense_dbl[:groups * d].view(groups, d, groups, d).diagonal(0, 0, 2).copy_(w_delta.permute(1, 2, 0))
        dense_dbl[groups * d:].view(groups, n2, groups, d).diagonal(0, 0, 2).copy_(w_bc.permute(1, 2, 0))
        w_out.view(groups, group_dim, groups, d).diagonal(0, 0, 2).copy_(out_w.permute(1, 2, 0))
        ctx.save_for_backward(w_dt, dt_w)
        ctx.dims = groups, d, group_dim, rank, n2
        return w_in.view(2 * groups * d, groups * group_dim), dense_dbl, w_out.view(groups * group_dim, groups * d)

    @staticmethod
    def backward(ctx, g_in, g_dbl, g_out):
        w_dt, dt_w = ctx.saved_tensors
        groups, d, group_dim, rank, n2 = ctx.dims
        dtype = dt_w.dtype
        grads = [None] * 4
        if g_in is not None:
            grads[0] = g_in.new_empty((groups, 2, d, group_dim), dtype=dtype)
            grads[0].permute(1, 2, 3, 0).copy_(g_in.view(2, groups, d, groups, group_dim).diagonal(0, 1, 3))
            grads[0] = grads[0].flatten(1, 2)
        if g_dbl is not None:
            g_delta = g_dbl[:groups * d].view(groups, d, groups, d).diagonal(0, 0, 2).permute(2, 0, 1).to(dtype)
            grads[1] = g_dbl.new_empty((groups, rank + n2, d), dtype=dtype)
            grads[1][:, rank:].permute(1, 2, 0).copy_(g_dbl[groups * d:].view(groups, n2, groups, d).diagonal(0, 0, 2))
            grads[1][:, :rank].copy_(torch.bmm(dt_w.transpose(1, 2), g_delta))
            grads[2] = torch.bmm(g_delta, w_dt.transpose(1, 2))
        if g_out is not None:
            grads[3] = g_out.new_empty((groups, group_dim, d), dtype=dtype)
            grads[3].permute(1, 2, 0).copy_(g_out.view(groups, group_dim, groups, d).diagonal(0, 0, 2))
        return (*grads, None)


@register_notrace_function
def group_weights(
        in_w: torch.Tensor,
        x_proj_w: torch.Tensor,
        dt_w: torch.Tensor,
        out_w: torch.Tensor,
        dtype: torch.dtype,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """GroupedSS2D's three block-diagonal GEMM weights in ``dtype`` (the GEMMs' compute dtype).

    ``in_w (G, 2D, I)`` → in_proj ``(2*G*D, G*I)``, rows ordered (x / z, group, channel); ``x_proj_w (G, R+2N, D)``
    with ``dt_w (G, D, R)`` → ``(G*D + G*2N, G*D)``: the composed Δ projection ``dt_w[g] @ x_proj_w[g, :R]`` of every
    group, then B and C of every group (as ``group_projections``); ``out_w (G, O, D)`` → ``(G*O, G*D)``. In eager
    mode one autograd node (``_GroupWeights``) with a handful of kernels; while compiling or exporting the same
    values composed from ``block_diagonal``. None on the meta device, where the projections count the per-group
    products (FLOP counting).
    """
    if in_w.device.type == 'meta':
        return None, None, None
    if not (torch.compiler.is_compiling() or torch.compiler.is_exporting()):
        return _GroupWeights.apply(in_w, x_proj_w, dt_w, out_w, dtype)
    d, rank = in_w.shape[1] // 2, dt_w.shape[-1]
    w_dt, w_bc = x_proj_w.split([rank, x_proj_w.shape[1] - rank], dim=1)
    w_in = block_diagonal(in_w.unflatten(1, (2, d)).transpose(0, 1)).flatten(0, 1)
    w_dbl = torch.cat([block_diagonal(torch.matmul(dt_w, w_dt)), block_diagonal(w_bc)])
    return w_in.to(dtype), w_dbl.to(dtype), block_diagonal(out_w).to(dtype)


@register_notrace_function
def norm_gate(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
              act: nn.Module) -> torch.Tensor:
    """GroupedSS2D's out_norm and gate: ``(LN_g(y) * weight + bias) * act(z)`` with ``LN_g`` a LayerNorm over each
    group of D channels of ``y (..., G*D)``, ``weight`` and ``bias`` ``(G, D)``. The norm runs in ``y``'s dtype
    (the scan's full-precision output), the affine in the parameters' (promoted with ``y``'s) and the gate's
    product at that precision, rounded once to ``z``'s dtype, as the original, whose float32 product is rounded
    when out_proj reads it. With SiLU (the models' gate) this is ``gated_layer_norm``: one kernel each way on CUDA,
    and only ``y`` and ``z`` kept for the backward. A torch.fx leaf."""
    groups, d = weight.shape
    if isinstance(act, nn.SiLU):
        return gated_layer_norm(y, z, weight.flatten(), bias.flatten(), eps, width=d)
    y = F.layer_norm(y.unflatten(-1, (groups, d)), (d,), eps=eps) * weight + bias
    return (y.flatten(-2) * act(z)).to(z.dtype)


class GroupedSS2D(ScanLayer):
    """Four independent SS2D mixers (the official ``mamba_g1..4``), one per channel group, in one module.

    Group k takes channels ``[k*C/4, (k+1)*C/4)`` and is scanned along direction k of ``grouped_routes``: in_proj →
    (x, z) → SiLU(depthwise conv(x)) → selective scan → out_norm → · SiLU(z) → out_proj, every step with the group's
    own weights. The weights are stacked over the groups (leading dim 4, or 4 blocks of rows for the depthwise conv,
    ``A_logs`` and ``Ds``); each projection runs for all groups as one GEMM with the block-diagonal weight
    (``grouped_linear``), and the scan is one call over the four routes.

    Args:
        dim: model width C (divisible by 4).
        d_state: N, states per channel (1 in GroupMamba).
        ssm_ratio: inner width of a group over its input width (1 in GroupMamba).
        dt_rank: rank R of the Δ projection; 'auto' = ceil(C / 4 / 16).
        d_conv: depthwise kernel size.
        conv_bias: bias in the depthwise conv.
        act_layer: activation after the conv and of the gate.
    """

    def __init__(
            self,
            dim: int,
            d_state: int = 1,
            ssm_ratio: float = 1.0,
            dt_rank: Union[int, str] = 'auto',
            d_conv: int = 3,
            conv_bias: bool = True,
            act_layer: Type[nn.Module] = nn.SiLU,
    ):
        super().__init__()
        if dim % _NUM_GROUPS:
            raise ValueError(f'GroupMamba widths must be divisible by {_NUM_GROUPS} (one group per scan direction), '
                             f'got {dim}')
        groups = _NUM_GROUPS
        self.group_dim = group_dim = dim // groups
        self.d_inner = d_inner = int(ssm_ratio * group_dim)
        self.d_state = d_state
        self.dt_rank = math.ceil(group_dim / 16) if dt_rank == 'auto' else int(dt_rank)
        self.routes = grouped_routes(d_inner)

        self.in_proj_weight = nn.Parameter(torch.empty(groups, 2 * d_inner, group_dim))
        self.conv = nn.Conv2d(groups * d_inner, groups * d_inner, d_conv, padding=(d_conv - 1) // 2,
                              groups=groups * d_inner, bias=conv_bias)
        self.act = act_layer()
        bound = 1 / math.sqrt(d_inner)  # nn.Linear's default init, as the original's stacked temporary layers
        self.x_proj_weight = nn.Parameter(
            torch.empty(groups, self.dt_rank + 2 * d_state, d_inner).uniform_(-bound, bound))
        dt_std = self.dt_rank ** -0.5
        self.dt_projs_weight = nn.Parameter(torch.empty(groups, d_inner, self.dt_rank).uniform_(-dt_std, dt_std))
        self.dt_projs_bias = nn.Parameter(init_dt_bias((groups, d_inner)))
        self.A_logs = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(
            groups * d_inner, 1))
        self.Ds = nn.Parameter(torch.ones(groups * d_inner))
        # Per-group LayerNorm(d_inner) (eps 1e-5) and bias-free out_proj, stacked.
        self.out_norm_weight = nn.Parameter(torch.ones(groups, d_inner))
        self.out_norm_bias = nn.Parameter(torch.zeros(groups, d_inner))
        self.out_norm_eps = 1e-5
        self.out_proj_weight = nn.Parameter(torch.empty(groups, group_dim, d_inner))
        trunc_normal_(self.in_proj_weight, std=.02)
        trunc_normal_(self.out_proj_weight, std=.02)

    def forward(self, x: torch.Tensor, conv_weights: Optional[Sequence[Optional[torch.Tensor]]] = None) -> torch.Tensor:
        """``(B, H, W, C)`` → ``(B, H, W, C)``; group k of the output comes from group k of the input only.
        ``conv_weights``: the depthwise conv's weight and bias, already cast (``cast_weights``)."""
        groups, d_inner = _NUM_GROUPS, self.d_inner
        params, dtype = (self.in_proj_weight, self.x_proj_weight, self.dt_projs_weight, self.out_proj_weight), \
            autocast_dtype(x)
        w_in, w_dbl, w_out = cached_while_inferring(self, params, dtype, lambda: group_weights(*params, dtype))
        # in_proj's rows as (x, z) x group: x of every group, then z of every group, each contiguous
        x, z = grouped_linear(x, self.in_proj_weight.unflatten(1, (2, d_inner)).transpose(0, 1), w_in).split(
            groups * d_inner, dim=-1)
        # NHWC viewed as NCHW with channels-last strides: the depthwise conv needs no copy of its input.
        conv = self.conv
        x = conv._conv_forward(x.permute(0, 3, 1, 2), *(conv_weights or (conv.weight, conv.bias)))
        x = self.act(x.permute(0, 2, 3, 1))
        dts, B, C = group_projections(x, self.x_proj_weight, self.dt_projs_weight, self.d_state, w_dbl)
        y = norm_gate(self._scan(x, dts, B, C), z, self.out_norm_weight, self.out_norm_bias, self.out_norm_eps,
                      self.act)
        return grouped_linear(y, self.out_proj_weight[None], w_out)

    def scan(self, x: torch.Tensor) -> torch.Tensor:
        """Selective scan of the inner map ``x (B, H, W, 4*D)``, group k along route k: ``(B, H, W, 4*D)``."""
        return self._scan(x, *group_projections(x, self.x_proj_weight, self.dt_projs_weight, self.d_state))

    def _scan(self, x: torch.Tensor, dts: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
        dts, B, C = (t.to(x.dtype) for t in (dts, B, C))  # CPU autocast may leave the GEMM in another dtype
        return selective_scan(
            x, dts, -torch.exp(full_precision(self.A_logs)), B, C,
            full_precision(self.Ds), full_precision(self.dt_projs_bias).flatten(),
            routes=self.routes, merge='sum', delta_softplus=True, out_dtype=scan_out_dtype(x),
        )


class _SpatialMean(torch.autograd.Function):
    """``x.mean(dim=(1, 2), dtype=dtype)`` of a channel-last map whose gradient is a broadcast view of the small
    ``(B, C)`` one in ``x``'s dtype: the map-sized gradient then costs nothing until it is summed with the map's
    other gradients, where autograd's mean would write it out (in ``dtype``) and cast it."""

    @staticmethod
    def forward(ctx, x, dtype):
        ctx.shape, ctx.dtype = x.shape, x.dtype
        return x.mean(dim=(1, 2), dtype=dtype)

    @staticmethod
    def backward(ctx, grad):
        height, width = ctx.shape[1:3]
        return (grad / (height * width)).to(ctx.dtype)[:, None, None].expand(ctx.shape), None


@register_notrace_function
def channel_affinity(x: torch.Tensor, fc1: nn.Linear, fc2: nn.Linear, skip_scale: torch.Tensor) -> torch.Tensor:
    """The CAM gate times the skip scale, ``skip_scale * sigmoid(fc2(relu(fc1(mean_hw(x)))))``: ``(B, 1, 1, C)`` in
    ``x``'s dtype, from ``x (B, H, W, C)``.

    The mean and the two small layers run in the parameters' dtype, also under autocast (float32 there): they act on
    ``(B, C)`` only, so this costs nothing in time, and saves the weight casts (and their gradients' casts back) that
    autocast would add around the two tiny GEMMs.
    """
    dtype = fc1.weight.dtype
    with autocast_off(x):
        cam = torch.sigmoid(fc2(F.relu(fc1(_SpatialMean.apply(x, dtype)))))
        return (cam * skip_scale).to(x.dtype)[:, None, None]


class GroupMambaMixer(nn.Module):
    """The modulated group Mamba layer (official ``GroupMambaLayer``), channel-last.

    ``x = LN(x)``; ``y = GroupedSS2D(x) * skip_scale * x * CAM(x)``; ``out = proj(LN(y))`` with the *same* LN.
    CAM (channel affinity modulation) is ``sigmoid(fc2(relu(fc1(mean_hw(x)))))``, reduction ``cam_reduction``.
    """

    def __init__(self, dim: int, d_state: int = 1, ssm_ratio: float = 1.0, d_conv: int = 3, cam_reduction: int = 16):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim // cam_reduction)
        self.fc2 = nn.Linear(dim // cam_reduction, dim)
        self.ssm = GroupedSS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio, d_conv=d_conv)
        self.skip_scale = nn.Parameter(torch.ones(1))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Under autocast the normed map goes on in the GEMMs' dtype: it is what in_proj reads anyway, and the
        # products below then keep (and save for the backward) low-precision maps, not float32 ones. The norm
        # reading the (float32) residual stream runs in float32 (the module docstring says why); the weights of
        # the second norm, proj and the depthwise conv are cast together, once.
        dtype = autocast_dtype(x)
        norm_w, norm_b, proj_w, proj_b, conv_w, conv_b = cast_weights(self, (
            self.norm.weight, self.norm.bias, self.proj.weight, self.proj.bias, self.ssm.conv.weight,
            self.ssm.conv.bias), dtype)
        x = norm_to(self.norm, x, dtype)
        y = self.ssm(x, (conv_w, conv_b)) * x * channel_affinity(x, self.fc1, self.fc2, self.skip_scale)
        return F.linear(layer_norm_in_dtype(self.norm, y, norm_w, norm_b), proj_w, proj_b)


class _ConvMlp(torch.autograd.Function):
    """``fc2(act(conv(fc1(x))))`` on a channel-last map ``x``, saving ``x`` only (and the weights): fc1, the
    depthwise conv and the activation are recomputed in the backward."""

    @staticmethod
    def forward(ctx, x, fc1_weight, fc1_bias, conv_weight, conv_bias, fc2_weight, fc2_bias, conv_args, act_fn,
                act_bwd):
        h = F.linear(x, fc1_weight, fc1_bias)
        c = F.conv2d(h.permute(0, 3, 1, 2), conv_weight, conv_bias, *conv_args).permute(0, 2, 3, 1)
        # the dtype the layers compute in (autocast's, else the input's); the backward uses it explicitly
        ctx.dtype = autocast_dtype(c)
        ctx.conv_args, ctx.act_fn, ctx.act_bwd = conv_args, act_fn, act_bwd
        ctx.biases = tuple(b is not None for b in (fc1_bias, conv_bias, fc2_bias))
        ctx.save_for_backward(x, fc1_weight, fc1_bias, conv_weight, conv_bias, fc2_weight)
        return F.linear(act_fn(c), fc2_weight, fc2_bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, fc1_weight, fc1_bias, conv_weight, conv_bias, fc2_weight = ctx.saved_tensors
        dtype, (stride, padding, dilation, groups), need = ctx.dtype, ctx.conv_args, ctx.needs_input_grad
        cast = lambda t: None if t is None else t.to(dtype)
        x_flat = x.to(dtype).flatten(0, -2)
        h = F.linear(x_flat, cast(fc1_weight), cast(fc1_bias)).view(*x.shape[:-1], -1)
        h_nchw, conv_w = h.permute(0, 3, 1, 2), cast(conv_weight)
        c = F.conv2d(h_nchw, conv_w, cast(conv_bias), *ctx.conv_args).permute(0, 2, 3, 1)
        g = grad_out.to(dtype).flatten(0, -2)
        grads = [None] * 7
        if need[5]:
            grads[5] = g.t().mm(ctx.act_fn(c).flatten(0, -2)).to(fc2_weight.dtype)
        if ctx.biases[2] and need[6]:
            grads[6] = g.sum(0).to(fc2_weight.dtype)
        if any(need[:5]):
            grad_c = ctx.act_bwd(g.mm(cast(fc2_weight)).view(c.shape), c).permute(0, 3, 1, 2)
            grad_h, grads[3], grads[4] = torch.ops.aten.convolution_backward(
                grad_c, h_nchw, conv_w, [conv_w.shape[0]] if ctx.biases[1] else None, stride, padding, dilation,
                False, [0, 0], groups, [any(need[:3]), need[3], ctx.biases[1] and need[4]])
            if any(need[:3]):
                grad_h = grad_h.permute(0, 2, 3, 1).flatten(0, -2)
                grads[0] = grad_h.mm(cast(fc1_weight)).view(x.shape) if need[0] else None
                grads[1] = grad_h.t().mm(x_flat) if need[1] else None
                grads[2] = grad_h.sum(0) if ctx.biases[0] and need[2] else None
        like = (x, fc1_weight, fc1_bias, conv_weight, conv_bias, fc2_weight, fc2_weight)   # the dtypes to return
        grads = [None if gr is None else gr.to(t.dtype) for gr, t in zip(grads, like)]
        return (*grads, None, None, None)


@register_notrace_function
def conv_mlp(x: torch.Tensor, fc1: nn.Linear, conv: nn.Conv2d, act: nn.Module, fc2: nn.Linear,
             weights: Optional[Sequence[Optional[torch.Tensor]]] = None) -> torch.Tensor:
    """``fc2(act(conv(fc1(x))))`` on a channel-last map; under autograd only ``x`` is saved (GELU, SiLU, ReLU; other
    activations run as they are). ``weights``: fc1's, the conv's and fc2's weight and bias in that order, in place of
    the modules' (e.g. already cast, ``cast_weights``). A torch.fx leaf: traced graphs keep the memory saving."""
    fns = _act_backward(act)
    params = tuple(weights) if weights is not None else (
        fc1.weight, fc1.bias, conv.weight, conv.bias, fc2.weight, fc2.bias)
    if fns is not None and conv.padding_mode == 'zeros' and not isinstance(conv.padding, str) \
            and torch.is_grad_enabled() and (x.requires_grad or any(p is not None and p.requires_grad for p in params)):
        # saved in the dtype fc1 computes in (under autocast the norm before may return float32)
        return _ConvMlp.apply(x.to(autocast_dtype(x)), *params, (conv.stride, conv.padding, conv.dilation,
                                                                  conv.groups), *fns)
    h = conv._conv_forward(F.linear(x, params[0], params[1]).permute(0, 3, 1, 2), params[2], params[3])
    return F.linear(act(h.permute(0, 2, 3, 1)), params[4], params[5])


class ConvMlp(nn.Module):
    """PVTv2's feed-forward, channel-last: fc1 → depthwise 3x3 conv → act → fc2.

    Its hidden maps (8x the model width in stages 1-2) are not kept for the backward: ``conv_mlp`` saves only the
    input and recomputes fc1, the conv and the activation in the backward (one extra fc1 GEMM, depthwise conv and
    activation per block), where the plain form saves three hidden-width maps.
    """

    def __init__(self, dim: int, hidden_dim: int, act_layer: Type[nn.Module] = nn.GELU):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = cast_weights(self, self.params(), autocast_dtype(x))
        return conv_mlp(x, self.fc1, self.dwconv, self.act, self.fc2, weights)

    def params(self) -> Tuple[Optional[torch.Tensor], ...]:
        """The weights and biases of fc1, the conv and fc2, in ``conv_mlp``'s order."""
        return self.fc1.weight, self.fc1.bias, self.dwconv.weight, self.dwconv.bias, self.fc2.weight, self.fc2.bias


class _AddScaled(torch.autograd.Function):
    """``x + y * factor`` (``factor`` a per-sample scale without gradient) in ``x``'s dtype, whose backward writes
    ``y``'s gradient in ``y``'s dtype by one kernel (autograd's addcmul would write it in ``x``'s, then cast)."""

    @staticmethod
    def forward(ctx, x, y, factor):
        ctx.save_for_backward(factor)
        ctx.y_dtype = y.dtype
        return torch.addcmul(x, y, factor)

    @staticmethod
    def backward(ctx, grad):
        factor, = ctx.saved_tensors
        grad_y = torch.empty(grad.shape, dtype=ctx.y_dtype, device=grad.device)
        return grad, torch.mul(grad, factor, out=grad_y), None


@register_notrace_function
def add_residual(x: torch.Tensor, y: torch.Tensor, drop_path: nn.Module) -> torch.Tensor:
    """``x + drop_path(y)`` in one pass over the map: timm's ``DropPath`` draws its per-sample mask as it would (the
    same random numbers, the same ``1 / keep`` rescaling), and the mask enters one ``addcmul``. A torch.fx leaf, so a
    traced graph follows the module's mode when it runs."""
    if isinstance(drop_path, DropPath) and drop_path.training and drop_path.drop_prob > 0.:
        keep = 1. - drop_path.drop_prob
        mask = y.new_empty((y.shape[0],) + (1,) * (y.ndim - 1)).bernoulli_(keep)
        if keep > 0. and drop_path.scale_by_keep:
            mask.div_(keep)
        return _AddScaled.apply(x, y, mask) if torch.is_grad_enabled() else torch.addcmul(x, y, mask)
    return x + drop_path(y)


class GroupMambaBlock(nn.Module):
    """``x + mixer(x)`` (the mixer normalizes its own input), then ``x + ConvMlp(norm2(x))``."""

    def __init__(
            self,
            dim: int,
            mlp_ratio: float = 4.0,
            drop_path: float = 0.,
            norm_layer: Type[nn.Module] = nn.LayerNorm,
            **mixer_kwargs,
    ):
        super().__init__()
        self.mixer = GroupMambaMixer(dim, **mixer_kwargs)
        self.norm2 = norm_layer(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = add_residual(x, self.mixer(x), self.drop_path)
        return add_residual(x, self.mlp(norm_to(self.norm2, x, autocast_dtype(x))), self.drop_path)


class GroupMambaStage(nn.Module):
    """Downsample (none in the first stage), ``depth`` blocks, then the stage norm (none after the last stage:
    the original's last norm acts on the class token only). Channel-last in and out."""

    def __init__(
            self,
            in_dim: int,
            dim: int,
            depth: int,
            mlp_ratio: float,
            downsample: bool = True,
            final_norm: bool = True,
            drop_path: Sequence[float] = (),
            norm_layer: Type[nn.Module] = nn.LayerNorm,
            **mixer_kwargs,
    ):
        super().__init__()
        self.grad_checkpointing = False
        # The stem and downsampling LayerNorms keep the default eps (1e-5), unlike the blocks' norm_layer.
        self.downsample = ConvDownsample(in_dim, dim, kernel_size=3, norm_layer=nn.LayerNorm) \
            if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            GroupMambaBlock(dim, mlp_ratio, drop_path=drop_path[i] if drop_path else 0., norm_layer=norm_layer,
                            **mixer_kwargs)
            for i in range(depth)])
        self.norm = norm_layer(dim) if final_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)


class Stem(nn.Module):
    """Conv7x7/2 (no bias) → BN → ReLU → 2 x (conv3x3 → BN → ReLU) → conv3x3/2 → LayerNorm. NCHW in, NHWC out."""

    def __init__(self, in_chans: int = 3, hidden_dim: int = 32, dim: int = 64):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_chans, hidden_dim, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden_dim),
            nn.ReLU(inplace=True),
        )
        self.proj = nn.Conv2d(hidden_dim, dim, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last convolutions and BatchNorms (same values): their outputs are NHWC in memory, so the final
        # permute to channel-last is a view, and on CUDA the BatchNorms take the channels-last kernels, where the
        # NCHW bfloat16 backward was a slow kernel at this 112x112, 32-channel size.
        x = self.conv(x.contiguous(memory_format=torch.channels_last))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ClassBlock(nn.Module):
    """The post-network block on the class token ``(B, 1, 1, C)``: ``x + norm1(mixer(x))``, ``x + mlp(norm2(x))``.

    The mixer sees a 1x1 map: its scans have length 1 (A never enters) and the depthwise convs use only their centre.
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0, norm_layer: Type[nn.Module] = nn.LayerNorm,
                 **mixer_kwargs):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.norm2 = norm_layer(dim)
        self.mixer = GroupMambaMixer(dim, **mixer_kwargs)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.norm1(self.mixer(x))
        return x + self.mlp(self.norm2(x))


_POOLS = ('avg', 'max', '')


class GroupMamba(nn.Module):
    """GroupMamba backbone and classifier.

    Args:
        in_chans: input image channels.
        num_classes: classifier outputs (0 for none).
        global_pool: how the class token is initialized from the last map: 'avg' (the original) or 'max';
            '' for no head at all (``forward_head`` returns the map).
        depths: blocks per stage.
        embed_dims: widths per stage (divisible by 4).
        mlp_ratios: ConvMlp hidden width over model width, per stage; the class block uses the last.
        stem_hidden_dim: width of the stem's stride-2 convolutions.
        d_state: SSM states per channel.
        ssm_ratio: inner width of a channel group over its width.
        ssm_conv: depthwise conv size in the SSM.
        cam_reduction: channel-affinity bottleneck reduction.
        distillation: keep the distillation head (in the official checkpoints); logits average both heads.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, linearly increasing over blocks.
        norm_layer: norm of the blocks' MLP branch, the stage norms, the class block and the final norm.
    """
    output_fmt = 'NHWC'  # forward_features' layout: timm reads the spatial and channel axes from it

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            depths: Sequence[int] = (3, 4, 9, 3),
            embed_dims: Sequence[int] = (64, 128, 348, 448),
            mlp_ratios: Sequence[float] = (8, 8, 4, 4),
            stem_hidden_dim: int = 32,
            d_state: int = 1,
            ssm_ratio: float = 1.0,
            ssm_conv: int = 3,
            cam_reduction: int = 16,
            distillation: bool = True,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_layer: Type[nn.Module] = partial(nn.LayerNorm, eps=1e-6),
    ):
        super().__init__()
        num_stages = len(depths)
        if len(embed_dims) != num_stages or len(mlp_ratios) != num_stages:
            raise ValueError(f'embed_dims ({len(embed_dims)}) and mlp_ratios ({len(mlp_ratios)}) need one entry per '
                             f'stage of depths ({num_stages})')
        if global_pool not in _POOLS:
            raise ValueError(f'global_pool must be one of {_POOLS}, got {global_pool!r}')
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.drop_rate = drop_rate
        self.distilled_training = False
        mixer_kwargs = dict(d_state=d_state, ssm_ratio=ssm_ratio, d_conv=ssm_conv, cam_reduction=cam_reduction)

        self.stem = Stem(in_chans, stem_hidden_dim, embed_dims[0])
        dpr = [x.tolist() for x in torch.linspace(0, drop_path_rate, sum(depths), device='cpu').split(list(depths))]
        self.stages = nn.Sequential()
        self.feature_info = []
        for i in range(num_stages):
            self.stages.append(GroupMambaStage(
                embed_dims[max(i - 1, 0)], embed_dims[i], depths[i], mlp_ratios[i], downsample=i > 0,
                final_norm=i < num_stages - 1, drop_path=dpr[i], norm_layer=norm_layer, **mixer_kwargs,
            ))
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=4 * 2 ** i, module=f'stages.{i}'))
        self.class_block = ClassBlock(self.num_features, mlp_ratios[-1], norm_layer=norm_layer, **mixer_kwargs)
        self.norm = norm_layer(self.num_features)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head_dist = (nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()) \
            if distillation else None
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        # A (as log), D and the skip scale are not weights to shrink.
        return {n for n, _ in self.named_parameters() if n.endswith(('.A_logs', '.Ds', '.skip_scale'))}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^stages\.(\d+)\.norm', (99998,)),
                (r'^class_block|^norm', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def set_distilled_training(self, enable: bool = True):
        """In training mode, return ``(head, head_dist)`` logits for a distillation loss (as the original)."""
        self.distilled_training = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in _POOLS:
                raise ValueError(f'global_pool must be one of {_POOLS}, got {global_pool!r}')
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if self.head_dist is not None:
            self.head_dist = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def load_pretrained(self, checkpoint_path: str):
        """Load an official (or our own) checkpoint file, converting it; used by ``pretrained=True``."""
        state_dict = extract_state_dict(load_checkpoint_file(checkpoint_path), ('model', 'state_dict', 'model_ema'),
                                        source=str(checkpoint_path))
        load_converted(self, state_dict, checkpoint_filter_fn, source=str(checkpoint_path), head_prefix='head',
                       first_conv='stem.conv.0')

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs (strides 4..32) and, unless ``intermediates_only``, the final features.

        Stages 1-3 end with their norm (the map the next stage reads); the last stage's map has none, since the
        original's final norm acts on the class token, so ``norm`` changes nothing here.

        Args:
            indices: last n stages if int, all if None, else the stage indices to return.
            norm: accepted for the timm API; no norm applies to the last map.
            stop_early: stop after the last requested stage.
            output_fmt: 'NCHW' or 'NHWC'.
        """
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages[:max_index + 1] if stop_early and not torch.jit.is_scripting() else self.stages
        intermediates = []
        x = self.stem(x)
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(x.permute(0, 3, 1, 2).contiguous() if output_fmt == 'NCHW' else x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages (and class block / norm / head) that the requested intermediates do not need."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if prune_head:
            self.class_block = nn.Identity()
            self.norm = nn.Identity()
            self.reset_classifier(0, '')
        elif prune_norm:
            self.norm = nn.Identity()
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last-stage map, channel-last ``(B, H/32, W/32, C)`` (no norm: see ``forward_intermediates``)."""
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Class token = pooled map → class block → norm (→ heads)."""
        if not self.global_pool:
            return x
        cls = x.amax(dim=(1, 2), keepdim=True) if self.global_pool == 'max' else x.mean(dim=(1, 2), keepdim=True)
        x = self.head_drop(self.norm(self.class_block(cls).flatten(1)))
        if pre_logits:
            return x
        if self.head_dist is None:
            return self.head(x)
        x, x_dist = self.head(x), self.head_dist(x)
        if self.distilled_training and self.training and not torch.jit.is_scripting():
            return x, x_dist
        return (x + x_dist) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --- official state dict → ours --------------------------------------------------------------------------------

_OFFICIAL_RENAMES = (
    (r'^patch_embed1\.', 'stem.'),
    (r'^patch_embed(\d+)\.proj\.', lambda m: f'stages.{int(m[1]) - 1}.downsample.conv.'),
    (r'^patch_embed(\d+)\.norm\.', lambda m: f'stages.{int(m[1]) - 1}.downsample.norm.'),
    (r'^block(\d+)\.(\d+)\.attn\.', lambda m: f'stages.{int(m[1]) - 1}.blocks.{m[2]}.mixer.'),
    (r'^block(\d+)\.(\d+)\.mlp\.dwconv\.dwconv\.', lambda m: f'stages.{int(m[1]) - 1}.blocks.{m[2]}.mlp.dwconv.'),
    (r'^block(\d+)\.(\d+)\.', lambda m: f'stages.{int(m[1]) - 1}.blocks.{m[2]}.'),
    (r'^post_network\.0\.attn\.', 'class_block.mixer.'),
    (r'^post_network\.0\.', 'class_block.'),
    (r'^dist_head\.', 'head_dist.'),
    (r'^norm(\d+)\.', lambda m: f'stages.{int(m[1]) - 1}.norm.'),
)
# Per-group SS2D tensor (official name under mamba_g{k}.) → (our GroupedSS2D name, how the 4 groups combine).
_GROUP_PARAMS = {
    'in_proj.weight': ('in_proj_weight', 'stack'),
    'conv2d.weight': ('conv.weight', 'cat'),
    'conv2d.bias': ('conv.bias', 'cat'),
    'x_proj_weight': ('x_proj_weight', 'cat'),        # (1, R+2N, D) each
    'dt_projs_weight': ('dt_projs_weight', 'cat'),    # (1, D, R) each
    'dt_projs_bias': ('dt_projs_bias', 'cat'),        # (1, D) each
    'A_logs': ('A_logs', 'cat'),                      # (D, N) each
    'Ds': ('Ds', 'cat'),
    'out_norm.weight': ('out_norm_weight', 'stack'),
    'out_norm.bias': ('out_norm_bias', 'stack'),
    'out_proj.weight': ('out_proj_weight', 'stack'),
}
_GROUP_KEY = re.compile(r'^(.*\.)mamba_g([1-4])\.(.+)$')


def _rename(key: str, num_stages: int) -> str:
    if key.startswith(f'norm{num_stages}.'):  # the last stage norm is the final norm of the class token
        return 'norm.' + key[len(f'norm{num_stages}.'):]
    for pattern, repl in _OFFICIAL_RENAMES:
        key, n = re.subn(pattern, repl, key)
        if n:
            break
    return key


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: GroupMamba) -> Dict[str, torch.Tensor]:
    """Convert an official GroupMamba state dict to this module tree.

    Renames the modules, stacks the four per-group SS2D modules (``mamba_g1..4``) into ``GroupedSS2D``, and, when
    ``model`` has no distillation head, folds the official ``dist_head`` into ``head`` (the average of the two, which
    gives the same eval logits). Our own state dicts pass through unchanged.
    """
    if any(k.startswith(('stem.', 'stages.')) for k in state_dict):
        return dict(state_dict)
    out: Dict[str, torch.Tensor] = {}
    groups: Dict[Tuple[str, str], Dict[int, torch.Tensor]] = {}
    for key, value in state_dict.items():
        key = _rename(key, len(model.stages))
        m = _GROUP_KEY.match(key)
        if m and m[3] in _GROUP_PARAMS:
            groups.setdefault((m[1], m[3]), {})[int(m[2]) - 1] = value
            continue
        out[key] = value
    for (prefix, name), parts in groups.items():
        ours, how = _GROUP_PARAMS[name]
        if sorted(parts) != list(range(_NUM_GROUPS)):
            missing = [f'mamba_g{k + 1}' for k in range(_NUM_GROUPS) if k not in parts]
            raise ValueError(f'official checkpoint lacks {", ".join(missing)} for {prefix}ssm.{ours}')
        tensors = [parts[k] for k in range(_NUM_GROUPS)]
        out[f'{prefix}ssm.{ours}'] = torch.stack(tensors) if how == 'stack' else torch.cat(tensors)
    if getattr(model, 'head_dist', None) is None and any(k.startswith('head_dist.') for k in out):
        for suffix in ('weight', 'bias'):
            dist = out.pop(f'head_dist.{suffix}', None)
            if dist is not None and f'head.{suffix}' in out:
                out[f'head.{suffix}'] = (out[f'head.{suffix}'] + dist) / 2
    return out


def _create_groupmamba(variant: str, pretrained: bool = False, **kwargs) -> GroupMamba:
    load_through_model(kwargs)  # official files need the safe loader and the conversion
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3))
    return build_model_with_cfg(
        GroupMamba, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


# --- from_official: the official GroupMamba constructor's arguments, mapped to ours --------------------------------

def _layer_norm_eps(norm_layer: Any) -> float:
    """The eps of the official ``norm_layer`` argument: ``nn.LayerNorm``, ``partial(nn.LayerNorm, eps=...)``, or
    either written as a string (as the parity fixtures record it)."""
    if isinstance(norm_layer, str):
        if 'LayerNorm' not in norm_layer:
            raise ValueError(f'norm_layer must be a LayerNorm, got {norm_layer!r}')
        m = re.search(r'eps\s*=\s*([0-9.eE+-]+)', norm_layer)
        return float(m[1]) if m else 1e-5
    if norm_layer is nn.LayerNorm:
        return 1e-5
    if isinstance(norm_layer, partial) and norm_layer.func is nn.LayerNorm and not norm_layer.args \
            and set(norm_layer.keywords) <= {'eps'}:
        return float(norm_layer.keywords.get('eps', 1e-5))
    raise ValueError(f'norm_layer must be nn.LayerNorm or partial(nn.LayerNorm, eps=...), got {norm_layer!r}')


def from_official(checkpoint: Optional[str] = None, **official_kwargs) -> GroupMamba:
    """The GroupMamba equal to the official ``GroupMamba(**official_kwargs)``, optionally loaded from an official
    file (raw EMA state dict)."""
    kw = dict(official_kwargs)
    args: Dict[str, Any] = dict(  # the official class's defaults
        stem_hidden_dim=32, embed_dims=(64, 128, 348, 448), mlp_ratios=(8, 8, 4, 4), depths=(3, 4, 6, 3),
        distillation=True, drop_path_rate=0.)
    args['norm_layer'] = partial(nn.LayerNorm, eps=_layer_norm_eps(kw.pop('norm_layer', nn.LayerNorm)))
    num_stages = kw.pop('num_stages', 4)
    renames = ('in_chans', 'num_classes', 'stem_hidden_dim', 'embed_dims', 'mlp_ratios', 'drop_path_rate', 'depths',
               'distillation')
    unknown = sorted(set(kw) - set(renames))
    if unknown:
        raise ValueError(f'unknown GroupMamba arguments: {unknown}')
    args.update(kw)
    if num_stages != len(args['depths']):
        raise ValueError(f'num_stages ({num_stages}) must equal len(depths) ({len(args["depths"])})')
    model = GroupMamba(**args)
    if checkpoint is not None:
        model.load_pretrained(checkpoint)
    return model


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return {
        'url': url, 'custom_load': True,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'fixed_input_size': False,
        'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225),
        'first_conv': 'stem.conv.0', 'classifier': 'head',
        'license': 'mit', 'origin_url': 'https://github.com/Amshaker/GroupMamba',
        'paper_ids': 'arXiv:2407.13772',
        'paper_name': 'GroupMamba: Efficient Group-Based Visual State Space Model',
        **kwargs,
    }


# The README's Hugging Face repositories (Google Drive mirrors are listed there too). The base file name is
# inferred from the tiny/small naming; its repository is the README's.
_HF = 'https://huggingface.co/Abdelrahman-shaker/'

default_cfgs = generate_default_cfgs({
    'groupmamba_tiny.in1k': _cfg(_HF + 'GroupMamba-Tiny/resolve/main/groupmamba_tiny_ema.pth'),
    'groupmamba_small.in1k': _cfg(_HF + 'GroupMamba-Small/resolve/main/groupmamba_small_ema.pth'),
    'groupmamba_base.in1k': _cfg(_HF + 'GroupMamba-Base/resolve/main/groupmamba_base_ema.pth'),
    'test_groupmamba.untrained': _cfg(input_size=(3, 64, 64), pool_size=(2, 2)),
})

# Released models: d_state 1, group ssm_ratio 1, MLP ratios 8-8-4-4, LayerNorm eps 1e-6, distillation head.
# drop_path_rate 0.05 is what the official training hard-codes.


@register_model
def groupmamba_tiny(pretrained: bool = False, **kwargs) -> GroupMamba:
    """GroupMamba-T (23.4M with the distillation head, 83.3% IN-1k)."""
    model_args = dict(stem_hidden_dim=32, embed_dims=(64, 128, 348, 448), mlp_ratios=(8, 8, 4, 4),
                      depths=(3, 4, 9, 3), drop_path_rate=0.05)
    return _create_groupmamba('groupmamba_tiny', pretrained, **dict(model_args, **kwargs))


@register_model
def groupmamba_small(pretrained: bool = False, **kwargs) -> GroupMamba:
    """GroupMamba-S (34.8M with the distillation head, 83.9% IN-1k)."""
    model_args = dict(stem_hidden_dim=64, embed_dims=(64, 128, 348, 512), mlp_ratios=(8, 8, 4, 4),
                      depths=(3, 4, 16, 3), drop_path_rate=0.05)
    return _create_groupmamba('groupmamba_small', pretrained, **dict(model_args, **kwargs))


@register_model
def groupmamba_base(pretrained: bool = False, **kwargs) -> GroupMamba:
    """GroupMamba-B (57.2M with the distillation head, 84.5% IN-1k)."""
    model_args = dict(stem_hidden_dim=64, embed_dims=(96, 192, 424, 512), mlp_ratios=(8, 8, 4, 4),
                      depths=(3, 6, 21, 3), drop_path_rate=0.05)
    return _create_groupmamba('groupmamba_base', pretrained, **dict(model_args, **kwargs))


@register_model
def test_groupmamba(pretrained: bool = False, **kwargs) -> GroupMamba:
    """A tiny GroupMamba for tests and demos."""
    model_args = dict(stem_hidden_dim=8, embed_dims=(16, 32, 48, 64), mlp_ratios=(4, 4, 2, 2), depths=(1, 1, 2, 1),
                      drop_path_rate=0.)
    return _create_groupmamba('test_groupmamba', pretrained, **dict(model_args, **kwargs))
