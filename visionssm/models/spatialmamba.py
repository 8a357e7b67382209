"""Spatial-Mamba: Effective Visual State Space Models via Structure-Aware State Fusion.

Paper: "Spatial-Mamba: Effective Visual State Space Models via Structure-Aware State Fusion", Xiao et al.,
2024 — https://arxiv.org/abs/2410.15091
Official code and weights: https://github.com/EdwardChasel/Spatial-Mamba (Apache-2.0 licence), read at commit
71221eb.

A hierarchical backbone (MLLA-style conv stem and inverted-bottleneck downsampling, conv position encodings in
every block) whose token mixer runs one row-major selective scan at d_state 1 and returns the hidden states; the
states are then fused over the 2-D neighbourhood by three dilated (1, 3, 5) replicate-padded depthwise 3x3
convolutions, and only then observed: ``y = C * fuse(h) + D * x``.

This is a re-implementation on visionssm's shared scan op (``return_hidden=True`` on one ``'row'`` route), channel-
last throughout. The state fusion is always computed from the current weights: the official eval path caches a
merged 11x11 kernel on the first eval forward and never refreshes it, so it goes stale after any later weight
change; here there is no cache to go stale. Official checkpoints convert at load time in ``checkpoint_filter_fn``;
``from_official`` builds the model equal to an official ``SpatialMamba(**kwargs)``.

``forward_features`` returns a channel-last map (``output_fmt = 'NHWC'``). torch.fx traces the model (the scan op
and a few size- or dtype-dependent helpers are leaves). TorchScript is not supported, because the shared scan op
cannot be scripted: ``torch.jit.script``, or building under timm's ``set_scriptable(True)``, raises
``visionssm.ops.selective_scan.TORCHSCRIPT_UNSUPPORTED``, which says why.
"""
from __future__ import annotations

import contextlib
import re
from typing import Any, Dict, Optional, Sequence, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ClassifierHead, DropPath, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model, \
    register_notrace_function, register_notrace_module

from visionssm.kernels import state_fusion as fusion_kernels
from visionssm.layers import SS2D, Mlp, full_precision
from visionssm.layers.cache import cached_constants, onnx_exporting
from visionssm.layers.fused import autocast_dtype, conv_silu
from visionssm.layers.norm import layer_norm_gate, layer_norm_gate_backward, norm_to
from visionssm.layers.ss2d import route_projections
from visionssm.ops import Route, selective_scan
from ._checkpoint import load_through_model
from ._hierarchical import HierarchicalBackbone

__all__ = [
    'SpatialMamba', 'SpatialMambaBlock', 'SpatialMambaStage', 'StructureAwareSSM', 'StateFusion',
    'checkpoint_filter_fn', 'from_official',
]


class ConvNormAct(nn.Module):
    """Conv2d → optional BatchNorm → optional activation (the MLLA ``ConvLayer``). NCHW in and out."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 bias: bool = False, norm: bool = True, act_layer: Optional[Type[nn.Module]] = nn.ReLU):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups,
                              bias=bias)
        self.norm = nn.BatchNorm2d(out_chs) if norm else nn.Identity()
        self.act = act_layer() if act_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class Stem(nn.Module):
    """MLLA stem, stride 4: conv-BN-ReLU s2 to C/2, a residual pair of conv-BN at C/2, conv-BN-ReLU s2 to 4C,
    1x1 conv-BN to C. Takes NCHW images, returns channel-last; odd sizes round up."""

    def __init__(self, in_chans: int = 3, dim: int = 64):
        super().__init__()
        half = dim // 2
        self.conv1 = ConvNormAct(in_chans, half, 3, stride=2)
        self.conv2 = nn.Sequential(ConvNormAct(half, half, 3), ConvNormAct(half, half, 3, act_layer=None))
        self.conv3 = nn.Sequential(ConvNormAct(half, dim * 4, 3, stride=2), ConvNormAct(dim * 4, dim, 1, act_layer=None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last convolutions: their output permuted is a contiguous NHWC map. From an NCHW one every block
        # would run on NCHW memory behind an NHWC view (a copy before each norm, adds of mixed layouts)
        x = self.conv1(x.contiguous(memory_format=torch.channels_last))
        x = self.conv2(x) + x
        return self.conv3(x).permute(0, 2, 3, 1)


class Downsample(nn.Module):
    """MLLA downsampling, an inverted bottleneck with stride 2: 1x1 conv (bias) + ReLU to 4x ``out_dim``,
    depthwise 3x3 s2 conv (bias) + ReLU, 1x1 conv (bias) + BN to ``out_dim``. Channel-last in and out."""

    def __init__(self, dim: int, out_dim: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(out_dim * ratio)
        self.pw1 = ConvNormAct(dim, hidden, 1, bias=True, norm=False)
        self.dw = ConvNormAct(hidden, hidden, 3, stride=2, groups=hidden, bias=True, norm=False)
        self.pw2 = ConvNormAct(hidden, out_dim, 1, bias=True, act_layer=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw2(self.dw(self.pw1(x.permute(0, 3, 1, 2)))).permute(0, 2, 3, 1)


def _replicate_index(height: int, width: int, pad: int, device: torch.device) -> torch.Tensor:
    """Flat positions ``h * width + w`` of the ``(height + 2 pad) x (width + 2 pad)`` replicate-padded map (clamped
    rows and columns), row-major."""
    rows = torch.arange(-pad, height + pad, device=device).clamp(0, height - 1)
    cols = torch.arange(-pad, width + pad, device=device).clamp(0, width - 1)
    return (rows[:, None] * width + cols).flatten()


_cached_replicate_index = cached_constants()(_replicate_index)


def _replicate_pad(h: torch.Tensor, index: torch.Tensor, pad: int) -> torch.Tensor:
    """``(B, H, W, D)`` → replicate-padded ``(B, D, H + 2 pad, W + 2 pad)``, channels-last in memory: one gather of
    whole channel vectors."""
    batch, height, width, dim = h.shape
    padded = h.flatten(1, 2).index_select(1, index)
    return padded.view(batch, height + 2 * pad, width + 2 * pad, dim).permute(0, 3, 1, 2)


def _fuse(h: torch.Tensor, weight: torch.Tensor, index: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """``sum_i conv_{d_i}(replicate_pad(h))`` for ``h (B, H, W, D)`` and ``weight (len(dilations), D, 1, 3, 3)``;
    ``(B, H, W, D)`` out."""
    pad, (height, width) = max(dilations), h.shape[1:3]
    padded = _replicate_pad(h, index, pad)
    out = None
    for kernel, d in zip(weight, dilations):
        view = padded[:, :, pad - d:pad + height + d, pad - d:pad + width + d]
        branch = F.conv2d(view, kernel, dilation=d, groups=h.shape[-1])
        out = branch if out is None else out.add_(branch)
    return out.permute(0, 2, 3, 1)


class _FuseStates(torch.autograd.Function):
    """``_fuse`` whose backward keeps only ``h`` and re-gathers the padded map (a cheap copy): autograd would keep
    the padded map, 1.4x (56x56) to 5.9x (7x7) the size of ``h``."""

    @staticmethod
    def forward(ctx, h, weight, index, dilations):
        ctx.save_for_backward(h, weight, index)
        ctx.dilations = dilations
        return _fuse(h, weight, index, dilations)

    @staticmethod
    def backward(ctx, grad):
        h, weight, index = ctx.saved_tensors
        dilations = ctx.dilations
        pad, (batch, height, width, dim) = max(dilations), h.shape
        padded = _replicate_pad(h, index, pad)
        grad = grad.permute(0, 3, 1, 2)
        need_h, need_weight = ctx.needs_input_grad[:2]
        grad_padded, grad_kernels = None, [None] * len(dilations)
        # Widest branch first: its view is the whole padded map, so its input gradient is the accumulator.
        for i in sorted(range(len(dilations)), key=lambda i: -dilations[i]):
            d = dilations[i]
            view = (slice(None), slice(None), slice(pad - d, pad + height + d), slice(pad - d, pad + width + d))
            grad_view, grad_kernels[i], _ = torch.ops.aten.convolution_backward(
                grad, padded[view], weight[i], None, (1, 1), (0, 0), (d, d), False, (0, 0), dim,
                (need_h, need_weight, False))
            if need_h:
                if grad_padded is None:
                    grad_padded = grad_view
                else:
                    grad_padded[view] += grad_view
        grad_h = grad_weight = None
        if need_h:
            # The border positions collect up to (pad + 1)^2 contributions each: summed in at least float32.
            flat = grad_padded.permute(0, 2, 3, 1).reshape(batch, -1, dim).to(torch.promote_types(h.dtype,
                                                                                                 torch.float32))
            grad_h = flat.new_zeros(batch, height * width, dim).index_add_(1, index, flat).view_as(h).to(h.dtype)
        if need_weight:
            grad_weight = torch.stack(grad_kernels)
        return grad_h, grad_weight, None, None


@register_notrace_module
class StateFusion(nn.Module):
    """Structure-aware state fusion: ``sum_i alpha_i * DWConv3x3_{dilation d_i}(h)`` with d = (1, 3, 5), each
    branch replicate-padded (border indices clamped), no bias. Channel-last ``(B, H, W, D)`` in and out, computed in
    ``h``'s dtype (autocast does not change it: the caller decides, see ``state_dtype``).

    Computed from the current kernels on every call, in training and eval alike. The official eval path merges the
    branches once into an 11x11 kernel (replicate padding 5) and caches it; with replicate padding the two forms
    are the same function, but the cache goes stale when the weights change, and this form has none.

    The map is padded once, by the largest dilation, with one gather (replicate padding by d is the centre of
    replicate padding by 5), channels-last, so the depthwise convolutions read it without a layout change; each
    branch convolves a view of it with ``alpha_i`` folded into its kernel. In training the backward keeps only
    ``h`` (``_FuseStates``).

    On CUDA the fusion runs in Triton (``kernels/state_fusion.py``): the three branches in one pass that reads the
    clamped positions directly (no padded copy, no layout change), fp32 accumulation, and a backward of two kernels.
    cuDNN's channels-last grouped-convolution kernels, which ran it and the blocks' other depthwise convolutions, took
    with their layout transforms 69 of the 255 ms of GPU time of a Spatial-Mamba-T training step on an H200 (bf16, batch 128, 224²;
    ``benchmarks/results/h200-2026-12/official/official.json``).
    ``VISIONSSM_STATE_FUSION=torch`` selects the PyTorch form below, which also serves the CPU and graph capture.

    A torch.fx leaf: its autocast-free region (an autocast context a traced graph would drop) and its size-dependent
    padding indices run as they are.
    """
    dilations = (1, 3, 5)

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.kernel_3 = nn.Parameter(torch.ones(dim, 1, 3, 3))
        self.kernel_3_1 = nn.Parameter(torch.ones(dim, 1, 3, 3))
        self.kernel_3_2 = nn.Parameter(torch.ones(dim, 1, 3, 3))
        self.alpha = nn.Parameter(torch.ones(3))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        no_autocast = (torch.autocast(h.device.type, enabled=False) if h.device.type in ('cpu', 'cuda')
                       else contextlib.nullcontext())  # e.g. the meta device (FLOP counting) has no autocast
        with no_autocast:
            kernels = torch.stack([self.kernel_3, self.kernel_3_1, self.kernel_3_2])
            weight = self.alpha.view(-1, 1, 1, 1, 1) * kernels
            if not _tracing() and fusion_kernels.supports(h, self.dilations):
                return fusion_kernels.fuse_states_triton(h.contiguous(), weight, self.dilations)
            weight = weight.to(h.dtype)
            height, width = h.shape[1:3]
            pad = max(self.dilations)
            if _tracing():
                return _fuse(h, weight, _replicate_index(height, width, pad, h.device), self.dilations)
            index = _cached_replicate_index(height, width, pad, h.device)
            if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
                return _FuseStates.apply(h, weight, index, self.dilations)
            return _fuse(h, weight, index, self.dilations)


def _tracing() -> bool:
    """Under torch.compile, torch.export, an ONNX export or TorchScript tracing: sizes may be symbolic, so no cached
    indices, and autograd is the tracer's."""
    return (torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()
            or onnx_exporting())


@register_notrace_function
def state_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the states are returned and fused in, for the scan's input ``x``: x's own, except float32 for
    float16, whose range the states can exceed (official #27: non-finite gradients in fp16 AMP training).
    bfloat16 has float32's range; the official code fuses in bfloat16 under bfloat16 autocast too (its fp32 states
    are cast by autocast for the convolutions)."""
    return torch.float32 if x.dtype == torch.float16 else x.dtype


class _MixerOutput(torch.autograd.Function):
    """``mixer_output`` whose backward recomputes the observation, the norm's statistics and the gated map from what
    it keeps: the fused states, and C, x and z, which the scan and the depthwise conv keep anyway. Autograd would
    also keep the float32 observation, the normed map, ``SiLU(z)`` and the gated map: 20 of a block's 72 saved
    bytes per element of its input (stage 1)."""

    @staticmethod
    def forward(ctx, fused, C, x, Ds, z, norm_weight, norm_bias, eps, proj_weight):
        gated = layer_norm_gate(torch.addcmul(x * Ds, fused, C), z, norm_weight, norm_bias, eps)
        # the dtype the projection computes in (autocast's, else the gated map's); the backward uses it explicitly
        ctx.dtype = autocast_dtype(z)
        ctx.eps = eps
        ctx.save_for_backward(fused, C, x, Ds, z, norm_weight, norm_bias, proj_weight)
        return F.linear(gated, proj_weight)

    @staticmethod
    def backward(ctx, grad):
        fused, C, x, Ds, z, norm_weight, norm_bias, proj_weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        grad = grad.to(ctx.dtype)
        grad_y, grad_z, grad_norm_weight, grad_norm_bias, gated = layer_norm_gate_backward(
            grad.matmul(proj_weight.to(ctx.dtype)), torch.addcmul(x * Ds, fused, C), z, norm_weight, norm_bias,
            ctx.eps, need_weight_grads=need[5] or need[6], out_dtype=ctx.dtype if need[8] else None)
        grad_proj = None
        if need[8]:
            grad_proj = grad.flatten(0, -2).t().mm(gated.flatten(0, -2)).to(proj_weight.dtype)
        grad_fused = (grad_y * C).to(fused.dtype)
        grad_C = (grad_y * fused).sum(-1, keepdim=True).to(C.dtype)
        grad_x = (grad_y * Ds).to(x.dtype)
        grad_Ds = (grad_y * x).flatten(0, -2).sum(0).to(Ds.dtype)
        return grad_fused, grad_C, grad_x, grad_Ds, grad_z, grad_norm_weight, grad_norm_bias, None, grad_proj


@register_notrace_function
def mixer_output(fused: torch.Tensor, C: torch.Tensor, x: torch.Tensor, Ds: torch.Tensor, z: torch.Tensor,
                 norm: nn.LayerNorm, proj: nn.Linear) -> torch.Tensor:
    """``proj(norm(fused * C + x * Ds) * SiLU(z))``: the observation, the norm and the gate's product in at least
    float32 (``Ds`` is), rounded once to z's dtype (``layer_norm_gate``). ``fused, x, z (B, H, W, D)``, ``C (B, H, W, 1)``; ``proj`` without bias. A torch.fx leaf
    (it picks its autograd by grad mode)."""
    if _tracing() or not torch.is_grad_enabled():
        return proj(layer_norm_gate(torch.addcmul(x * Ds, fused, C), z, norm.weight, norm.bias, norm.eps))
    return _MixerOutput.apply(fused, C, x, Ds, z, norm.weight, norm.bias, norm.eps, proj.weight)


class StructureAwareSSM(SS2D):
    """The Spatial-Mamba token mixer: SS2D's gated in_proj → dwconv → SiLU, then a hidden-state scan along one
    row-major route at d_state 1, the state fusion, the observation ``C * h + D * x``, out_norm, ``* SiLU(z)``,
    out_proj.

    Parameters keep the official names; the per-route tensors carry a leading route axis of 1
    (``x_proj_weight (1, R+2, D)``, ``dt_projs_weight (1, D, R)``, ``dt_projs_bias (1, D)``).

    Args:
        dim: model width C.
        ssm_ratio: inner width D = int(ssm_ratio * C).
        dt_rank: rank R of the Δ projection; 'auto' = ceil(C / 16).
        d_conv: depthwise kernel size.
        conv_bias: bias in the depthwise conv.
        proj_drop: dropout after out_proj.
    """

    def __init__(self, dim: int, ssm_ratio: float = 2.0, dt_rank: Union[int, str] = 'auto', d_conv: int = 3,
                 conv_bias: bool = True, proj_drop: float = 0.):
        super().__init__(dim, d_state=1, ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=d_conv, conv_bias=conv_bias,
                         gate=True, routes=(Route('row'),), act_layer=nn.SiLU, proj_drop=proj_drop)
        self.state_fusion = StateFusion(self.d_inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(x).chunk(2, dim=-1)
        # NHWC viewed as NCHW with channels-last strides: the depthwise conv needs no copy of its input.
        x = conv_silu(x.permute(0, 3, 1, 2), self.conv).permute(0, 2, 3, 1)
        fused, C = self.fused_states(x)
        return self.proj_drop(mixer_output(fused, C, x, self.Ds, z, self.out_norm, self.out_proj))

    def fused_states(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused hidden states ``fuse(h) (B, H, W, D)`` of the inner map ``x (B, H, W, D)``, in
        ``state_dtype(x)``, and the observation ``C (B, H, W, 1)`` in the same dtype."""
        dts, B, C = route_projections(x, self.x_proj_weight, self.dt_projs_weight, self.d_state)
        # Autocast may leave the projections in another dtype than x (CPU autocast does); the op wants one dtype.
        dts, B, C = (t.to(x.dtype) for t in (dts, B, C))
        A = -torch.exp(full_precision(self.A_logs))
        dtype = state_dtype(x)
        h = selective_scan(
            x, dts, A, B, None, None, self.dt_projs_bias.to(A.dtype).flatten(),
            routes=self.routes, delta_softplus=True, return_hidden=True, out_dtype=dtype,
        ).squeeze(-1)
        # the one route's C: (B, H, W, 1, N) -> (B, H, W, N) as a view (an index's backward would zero-fill a copy)
        return self.state_fusion(h), C.squeeze(-2).to(dtype)

    def scan(self, x: torch.Tensor) -> torch.Tensor:
        """``C * fuse(h) + D * x`` for the inner map ``x (B, H, W, D)``: at least float32 (``Ds`` is), like the
        official observation; ``forward`` computes it inside ``mixer_output``."""
        fused, C = self.fused_states(x)
        return torch.addcmul(x * self.Ds, fused, C)


class SpatialMambaBlock(nn.Module):
    """``x + cpe1(x)``, ``x + SSM(norm1(x))``, ``x + cpe2(x)``, ``x + MLP(norm2(x))``; cpe = depthwise 3x3 conv."""

    def __init__(
            self,
            dim: int,
            ssm_ratio: float = 2.0,
            mlp_ratio: float = 4.0,
            drop_path: float = 0.,
            attn_drop: float = 0.,
            norm_layer: Type[nn.Module] = nn.LayerNorm,
            act_layer: Type[nn.Module] = nn.GELU,
    ):
        super().__init__()
        self.cpe1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = norm_layer(dim)
        self.mixer = StructureAwareSSM(dim, ssm_ratio=ssm_ratio, proj_drop=attn_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.cpe2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.cpe1(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x + self.drop_path(self.mixer(norm_to(self.norm1, x)))   # norms written in the GEMMs' dtype
        x = x + self.cpe2(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.drop_path(self.mlp(norm_to(self.norm2, x)))


class SpatialMambaStage(nn.Module):
    """Downsample (none in the first stage), then ``depth`` blocks. Channel-last in and out."""

    def __init__(
            self,
            in_dim: int,
            dim: int,
            depth: int,
            downsample: bool = False,
            drop_path: Sequence[float] = (),
            **block_kwargs,
    ):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = Downsample(in_dim, dim) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            SpatialMambaBlock(dim, drop_path=drop_path[i] if drop_path else 0., **block_kwargs)
            for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class SpatialMamba(HierarchicalBackbone):
    """Spatial-Mamba backbone and classifier.

    Args:
        in_chans: input image channels.
        num_classes: classifier outputs (0 for none).
        global_pool: 'avg', 'max', ... or '' (timm's SelectAdaptivePool2d types).
        depths: blocks per stage.
        dims: widths per stage, or the first width (doubled at every stage).
        ssm_ratio: inner width of the SSM over model width.
        mlp_ratio: MLP hidden width over model width.
        drop_rate: dropout before the classifier.
        pos_drop_rate: dropout after the stem (the official ``drop_rate``).
        attn_drop_rate: dropout after the SSM's out_proj.
        drop_path_rate: stochastic depth, linearly increasing over blocks.
        norm_layer: norm of the blocks and the final norm.
        act_layer: MLP activation.
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            depths: Sequence[int] = (2, 4, 8, 4),
            dims: Union[int, Sequence[int]] = 64,
            ssm_ratio: float = 2.0,
            mlp_ratio: float = 4.0,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.1,
            norm_layer: Type[nn.Module] = nn.LayerNorm,
            act_layer: Type[nn.Module] = nn.GELU,
    ):
        super().__init__()
        num_stages = len(depths)
        if isinstance(dims, int):
            dims = [dims * 2 ** i for i in range(num_stages)]
        if len(dims) != num_stages:
            raise ValueError(f'dims has {len(dims)} entries but depths has {num_stages}')
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = dims[-1]
        self.drop_rate = drop_rate

        self.stem = Stem(in_chans, dims[0])
        self.pos_drop = nn.Dropout(pos_drop_rate) if pos_drop_rate > 0. else nn.Identity()
        dpr = [x.tolist() for x in torch.linspace(0, drop_path_rate, sum(depths), device='cpu').split(list(depths))]
        self.stages = nn.Sequential()
        self.feature_info = []
        for i in range(num_stages):
            self.stages.append(SpatialMambaStage(
                dims[max(i - 1, 0)], dims[i], depths[i], downsample=i > 0, drop_path=dpr[i],
                ssm_ratio=ssm_ratio, mlp_ratio=mlp_ratio, attn_drop=attn_drop_rate, norm_layer=norm_layer,
                act_layer=act_layer,
            ))
            self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f'stages.{i}'))
        self.norm = norm_layer(self.num_features)
        self.head = ClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt='NHWC')
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

    def load_pretrained(self, checkpoint_path: str):
        """Load an official (or our own) checkpoint file, converting it; used by ``pretrained=True``."""
        self._load_checkpoint(checkpoint_path, checkpoint_filter_fn, 'stem.conv1.conv')

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.pos_drop(self.stem(x))


# Official state-dict names → ours. The official downsample ends stage i; ours starts stage i + 1.
_DOWNSAMPLE_PARTS = {'0': 'pw1', '1': 'dw', '2': 'pw2'}
_OFFICIAL_RENAMES = (
    (r'^patch_embed\.', 'stem.'),
    (r'^layers\.(\d+)\.blocks\.(\d+)\.ln_1\.', r'stages.\1.blocks.\2.norm1.'),
    (r'^layers\.(\d+)\.blocks\.(\d+)\.ln_2\.', r'stages.\1.blocks.\2.norm2.'),
    (r'^layers\.(\d+)\.blocks\.(\d+)\.self_attention\.conv2d\.', r'stages.\1.blocks.\2.mixer.conv.'),
    (r'^layers\.(\d+)\.blocks\.(\d+)\.self_attention\.', r'stages.\1.blocks.\2.mixer.'),
    (r'^layers\.(\d+)\.blocks\.(\d+)\.', r'stages.\1.blocks.\2.'),
    (r'^layers\.(\d+)\.downsample\.conv\.(\d)\.',
     lambda m: f'stages.{int(m[1]) + 1}.downsample.{_DOWNSAMPLE_PARTS[m[2]]}.'),
    (r'^head\.', 'head.fc.'),
)
# Official per-route tensors have no route axis (one route); ours have a leading axis of 1.
_ROUTE_AXIS = ('.mixer.x_proj_weight', '.mixer.dt_projs_weight', '.mixer.dt_projs_bias')


def _rename(key: str) -> str:
    for pattern, repl in _OFFICIAL_RENAMES:
        key, n = re.subn(pattern, repl, key)
        if n:
            break
    return key


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: SpatialMamba) -> Dict[str, torch.Tensor]:
    """Convert an official Spatial-Mamba state dict (classifier or dense backbone) to this module tree.

    Our own state dicts pass through unchanged. The official eval-time merged fusion kernel
    (``state_fusion._merge_weight``) is a cached attribute, not state; it is dropped should a file carry it.
    """
    if any(k.startswith(('stem.', 'stages.')) for k in state_dict):
        return dict(state_dict)
    out = {}
    for key, value in state_dict.items():
        # The dense backbone's per-stage output norms are not part of a classifier.
        if key.startswith('outnorm') or key.endswith('._merge_weight'):
            continue
        key = _rename(key)
        if key.endswith(_ROUTE_AXIS) and value.dim() in (1, 2):
            value = value.unsqueeze(0)
        out[key] = value
    return out


def _create_spatialmamba(variant: str, pretrained: bool = False, **kwargs) -> SpatialMamba:
    load_through_model(kwargs)  # official files need the safe loader and the conversion
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3))
    return build_model_with_cfg(
        SpatialMamba, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


# --- from_official: the official SpatialMamba constructor's arguments, mapped to ours ---------------------------

def from_official(checkpoint: Optional[str] = None, **official_kwargs) -> SpatialMamba:
    """The SpatialMamba equal to the official ``SpatialMamba(**official_kwargs)``, optionally loaded from an
    official file.

    Raises ValueError for arguments that select code the released models do not use or that the official code
    cannot run.
    """
    kw = dict(official_kwargs)
    d_state = kw.pop('d_state', 1)
    if d_state != 1:  # the official forward reshapes the states as (b, d, 1, l): only N = 1 runs (#2, #12)
        raise ValueError(f'd_state must be 1 (the official state fusion only runs with one state), got {d_state!r}')
    dt_init = kw.pop('dt_init', 'random')
    if dt_init != 'random':
        raise ValueError(f"dt_init must be 'random' (every released model), got {dt_init!r}")
    norm_layer = kw.pop('norm_layer', nn.LayerNorm)
    if norm_layer is not nn.LayerNorm:
        raise ValueError(f'norm_layer must be nn.LayerNorm (every released model), got {norm_layer!r}')
    if kw.pop('patch_norm', True) is not True:
        raise ValueError('patch_norm=False is not supported (the official stem ignores it; no released model sets it)')
    # The official Stem has a fixed stride of 4 whatever patch_size says; img_size only sizes an unused pos-embed.
    kw.pop('patch_size', None)
    kw.pop('img_size', None)
    use_checkpoint = kw.pop('use_checkpoint', False)
    renames = dict(
        in_chans='in_chans', num_classes='num_classes', depths='depths', dims='dims', mlp_ratio='mlp_ratio',
        drop_rate='pos_drop_rate', attn_drop_rate='attn_drop_rate', drop_path_rate='drop_path_rate',
    )
    unknown = sorted(set(kw) - set(renames))
    if unknown:
        raise ValueError(f'unknown SpatialMamba arguments: {unknown}')
    # The official SpatialMamba's own defaults, where they differ from ours.
    args: Dict[str, Any] = dict(depths=(2, 2, 9, 2), dims=(96, 192, 384, 768), drop_path_rate=0.1)
    args.update({renames[k]: v for k, v in kw.items()})
    dims = args['dims']
    if not isinstance(dims, int):
        dims = list(dims)
        if any(b != 2 * a for a, b in zip(dims, dims[1:])):
            raise ValueError(f'dims must double at every stage (the official downsampling outputs 2x its input), '
                             f'got {dims}')
    args['dims'] = dims
    args['depths'] = tuple(args['depths'])
    model = SpatialMamba(**args)
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
        'first_conv': 'stem.conv1.conv', 'classifier': 'head.fc',
        'license': 'apache-2.0', 'origin_url': 'https://github.com/EdwardChasel/Spatial-Mamba',
        'paper_ids': 'arXiv:2410.15091',
        'paper_name': 'Spatial-Mamba: Effective Visual State Space Models via Structure-Aware State Fusion',
        **kwargs,
    }


def _drive(file_id: str) -> str:
    return f'https://drive.google.com/uc?export=download&id={file_id}'


# The official README links Google Drive files; Drive may answer large files with a confirmation page instead of
# the file, in which case download it by hand and pass pretrained_cfg_overlay=dict(file=...).
_DRIVE_NOTE = ('Google Drive link from the official README; if the download returns a web page, fetch the file by '
               'hand and pass pretrained_cfg_overlay=dict(file=path).',)

default_cfgs = generate_default_cfgs({
    'spatialmamba_tiny.in1k': _cfg(_drive('19kXoqGSTuKKs4AHbdUSrdKZTwTWenLIW'), notes=_DRIVE_NOTE),
    'spatialmamba_small.in1k': _cfg(_drive('1Wb3sYoWLpgmWrmHMYKwdgDwGPZaqM28O'), notes=_DRIVE_NOTE),
    'spatialmamba_base.in1k': _cfg(_drive('1k8dHp2QRCOqBSgAi36YkhZp_O8LqOPjM'), notes=_DRIVE_NOTE),
    'test_spatialmamba.untrained': _cfg(input_size=(3, 64, 64), pool_size=(2, 2)),
})


@register_model
def spatialmamba_tiny(pretrained: bool = False, **kwargs) -> SpatialMamba:
    """Spatial-Mamba-T (26.7M)."""
    model_args = dict(depths=(2, 4, 8, 4), dims=64, drop_path_rate=0.2)
    return _create_spatialmamba('spatialmamba_tiny', pretrained, **dict(model_args, **kwargs))


@register_model
def spatialmamba_small(pretrained: bool = False, **kwargs) -> SpatialMamba:
    """Spatial-Mamba-S (43.1M)."""
    model_args = dict(depths=(2, 4, 21, 5), dims=64, drop_path_rate=0.3)
    return _create_spatialmamba('spatialmamba_small', pretrained, **dict(model_args, **kwargs))


@register_model
def spatialmamba_base(pretrained: bool = False, **kwargs) -> SpatialMamba:
    """Spatial-Mamba-B (95.7M)."""
    model_args = dict(depths=(2, 4, 21, 5), dims=96, drop_path_rate=0.5)
    return _create_spatialmamba('spatialmamba_base', pretrained, **dict(model_args, **kwargs))


@register_model
def test_spatialmamba(pretrained: bool = False, **kwargs) -> SpatialMamba:
    """A tiny Spatial-Mamba for tests and demos."""
    model_args = dict(depths=(1, 1, 2, 1), dims=16, drop_path_rate=0.0)
    return _create_spatialmamba('test_spatialmamba', pretrained, **dict(model_args, **kwargs))
