"""PlainMamba: a plain (non-hierarchical) Mamba with continuous zig-zag scans and direction-aware updates.

Paper: "PlainMamba: Improving Non-Hierarchical Mamba in Visual Recognition", Yang, Chen, Espinosa, Ericsson, Wang,
Liu, Crowley, BMVC 2024 — https://arxiv.org/abs/2403.17695
Official code and weights: https://github.com/ChenhongyiYang/PlainMamba (Apache-2.0), read at commit 0975a1d0
(``mmcls/plain_mamba_dev/models/plain_mamba/plain_mamba.py``, ``plain_mamba_layer.py``, ``modules/patch_embed.py``);
weights on the Hugging Face hub (``ChenhongyiYang/PlainMamba``: ``l1.pth``, ``l2.pth``, ``l3.pth``).

A convolutional tokenizer (7x7 stride-2 conv + BN + ReLU, ``num_convs_patch_embed`` 3x3 conv + BN + ReLU, an 8x8
stride-8 projection after bottom/right padding: stride 16), a learned absolute position embedding (no class token),
``depth`` blocks ``x + drop_path(mixer(LN(x)))`` of constant width (no MLP; in L1, block 0 is followed by a depthwise
3x3 conv + BN + GELU without residual), a final LayerNorm, token averaging and a linear head. The mixer is a Mamba
block over the 2-D map: ``in_proj`` to x and the gate z, a depthwise 7x7 conv + SiLU on x, ``x_proj`` / ``dt_proj``
to Δ, B, C, and four selective scans along the continuous zig-zags (rows, their reverse, columns, their reverse:
``snake_routes``), summed, gated by SiLU(z), ``out_proj``. Direction-aware updating adds a learned row of
``direction_Bs (5, N)`` to B at every step, chosen by the direction of the step that reached the token (start,
right, left, up, down); here that makes B one block per route, ``B_k = B + direction_Bs[codes_k]``. The four scans
are one call of the shared op.

The official code's behaviour is reproduced by default (the released weights were trained with it); two parts of it
differ from the paper's description and each has a flag:

* ``params_at='step'`` (official): only x is gathered into scan order; Δ, B and C stay in raster order, so scan
  step t of route k combines ``x[o_k(t)]`` with ``Δ[t]``, ``B[t] + direction_Bs[d_k(t)]`` and ``C[t]``.
  ``params_at='route'`` reads them at ``o_k(t)`` as the paper describes.
* ``dt_bias_twice=True`` (official): ``dt_proj`` applies its bias and the scan adds it again as ``delta_bias``,
  Δ = softplus(W dt + 2 b). ``False`` adds it once.

Each of the four scans adds its own ``D * x`` (as officially). ``features_only`` uses Vim's simple feature pyramid
over the block outputs (new layers, not in the classification checkpoint); ``reductions=(16, 16, 16, 16)`` gives
the official segmentation backbone's four stride-16 maps instead.

torch.fx traces the model (the scan op and a few size-dependent helpers are leaves). TorchScript is not supported,
because the shared scan op cannot be scripted: ``torch.jit.script``, or building under timm's
``set_scriptable(True)``, raises ``visionssm.ops.selective_scan.TORCHSCRIPT_UNSUPPORTED``, which says why.
"""
from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, register_notrace_function, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from visionssm.kernels.export_scan import route_index
from visionssm.layers import ScanLayer, full_precision, init_dt_bias, scan_out_dtype
from visionssm.layers.cache import cached_constants, exporting, tracing
from visionssm.layers.norm import norm_to
from visionssm.ops import Route, selective_scan, snake_routes
from ._checkpoint import extract_state_dict, load_checkpoint_file, load_converted, load_through_model
from .vim import VimFeaturePyramid

__all__ = ['PlainMamba', 'PlainMambaLayer', 'PlainMamba2D', 'ConvPatchEmbed', 'checkpoint_filter_fn',
           'direction_codes', 'resize_pos_embed', 'from_official']

_PARAMS_AT = ('step', 'route')


@register_notrace_function
def direction_codes(routes: Tuple[Route, ...], height: int, width: int, device: torch.device) -> torch.Tensor:
    """``(H, W, K)``: the row of ``direction_Bs`` that route k adds to B at each position.

    The code of step t is the direction of the move that reached the t-th position (0 start, 1 right, 2 left, 3 up,
    4 down; a reverse route gets the opposite codes). It is placed where step t reads B: at the route's position, or
    at its raster position with ``params_at='step'``. Cached per grid and device; built as plain ops of the map's
    (possibly symbolic) size when compiled or exported.
    """
    if tracing():
        return _direction_codes(routes, height, width, device)
    return _cached_direction_codes(routes, height, width, device)


def _direction_codes(routes: Tuple[Route, ...], height: int, width: int, device: torch.device) -> torch.Tensor:
    codes = []
    for route in routes:
        pos, reads = route_index(route, height, width, device)   # where step t goes, and where it reads B
        move = pos[1:] - pos[:-1]
        code = torch.where(move == width, 4, torch.where(move == -width, 3, torch.where(move == 1, 1, 2)))
        code = torch.cat([code.new_zeros(1), code])
        codes.append(torch.zeros_like(code).index_copy(0, reads, code))
    return torch.stack(codes, -1).view(height, width, len(routes))


@cached_constants()
def _cached_direction_codes(routes: Tuple[Route, ...], height: int, width: int, device: torch.device) -> torch.Tensor:
    return _direction_codes(routes, height, width, torch.device('cpu')).to(device)


class PlainMamba2D(ScanLayer):
    """The official ``PlainMamba2D`` mixer on a channel-last map ``(B, H, W, C)``; parameter names are the official.

    Args:
        dim: model width C.
        d_state: N, states per channel.
        expand: inner width E = expand * C.
        dt_rank: rank of the Δ projection; 'auto' = ceil(C / 16).
        conv_size: depthwise conv kernel (odd).
        conv_bias: bias in the depthwise conv.
        bias: bias in ``in_proj`` / ``out_proj``.
        params_at: 'step' (official) or 'route' (paper): where the scans read Δ, B and C (module docstring).
        dt_bias_twice: add the Δ bias twice (official) or once.
    """

    def __init__(
            self,
            dim: int,
            d_state: int = 16,
            expand: int = 2,
            dt_rank: Union[int, str] = 'auto',
            conv_size: int = 7,
            conv_bias: bool = True,
            bias: bool = True,
            params_at: str = 'step',
            dt_bias_twice: bool = True,
    ):
        super().__init__()
        if params_at not in _PARAMS_AT:
            raise ValueError(f"params_at must be 'step' (official) or 'route' (paper), got {params_at!r}")
        if conv_size % 2 != 1:
            raise ValueError(f'conv_size must be odd, got {conv_size}')
        self.d_inner = d_inner = int(expand * dim)
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16) if dt_rank == 'auto' else int(dt_rank)
        self.dt_bias_twice = dt_bias_twice
        self.routes = snake_routes(params_at)

        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=bias)
        self.conv2d = nn.Conv2d(d_inner, d_inner, conv_size, padding=conv_size // 2, groups=d_inner, bias=conv_bias)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        dt_std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -dt_std, dt_std)
        with torch.no_grad():
            self.dt_proj.bias.copy_(init_dt_bias(d_inner))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, dim, bias=bias)
        self.direction_Bs = nn.Parameter(torch.zeros(5, d_state))
        trunc_normal_(self.direction_Bs, std=.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        K, E, R, N = len(self.routes), self.d_inner, self.dt_rank, self.d_state
        x, z = self.in_proj(x).chunk(2, dim=-1)
        u = F.silu(self.conv2d(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
        dt, B, C = F.linear(u, self.x_proj.weight.to(u.dtype)).split([R, N, N], dim=-1)
        bias = full_precision(self.dt_proj.bias)
        delta = F.linear(dt, self.dt_proj.weight.to(u.dtype), bias.to(u.dtype) if self.dt_bias_twice else None)
        # The four scans share x, Δ, A, C and D; route k reads block k of the per-route tensors (Δ and C expanded:
        # one copy in memory and in what the backward saves).
        codes = direction_codes(self.routes, u.shape[1], u.shape[2], u.device)
        B = B.unsqueeze(-2) + self.direction_Bs[codes].to(B.dtype)                   # (B, H, W, K, N)
        # cast before expanding: a cast of an expanded tensor copies it K times
        delta, C = (t.to(u.dtype).unsqueeze(-2).expand(-1, -1, -1, K, -1) for t in (delta, C))
        A = -torch.exp(full_precision(self.A_log)).repeat(K, 1)
        y = selective_scan(
            u.contiguous(), delta, A, B.to(u.dtype).contiguous(), C, full_precision(self.D).repeat(K), bias.repeat(K),
            routes=self.routes, merge='sum', delta_softplus=True, out_channels=E, out_dtype=scan_out_dtype(u),
        )
        y = y * F.silu(z.to(y.dtype))
        return self.out_proj(y.to(x.dtype))


class PlainMambaLayer(nn.Module):
    """``x + drop_path(mixer(LN(x)))`` on a channel-last map, then (``with_dwconv``) depthwise 3x3 conv + BN + GELU
    without a residual, as the official L1's first layer."""

    def __init__(self, dim: int, drop_path: float = 0., with_dwconv: bool = False, norm_eps: float = 1e-5,
                 **mixer_kwargs):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mamba = PlainMamba2D(dim, **mixer_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.dw = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False), nn.BatchNorm2d(dim), nn.GELU(),
        ) if with_dwconv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.mamba(norm_to(self.norm, x)))   # the norm written in in_proj's dtype
        if self.dw is not None:
            x = self.dw(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x


@register_notrace_function
def pad_to_stride(x: torch.Tensor, stride: int) -> torch.Tensor:
    # mmcv's AdaptivePadding('corner') for kernel == stride: pad bottom / right up to a multiple of the stride
    height, width = x.shape[-2:]
    # (rounded up to the stride) minus the size: floor divisions, which torch.compile's dynamic shapes handle
    return F.pad(x, (0, (width + stride - 1) // stride * stride - width, 0,
                     (height + stride - 1) // stride * stride - height))


class ConvPatchEmbed(nn.Module):
    """The official convolutional tokenizer: stride 2, then ``patch_size // 2``; a map ``(B, H, W, C)`` out."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 192,
                 num_convs: int = 1, hidden: int = 64):
        super().__init__()
        if patch_size % 2 or patch_size < 2:
            raise ValueError(f'patch_size must be even, got {patch_size}')
        self.patch_size = self.stride = patch_size
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, hidden, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(True))
        convs: List[nn.Module] = []
        for _ in range(num_convs):
            convs += [nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(True)]
        self.convs = nn.Sequential(*convs) if convs else nn.Identity()
        self.projection = nn.Conv2d(hidden, embed_dim, patch_size // 2, stride=patch_size // 2)
        # the grid the position embedding is trained for (the official computes it from img_size // 2)
        self.grid_size = tuple(-(-(img_size // 2) // (patch_size // 2)) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last convolutions: the tokens come out as a contiguous NHWC map (from an NCHW one every block
        # would run on NCHW memory behind an NHWC view: a copy before each norm, adds of mixed layouts)
        x = self.convs(self.stem(x.contiguous(memory_format=torch.channels_last)))
        x = self.projection(pad_to_stride(x, self.patch_size // 2))
        return x.permute(0, 2, 3, 1)


@register_notrace_function
def resize_pos_embed(pos_embed: torch.Tensor, old_grid: Tuple[int, int], height: int, width: int) -> torch.Tensor:
    """``(1, H, W, C)``: the position embedding of ``old_grid`` as a map, bicubic-resized to ``height x width`` when
    they differ (mmcls ``resize_pos_embed``; in the embedding's own dtype, so float64 stays exact)."""
    grid = pos_embed.reshape(1, old_grid[0], old_grid[1], -1).permute(0, 3, 1, 2)
    # an exported graph resizes always (its size may be symbolic); at the same size the bicubic resize is exact
    if exporting() or (height, width) != tuple(old_grid):
        grid = F.interpolate(grid, size=(height, width), mode='bicubic', align_corners=False)
    return grid.permute(0, 2, 3, 1)


class PlainMamba(nn.Module):
    """PlainMamba backbone and classifier. ``forward_features`` returns the tokens ``(B, H*W, C)``.

    Args:
        img_size: training input size (sizes the position embedding; other sizes resize it).
        patch_size: total stride of the tokenizer.
        in_chans: input image channels.
        num_classes: classifier outputs (0 for none).
        global_pool: 'avg' (released), 'max' or '' over the tokens.
        embed_dim: model width C.
        depth: number of blocks.
        num_convs_patch_embed: 3x3 convs in the tokenizer.
        dwconv_layers: blocks followed by the depthwise conv (L1: block 0).
        d_state: SSM states per channel.
        expand: mixer inner width over C.
        dt_rank: rank of the Δ projection ('auto' = ceil(C / 16)).
        conv_size: the mixer's depthwise conv size.
        conv_bias: bias in that conv.
        bias: bias in the mixer's in / out projections.
        pos_embed: learned absolute position embedding.
        norm_eps: epsilon of the final LayerNorm (the blocks' LayerNorms use 1e-5, as officially).
        params_at: 'step' (official) or 'route' (paper); see the module docstring.
        dt_bias_twice: add the Δ bias twice (official) or once.
        drop_rate: dropout after the position embedding.
        drop_path_rate: stochastic depth, linearly increasing over blocks.
    """

    output_fmt = 'NLC'  # forward_features returns tokens

    def __init__(
            self,
            img_size: int = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 192,
            depth: int = 24,
            num_convs_patch_embed: int = 1,
            dwconv_layers: Sequence[int] = (),
            d_state: int = 16,
            expand: int = 2,
            dt_rank: Union[int, str] = 'auto',
            conv_size: int = 7,
            conv_bias: bool = True,
            bias: bool = True,
            pos_embed: bool = True,
            norm_eps: float = 1e-6,
            params_at: str = 'step',
            dt_bias_twice: bool = True,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
    ):
        super().__init__()
        if global_pool not in ('avg', 'max', ''):
            raise ValueError(f"global_pool must be 'avg', 'max' or '', got {global_pool!r}")
        bad = [i for i in dwconv_layers if not 0 <= i < depth]
        if bad:
            raise ValueError(f'dwconv_layers must index the {depth} blocks, got {list(dwconv_layers)}')
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 0
        self.grad_checkpointing = False

        self.patch_embed = ConvPatchEmbed(img_size, patch_size, in_chans, embed_dim, num_convs_patch_embed)
        grid = self.patch_embed.grid_size
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], embed_dim)) if pos_embed else None
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth, device='cpu').tolist()
        self.blocks = nn.Sequential(*[
            PlainMambaLayer(embed_dim, drop_path=dpr[i], with_dwconv=i in dwconv_layers, d_state=d_state,
                            expand=expand, dt_rank=dt_rank, conv_size=conv_size, conv_bias=conv_bias, bias=bias,
                            params_at=params_at, dt_bias_twice=dt_bias_twice)
            for i in range(depth)])
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size, module=f'blocks.{i}') for i in range(depth)]
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self):
        # The official ImageClassifier's init_cfg: every Linear trunc-normal(0.02) with zero bias (Δ's projection
        # included), LayerNorms 1 / 0; the position embedding trunc-normal(0.02).
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=.02)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        # as the official paramwise_cfg: position embedding, A (as log), D and the direction table
        return {n for n, _ in self.named_parameters()
                if n == 'pos_embed' or n.endswith(('.A_log', '.D', '.direction_Bs'))}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^pos_embed|^patch_embed', blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        if global_pool is not None:
            if global_pool not in ('avg', 'max', ''):
                raise ValueError(f"global_pool must be 'avg', 'max' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def load_pretrained(self, checkpoint_path: str):
        """Load an official (or our own) checkpoint file, converting it; used by ``pretrained=True``."""
        # mmcv runner checkpoints: weights under 'state_dict' (also 'meta', 'optimizer')
        state_dict = extract_state_dict(load_checkpoint_file(checkpoint_path), ('state_dict', 'model'),
                                        source=str(checkpoint_path))
        load_converted(self, state_dict, checkpoint_filter_fn, source=str(checkpoint_path), head_prefix='head.',
                       first_conv='patch_embed.stem.0')

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens as a channel-last map ``(B, H, W, C)`` with the position embedding added."""
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + resize_pos_embed(self.pos_embed, self.patch_embed.grid_size, x.shape[1], x.shape[2]).to(x.dtype)
        return self.pos_drop(x)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Block outputs as maps at the tokenizer's stride, and the final features (normed tokens).

        Args:
            indices: last n blocks if int, all if None, else the block indices to return.
            norm: apply the final norm to the returned block outputs.
            stop_early: stop after the last requested block.
            output_fmt: 'NCHW' or 'NHWC'.
        """
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        blocks = self.blocks[:max_index + 1] if stop_early and not torch.jit.is_scripting() else self.blocks
        x = self._embed(x)
        intermediates = []
        for i, block in enumerate(blocks):
            x = block(x)
            if i in take_indices:
                y = self.norm(x) if norm else x
                intermediates.append(y.permute(0, 3, 1, 2).contiguous() if output_fmt == 'NCHW' else y)
        if intermediates_only:
            return intermediates
        return self.norm(x).flatten(1, 2), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the blocks (and norm / head) that the requested intermediates do not need."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        self.feature_info = self.feature_info[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normed tokens ``(B, H*W, C)``, row-major."""
        x = self._embed(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x).flatten(1, 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x.mean(1)
        elif self.global_pool == 'max':
            x = x.amax(1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# Official state-dict names → ours (the ImageClassifier's 'backbone.' prefix is stripped first).
_OFFICIAL_RENAMES = (
    (r'^layers\.(\d+)\.', r'blocks.\1.'),
    (r'^ln1\.', 'norm.'),
    (r'^head\.fc\.', 'head.'),
)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: PlainMamba) -> Dict[str, torch.Tensor]:
    """Convert an official PlainMamba state dict (mmcls ``ImageClassifier``: ``backbone.*``, ``head.fc.*``; or a
    backbone-only one) to this module tree. EMA copies (``ema_*`` buffers of the official EMA hook) are dropped; our
    own state dicts pass through unchanged. A position embedding of another grid is resized."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith('ema_'):
            continue
        key = key[len('backbone.'):] if key.startswith('backbone.') else key
        for pattern, repl in _OFFICIAL_RENAMES:
            key, n = re.subn(pattern, repl, key)
            if n:
                break
        out[key] = value
    pos = out.get('pos_embed')
    if pos is not None and model.pos_embed is not None and pos.shape != model.pos_embed.shape \
            and pos.device.type != 'meta':
        side = math.isqrt(pos.shape[1])
        if side * side != pos.shape[1]:
            raise ValueError(f'pos_embed of the checkpoint has {pos.shape[1]} slots, not a square grid')
        out['pos_embed'] = resize_pos_embed(pos, (side, side), *model.patch_embed.grid_size).flatten(1, 2)
    return out


def _create_plainmamba(variant: str, pretrained: bool = False, **kwargs) -> PlainMamba:
    load_through_model(kwargs)  # official files need the safe loader and the conversion
    feature_cfg = dict(out_indices=kwargs.pop('out_indices', (0, 1, 2, 3)), feature_cls=VimFeaturePyramid)
    for key in ('block_indices', 'reductions'):   # e.g. reductions=(16,) * 4: the official seg backbone's maps
        if key in kwargs:
            feature_cfg[key] = kwargs.pop(key)
    return build_model_with_cfg(
        PlainMamba, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=feature_cfg,
        **kwargs,
    )


# --- from_official: the official MMClassification 0.x model config, mapped to ours ----------------------------

_ARCHS = {  # the official arch_zoo
    'L1': dict(embed_dim=192, depth=24, num_convs_patch_embed=1, dwconv_layers=(0,)),
    'L2': dict(embed_dim=384, depth=24, num_convs_patch_embed=2, dwconv_layers=()),
    'L3': dict(embed_dim=448, depth=36, num_convs_patch_embed=2, dwconv_layers=()),
}
_MAMBA_REQUIRED = dict(dt_init='random', init_layer_scale=None)   # options no release changes (init only / absent)


def _backbone_args(backbone: Dict[str, Any]) -> Dict[str, Any]:
    kw = dict(backbone)
    kind = kw.pop('type', 'PlainMamba')
    if kind != 'PlainMamba':
        raise ValueError(f"backbone type must be 'PlainMamba', got {kind!r}")
    arch = kw.pop('arch', None)
    args: Dict[str, Any] = dict(embed_dim=192, depth=20, num_convs_patch_embed=1, dwconv_layers=())  # official defaults
    layer_cfgs = kw.pop('layer_cfgs', {})
    for key, ours in (('embed_dims', 'embed_dim'), ('num_layers', 'depth'),
                      ('num_convs_patch_embed', 'num_convs_patch_embed'), ('layers_with_dwconv', 'dwconv_layers'),
                      ('patch_size', 'patch_size')):
        if key in kw:
            args[ours] = kw.pop(key)
    if arch is not None:   # as officially, the arch overrides the explicit fields (and the layer config)
        if arch not in _ARCHS:
            raise ValueError(f'arch must be one of {sorted(_ARCHS)} or None, got {arch!r}')
        args.update(_ARCHS[arch], patch_size=16)
        layer_cfgs = dict(use_rms_norm=False, mamba_cfg=dict(d_state=16, expand=2, conv_size=7, conv_bias=True,
                                                             bias=True))
    args['dwconv_layers'] = tuple(args['dwconv_layers'])
    if layer_cfgs.get('use_rms_norm', False):
        raise ValueError('use_rms_norm=True is not supported (no released PlainMamba uses it)')
    mamba = dict(layer_cfgs.get('mamba_cfg', {}))
    for flag, expected in _MAMBA_REQUIRED.items():
        value = mamba.pop(flag, expected)
        if value != expected:
            raise ValueError(f'mamba_cfg {flag}={value!r} is not supported (the released models use {expected!r})')
    for ignored in ('default_hw_shape', 'dt_min', 'dt_max', 'dt_scale', 'dt_init_floor'):  # caches and init only
        mamba.pop(ignored, None)
    unknown = sorted(set(mamba) - {'d_state', 'expand', 'dt_rank', 'conv_size', 'conv_bias', 'bias'})
    if unknown:
        raise ValueError(f'unknown mamba_cfg arguments: {unknown}')
    args.update(mamba)
    if kw.pop('out_indices', -1) not in (-1, [-1], (-1,)):
        raise ValueError('out_indices other than -1 is not supported (use features_only / forward_intermediates)')
    if not kw.pop('final_norm', True):
        raise ValueError('final_norm=False is not supported (every released classifier has the final norm)')
    if kw.pop('interpolate_mode', 'bicubic') != 'bicubic':
        raise ValueError("interpolate_mode must be 'bicubic' (the released models')")
    norm_cfg = kw.pop('norm_cfg', dict(type='LN', eps=1e-6))
    if norm_cfg.get('type') != 'LN':
        raise ValueError(f"norm_cfg type must be 'LN', got {norm_cfg.get('type')!r}")
    args['norm_eps'] = norm_cfg.get('eps', 1e-5)
    for ignored in ('init_cfg', 'test_cfg', 'convert_syncbn', 'freeze_patch_embed'):
        kw.pop(ignored, None)
    renames = dict(img_size='img_size', in_channels='in_chans', with_pos_embed='pos_embed', drop_rate='drop_rate',
                   drop_path_rate='drop_path_rate')
    unknown = sorted(set(kw) - set(renames))
    if unknown:
        raise ValueError(f'unknown PlainMamba backbone arguments: {unknown}')
    args.update({renames[k]: v for k, v in kw.items()})
    return args


def from_official(checkpoint: Optional[str] = None, **official_kwargs) -> PlainMamba:
    """The PlainMamba equal to the official ``mmcls.models.build_classifier(cfg)`` for the MMClassification 0.x model
    config ``cfg`` (keys ``type``, ``backbone``, ``neck``, ``head``; ``init_cfg`` / ``train_cfg`` are training
    settings and ignored), optionally loaded from an official file. Options the released models do not use raise a
    ValueError naming them."""
    kw = dict(official_kwargs)
    kind = kw.pop('type', 'ImageClassifier')
    if kind != 'ImageClassifier':
        raise ValueError(f"type must be 'ImageClassifier', got {kind!r}")
    args = _backbone_args(kw.pop('backbone', {}))
    neck = kw.pop('neck', dict(type='CustomAveragePooling'))
    if (neck or {}).get('type') != 'CustomAveragePooling':
        raise ValueError(f"neck must be CustomAveragePooling (token average), got {neck!r}")
    head = dict(kw.pop('head', {}) or {})
    if head:
        if head.get('type') != 'LinearClsHead':
            raise ValueError(f"head type must be 'LinearClsHead', got {head.get('type')!r}")
        if head.get('in_channels', args['embed_dim']) != args['embed_dim']:
            raise ValueError(f"head in_channels {head['in_channels']} differ from the width {args['embed_dim']}")
    args['num_classes'] = head.get('num_classes', 0)
    for ignored in ('init_cfg', 'train_cfg', 'pretrained'):
        kw.pop(ignored, None)
    if kw:
        raise ValueError(f'unknown ImageClassifier arguments: {sorted(kw)}')
    model = PlainMamba(**args)
    if checkpoint is not None:
        model.load_pretrained(checkpoint)
    return model


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return {
        'url': url, 'custom_load': True,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None,
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'fixed_input_size': False,
        'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225),
        'first_conv': 'patch_embed.stem.0', 'classifier': 'head',
        'license': 'apache-2.0', 'origin_url': 'https://github.com/ChenhongyiYang/PlainMamba',
        'paper_ids': 'arXiv:2403.17695',
        'paper_name': 'PlainMamba: Improving Non-Hierarchical Mamba in Visual Recognition',
        **kwargs,
    }


_HF = 'https://huggingface.co/ChenhongyiYang/PlainMamba/resolve/main/'

default_cfgs = generate_default_cfgs({
    'plainmamba_l1.in1k': _cfg(_HF + 'l1.pth'),
    'plainmamba_l2.in1k': _cfg(_HF + 'l2.pth'),
    'plainmamba_l3.in1k': _cfg(_HF + 'l3.pth'),
    'test_plainmamba.untrained': _cfg(input_size=(3, 64, 64)),
})


@register_model
def plainmamba_l1(pretrained: bool = False, **kwargs) -> PlainMamba:
    """PlainMamba-L1 (7.4M backbone + head), official arch 'L1'."""
    model_args = dict(**_ARCHS['L1'], drop_path_rate=0.2)
    return _create_plainmamba('plainmamba_l1', pretrained, **dict(model_args, **kwargs))


@register_model
def plainmamba_l2(pretrained: bool = False, **kwargs) -> PlainMamba:
    """PlainMamba-L2 (26.1M), official arch 'L2'."""
    model_args = dict(**_ARCHS['L2'], drop_path_rate=0.2)
    return _create_plainmamba('plainmamba_l2', pretrained, **dict(model_args, **kwargs))


@register_model
def plainmamba_l3(pretrained: bool = False, **kwargs) -> PlainMamba:
    """PlainMamba-L3 (51.0M), official arch 'L3'."""
    model_args = dict(**_ARCHS['L3'], drop_path_rate=0.4)
    return _create_plainmamba('plainmamba_l3', pretrained, **dict(model_args, **kwargs))


@register_model
def test_plainmamba(pretrained: bool = False, **kwargs) -> PlainMamba:
    """A tiny PlainMamba for tests and demos (L1 layout)."""
    model_args = dict(img_size=64, embed_dim=32, depth=4, num_convs_patch_embed=1, dwconv_layers=(0,), d_state=4)
    return _create_plainmamba('test_plainmamba', pretrained, **dict(model_args, **kwargs))
