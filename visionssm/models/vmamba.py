"""VMamba: Visual State Space Model.

Paper: "VMamba: Visual State Space Model", Liu et al., NeurIPS 2024 — https://arxiv.org/abs/2401.10166
Official code and weights: https://github.com/MzeroMiko/VMamba (MIT licence), read at commit 2ed52ead.

A hierarchical backbone whose token mixer (SS2D) runs the selective scan along four cross routes of the feature map
(row, column, and both reversed) and sums them. Two released generations:

* v2 ("VMamba-T/S/B[s{ratio}l{blocks}]"): conv stem, conv downsampling, SS2D without gate at d_state 1, MLP blocks.
* v0 ("Vanilla VMamba"): patch stem, patch merging, gated SS2D at d_state 16, no MLP.

This is a re-implementation on visionssm's shared scan op: channel-last throughout, no cross-scan copies. Official
checkpoints (both generations, the v0 era's legacy key names, Linear2d-shaped weights) convert at load time in
``checkpoint_filter_fn``; ``from_official`` builds the model equal to an official ``VSSM(**kwargs)``.

``forward_features`` returns a channel-last map (``output_fmt = 'NHWC'``). torch.fx traces the model (the scan op
and a few size- or dtype-dependent helpers are leaves). TorchScript is not supported, because the shared scan op
cannot be scripted: ``torch.jit.script``, or building under timm's ``set_scriptable(True)``, raises
``visionssm.ops.selective_scan.TORCHSCRIPT_UNSUPPORTED``, which says why.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Optional, Sequence, Type, Union

import torch
import torch.nn as nn
from timm.layers import ClassifierHead, DropPath, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model

from visionssm.layers import SS2D, ConvDownsample, ConvStem, Mlp, PatchEmbed, PatchMerging
from visionssm.layers.norm import norm_to
from visionssm.ops import cross_routes
from ._checkpoint import load_through_model
from ._hierarchical import HierarchicalBackbone

__all__ = ['VMamba', 'VSSBlock', 'VMambaStage', 'checkpoint_filter_fn', 'from_official']


class VSSBlock(nn.Module):
    """Pre-norm residual block: ``x + SS2D(norm1(x))``, then ``x + MLP(norm2(x))`` when ``mlp_ratio > 0``."""

    def __init__(
            self,
            dim: int,
            d_state: int = 1,
            ssm_ratio: float = 2.0,
            dt_rank: Union[int, str] = 'auto',
            d_conv: int = 3,
            conv_bias: bool = False,
            gate: bool = False,
            mlp_ratio: float = 4.0,
            drop_path: float = 0.,
            proj_drop: float = 0.,
            norm_layer: Type[nn.Module] = nn.LayerNorm,
            act_layer: Type[nn.Module] = nn.GELU,
            ssm_act_layer: Type[nn.Module] = nn.SiLU,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.mixer = SS2D(
            dim, d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=d_conv, conv_bias=conv_bias,
            gate=gate, routes=cross_routes(), act_layer=ssm_act_layer, proj_drop=proj_drop,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        if mlp_ratio > 0:
            self.norm2 = norm_layer(dim)
            self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        else:
            self.norm2 = self.mlp = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the norms hand their output to the mixer's and the MLP's first GEMM in its dtype (autocast's)
        x = x + self.drop_path(self.mixer(norm_to(self.norm1, x)))
        if self.mlp is not None:
            x = x + self.drop_path(self.mlp(norm_to(self.norm2, x)))
        return x


class VMambaStage(nn.Module):
    """Downsample (none in the first stage), then ``depth`` VSS blocks. Channel-last in and out."""

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
        elif downsample in ('v2', 'v3'):
            self.downsample = ConvDownsample(in_dim, dim, kernel_size=2 if downsample == 'v2' else 3,
                                             norm_layer=norm_layer)
        else:
            raise ValueError(f"downsample must be 'v1', 'v2' or 'v3', got {downsample!r}")
        self.blocks = nn.Sequential(*[
            VSSBlock(dim, drop_path=drop_path[i] if drop_path else 0., norm_layer=norm_layer, **block_kwargs)
            for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class VMamba(HierarchicalBackbone):
    """VMamba backbone and classifier.

    Args:
        in_chans: input image channels.
        num_classes: classifier outputs (0 for none).
        global_pool: 'avg', 'max', ... or '' (timm's SelectAdaptivePool2d types).
        depths: blocks per stage.
        dims: widths per stage, or the first width (doubled at every stage).
        d_state: SSM states per channel (1 for v2, 16 for v0).
        ssm_ratio: SS2D inner width over model width.
        dt_rank: rank of the Δ projection ('auto' = ceil(dim / 16)).
        ssm_conv: SS2D depthwise conv size.
        ssm_conv_bias: bias in that conv.
        gate: SiLU(z) gate in SS2D (v0).
        mlp_ratio: MLP hidden width over model width; 0 for no MLP (v0).
        stem: 'v2' (two stride-2 3x3 convs) or 'v1' (one patch_size conv).
        downsample: 'v3' (3x3 stride-2 conv), 'v2' (2x2 conv) or 'v1' (patch merging).
        patch_size: stem stride, 4.
        drop_rate: dropout before the classifier.
        proj_drop_rate: dropout after SS2D and in the MLP.
        drop_path_rate: stochastic depth, linearly increasing over blocks.
        norm_layer: norm for the blocks, stem, downsampling and the final norm.
        act_layer: MLP activation.
        ssm_act_layer: SS2D activation.
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            depths: Sequence[int] = (2, 2, 9, 2),
            dims: Union[int, Sequence[int]] = 96,
            d_state: int = 1,
            ssm_ratio: float = 2.0,
            dt_rank: Union[int, str] = 'auto',
            ssm_conv: int = 3,
            ssm_conv_bias: bool = False,
            gate: bool = False,
            mlp_ratio: float = 4.0,
            stem: str = 'v2',
            downsample: str = 'v3',
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
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = dims[-1]
        self.drop_rate = drop_rate

        if stem == 'v2':
            if patch_size != 4:
                raise ValueError(f"the 'v2' stem has a fixed stride of 4, got patch_size={patch_size}")
            self.stem = ConvStem(in_chans, dims[0], norm_layer=norm_layer)
        elif stem == 'v1':
            self.stem = PatchEmbed(in_chans, dims[0], patch_size=patch_size, norm_layer=norm_layer)
        else:
            raise ValueError(f"stem must be 'v1' or 'v2', got {stem!r}")

        dpr = [x.tolist() for x in torch.linspace(0, drop_path_rate, sum(depths), device='cpu').split(list(depths))]
        self.stages = nn.Sequential()
        self.feature_info = []
        for i in range(num_stages):
            self.stages.append(VMambaStage(
                dims[max(i - 1, 0)], dims[i], depths[i], downsample=downsample if i > 0 else None,
                drop_path=dpr[i], norm_layer=norm_layer, d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank,
                d_conv=ssm_conv, conv_bias=ssm_conv_bias, gate=gate, mlp_ratio=mlp_ratio,
                proj_drop=proj_drop_rate, act_layer=act_layer, ssm_act_layer=ssm_act_layer,
            ))
            self.feature_info.append(dict(num_chs=dims[i], reduction=patch_size * 2 ** i, module=f'stages.{i}'))
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
        first_conv = 'stem.conv1' if isinstance(self.stem, ConvStem) else 'stem.proj'
        self._load_checkpoint(checkpoint_path, checkpoint_filter_fn, first_conv)


# Official state-dict names → ours. The v0 releases predate the official Jan-2024 refactor and may carry its
# older names; those are first brought to the current official names (the rename the official loader does).
_LEGACY_RENAMES = (
    (r'^patch_embed\.proj\.', 'patch_embed.0.'),
    (r'^patch_embed\.norm\.', 'patch_embed.2.'),
    (r'^(layers\.\d+\.blocks\.\d+)\.ln_1\.', r'\1.norm.'),
    (r'^(layers\.\d+\.blocks\.\d+)\.self_attention\.', r'\1.op.'),
    (r'^norm\.', 'classifier.norm.'),
    (r'^head\.', 'classifier.head.'),
)
_OFFICIAL_RENAMES = (
    (r'^patch_embed\.5\.', 'stem.conv2.'),
    (r'^patch_embed\.7\.', 'stem.norm2.'),
    (r'^layers\.(\d+)\.blocks\.(\d+)\.norm\.', r'stages.\1.blocks.\2.norm1.'),
    (r'^layers\.(\d+)\.blocks\.(\d+)\.op\.conv2d\.', r'stages.\1.blocks.\2.mixer.conv.'),
    (r'^layers\.(\d+)\.blocks\.(\d+)\.op\.', r'stages.\1.blocks.\2.mixer.'),
    (r'^layers\.(\d+)\.blocks\.(\d+)\.', r'stages.\1.blocks.\2.'),
    # The official downsample ends stage i; ours starts stage i + 1.
    (r'^layers\.(\d+)\.downsample\.1\.', lambda m: f'stages.{int(m[1]) + 1}.downsample.conv.'),
    (r'^layers\.(\d+)\.downsample\.3\.', lambda m: f'stages.{int(m[1]) + 1}.downsample.norm.'),
    (r'^layers\.(\d+)\.downsample\.(reduction|norm)\.', lambda m: f'stages.{int(m[1]) + 1}.downsample.{m[2]}.'),
    (r'^classifier\.norm\.', 'norm.'),
    (r'^classifier\.head\.', 'head.fc.'),
)


def _rename(key: str, rules) -> str:
    for pattern, repl in rules:
        key, n = re.subn(pattern, repl, key)
        if n:
            break
    return key


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: VMamba) -> Dict[str, torch.Tensor]:
    """Convert an official VMamba state dict (any release, either naming era) to this module tree.

    Our own state dicts pass through unchanged. Linear weights stored as 1x1 convolutions (``Linear2d``,
    ``(out, in, 1, 1)``) are reshaped to ``(out, in)``.
    """
    if any(k.startswith(('stem.', 'stages.')) for k in state_dict):
        return dict(state_dict)
    v2_stem = isinstance(model.stem, ConvStem)
    stem_rules = (
        (r'^patch_embed\.0\.', 'stem.conv1.' if v2_stem else 'stem.proj.'),
        (r'^patch_embed\.2\.', 'stem.norm1.' if v2_stem else 'stem.norm.'),
    )
    own = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        if key.startswith('outnorm'):  # the official mm backbone's output norms; not part of a classifier
            continue
        key = _rename(_rename(key, _LEGACY_RENAMES), stem_rules + _OFFICIAL_RENAMES)
        if key in own and value.dim() == 4 and own[key].dim() == 2 and value.shape[2:] == (1, 1):
            value = value.flatten(1)
        out[key] = value
    return out


def _create_vmamba(variant: str, pretrained: bool = False, **kwargs) -> VMamba:
    load_through_model(kwargs)  # official files need the safe loader and the conversion
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3))
    return build_model_with_cfg(
        VMamba, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


# --- from_official: the official VSSM constructor's arguments, mapped to ours -----------------------------------

_ACTS = dict(silu=nn.SiLU, gelu=nn.GELU, relu=nn.ReLU, sigmoid=nn.Sigmoid)
# Every cross2d core of the official SS2D computes the same function (they differ in einsum vs conv1d, backend,
# and fp32 forcing), so each maps to our one SS2D.
_CROSS2D_CORES = ('v01', 'v02', 'v03', 'v04', 'v05', 'v2', 'v3')


def _parse_forward_type(forward_type: str) -> dict:
    if forward_type in ('v0', 'v0seq'):
        return dict(gate=True, ssm_conv_bias=True)  # the official v0 mixer hard-codes a conv bias and the gate
    core, gate = forward_type, True
    for suffix in ('_no32', '_noz'):
        if core.endswith(suffix):
            core = core[:-len(suffix)]
            gate = gate and suffix != '_noz'
    if core not in _CROSS2D_CORES:
        raise ValueError(
            f'forward_type {forward_type!r} is not supported: visionssm implements the released VMamba mixers '
            f"('v0' and the cross2d cores {_CROSS2D_CORES} with optional '_noz'/'_no32'), not output-norm, "
            f"activation or 1-D/cascade variants")
    return dict(gate=gate)


def from_official(checkpoint: Optional[str] = None, **official_kwargs) -> VMamba:
    """The VMamba equal to the official ``VSSM(**official_kwargs)``, optionally loaded from an official file.

    Raises ValueError for arguments that select code the released models do not use.
    """
    kw = dict(official_kwargs)
    args: Dict[str, Any] = {}
    norm = kw.pop('norm_layer', 'ln').lower()
    if norm not in ('ln', 'ln2d'):  # ln vs ln2d is a memory layout only; we are channel-last
        raise ValueError(f"norm_layer {norm!r} is not supported (expected 'ln' or 'ln2d')")
    for flag, expected in (('gmlp', False), ('posembed', False), ('patch_norm', True)):
        if kw.pop(flag, expected) != expected:
            raise ValueError(f'{flag}={not expected} is not supported (no released VMamba uses it)')
    ssm_init = kw.pop('ssm_init', 'v0')
    if ssm_init not in ('v0', 'v1', 'v2'):
        raise ValueError(f"ssm_init must be 'v0', 'v1' or 'v2', got {ssm_init!r}")
    args.update(_parse_forward_type(kw.pop('forward_type', 'v2')))
    ssm_conv_bias = kw.pop('ssm_conv_bias', True)
    args.setdefault('ssm_conv_bias', ssm_conv_bias)
    use_checkpoint = kw.pop('use_checkpoint', False)
    kw.pop('imgsize', None)  # only sizes the (unsupported) position embedding
    for act_key, ours in (('ssm_act_layer', 'ssm_act_layer'), ('mlp_act_layer', 'act_layer')):
        name = kw.pop(act_key, 'silu' if act_key == 'ssm_act_layer' else 'gelu').lower()
        if name not in _ACTS:
            raise ValueError(f'{act_key} must be one of {list(_ACTS)}, got {name!r}')
        args[ours] = _ACTS[name]
    ssm_drop, mlp_drop = kw.pop('ssm_drop_rate', 0.), kw.pop('mlp_drop_rate', 0.)
    if ssm_drop != mlp_drop:
        raise ValueError(f'ssm_drop_rate ({ssm_drop}) and mlp_drop_rate ({mlp_drop}) must be equal here')
    args['proj_drop_rate'] = ssm_drop
    renames = dict(
        patch_size='patch_size', in_chans='in_chans', num_classes='num_classes', depths='depths', dims='dims',
        ssm_d_state='d_state', ssm_ratio='ssm_ratio', ssm_dt_rank='dt_rank', ssm_conv='ssm_conv',
        mlp_ratio='mlp_ratio', drop_path_rate='drop_path_rate', downsample_version='downsample',
        patchembed_version='stem',
    )
    defaults = dict(  # the official VSSM's own defaults, where they differ from ours
        depths=(2, 2, 9, 2), dims=(96, 192, 384, 768), d_state=16, downsample='v2', stem='v1', drop_path_rate=0.1)
    unknown = sorted(set(kw) - set(renames))
    if unknown:
        raise ValueError(f'unknown VSSM arguments: {unknown}')
    args.update(defaults)
    args.update({renames[k]: v for k, v in kw.items()})
    model = VMamba(**args)
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
        'license': 'mit', 'origin_url': 'https://github.com/MzeroMiko/VMamba',
        'paper_ids': 'arXiv:2401.10166', 'paper_name': 'VMamba: Visual State Space Model',
        **kwargs,
    }


_RELEASES = 'https://github.com/MzeroMiko/VMamba/releases/download/'

default_cfgs = generate_default_cfgs({
    'vmamba_tiny_s1l8.in1k': _cfg(_RELEASES + '%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth'),
    'vmamba_small_s1l20.in1k': _cfg(_RELEASES + '%23v2cls/vssm1_small_0229s_ckpt_epoch_240.pth'),
    'vmamba_base_s1l20.in1k': _cfg(_RELEASES + '%23v2cls/vssm1_base_0229s_ckpt_epoch_225.pth'),
    'vmamba_tiny_s2l5.in1k': _cfg(_RELEASES + '%23v2cls/vssm_tiny_0230_ckpt_epoch_262.pth'),
    'vmamba_small_s2l15.in1k': _cfg(_RELEASES + '%23v2cls/vssm_small_0229_ckpt_epoch_222.pth'),
    'vmamba_base_s2l15.in1k': _cfg(_RELEASES + '%23v2cls/vssm_base_0229_ckpt_epoch_237.pth'),
    'vmamba_vanilla_tiny.in1k': _cfg(_RELEASES + '%23v0cls/vssmtiny_dp01_ckpt_epoch_292.pth', first_conv='stem.proj'),
    'vmamba_vanilla_small.in1k': _cfg(_RELEASES + '%23v0cls/vssmsmall_dp03_ckpt_epoch_238.pth', first_conv='stem.proj'),
    'vmamba_vanilla_base.in1k': _cfg(_RELEASES + '%23v0cls/vssmbase_dp06_ckpt_epoch_241.pth', first_conv='stem.proj'),
    'test_vmamba.untrained': _cfg(input_size=(3, 64, 64), pool_size=(2, 2)),
})

# v2: conv stem and downsampling, d_state 1, no gate, no conv bias, MLP 4x. "s{r}l{n}" = ssm_ratio r, n blocks in
# stage 3. v0 ("vanilla"): patch stem and merging, d_state 16, ssm_ratio 2, gate and conv bias, no MLP.
_V2 = dict(d_state=1, ssm_conv_bias=False, gate=False, mlp_ratio=4.0, stem='v2', downsample='v3')
_V0 = dict(d_state=16, ssm_ratio=2.0, ssm_conv_bias=True, gate=True, mlp_ratio=0.0, stem='v1', downsample='v1')


@register_model
def vmamba_tiny_s1l8(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-T[s1l8], the paper's VMamba-T (30.2M)."""
    model_args = dict(depths=(2, 2, 8, 2), dims=96, ssm_ratio=1.0, drop_path_rate=0.2, **_V2)
    return _create_vmamba('vmamba_tiny_s1l8', pretrained, **dict(model_args, **kwargs))


@register_model
def vmamba_small_s1l20(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-S[s1l20] (49.0M)."""
    model_args = dict(depths=(2, 2, 20, 2), dims=96, ssm_ratio=1.0, drop_path_rate=0.3, **_V2)
    return _create_vmamba('vmamba_small_s1l20', pretrained, **dict(model_args, **kwargs))


@register_model
def vmamba_base_s1l20(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-B[s1l20] (86.6M)."""
    model_args = dict(depths=(2, 2, 20, 2), dims=128, ssm_ratio=1.0, drop_path_rate=0.5, **_V2)
    return _create_vmamba('vmamba_base_s1l20', pretrained, **dict(model_args, **kwargs))


@register_model
def vmamba_tiny_s2l5(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-T[s2l5] (30.7M)."""
    model_args = dict(depths=(2, 2, 5, 2), dims=96, ssm_ratio=2.0, drop_path_rate=0.2, **_V2)
    return _create_vmamba('vmamba_tiny_s2l5', pretrained, **dict(model_args, **kwargs))


@register_model
def vmamba_small_s2l15(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-S[s2l15], the paper's VMamba-S (50.1M)."""
    model_args = dict(depths=(2, 2, 15, 2), dims=96, ssm_ratio=2.0, drop_path_rate=0.3, **_V2)
    return _create_vmamba('vmamba_small_s2l15', pretrained, **dict(model_args, **kwargs))


@register_model
def vmamba_base_s2l15(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-B[s2l15], the paper's VMamba-B (88.6M)."""
    model_args = dict(depths=(2, 2, 15, 2), dims=128, ssm_ratio=2.0, drop_path_rate=0.6, **_V2)
    return _create_vmamba('vmamba_base_s2l15', pretrained, **dict(model_args, **kwargs))


@register_model
def vmamba_vanilla_tiny(pretrained: bool = False, **kwargs) -> VMamba:
    """Vanilla VMamba-T, the January 2024 release (22.9M)."""
    model_args = dict(depths=(2, 2, 9, 2), dims=96, drop_path_rate=0.2, **_V0)
    return _create_vmamba('vmamba_vanilla_tiny', pretrained, **dict(model_args, **kwargs))


@register_model
def vmamba_vanilla_small(pretrained: bool = False, **kwargs) -> VMamba:
    """Vanilla VMamba-S (44.4M)."""
    model_args = dict(depths=(2, 2, 27, 2), dims=96, drop_path_rate=0.3, **_V0)
    return _create_vmamba('vmamba_vanilla_small', pretrained, **dict(model_args, **kwargs))


@register_model
def vmamba_vanilla_base(pretrained: bool = False, **kwargs) -> VMamba:
    """Vanilla VMamba-B (76.3M)."""
    model_args = dict(depths=(2, 2, 27, 2), dims=128, drop_path_rate=0.6, **_V0)
    return _create_vmamba('vmamba_vanilla_base', pretrained, **dict(model_args, **kwargs))


@register_model
def test_vmamba(pretrained: bool = False, **kwargs) -> VMamba:
    """A tiny VMamba v2 for tests and demos."""
    model_args = dict(depths=(1, 1, 2, 1), dims=16, ssm_ratio=1.0, drop_path_rate=0.0, **_V2)
    return _create_vmamba('test_vmamba', pretrained, **dict(model_args, **kwargs))
