"""MSVMamba: Multi-Scale VMamba.

Paper: "Multi-Scale VMamba: Hierarchy in Hierarchy Visual State Space Model", Shi, Dong, Xu, NeurIPS 2024 —
https://arxiv.org/abs/2405.14174
Official code and weights: https://github.com/YuHengsss/MSVMamba, branch ``master`` at c3940191 (MSVMamba-N/M/T,
weights in Google-Drive folders) and branch ``v2`` at fca4a391 (MSVMambav3-T/S/B, weights on Hugging Face
``YuhengSSS/MSVMamba``). Neither branch carries a licence, and the README states none: the code and weights'
licence is unspecified.

VMamba with a multi-scale token mixer (MS2D): one selective scan at full resolution in row-major order, and one scan
over a stride-2 depthwise-conv copy of the map that walks three orders in turn (reversed row-major, column-major,
reversed column-major) with its state running on from one into the next. The half-resolution result is upsampled
and added. Then an SE gate; the MLP is a ConvFFN. Two generations:

* master ("MSVMamba-N/M/T"): patch embed and patch merging, z gate, each route output normalized before the merge,
  bilinear upsampling, pre-norm ConvFFN (x2).
* v2 ("MSVMambav3-T/S/B"): conv stem and downsampling, z gate for B only, one norm after the merge, nearest
  upsampling, post-norm ConvFFN (x4).

A re-implementation on visionssm's shared scan op: the half-resolution scan is one concatenated route
(``visionssm.ops.multiscale_routes``), read in place from the map. Official checkpoints convert at load time in
``checkpoint_filter_fn``; ``from_official`` builds the model equal to an official ``VSSM(**kwargs)`` of either branch.

``forward_features`` returns a channel-last map (``output_fmt = 'NHWC'``). torch.fx traces the model (the scan op
and a few size-dependent helpers are leaves). TorchScript is not supported, because the shared scan op cannot be
scripted: ``torch.jit.script``, or building under timm's ``set_scriptable(True)``, raises
``visionssm.ops.selective_scan.TORCHSCRIPT_UNSUPPORTED``, which says why.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ClassifierHead, DropPath, register_notrace_function, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model

from visionssm.layers import ConvDownsample, ConvStem, PatchEmbed, PatchMerging
from visionssm.layers.ss2d import ScanLayer, full_precision, init_dt_bias, scan_out_dtype
from visionssm.layers.norm import norm_to
from visionssm.ops import Route, multiscale_routes, selective_scan
from ._checkpoint import load_through_model
from ._hierarchical import HierarchicalBackbone

__all__ = ['MSVMamba', 'MS2D', 'MSVSSBlock', 'checkpoint_filter_fn', 'from_official']

_FULL_ROUTE = (Route('row'),)


def _half_routes(channels: int, summed: bool, carry_state: bool) -> tuple[Route, ...]:
    """The half-resolution routes: one concatenated route (official), or its three orders as independent routes
    (``carry_state=False``)."""
    routes = multiscale_routes(channels, summed=summed)
    return routes if carry_state else routes[0].segments


# Shape-dependent helpers are opaque to FX tracing (timm's notrace functions; FX wraps only public names).

@register_notrace_function
def resize_nhwc(y: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Channel-last ``y`` resized to ``size`` (the full map's; odd maps give non-integer ratios, as the original)."""
    kw = dict(align_corners=False) if mode == 'bilinear' else {}
    return F.interpolate(y.permute(0, 3, 1, 2), size=size, mode=mode, **kw).permute(0, 2, 3, 1)


@register_notrace_function
def map_size(x: torch.Tensor) -> tuple[int, int]:
    return x.shape[1], x.shape[2]


def scan_routes(x, dts, A_logs, B, C, D, bias, routes: Sequence[Route]) -> torch.Tensor:
    """One parameter set's scan along ``routes``. Low-precision inputs scan with full-precision parameters and
    return float32 (state and merge stay in full precision up to out_norm)."""
    num = len(routes)
    # autocast may leave the projections in another dtype; cast before expanding (a cast copies what it is given)
    dts, B, C = (t.to(x.dtype) for t in (dts, B, C))
    if num > 1:   # independent routes sharing the parameter set: one Δ for all, expanded (no copy, and one copy
        # saved for the backward), and one parameter block per route
        dts = dts.unsqueeze(-2).expand(-1, -1, -1, num, -1)
        A_logs, D, bias = A_logs.repeat(num, 1), D.repeat(num), bias.repeat(num)
    B = B.unsqueeze(-2).expand(-1, -1, -1, num, -1)
    C = C.unsqueeze(-2).expand(-1, -1, -1, num, -1)
    return selective_scan(
        x, dts, -torch.exp(full_precision(A_logs)), B, C, full_precision(D), full_precision(bias), routes=routes,
        merge='sum', delta_softplus=True, out_dtype=scan_out_dtype(x))


class SqueezeExcite(nn.Module):
    """Channel-last SE: map mean → Linear → ReLU → Linear → sigmoid, scaling the channels (no biases)."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction, bias=False)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(channels // reduction, channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.fc2(self.act(self.fc1(x.mean((1, 2))))))
        return x * s[:, None, None, :]


class ConvFFN(nn.Module):
    """Channel-last ConvFFN: fc1 → ``h + dwconv3x3(h)`` → GELU → fc2 (the fcs are the original's 1x1 convs)."""

    def __init__(self, dim: int, expansion: int = 2, act_layer: Type[nn.Module] = nn.GELU, drop: float = 0.):
        super().__init__()
        hidden = dim * expansion
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop) if drop > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.fc1(x))
        h = h + self.dwconv(h.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.drop(self.fc2(self.act(h)))


class MS2D(ScanLayer):
    """Multi-scale 2-D selective scan (channel-last in and out).

    ``in_proj`` → x (and the gate z); full route: SiLU(dwconv3x3(x)) scanned row-major; half routes:
    SiLU(dwconv7x7 stride 2 (x)) scanned through reversed-row, column and reversed-column orders as one route.
    Both scans use their own parameter set of the stacked official tensors ``x_proj_weight (2, R+2N, D)``,
    ``dt_projs_weight (2, D, R)``, ``dt_projs_bias (2, D)``, ``A_logs (2*D, N)``, ``Ds (2*D,)``.

    Args:
        dim: model width C.
        d_state: N.
        ssm_ratio: inner width D = int(ssm_ratio * C).
        dt_rank: rank R of the Δ projection; 'auto' = ceil(C / 16).
        conv_bias: bias in both depthwise convs.
        gate: multiply by SiLU(z) from a second in_proj half.
        norm_each: out_norm on every route's output before the merge (master); else once after it (v2).
        upsample: 'bilinear' (master) or 'nearest' (v2).
        half_set: which parameter set the half-resolution scan uses (0 on master, 1 on v2).
        carry_state: the official concatenated half-resolution scan, whose state runs on from one order into the
            next; False scans the three orders independently (each from a zero state, same parameters).
        se_reduction: SE reduction; 0 for no SE.
        act_layer: activation after the convs, and of the gate.
        proj_drop: dropout after out_proj.
    """

    def __init__(
            self,
            dim: int,
            d_state: int = 1,
            ssm_ratio: float = 2.0,
            dt_rank: Union[int, str] = 'auto',
            conv_bias: bool = True,
            gate: bool = True,
            norm_each: bool = True,
            upsample: str = 'bilinear',
            half_set: int = 0,
            carry_state: bool = True,
            se_reduction: int = 8,
            act_layer: Type[nn.Module] = nn.SiLU,
            proj_drop: float = 0.,
    ):
        super().__init__()
        if upsample not in ('bilinear', 'nearest'):
            raise ValueError(f"upsample must be 'bilinear' or 'nearest', got {upsample!r}")
        if half_set not in (0, 1):
            raise ValueError(f'half_set must be 0 or 1, got {half_set}')
        self.d_inner = d_inner = int(ssm_ratio * dim)
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16) if dt_rank == 'auto' else int(dt_rank)
        self.gate, self.norm_each, self.upsample = gate, norm_each, upsample
        self.half_set, self.carry_state = half_set, carry_state
        self.half_routes = _half_routes(d_inner, not norm_each, carry_state)

        self.in_proj = nn.Linear(dim, d_inner * (2 if gate else 1), bias=False)
        self.conv = nn.Conv2d(d_inner, d_inner, 3, padding=1, groups=d_inner, bias=conv_bias)
        self.conv_half = nn.Conv2d(d_inner, d_inner, 7, stride=2, padding=3, groups=d_inner, bias=conv_bias)
        self.act = act_layer()

        bound = 1 / math.sqrt(d_inner)
        self.x_proj_weight = nn.Parameter(torch.empty(2, self.dt_rank + 2 * d_state, d_inner).uniform_(-bound, bound))
        dt_std = self.dt_rank ** -0.5
        self.dt_projs_weight = nn.Parameter(torch.empty(2, d_inner, self.dt_rank).uniform_(-dt_std, dt_std))
        self.dt_projs_bias = nn.Parameter(init_dt_bias((2, d_inner)))
        self.A_logs = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(2 * d_inner, 1))
        self.Ds = nn.Parameter(torch.ones(2 * d_inner))

        self.out_norm = nn.LayerNorm(d_inner)
        self.se = SqueezeExcite(d_inner, se_reduction) if se_reduction else nn.Identity()
        self.out_proj = nn.Linear(d_inner, dim, bias=False)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_proj(x)
        if self.gate:
            x, z = x.chunk(2, dim=-1)
        xc = x.permute(0, 3, 1, 2)   # NHWC viewed as NCHW: the depthwise convs need no copy
        x_full = self.act(self.conv(xc)).permute(0, 2, 3, 1)
        x_half = self.act(self.conv_half(xc)).permute(0, 2, 3, 1)      # ceil(H/2) x ceil(W/2)
        y_full = self.scan(x_full, 1 - self.half_set, _FULL_ROUTE)
        y_half = self.scan(x_half, self.half_set, self.half_routes)
        if self.norm_each:   # every route normalized, then the three half-resolution ones summed
            y_full = self.out_norm(y_full)
            y_half = self.out_norm(y_half.unflatten(-1, (3, self.d_inner))).sum(-2)
        y = y_full + resize_nhwc(y_half, map_size(x_full), self.upsample)
        if not self.norm_each:
            y = self.out_norm(y)
        y = self.se(y.to(x.dtype))
        if self.gate:
            y = y * self.act(z)
        return self.proj_drop(self.out_proj(y))

    def scan(self, x: torch.Tensor, k: int, routes: Sequence[Route]) -> torch.Tensor:
        """Selective scan of ``x (B, H, W, D)`` along ``routes`` with parameter set ``k``; every route shares it.

        Returns float32 for low-precision inputs (the state and the merge stay in full precision up to out_norm).
        """
        rank, n, d = self.dt_rank, self.d_state, self.d_inner
        dt_low, B, C = F.linear(x, self.x_proj_weight[k]).split([rank, n, n], dim=-1)
        dts = F.linear(dt_low, self.dt_projs_weight[k])
        return scan_routes(x, dts, self.A_logs[k * d:(k + 1) * d], B, C, self.Ds[k * d:(k + 1) * d],
                           self.dt_projs_bias[k], routes)


class MSVSSBlock(nn.Module):
    """``x + MS2D(norm1(x))``, then ``x + ConvFFN(norm2(x))`` (master) or ``x + norm2(ConvFFN(x))`` (v2)."""

    def __init__(
            self,
            dim: int,
            ffn_ratio: int = 2,
            ffn_post_norm: bool = False,
            drop_path: float = 0.,
            ffn_drop: float = 0.,
            norm_layer: Type[nn.Module] = nn.LayerNorm,
            act_layer: Type[nn.Module] = nn.GELU,
            ssm_act_layer: Type[nn.Module] = nn.SiLU,
            **mixer_kwargs,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.mixer = MS2D(dim, act_layer=ssm_act_layer, **mixer_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.ffn = ConvFFN(dim, ffn_ratio, act_layer=act_layer, drop=ffn_drop)
        self.ffn_post_norm = ffn_post_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.mixer(norm_to(self.norm1, x)))   # norms written in the GEMMs' dtype
        if self.ffn_post_norm:
            return x + self.drop_path(self.norm2(self.ffn(x)))
        return x + self.drop_path(self.ffn(norm_to(self.norm2, x)))


class MSVMambaStage(nn.Module):
    """Downsample (none in the first stage), then ``depth`` blocks. Channel-last in and out."""

    def __init__(
            self,
            in_dim: int,
            dim: int,
            depth: int,
            downsample: Optional[str] = None,
            drop_path: Sequence[float] = (),
            norm_layer: Type[nn.Module] = nn.LayerNorm,
            **block_kwargs,
    ):
        super().__init__()
        self.grad_checkpointing = False
        if downsample is None:
            self.downsample = nn.Identity()
        elif downsample == 'v1':
            self.downsample = PatchMerging(in_dim, dim, norm_layer=norm_layer)
        elif downsample == 'v3':
            self.downsample = ConvDownsample(in_dim, dim, kernel_size=3, norm_layer=norm_layer)
        else:
            raise ValueError(f"downsample must be 'v1' or 'v3', got {downsample!r}")
        self.blocks = nn.Sequential(*[
            MSVSSBlock(dim, drop_path=drop_path[i] if drop_path else 0., norm_layer=norm_layer, **block_kwargs)
            for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class MSVMamba(HierarchicalBackbone):
    """MSVMamba backbone and classifier.

    Args:
        in_chans: input image channels.
        num_classes: classifier outputs (0 for none).
        global_pool: 'avg', 'max', ... or '' (timm's SelectAdaptivePool2d types).
        depths: blocks per stage.
        dims: widths per stage, or the first width (doubled at every stage).
        version: 'v1' (master: MSVMamba-N/M/T) or 'v3' (v2 branch: MSVMambav3-T/S/B); picks the stem, the
            downsampling, where out_norm and the ConvFFN norm sit, the upsampling and the parameter-set order.
        d_state: SSM states per channel.
        ssm_ratio: inner width over model width.
        dt_rank: rank of the Δ projection ('auto' = ceil(dim / 16)).
        ssm_conv_bias: bias in the mixer's depthwise convs.
        gate: SiLU(z) gate in the mixer.
        carry_state: the official half-resolution scan (one route through three orders, the state running on);
            False scans the three orders independently.
        ffn_ratio: ConvFFN expansion.
        patch_size: stem stride, 4.
        drop_rate: dropout before the classifier.
        proj_drop_rate: dropout after the mixer and in the ConvFFN.
        drop_path_rate: stochastic depth, linearly increasing over blocks.
        norm_layer: norm of the blocks, stem, downsampling and the final norm.
        act_layer: ConvFFN activation.
        ssm_act_layer: mixer activation.
    """

    # The smallest input an export with dynamic sizes accepts (visionssm.export.dynamic_shapes): the last stage's
    # half-resolution map must be at least 2 pixels a side, since a size traced at 1 is fixed in the graph.
    min_export_size = 96

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            depths: Sequence[int] = (1, 2, 9, 2),
            dims: Union[int, Sequence[int]] = 96,
            version: str = 'v1',
            d_state: int = 1,
            ssm_ratio: float = 2.0,
            dt_rank: Union[int, str] = 'auto',
            ssm_conv_bias: bool = True,
            gate: bool = True,
            carry_state: bool = True,
            ffn_ratio: Optional[int] = None,
            patch_size: int = 4,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.2,
            norm_layer: Type[nn.Module] = nn.LayerNorm,
            act_layer: Type[nn.Module] = nn.GELU,
            ssm_act_layer: Type[nn.Module] = nn.SiLU,
    ):
        super().__init__()
        if version not in ('v1', 'v3'):
            raise ValueError(f"version must be 'v1' (master branch) or 'v3' (v2 branch), got {version!r}")
        num_stages = len(depths)
        if isinstance(dims, int):
            dims = [dims * 2 ** i for i in range(num_stages)]
        if len(dims) != num_stages:
            raise ValueError(f'dims has {len(dims)} entries but depths has {num_stages}')
        v1 = version == 'v1'
        self.version = version
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = dims[-1]
        self.drop_rate = drop_rate

        if v1:
            self.stem = PatchEmbed(in_chans, dims[0], patch_size=patch_size, norm_layer=norm_layer)
        else:
            if patch_size != 4:
                raise ValueError(f"the 'v3' conv stem has a fixed stride of 4, got patch_size={patch_size}")
            self.stem = ConvStem(in_chans, dims[0], norm_layer=norm_layer)

        block_kwargs = dict(
            ffn_ratio=ffn_ratio or (2 if v1 else 4), ffn_post_norm=not v1, ffn_drop=proj_drop_rate,
            act_layer=act_layer, d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, conv_bias=ssm_conv_bias,
            gate=gate, norm_each=v1, upsample='bilinear' if v1 else 'nearest', half_set=0 if v1 else 1,
            carry_state=carry_state, ssm_act_layer=ssm_act_layer, proj_drop=proj_drop_rate,
        )
        dpr = [x.tolist() for x in torch.linspace(0, drop_path_rate, sum(depths), device='cpu').split(list(depths))]
        self.stages = nn.Sequential()
        self.feature_info = []
        for i in range(num_stages):
            self.stages.append(MSVMambaStage(
                dims[max(i - 1, 0)], dims[i], depths[i], downsample=('v1' if v1 else 'v3') if i > 0 else None,
                drop_path=dpr[i], norm_layer=norm_layer, **block_kwargs))
            self.feature_info.append(dict(num_chs=dims[i], reduction=patch_size * 2 ** i, module=f'stages.{i}'))
        self.norm = norm_layer(self.num_features)
        self.head = ClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt='NHWC')
        self.output_fmt = 'NHWC'
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
        first_conv = 'stem.proj' if isinstance(self.stem, PatchEmbed) else 'stem.conv1'
        self._load_checkpoint(checkpoint_path, checkpoint_filter_fn, first_conv,
                              containers=('model', 'model_ema', 'state_dict'))


# Official state-dict names → ours (both branches; the master branch's loader also renames pre-refactor VMamba keys,
# which vmamba's legacy rules cover).
_OFFICIAL_RENAMES = (
    (r'^patch_embed\.5\.', 'stem.conv2.'),
    (r'^patch_embed\.7\.', 'stem.norm2.'),
    (r'^layers\.(\d+)\.blocks\.(\d+)\.norm\.', r'stages.\1.blocks.\2.norm1.'),
    (r'^layers\.(\d+)\.blocks\.(\d+)\.op\.conv2d\.', r'stages.\1.blocks.\2.mixer.conv.'),
    (r'^layers\.(\d+)\.blocks\.(\d+)\.op\.conv2d_b1\.', r'stages.\1.blocks.\2.mixer.conv_half.'),
    (r'^layers\.(\d+)\.blocks\.(\d+)\.op\.se\.fc\.0\.', r'stages.\1.blocks.\2.mixer.se.fc1.'),
    (r'^layers\.(\d+)\.blocks\.(\d+)\.op\.se\.fc\.2\.', r'stages.\1.blocks.\2.mixer.se.fc2.'),
    (r'^layers\.(\d+)\.blocks\.(\d+)\.op\.', r'stages.\1.blocks.\2.mixer.'),
    (r'^layers\.(\d+)\.blocks\.(\d+)\.convFFN\.linear1\.', r'stages.\1.blocks.\2.ffn.fc1.'),
    (r'^layers\.(\d+)\.blocks\.(\d+)\.convFFN\.linear2\.', r'stages.\1.blocks.\2.ffn.fc2.'),
    (r'^layers\.(\d+)\.blocks\.(\d+)\.convFFN\.dwc\.', r'stages.\1.blocks.\2.ffn.dwconv.'),
    (r'^layers\.(\d+)\.blocks\.(\d+)\.', r'stages.\1.blocks.\2.'),
    # The official downsample ends stage i; ours starts stage i + 1.
    (r'^layers\.(\d+)\.downsample\.1\.', lambda m: f'stages.{int(m[1]) + 1}.downsample.conv.'),
    (r'^layers\.(\d+)\.downsample\.3\.', lambda m: f'stages.{int(m[1]) + 1}.downsample.norm.'),
    (r'^layers\.(\d+)\.downsample\.(reduction|norm)\.', lambda m: f'stages.{int(m[1]) + 1}.downsample.{m[2]}.'),
    (r'^classifier\.norm\.', 'norm.'),
    (r'^classifier\.head\.', 'head.fc.'),
)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: MSVMamba) -> Dict[str, torch.Tensor]:
    """Convert an official MSVMamba state dict (either branch) to this module tree.

    Our own state dicts pass through unchanged. 1x1-convolution weights (the ConvFFN's, ``Linear2d``) are
    reshaped to linear ``(out, in)``; the official detection backbones' ``outnorm*`` layers are dropped.
    """
    from .vmamba import _LEGACY_RENAMES, _rename
    if any(k.startswith(('stem.', 'stages.')) for k in state_dict):
        return dict(state_dict)
    patch_stem = isinstance(model.stem, PatchEmbed)
    stem_rules = (
        (r'^patch_embed\.0\.', 'stem.proj.' if patch_stem else 'stem.conv1.'),
        (r'^patch_embed\.2\.', 'stem.norm.' if patch_stem else 'stem.norm1.'),
    )
    own = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        if key.startswith('outnorm'):
            continue
        key = _rename(_rename(key, _LEGACY_RENAMES), stem_rules + _OFFICIAL_RENAMES)
        if key in own and value.dim() == 4 and own[key].dim() == 2 and value.shape[2:] == (1, 1):
            value = value.flatten(1)
        out[key] = value
    return out


def _create_msvmamba(variant: str, pretrained: bool = False, **kwargs) -> MSVMamba:
    load_through_model(kwargs)  # official files need the safe loader and the conversion
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3))
    return build_model_with_cfg(
        MSVMamba, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


# --- from_official: the official VSSM constructor's arguments (either branch), mapped to ours -------------------

_ACTS = dict(silu=nn.SiLU, gelu=nn.GELU, relu=nn.ReLU)
# The settings every released model uses, which select code paths we implement; anything else is refused.
_MASTER_FIXED = dict(
    sscore_type='multiscale_4scan_12', ms_split=[1, 3], patch_norm=True, recurrent=False, inter_block_ssm=False,
    grid_size=0, multiscale_ratio=[], multiscale_ksize=[], continous_patch=False, adaptive_merge=False,
    add_conv=True, b1_seq=False, add_se=True, ms_fusion=None, convFFN=True, lpu=False, sep_norm=False,
    downsample_version='v1', patchembed_version='v1', mlp_ratio=0.0, norm_layer='ln', forward_type='v2',
)
_V2_FIXED = dict(
    norm_layer='ln2d', downsample_version='v3', patchembed_version='v2', gmlp=False, posembed=False, pre_norm=False,
    add_se=True, convffn=True, axis_stage=[], full_res_index=1, patch_norm=True,
)
_IGNORED = (  # arguments that change nothing in the released forward (init only, unused branches, sizes)
    'ssm_simple_init', 'ssm_init', 'b1_ratio', 'up_sample', 'imgsize', 'num_heads', 'mlp_act_layer', 'ms_stage')


def _normalize(value):
    return list(value) if isinstance(value, tuple) else value


def from_official(checkpoint: Optional[str] = None, **official_kwargs) -> MSVMamba:
    """The MSVMamba equal to the official ``VSSM(**official_kwargs)`` of the master branch
    (``sscore_type='multiscale_4scan_12'``) or of the v2 branch (``forward_type`` 'vms' / 'vms_noz'), optionally
    loaded from an official file.

    Raises ValueError for arguments that select code the released models do not use.
    """
    kw = dict(official_kwargs)
    v2 = kw.get('forward_type', 'v2') in ('vms', 'vms_noz')
    fixed = _V2_FIXED if v2 else _MASTER_FIXED
    if not v2 and kw.get('sscore_type') != 'multiscale_4scan_12':
        raise ValueError("not an MSVMamba configuration: expected sscore_type='multiscale_4scan_12' (master branch) "
                         "or forward_type 'vms' / 'vms_noz' (v2 branch)")
    for name, expected in fixed.items():
        if name in kw and _normalize(kw.pop(name)) != expected:
            raise ValueError(f'{name}={official_kwargs[name]!r} is not supported (the released MSVMamba models use '
                             f'{expected!r})')
    depths = list(kw.pop('depths', [2, 2, 9, 2]))
    ms_stage = kw.get('ms_stage')
    if ms_stage is not None and sorted(ms_stage) != list(range(len(depths))):
        raise ValueError(f'ms_stage={ms_stage!r} is not supported: the released models are multi-scale in every '
                         f'stage ({list(range(len(depths)))})')
    if kw.pop('ssm_rank_ratio', 2.0) < kw.get('ssm_ratio', 2.0):
        raise ValueError('ssm_rank_ratio < ssm_ratio (a low-rank SSM) is not supported')
    args: Dict[str, Any] = dict(version='v3' if v2 else 'v1', depths=depths)
    if v2:
        args['gate'] = kw.pop('forward_type') == 'vms'
        args['ffn_ratio'] = kw.pop('conv_ffn_ratio', 2)
        kw.pop('mlp_ratio', None)   # the ConvFFN replaces the MLP
    name = kw.pop('ssm_act_layer', 'silu').lower()
    if name not in _ACTS:
        raise ValueError(f'ssm_act_layer must be one of {list(_ACTS)}, got {name!r}')
    args['ssm_act_layer'] = _ACTS[name]
    ssm_drop, mlp_drop = kw.pop('ssm_drop_rate', 0.), kw.pop('mlp_drop_rate', 0.)
    ffn_drop = kw.pop('ffn_dropout', ssm_drop if v2 else 0.2)
    if len({ssm_drop, mlp_drop, ffn_drop}) > 1:
        raise ValueError(f'ssm_drop_rate ({ssm_drop}), mlp_drop_rate ({mlp_drop}) and ffn_dropout ({ffn_drop}) '
                         f'must be equal here')
    args['proj_drop_rate'] = ssm_drop
    use_checkpoint = kw.pop('use_checkpoint', False)
    for name in _IGNORED:
        kw.pop(name, None)
    renames = dict(
        patch_size='patch_size', in_chans='in_chans', num_classes='num_classes', dims='dims',
        ssm_d_state='d_state', ssm_ratio='ssm_ratio', ssm_dt_rank='dt_rank', ssm_conv_bias='ssm_conv_bias',
        drop_path_rate='drop_path_rate',
    )
    if kw.pop('ssm_conv', 3) != 3:
        raise ValueError('ssm_conv must be 3 (the released full-resolution depthwise conv)')
    unknown = sorted(set(kw) - set(renames))
    if unknown:
        raise ValueError(f'unknown VSSM arguments: {unknown}')
    args.update(dims=(96, 192, 384, 768), d_state=16, drop_path_rate=0.1)   # the official VSSM's own defaults
    args.update({renames[k]: v for k, v in kw.items()})
    model = MSVMamba(**args)
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
        'first_conv': 'stem.conv1', 'classifier': 'head.fc',
        'license': 'unspecified (no licence in the official repository)',
        'origin_url': 'https://github.com/YuHengsss/MSVMamba',
        'paper_ids': 'arXiv:2405.14174',
        'paper_name': 'Multi-Scale VMamba: Hierarchy in Hierarchy Visual State Space Model',
        **kwargs,
    }


_HF = 'https://huggingface.co/YuhengSSS/MSVMamba/resolve/main/'
# The master-branch weights are Google-Drive folders (official README): no URL downloads the file, so the cfg names
# the folder (a download of it fails with the loader's "not a PyTorch checkpoint" error); fetch the .pth by hand and
# pass pretrained_cfg_overlay=dict(file=path).
_DRIVE_NOTE = ('url is a Google-Drive folder (official README), not a file: download its .pth by hand and pass '
               'pretrained_cfg_overlay=dict(file=path).',)


def _drive_cfg(folder: str) -> Dict[str, Any]:
    return _cfg(f'https://drive.google.com/drive/folders/{folder}', first_conv='stem.proj', notes=_DRIVE_NOTE)


default_cfgs = generate_default_cfgs({
    'msvmamba_nano.in1k': _drive_cfg('1J41w3ApitQhp2O3wHmJoOs4U032uqebK'),
    'msvmamba_micro.in1k': _drive_cfg('1jfl2GmuKcUB8sPwRlyHK_wT0MjqgljYk'),
    'msvmamba_tiny.in1k': _drive_cfg('1ddNWk89ohcxxMuVEaJ2Y5A6xeBKgA7lU'),
    'msvmamba_v3_tiny.in1k': _cfg(_HF + 'msvmambav3_tiny_224.pth'),
    'msvmamba_v3_small.in1k': _cfg(_HF + 'msvmambav3_small_224.pth'),
    'msvmamba_v3_base.in1k': _cfg(_HF + 'msvmambav3_base_224.pth'),
    'test_msvmamba.untrained': _cfg(input_size=(3, 64, 64), pool_size=(2, 2), first_conv='stem.proj'),
})

# master (v1): patch embed and merging, gate, per-route out_norm, bilinear, ConvFFN x2, ssm_ratio 2.
# v2 branch (v3): conv stem and downsampling, one out_norm, nearest, post-norm ConvFFN x4, ssm_ratio 1.
_V1 = dict(version='v1', d_state=1, ssm_ratio=2.0, gate=True)
_V3 = dict(version='v3', d_state=1, ssm_ratio=1.0)


@register_model
def msvmamba_nano(pretrained: bool = False, **kwargs) -> MSVMamba:
    """MSVMamba-Nano (6.9M)."""
    model_args = dict(depths=(1, 2, 5, 2), dims=48, drop_path_rate=0.2, **_V1)
    return _create_msvmamba('msvmamba_nano', pretrained, **dict(model_args, **kwargs))


@register_model
def msvmamba_micro(pretrained: bool = False, **kwargs) -> MSVMamba:
    """MSVMamba-Micro (11.9M)."""
    model_args = dict(depths=(1, 2, 5, 2), dims=64, drop_path_rate=0.2, **_V1)
    return _create_msvmamba('msvmamba_micro', pretrained, **dict(model_args, **kwargs))


@register_model
def msvmamba_tiny(pretrained: bool = False, **kwargs) -> MSVMamba:
    """MSVMamba-Tiny (33.0M)."""
    model_args = dict(depths=(1, 2, 9, 2), dims=96, drop_path_rate=0.2, **_V1)
    return _create_msvmamba('msvmamba_tiny', pretrained, **dict(model_args, **kwargs))


@register_model
def msvmamba_v3_tiny(pretrained: bool = False, **kwargs) -> MSVMamba:
    """MSVMambav3-Tiny (32.3M), no z gate."""
    model_args = dict(depths=(2, 2, 9, 2), dims=96, gate=False, drop_path_rate=0.2, **_V3)
    return _create_msvmamba('msvmamba_v3_tiny', pretrained, **dict(model_args, **kwargs))


@register_model
def msvmamba_v3_small(pretrained: bool = False, **kwargs) -> MSVMamba:
    """MSVMambav3-Small (50.2M), no z gate."""
    model_args = dict(depths=(2, 3, 20, 2), dims=96, gate=False, drop_path_rate=0.4, **_V3)
    return _create_msvmamba('msvmamba_v3_small', pretrained, **dict(model_args, **kwargs))


@register_model
def msvmamba_v3_base(pretrained: bool = False, **kwargs) -> MSVMamba:
    """MSVMambav3-Base (90.6M), with the z gate."""
    model_args = dict(depths=(2, 4, 18, 2), dims=128, gate=True, drop_path_rate=0.5, **_V3)
    return _create_msvmamba('msvmamba_v3_base', pretrained, **dict(model_args, **kwargs))


@register_model
def test_msvmamba(pretrained: bool = False, **kwargs) -> MSVMamba:
    """A tiny MSVMamba (master layout) for tests and demos."""
    model_args = dict(depths=(1, 1, 2, 1), dims=16, drop_path_rate=0.0, **_V1)
    return _create_msvmamba('test_msvmamba', pretrained, **dict(model_args, **kwargs))
