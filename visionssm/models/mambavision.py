"""MambaVision: a hybrid Mamba-Transformer vision backbone.

Paper: "MambaVision: A Hybrid Mamba-Transformer Vision Backbone", Hatamizadeh and Kautz, CVPR 2025 —
https://arxiv.org/abs/2407.08083
Official code and weights: https://github.com/NVlabs/MambaVision, read at commit 7860a506.

LICENCE OF THE PRETRAINED WEIGHTS — NON-COMMERCIAL. The official weights are released under CC-BY-NC-SA-4.0 and the
official code under the NVIDIA Source Code License-NC: neither may be used commercially. ``pretrained=True`` (and
``from_official`` with a checkpoint) loads those weights and warns once with this notice. This file is an
independent re-implementation, written for visionssm under the project's own licence; it contains no official code.

A four-stage hierarchical classifier (strides 4, 8, 16, 32; widths C, 2C, 4C, 8C). A conv stem and two stages of
residual conv blocks; then two hybrid stages that run on non-overlapping windows (the map zero-padded at the
bottom/right to a multiple of the window; at the native resolution one window covers the whole map). In a hybrid
stage of depth d the first ceil(d/2) blocks mix tokens with the MambaVision mixer and the rest with multi-head
self-attention, each followed by an MLP. The mixer splits its input in two halves: one goes through a symmetric
depthwise conv1d and a selective scan in one forward route over the window's tokens (row-major), the other through
its own conv1d only; the two are concatenated, not gated.

This is a re-implementation on visionssm's shared scan op: the windows are partitioned in the model (the attention
blocks share them) and each window's tokens are scanned as one sequence, one forward ``Route('row')``. Everything is
channel-last, whatever the input's memory format: the stem makes the image channels-last, the conv stages run on the
NHWC map viewed as a channels-last NCHW tensor, and the mixer's conv1d, halves, projections and scan work on views
of the ``(B, L, C)`` tokens (no copies). Official checkpoints (``{'state_dict': ...}``) convert at load time in
``checkpoint_filter_fn``; ``from_official`` builds the model equal to an official ``MambaVision(**kwargs)``.

Official behaviour kept because the weights were trained with it:

* The zero padding of a map that is not a multiple of the window is not masked: padded tokens are scanned, convolved
  and attended like image tokens. ``mask_padding=True`` gives the fixed behaviour instead: each window holds its
  image tokens first (row-major) and its padding after them, padding is zero at every conv1d input and masked out
  of attention, so every window computes exactly what the window cropped to its image tokens would (and a map
  smaller than the window is not padded at all).
* The Δ projection's bias enters twice: ``dt_proj`` adds it and the scan adds it again as ``delta_bias``.
* The conv1d of both mixer halves is 'same' padded (symmetric, non-causal), without bias.

Deliberate differences:

* Attention dropout is applied only in training (the original passes its rate to ``scaled_dot_product_attention``
  in eval too; every release uses rate 0).
* Under autocast the hybrid blocks' LayerNorms run in the residual stream's dtype (bfloat16 / float16, statistics
  accumulated in float32), their affine cast to it, where autocast's float32 policy for LayerNorm would copy the
  stream to float32, keep that copy for the backward and return float32 for the next GEMM to cast back. The
  logits' error against a float64 run stays the same (the parity fixture's model with random norm affines, bf16
  autocast: 6.15e-3 relative, 6.10e-3 with float32 norms). Without autocast they are plain LayerNorms.

torch.fx traces the model (the scan op and a few size-dependent helpers are leaves). TorchScript is not supported,
because the shared scan op cannot be scripted: ``torch.jit.script``, or building under timm's
``set_scriptable(True)``, raises ``visionssm.ops.selective_scan.TORCHSCRIPT_UNSUPPORTED``, which says why.
"""
from __future__ import annotations

import contextlib
import math
import re
import warnings
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ClassifierHead, DropPath, register_notrace_function, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from torch.utils.checkpoint import checkpoint

from visionssm.layers import Mlp, ScanLayer, full_precision, init_dt_bias
from visionssm.layers.cache import cached_while_inferring, exporting
from visionssm.layers.conv1d import depthwise_conv1d
from visionssm.ops import Route, selective_scan
from ._checkpoint import load_through_model
from ._hierarchical import HierarchicalBackbone
from visionssm.layers.fused import autocast_dtype, autocast_enabled

__all__ = [
    'MambaVision', 'MambaVisionMixer', 'Attention', 'HybridBlock', 'ConvBlock', 'ConvStage', 'HybridStage',
    'checkpoint_filter_fn', 'from_official',
]

LICENSE_NOTICE = (
    'MambaVision pretrained weights are licensed CC-BY-NC-SA-4.0 (official code: NVIDIA Source Code License-NC): '
    'non-commercial use only. See https://github.com/NVlabs/MambaVision#licenses')

# The official det/seg backbone's output norms ``outnorm{i}`` are timm LayerNorm2d at its default eps
# (read by visionssm.mm.VisionSSMBackbone).
OUT_NORM_EPS = 1e-6


def _warn_license():
    warnings.warn(LICENSE_NOTICE, UserWarning, stacklevel=3)


# --- windows -----------------------------------------------------------------------------------------------------

@register_notrace_function
def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """``(B, H, W, C)`` zero-padded at the bottom/right to multiples of ``window_size`` → windows
    ``(B * nH * nW, window_size**2, C)``, tokens row-major inside each window (the official layout). A map of
    exactly one window (the native resolutions) comes back as a view."""
    batch, height, width, channels = x.shape
    n_h, n_w = _windows(height, window_size), _windows(width, window_size)
    pad_h, pad_w = n_h * window_size - height, n_w * window_size - width
    with _symbolic_windows():
        if exporting() or pad_h or pad_w:  # F.pad copies the map even when it pads nothing
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        x = x.reshape(batch, n_h, window_size, n_w, window_size, channels).transpose(2, 3)
        return _copy_if_exporting(x).reshape(batch * n_h * n_w, window_size * window_size, channels)


@register_notrace_function
def window_reverse(windows: torch.Tensor, window_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of ``window_partition``: windows → ``(B, height, width, C)``, the padding cropped."""
    n_h, n_w = _windows(height, window_size), _windows(width, window_size)
    channels = windows.shape[-1]
    with _symbolic_windows():
        x = windows.reshape(-1, n_h, n_w, window_size, window_size, channels).transpose(2, 3)
        x = _copy_if_exporting(x).reshape(-1, n_h * window_size, n_w * window_size, channels)
        x = x.narrow(1, 0, height).narrow(2, 0, width)
        return x.clone(memory_format=torch.contiguous_format) if exporting() else x.contiguous()


def _windows(size: int, window_size: int) -> int:
    # ceil division with non-negative operands: ONNX divides integers toward zero, and the exported -(-a // b)
    # rounded the wrong way wherever a map needs padding
    return (size + window_size - 1) // window_size


# With dynamic sizes (torch.export) the window counts are symbolic, and at the native resolutions they are 1.
# torch.export fixes a size that its shape checks see at 1, and a reshape or ``contiguous()`` of a transposed or
# cropped window layout asks whether it could be a view, which depends on exactly that. So while exporting the
# checks treat the counts as sizes that may be 1 or more (size-oblivious), and those layouts are copied outright.
# (Not under torch.compile: it recompiles per size, and dynamo cannot trace the config patch.)

def _symbolic_windows():
    config = torch.fx.experimental._config
    if not exporting() or not hasattr(config, 'backed_size_oblivious'):   # older torch: the traced size is fixed
        return contextlib.nullcontext()
    return config.patch(backed_size_oblivious=True)


def _copy_if_exporting(x: torch.Tensor) -> torch.Tensor:
    return x.clone(memory_format=torch.contiguous_format) if exporting() else x


@register_notrace_function
def masked_window_layout(height: int, width: int, window_size: int, device: torch.device
                         ) -> Tuple[int, int, torch.Tensor, torch.Tensor]:
    """The fixed windowing of ``mask_padding=True``: window sides ``min(window_size, size)`` per axis, and per window
    the order that puts its image tokens first (row-major) and its padding last, with the image-token mask.

    Returns ``(window_h, window_w, order (nW, L), valid (nW, L))``: ``windows.gather(1, order)`` reorders a window
    of the padded map; ``valid`` marks the image tokens in the reordered window.
    """
    win_h, win_w = min(window_size, height), min(window_size, width)
    n_h, n_w = _windows(height, win_h), _windows(width, win_w)
    rows = torch.arange(n_h, device=device)[:, None] * win_h + torch.arange(win_h, device=device) < height
    cols = torch.arange(n_w, device=device)[:, None] * win_w + torch.arange(win_w, device=device) < width
    valid = (rows[:, None, :, None] & cols[None, :, None, :]).reshape(n_h * n_w, win_h * win_w)
    length = win_h * win_w
    key = (~valid).long() * length + torch.arange(length, device=device)  # distinct keys: a stable order
    order = key.argsort(dim=1)
    return win_h, win_w, order, valid.gather(1, order)


@register_notrace_function
def masked_window_partition(x: torch.Tensor, win_h: int, win_w: int, order: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, C)`` → windows ``(B * nW, win_h * win_w, C)`` of the zero-padded map, reordered by ``order``."""
    batch, height, width, channels = x.shape
    pad_h, pad_w = (win_h - height % win_h) % win_h, (win_w - width % win_w) % win_w
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    n_h, n_w = (height + pad_h) // win_h, (width + pad_w) // win_w
    x = x.reshape(batch, n_h, win_h, n_w, win_w, channels).transpose(2, 3).reshape(batch, n_h * n_w, -1, channels)
    x = x.gather(2, order[None, :, :, None].expand(batch, -1, -1, channels))
    return x.flatten(0, 1)


@register_notrace_function
def masked_window_reverse(windows: torch.Tensor, win_h: int, win_w: int, order: torch.Tensor, height: int,
                          width: int) -> torch.Tensor:
    """Inverse of ``masked_window_partition``."""
    n_h, n_w = _windows(height, win_h), _windows(width, win_w)
    channels = windows.shape[-1]
    x = windows.reshape(-1, n_h * n_w, win_h * win_w, channels)
    x = x.scatter(2, order[None, :, :, None].expand(x.shape[0], -1, -1, channels), x)
    x = x.reshape(-1, n_h, n_w, win_h, win_w, channels).transpose(2, 3)
    x = x.reshape(-1, n_h * win_h, n_w * win_w, channels)
    return x[:, :height, :width].contiguous()


# --- token mixers ------------------------------------------------------------------------------------------------

_FORWARD = (Route('row'),)  # one forward scan over each window's row-major tokens


class MambaVisionMixer(ScanLayer):
    """in_proj → two halves, each SiLU(depthwise conv1d, 'same'); the first scanned forward over the tokens →
    out_proj(concat[scan, second half]). Parameter names are the official ones.

    Everything stays channel-last: both halves' conv1d run as one depthwise conv along the ``(B, L, C)`` tokens
    (``visionssm.layers.conv1d``), and the halves, Δ, B and C are views that the projections and the scan read in
    place.

    Args:
        dim: model width C (the halves are C / 2 wide).
        d_state: N, states per channel.
        d_conv: conv1d kernel size.
        dt_rank: rank of the Δ projection; 'auto' = ceil(C / 16).
    """

    def __init__(self, dim: int, d_state: int = 8, d_conv: int = 3, dt_rank: Union[int, str] = 'auto'):
        super().__init__()
        if dim % 2:
            raise ValueError(f'MambaVisionMixer needs an even width (two halves), got {dim}')
        half = dim // 2
        self.dim, self.d_state = dim, d_state
        self.dt_rank = math.ceil(dim / 16) if dt_rank == 'auto' else int(dt_rank)
        self.in_proj = nn.Linear(dim, dim, bias=False)
        self.x_proj = nn.Linear(half, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, half, bias=True)
        dt_std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -dt_std, dt_std)
        with torch.no_grad():
            self.dt_proj.bias.copy_(init_dt_bias(half))
        # S4D-real: A = -(1..N) for every channel.
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(half, 1))
        self.D = nn.Parameter(torch.ones(half))
        self.out_proj = nn.Linear(dim, dim, bias=False)
        # Applied functionally as one depthwise conv over both halves (see forward); the modules hold the weights.
        self.conv1d_x = nn.Conv1d(half, half, d_conv, groups=half, padding='same', bias=False)
        self.conv1d_z = nn.Conv1d(half, half, d_conv, groups=half, padding='same', bias=False)

    def _derived_weights(self, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        """Both halves' conv weights as one depthwise conv's ``(C, 1, k)`` in ``dtype``, and ``A = -exp(A_log)``
        in at least float32; kept between calls while inferring (``cached_while_inferring``)."""
        params = (self.conv1d_x.weight, self.conv1d_z.weight, self.A_log)
        return cached_while_inferring(self, params, dtype, lambda: (
            torch.cat([self.conv1d_x.weight, self.conv1d_z.weight]).to(dtype),
            -torch.exp(full_precision(self.A_log))))

    def forward(self, x: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x (B, L, C)`` tokens of each window; ``valid (B, L)`` marks image tokens (``mask_padding`` only)."""
        xz = self.in_proj(x)
        if valid is not None:  # padding is zero to the conv, as its own 'same' padding is
            xz = xz * valid.unsqueeze(-1).to(xz.dtype)
        conv_weight, A = self._derived_weights(xz.dtype)
        # Both halves' SiLU(conv), 'same' padded, as one depthwise conv along the tokens (on CUDA one Triton kernel).
        u, z = depthwise_conv1d(xz, conv_weight, left=(conv_weight.shape[-1] - 1) // 2).chunk(2, dim=-1)
        rank, n = self.dt_rank, self.d_state
        dt, B, C = self.x_proj(u).split([rank, n, n], dim=-1)
        # The official model adds dt_proj's bias here and again as the scan's delta_bias; the weights learned so.
        # On the flattened tokens the projection and its bias are one GEMM (addmm) although dt is a strided view.
        delta = self.dt_proj(dt.flatten(0, 1)).view_as(u)
        # Autocast may leave the projections in another dtype than u (no-ops otherwise).
        delta, B, C = delta.to(u.dtype), B.unsqueeze(-2).to(u.dtype), C.unsqueeze(-2).to(u.dtype)
        # The scan writes u's dtype, as the official kernel does: the concat and out_proj take that dtype anyway.
        y = selective_scan(u, delta, A, B, C, full_precision(self.D), full_precision(self.dt_proj.bias),
                           routes=_FORWARD, delta_softplus=True)
        return self.out_proj(torch.cat([y, z], dim=-1))


class Attention(nn.Module):
    """Multi-head self-attention over each window's tokens (qkv bias, no q/k norm), through
    ``F.scaled_dot_product_attention``; ``valid`` masks padding keys (``mask_padding`` only)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.,
                 proj_drop: float = 0.):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'attention width {dim} is not divisible by num_heads={num_heads}')
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch, length, dim = x.shape
        # Unbound along the qkv axis of the token layout, then viewed per head: the backward stacks the gradients of
        # q, k and v straight into qkv's (B, L, 3, heads, head_dim) layout (one copy, not a stack and a transpose).
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, self.head_dim).unbind(2)
        mask = valid[:, None, None, :] if valid is not None else None
        x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                           dropout_p=self.attn_drop if self.training else 0.)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(batch, length, dim)))


# --- blocks and stages -------------------------------------------------------------------------------------------

def fold_batch_norm(conv: nn.Conv2d, norm: nn.BatchNorm2d, dtype: torch.dtype,
                    scale: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``conv`` followed by ``norm`` with its running statistics (eval), times ``scale`` per channel if given, as one
    conv's ``(weight, bias)``: computed in at least float32, returned in ``dtype``, the weight channels-last as the
    maps are."""
    factor = full_precision(norm.weight) * torch.rsqrt(full_precision(norm.running_var) + norm.eps)
    bias = full_precision(norm.bias) - full_precision(norm.running_mean) * factor
    if conv.bias is not None:
        bias = bias + full_precision(conv.bias) * factor
    if scale is not None:
        factor, bias = factor * full_precision(scale), bias * full_precision(scale)
    weight = full_precision(conv.weight) * factor.view(-1, 1, 1, 1)
    return weight.to(dtype).contiguous(memory_format=torch.channels_last), bias.to(dtype)


def _conv(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


@register_notrace_function
def conv_norm_pair(block: nn.Module, x: torch.Tensor, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``block.norm2(block.conv2(block.act1(block.norm1(block.conv1(x)))))``, times ``scale`` per channel if given.

    While both norms are in eval each is folded into its conv (``fold_batch_norm``; the scale into the second), the
    folded weights kept while inferring: two convs and the activation, no normalization pass over the map. A torch.fx
    leaf, so a traced graph follows the norms' mode when it runs.
    """
    if block.norm1.training or block.norm2.training:
        y = block.norm2(block.conv2(block.act1(block.norm1(block.conv1(x)))))
        return y * scale.view(1, -1, 1, 1) if scale is not None else y
    dtype = autocast_dtype(x)   # the convs' compute dtype
    pairs = ((block.conv1, block.norm1), (block.conv2, block.norm2))
    # The batch_norm kernel updates the running statistics without bumping their version counters; the module's
    # num_batches_tracked.add_(1) of every training step does.
    params = [t for conv, norm in pairs for t in (conv.weight, conv.bias, norm.weight, norm.bias, norm.running_mean,
                                                  norm.running_var, norm.num_batches_tracked) if t is not None]
    params += [scale] if scale is not None else []
    (w1, b1), (w2, b2) = cached_while_inferring(block, params, dtype, lambda: (
        fold_batch_norm(block.conv1, block.norm1, dtype), fold_batch_norm(block.conv2, block.norm2, dtype, scale)))
    return _conv(block.conv2, block.act1(_conv(block.conv1, x, w1, b1)), w2, b2)


@register_notrace_function
def norm_in_dtype(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` in ``x``'s dtype also under autocast (statistics accumulated in float32 either way), its affine
    cast to that dtype and kept while inferring: autocast's float32 policy for LayerNorm would copy a low-precision
    ``x`` to float32, keep that copy for the backward and return float32 for the next GEMM to cast back."""
    if not autocast_enabled(x):
        return norm(x)
    weight, bias = cached_while_inferring(norm, (norm.weight, norm.bias), x.dtype, lambda: (
        norm.weight.to(x.dtype), norm.bias.to(x.dtype)))
    with torch.autocast(x.device.type, enabled=False):
        return F.layer_norm(x, norm.normalized_shape, weight, bias, norm.eps)


@register_notrace_function
def add_residual(x: torch.Tensor, y: torch.Tensor, drop_path: nn.Module,
                 scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x + drop_path(y * scale)`` (``scale`` optional, broadcast against ``y``) in one pass over the map.

    timm's ``DropPath`` draws its per-sample mask as it would (the same random numbers), then the mask and the scale
    multiply ``y`` inside one ``addcmul``, not in products over the whole map before the sum. A torch.fx leaf, so a
    traced graph follows the module's mode when it runs.
    """
    factor = scale
    if isinstance(drop_path, DropPath) and drop_path.training and drop_path.drop_prob > 0.:
        keep = 1. - drop_path.drop_prob
        dtype = y.dtype if scale is None else torch.promote_types(y.dtype, scale.dtype)   # DropPath's input's
        factor = torch.empty((y.shape[0],) + (1,) * (y.ndim - 1), dtype=dtype, device=y.device).bernoulli_(keep)
        if keep > 0. and drop_path.scale_by_keep:
            factor.div_(keep)
        if scale is not None:
            factor = factor * scale
    return x + y if factor is None else torch.addcmul(x, y, factor)


class ConvBlock(nn.Module):
    """``x + conv3x3 → BN → GELU(tanh) → conv3x3 → BN`` (× layer scale), on NCHW; in eval the norms and the layer
    scale are folded into the convs (``conv_norm_pair``)."""

    def __init__(self, dim: int, drop_path: float = 0., layer_scale: Optional[float] = None):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.norm1 = nn.BatchNorm2d(dim, eps=1e-5)
        self.act1 = nn.GELU(approximate='tanh')
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)
        self.norm2 = nn.BatchNorm2d(dim, eps=1e-5)
        self.gamma = nn.Parameter(layer_scale * torch.ones(dim)) if layer_scale is not None else None
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return add_residual(x, conv_norm_pair(self, x, self.gamma), self.drop_path)


class HybridBlock(nn.Module):
    """Pre-norm block: ``x + γ1·mixer(LN x)``, ``x + γ2·MLP(LN x)``; the mixer is the MambaVision mixer or attention.

    Args:
        dim: width.
        attention: use multi-head self-attention as the mixer, else the MambaVision mixer.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width over ``dim``.
        qkv_bias: bias of the attention's qkv projection.
        d_state: SSM states of the MambaVision mixer.
        layer_scale: initial γ (None: no layer scale).
        drop_path: stochastic depth rate.
        proj_drop: dropout after the attention projection and in the MLP.
        attn_drop: attention dropout.
    """

    def __init__(self, dim: int, attention: bool = False, num_heads: int = 8, mlp_ratio: float = 4.,
                 qkv_bias: bool = True, d_state: int = 8, layer_scale: Optional[float] = None,
                 drop_path: float = 0., proj_drop: float = 0., attn_drop: float = 0.):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        if attention:
            self.mixer = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        else:
            self.mixer = MambaVisionMixer(dim, d_state=d_state)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        self.gamma_1 = nn.Parameter(layer_scale * torch.ones(dim)) if layer_scale is not None else None
        self.gamma_2 = nn.Parameter(layer_scale * torch.ones(dim)) if layer_scale is not None else None

    def forward(self, x: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        # The norms run in the residual stream's dtype also under autocast (see the module docstring).
        x = add_residual(x, self.mixer(norm_in_dtype(self.norm1, x), valid), self.drop_path, self.gamma_1)
        return add_residual(x, self.mlp(norm_in_dtype(self.norm2, x)), self.drop_path, self.gamma_2)


class ConvStage(nn.Module):
    """Downsample (a stride-2 3x3 conv without bias or norm; none in the first stage), then conv blocks.
    Channel-last in and out; the convs see the map as a channels-last NCHW view."""

    def __init__(self, in_dim: int, dim: int, depth: int, downsample: bool = True,
                 drop_path: Sequence[float] = (), layer_scale_conv: Optional[float] = None):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = nn.Conv2d(in_dim, dim, 3, stride=2, padding=1, bias=False) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            ConvBlock(dim, drop_path=drop_path[i] if drop_path else 0., layer_scale=layer_scale_conv)
            for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x.permute(0, 3, 1, 2))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x.permute(0, 2, 3, 1)


class HybridStage(nn.Module):
    """Downsample, then hybrid blocks on non-overlapping windows: the first ceil(depth / 2) blocks use the
    MambaVision mixer, the rest attention (the official rule: attention from index depth // 2 + depth % 2).

    Args:
        window_size: window side; the map is zero-padded at the bottom/right to a multiple of it.
        mask_padding: the fixed windowing (see the module docstring) instead of the official unmasked padding.
        **block_kwargs: ``HybridBlock`` arguments.
    """

    def __init__(self, in_dim: int, dim: int, depth: int, window_size: int, downsample: bool = True,
                 drop_path: Sequence[float] = (), mask_padding: bool = False, **block_kwargs):
        super().__init__()
        self.grad_checkpointing = False
        self.window_size = window_size
        self.mask_padding = mask_padding
        self.downsample = nn.Conv2d(in_dim, dim, 3, stride=2, padding=1, bias=False) if downsample else nn.Identity()
        first_attention = (depth + 1) // 2
        self.blocks = nn.ModuleList([
            HybridBlock(dim, attention=i >= first_attention, drop_path=drop_path[i] if drop_path else 0.,
                        **block_kwargs)
            for i in range(depth)])

    def _run_blocks(self, x: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, valid, use_reentrant=False)
            else:
                x = block(x, valid)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        height, width = x.shape[1], x.shape[2]
        if self.mask_padding:
            win_h, win_w, order, valid = masked_window_layout(height, width, self.window_size, x.device)
            windows = masked_window_partition(x, win_h, win_w, order)
            valid = valid.repeat(x.shape[0], 1)
            windows = self._run_blocks(windows, valid)
            return masked_window_reverse(windows, win_h, win_w, order, height, width)
        windows = self._run_blocks(window_partition(x, self.window_size), None)
        return window_reverse(windows, self.window_size, height, width)


class ConvStem(nn.Module):
    """Two stride-2 3x3 convs without bias, each followed by BatchNorm (eps 1e-4) and ReLU: NCHW image →
    channel-last map at stride 4; in eval the norms are folded into the convs (``conv_norm_pair``)."""

    def __init__(self, in_chans: int = 3, in_dim: int = 64, dim: int = 96):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, in_dim, 3, stride=2, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(in_dim, eps=1e-4)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(in_dim, dim, 3, stride=2, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(dim, eps=1e-4)
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The convs keep their input's memory format: a channels-last image makes every map of the model
        # channel-last (the NHWC permute below a view), whatever layout the caller passes.
        x = conv_norm_pair(self, x.contiguous(memory_format=torch.channels_last))
        return self.act2(x).permute(0, 2, 3, 1)


class BatchNormNHWC(nn.BatchNorm2d):
    """BatchNorm2d of a channel-last map, computed on its channels-last NCHW view. ``nn.BatchNorm2d.forward``
    written out (running statistics always tracked): TorchScript cannot call ``super().forward``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        momentum = 0. if self.momentum is None else self.momentum
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                momentum = 1. / float(self.num_batches_tracked)
        x = F.batch_norm(x.permute(0, 3, 1, 2), self.running_mean, self.running_var, self.weight, self.bias,
                         self.training, momentum, self.eps)
        return x.permute(0, 2, 3, 1)


# --- model -------------------------------------------------------------------------------------------------------

class MambaVision(HierarchicalBackbone):
    """MambaVision backbone and classifier.

    Args:
        in_chans: input image channels.
        num_classes: classifier outputs (0 for none).
        global_pool: 'avg', 'max', ... or '' (timm's SelectAdaptivePool2d types).
        depths: blocks per stage; stages 1-2 are conv stages, 3-4 hybrid.
        dim: width of the first stage (doubled at every stage).
        in_dim: width of the stem's first conv.
        num_heads: attention heads per stage (those of the conv stages are unused, as in the original).
        window_size: window side per stage (or one for all; only the hybrid stages use it).
        mlp_ratio: MLP hidden width over the stage width.
        d_state: SSM states per channel of the MambaVision mixer.
        qkv_bias: bias of the attention's qkv projection.
        layer_scale: initial layer-scale γ of the hybrid blocks (None: none).
        layer_scale_conv: initial layer-scale γ of the conv blocks (None: none).
        mask_padding: mask the zero padding of partial windows (the fixed behaviour) instead of scanning and
            attending it as the official model does.
        drop_rate: dropout before the classifier.
        proj_drop_rate: dropout after attention and in the MLPs (the official ``drop_rate``).
        attn_drop_rate: attention dropout.
        drop_path_rate: stochastic depth, linearly increasing over all blocks.
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            depths: Sequence[int] = (1, 3, 8, 4),
            dim: int = 80,
            in_dim: int = 32,
            num_heads: Sequence[int] = (2, 4, 8, 16),
            window_size: Union[int, Sequence[int]] = (8, 8, 14, 7),
            mlp_ratio: float = 4.,
            d_state: int = 8,
            qkv_bias: bool = True,
            layer_scale: Optional[float] = None,
            layer_scale_conv: Optional[float] = None,
            mask_padding: bool = False,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.2,
    ):
        super().__init__()
        if len(depths) != 4:
            raise ValueError(f'MambaVision has 4 stages (2 conv, 2 hybrid); depths has {len(depths)} entries')
        if isinstance(window_size, int):
            window_size = (window_size,) * 4
        for name, value in (('num_heads', num_heads), ('window_size', window_size)):
            if len(value) != 4:
                raise ValueError(f'{name} must have one entry per stage (4), got {tuple(value)}')
        dims = [dim * 2 ** i for i in range(4)]
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = dims[-1]
        self.drop_rate = drop_rate
        self.output_fmt = 'NHWC'

        self.stem = ConvStem(in_chans, in_dim, dim)
        dpr = [x.tolist() for x in torch.linspace(0, drop_path_rate, sum(depths), device='cpu').split(list(depths))]
        self.stages = nn.Sequential()
        self.feature_info = []
        for i in range(4):
            in_ch = dims[max(i - 1, 0)]
            if i < 2:
                stage = ConvStage(in_ch, dims[i], depths[i], downsample=i > 0, drop_path=dpr[i],
                                  layer_scale_conv=layer_scale_conv)
            else:
                stage = HybridStage(
                    in_ch, dims[i], depths[i], window_size[i], drop_path=dpr[i], mask_padding=mask_padding,
                    num_heads=num_heads[i], mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, d_state=d_state,
                    layer_scale=layer_scale, proj_drop=proj_drop_rate, attn_drop=attn_drop_rate)
            self.stages.append(stage)
            self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f'stages.{i}'))
        self.norm = BatchNormNHWC(self.num_features)
        self.head = ClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt='NHWC')
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module):
        # As the original: every Linear, the mixer's dt_proj included (its Mamba init is overwritten: Δ-bias 0).
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        # The SSM's A (as log) and D are not weights to shrink (the original marks them _no_weight_decay).
        return {n for n, _ in self.named_parameters() if n.endswith(('.A_log', '.D'))}

    def load_pretrained(self, checkpoint_path: Union[str, Tuple[str, str]]):
        """Load an official (or our own) checkpoint file, converting it; used by ``pretrained=True``.
        ``checkpoint_path`` may be a Hugging Face Hub ``(repo id, file name)`` pair, as timm passes for hub weights."""
        if isinstance(checkpoint_path, (tuple, list)):
            from timm.models._hub import download_from_hf
            checkpoint_path = download_from_hf(*checkpoint_path)
        self._load_checkpoint(checkpoint_path, checkpoint_filter_fn, 'stem.conv1',
                              containers=('state_dict', 'state_dict_ema', 'model'))


# --- official checkpoints ----------------------------------------------------------------------------------------

_OFFICIAL_RENAMES = (
    (r'^patch_embed\.conv_down\.0\.', 'stem.conv1.'),
    (r'^patch_embed\.conv_down\.1\.', 'stem.norm1.'),
    (r'^patch_embed\.conv_down\.3\.', 'stem.conv2.'),
    (r'^patch_embed\.conv_down\.4\.', 'stem.norm2.'),
    # The official downsample ends level i; ours starts stage i + 1.
    (r'^levels\.(\d+)\.downsample\.reduction\.0\.', lambda m: f'stages.{int(m[1]) + 1}.downsample.'),
    (r'^levels\.(\d+)\.blocks\.', r'stages.\1.blocks.'),
    (r'^head\.', 'head.fc.'),
)


def _rename(key: str) -> str:
    for pattern, repl in _OFFICIAL_RENAMES:
        key, n = re.subn(pattern, repl, key)
        if n:
            break
    return key


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: MambaVision) -> Dict[str, torch.Tensor]:
    """Convert an official MambaVision state dict (the classifier's, or the det/seg backbone's) to this module tree.

    Our own state dicts pass through unchanged. Official weights are non-commercial (CC-BY-NC-SA-4.0): converting
    them warns once with the licence notice.
    """
    if any(k.startswith(('stem.', 'stages.')) for k in state_dict):
        return dict(state_dict)
    for prefix in ('encoder.', 'model.'):  # the official loader strips 'encoder.'; the HF port nests under 'model.'
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    if any(k.startswith(('patch_embed.', 'levels.')) for k in state_dict):
        _warn_license()
    # outnorm{i}: the output norms of the official det/seg backbone, not part of a classifier.
    return {_rename(k): v for k, v in state_dict.items() if not k.startswith('outnorm')}


def _create_mambavision(variant: str, pretrained: bool = False, **kwargs) -> MambaVision:
    load_through_model(kwargs)  # official files need the safe loader and the conversion
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3))
    return build_model_with_cfg(
        MambaVision, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


# --- from_official: the official MambaVision constructor's arguments, mapped to ours ------------------------------

_REQUIRED = ('dim', 'in_dim', 'depths', 'window_size', 'mlp_ratio', 'num_heads')


def from_official(checkpoint: Optional[str] = None, **official_kwargs) -> MambaVision:
    """The MambaVision equal to the official ``MambaVision(**official_kwargs)``, optionally loaded from an official
    file (``*.pth.tar``, ``{'state_dict': ...}``).

    Raises ValueError for missing required arguments, unknown ones, and options no released model uses.
    """
    kw = dict(official_kwargs)
    missing = [k for k in _REQUIRED if k not in kw]
    if missing:
        raise ValueError(f'the official MambaVision requires {missing}')
    if kw.pop('qk_scale', None):
        raise ValueError('qk_scale (the official q/k LayerNorm switch) is not supported: no released model uses it')
    for ignored in ('resolution', 'img_size'):  # swallowed by the official constructor's **kwargs
        kw.pop(ignored, None)
    renames = dict(
        dim='dim', in_dim='in_dim', depths='depths', window_size='window_size', mlp_ratio='mlp_ratio',
        num_heads='num_heads', drop_path_rate='drop_path_rate', in_chans='in_chans', num_classes='num_classes',
        qkv_bias='qkv_bias', drop_rate='proj_drop_rate', attn_drop_rate='attn_drop_rate',
        layer_scale='layer_scale', layer_scale_conv='layer_scale_conv',
    )
    unknown = sorted(set(kw) - set(renames))
    if unknown:
        raise ValueError(f'unknown MambaVision arguments: {unknown}')
    args = {renames[k]: v for k, v in kw.items()}
    for key in ('layer_scale', 'layer_scale_conv'):  # the original takes only an int or a float as a scale
        if not isinstance(args.get(key), (int, float)) or isinstance(args.get(key), bool):
            args[key] = None
    args.setdefault('drop_path_rate', 0.2)
    model = MambaVision(**args)
    if checkpoint is not None:
        model.load_pretrained(checkpoint)
    return model


# --- variants ----------------------------------------------------------------------------------------------------

def _cfg(hub_id: str = '', filename: str = '', **kwargs) -> Dict[str, Any]:
    return {
        'url': f'https://huggingface.co/{hub_id}/resolve/main/{filename}' if hub_id else '',
        # custom_load 'hf': every source (hub, url, file) goes through load_pretrained, i.e. the conversion.
        'hf_hub_id': hub_id or None, 'hf_hub_filename': filename or None, 'custom_load': 'hf',
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 1.0, 'crop_mode': 'center', 'interpolation': 'bicubic', 'fixed_input_size': False,
        'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225),
        'first_conv': 'stem.conv1', 'classifier': 'head.fc',
        'license': 'cc-by-nc-sa-4.0' if hub_id else None,
        'notes': (LICENSE_NOTICE,) if hub_id else None,
        'origin_url': 'https://github.com/NVlabs/MambaVision',
        'paper_ids': 'arXiv:2407.08083', 'paper_name': 'MambaVision: A Hybrid Mamba-Transformer Vision Backbone',
        **kwargs,
    }


_AT_256 = dict(input_size=(3, 256, 256), pool_size=(8, 8))
_AT_512 = dict(input_size=(3, 512, 512), pool_size=(16, 16), crop_pct=0.93, crop_mode='squash')

default_cfgs = generate_default_cfgs({
    'mambavision_t.in1k': _cfg('nvidia/MambaVision-T-1K', 'mambavision_tiny_1k.pth.tar'),
    'mambavision_t2.in1k': _cfg('nvidia/MambaVision-T2-1K', 'mambavision_tiny2_1k.pth.tar', crop_pct=0.98),
    'mambavision_s.in1k': _cfg('nvidia/MambaVision-S-1K', 'mambavision_small_1k.pth.tar', crop_pct=0.93),
    'mambavision_b.in1k': _cfg('nvidia/MambaVision-B-1K', 'mambavision_base_1k.pth.tar'),
    'mambavision_l.in1k': _cfg('nvidia/MambaVision-L-1K', 'mambavision_large_1k.pth.tar'),
    'mambavision_l2.in1k': _cfg('nvidia/MambaVision-L2-1K', 'mambavision_large2_1k.pth.tar'),
    'mambavision_b_21k.in21k_ft_in1k': _cfg('nvidia/MambaVision-B-21K', 'mambavision_base_21k.pth.tar'),
    'mambavision_l_21k.in21k_ft_in1k': _cfg('nvidia/MambaVision-L-21K', 'mambavision_large_21k.pth.tar'),
    'mambavision_l2_512_21k.in21k_ft_in1k': _cfg(
        'nvidia/MambaVision-L2-512-21K', 'mambavision_L2_21k_240m_512.pth.tar', **_AT_512),
    'mambavision_l3_256_21k.in21k_ft_in1k': _cfg(
        'nvidia/MambaVision-L3-256-21K', 'mambavision_L3_21k_740m_256.pth.tar', **_AT_256),
    'mambavision_l3_512_21k.in21k_ft_in1k': _cfg(
        'nvidia/MambaVision-L3-512-21K', 'mambavision_L3_21k_740m_512.pth.tar', **_AT_512),
    'test_mambavision.untrained': _cfg(input_size=(3, 64, 64), pool_size=(2, 2)),
})

_T = dict(dim=80, in_dim=32, num_heads=(2, 4, 8, 16), window_size=(8, 8, 14, 7), drop_path_rate=0.2)
_B = dict(depths=(3, 3, 10, 5), dim=128, in_dim=64, num_heads=(2, 4, 8, 16), window_size=(8, 8, 14, 7),
          drop_path_rate=0.3, layer_scale=1e-5)
_L = dict(dim=196, in_dim=64, num_heads=(4, 8, 16, 32), window_size=(8, 8, 14, 7), drop_path_rate=0.3,
          layer_scale=1e-5)
_L3 = dict(depths=(3, 3, 20, 10), dim=256, in_dim=64, num_heads=(4, 8, 16, 32), drop_path_rate=0.5,
           layer_scale=1e-5)


def _variant(name: str, pretrained: bool, model_args: dict, kwargs: dict) -> MambaVision:
    return _create_mambavision(name, pretrained, **dict(model_args, **kwargs))


@register_model
def mambavision_t(pretrained: bool = False, **kwargs) -> MambaVision:
    """MambaVision-T (31.8M), ImageNet-1k. Weights non-commercial (CC-BY-NC-SA-4.0)."""
    return _variant('mambavision_t', pretrained, dict(depths=(1, 3, 8, 4), **_T), kwargs)


@register_model
def mambavision_t2(pretrained: bool = False, **kwargs) -> MambaVision:
    """MambaVision-T2 (35.1M), ImageNet-1k. Weights non-commercial (CC-BY-NC-SA-4.0)."""
    return _variant('mambavision_t2', pretrained, dict(depths=(1, 3, 11, 4), **_T), kwargs)


@register_model
def mambavision_s(pretrained: bool = False, **kwargs) -> MambaVision:
    """MambaVision-S (50.1M), ImageNet-1k. Weights non-commercial (CC-BY-NC-SA-4.0)."""
    model_args = dict(depths=(3, 3, 7, 5), dim=96, in_dim=64, num_heads=(2, 4, 8, 16), window_size=(8, 8, 14, 7),
                      drop_path_rate=0.2)
    return _variant('mambavision_s', pretrained, model_args, kwargs)


@register_model
def mambavision_b(pretrained: bool = False, **kwargs) -> MambaVision:
    """MambaVision-B (97.7M), ImageNet-1k. Weights non-commercial (CC-BY-NC-SA-4.0)."""
    return _variant('mambavision_b', pretrained, _B, kwargs)


@register_model
def mambavision_l(pretrained: bool = False, **kwargs) -> MambaVision:
    """MambaVision-L (228.0M), ImageNet-1k. Weights non-commercial (CC-BY-NC-SA-4.0)."""
    return _variant('mambavision_l', pretrained, dict(depths=(3, 3, 10, 5), **_L), kwargs)


@register_model
def mambavision_l2(pretrained: bool = False, **kwargs) -> MambaVision:
    """MambaVision-L2 (241.6M), ImageNet-1k. Weights non-commercial (CC-BY-NC-SA-4.0)."""
    return _variant('mambavision_l2', pretrained, dict(depths=(3, 3, 12, 5), **_L), kwargs)


@register_model
def mambavision_b_21k(pretrained: bool = False, **kwargs) -> MambaVision:
    """MambaVision-B-21K (97.7M): ImageNet-21k pre-training, ImageNet-1k fine-tuning. Weights non-commercial."""
    return _variant('mambavision_b_21k', pretrained, _B, kwargs)


@register_model
def mambavision_l_21k(pretrained: bool = False, **kwargs) -> MambaVision:
    """MambaVision-L-21K (228.0M): ImageNet-21k pre-training, ImageNet-1k fine-tuning. Weights non-commercial."""
    return _variant('mambavision_l_21k', pretrained, dict(depths=(3, 3, 10, 5), **_L), kwargs)


@register_model
def mambavision_l2_512_21k(pretrained: bool = False, **kwargs) -> MambaVision:
    """MambaVision-L2-512-21K (241.6M) at 512 px, windows 32/16: ImageNet-21k, then 1k. Weights non-commercial."""
    model_args = dict(_L, depths=(3, 3, 12, 5), window_size=(8, 8, 32, 16))
    return _variant('mambavision_l2_512_21k', pretrained, model_args, kwargs)


@register_model
def mambavision_l3_256_21k(pretrained: bool = False, **kwargs) -> MambaVision:
    """MambaVision-L3-256-21K (739.6M) at 256 px, windows 16/8: ImageNet-21k, then 1k. Weights non-commercial."""
    return _variant('mambavision_l3_256_21k', pretrained, dict(_L3, window_size=(8, 8, 16, 8)), kwargs)


@register_model
def mambavision_l3_512_21k(pretrained: bool = False, **kwargs) -> MambaVision:
    """MambaVision-L3-512-21K (739.6M) at 512 px, windows 32/16: ImageNet-21k, then 1k. Weights non-commercial."""
    return _variant('mambavision_l3_512_21k', pretrained, dict(_L3, window_size=(8, 8, 32, 16)), kwargs)


@register_model
def test_mambavision(pretrained: bool = False, **kwargs) -> MambaVision:
    """A tiny MambaVision for tests and demos: one mixer and one attention block in each hybrid stage."""
    model_args = dict(depths=(1, 1, 2, 2), dim=16, in_dim=8, num_heads=(1, 2, 4, 8), window_size=(8, 8, 4, 2),
                      drop_path_rate=0.0)
    return _variant('test_mambavision', pretrained, model_args, kwargs)
