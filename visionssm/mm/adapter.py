"""ViT-Adapter around PlainMamba: the official PlainMamba detection backbone ("PlainMamba-Adapter").

ViT-Adapter: "Vision Transformer Adapter for Dense Predictions", Chen, Duan, Wang, He, Lu, Dai, Qiao, ICLR 2023 —
https://arxiv.org/abs/2205.08534; code https://github.com/czczup/ViT-Adapter (Apache-2.0,
``detection/mmdet_custom/models/backbones/adapter_modules.py``, multi-scale deformable attention from Deformable
DETR, ``detection/ops``). Its use with PlainMamba: https://github.com/ChenhongyiYang/PlainMamba (Apache-2.0), read at
commit 0a3aae7e (``downstream/mmdetection/mmdet/models/backbones/plain_mamba_adapter.py`` and
``plain_mamba_det_configs/``).

A plain backbone has one map, at stride 16. The adapter gives it a pyramid at strides 4, 8, 16, 32 of its width C:

* a spatial prior module (SPM): a small CNN on the image (three 3x3 convs and a max-pool to stride 4, then three
  stride-2 convs), each level projected to C by a 1x1 conv. The stride 8 / 16 / 32 maps, plus a learned embedding
  per level, are flattened into one token sequence ``c``;
* the backbone's blocks in groups (``interaction_indexes``). Before each group an injector adds to the backbone's
  tokens what they read from ``c`` (multi-scale deformable attention, three levels), scaled by a learned ``gamma``
  that starts at zero, so the pretrained backbone starts undisturbed. After each group an extractor updates ``c``
  from the backbone's tokens (deformable attention over the one stride-16 map), then a ConvFFN (linear, depthwise
  3x3 on each level's map, GELU, linear); the last group has two more extractors;
* the outputs: ``c`` cut back into its stride 8 / 16 / 32 maps, and at stride 4 the SPM's stride-4 map plus a 2x2
  transposed conv of the stride-8 one; each level plus the backbone's last map bilinearly resized to it.

The output norms (officially SyncBatchNorms) are ``VisionSSMBackbone``'s ``norm{i}``. Module names follow the
official ones. The deformable-attention kernel is mmcv's: CUDA on CUDA tensors, its PyTorch version (``grid_sample``)
elsewhere, in float32 (as officially). Only the levels asked for are computed: without level 0 the stride-4
branch (``spm.fc1``, ``up``) is not built.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.ops.multi_scale_deform_attn import MultiScaleDeformableAttnFunction, multi_scale_deformable_attn_pytorch
from timm.layers import DropPath, trunc_normal_
from timm.models import checkpoint_seq
from timm.models._features import FeatureInfo

from ..models.plainmamba import PlainMamba

__all__ = ['ViTAdapter', 'MSDeformAttn', 'SpatialPriorModule', 'InteractionBlock']

# (reference points, spatial shapes, level start indices) of one deformable attention: what its queries sample
Geometry = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _geometry(query_shapes: Sequence[Tuple[int, int]], value_shapes: Sequence[Tuple[int, int]],
              device: torch.device) -> Geometry:
    """Reference points at the centres of the query maps' cells, normalized to [0, 1] (x, y), ``(1, Lq, 1, 2)``;
    the value maps' sizes ``(L, 2)`` and where each starts in the flattened sequence ``(L,)``."""
    points = []
    for h, w in query_shapes:
        y = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
        x = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
        points.append(torch.stack(torch.meshgrid(x, y, indexing='xy'), -1).reshape(-1, 2))
    shapes = torch.as_tensor(value_shapes, dtype=torch.long, device=device)
    starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    return torch.cat(points)[None, :, None], shapes, starts


class MSDeformAttn(nn.Module):
    """Deformable DETR's multi-scale deformable attention (``MSDeformAttn``, with ViT-Adapter's value ``ratio``).

    Each query samples ``n_points`` points per head and level around its reference point (offsets predicted from
    the query, in cells of each level) and averages them with softmax weights over levels and points.
    """

    def __init__(self, d_model: int, n_levels: int, n_heads: int, n_points: int, ratio: float = 1.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f'the width {d_model} must be divisible by the number of heads {n_heads}')
        value_dim = int(d_model * ratio)
        if value_dim % n_heads:
            raise ValueError(f'the value width {value_dim} (width x ratio) must be divisible by the heads {n_heads}')
        self.n_levels, self.n_heads, self.n_points = n_levels, n_heads, n_points
        self.im2col_step = 64
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, value_dim)
        self.output_proj = nn.Linear(value_dim, d_model)
        self.reset_parameters()

    def reset_parameters(self):
        # Initial offsets: head k looks along the direction 2*pi*k/heads (scaled to the unit square's edge),
        # point p at distance p + 1 cells; all points weighted equally.
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.n_heads, dtype=torch.float32) * (2 * math.pi / self.n_heads)
        direction = torch.stack([theta.cos(), theta.sin()], -1)
        direction = direction / direction.abs().amax(-1, keepdim=True)
        distance = torch.arange(1, self.n_points + 1, dtype=torch.float32)
        grid = direction[:, None, None, :] * distance[None, None, :, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.expand(-1, self.n_levels, -1, -1).reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, query: torch.Tensor, value: torch.Tensor, geometry: Geometry) -> torch.Tensor:
        """``query (B, Lq, C)`` samples ``value (B, Lv, C)``, the flattened maps of ``geometry``; ``(B, Lq, C)``."""
        reference_points, shapes, starts = geometry
        batch, num_queries, _ = query.shape
        value = self.value_proj(value).unflatten(-1, (self.n_heads, -1))
        offsets = self.sampling_offsets(query).view(
            batch, num_queries, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(batch, num_queries, self.n_heads, -1).softmax(-1).view(
            batch, num_queries, self.n_heads, self.n_levels, self.n_points)
        # offsets are in cells of each level: divide by its (width, height)
        locations = reference_points[:, :, None, :, None, :] + offsets / shapes.flip(-1)[None, None, None, :, None]
        # The sampling in float32 (as officially), whatever the autocast: low-precision locations would be off
        # by pixels on large maps.
        with torch.autocast(value.device.type, enabled=False):
            value, locations, weights = value.float(), locations.float(), weights.float()
            if value.is_cuda:
                out = MultiScaleDeformableAttnFunction.apply(value, shapes, starts, locations, weights,
                                                             self.im2col_step)
            else:
                out = multi_scale_deformable_attn_pytorch(value, shapes, locations, weights)
        return self.output_proj(out.to(query.dtype))


class DWConv(nn.Module):
    """A depthwise 3x3 conv applied to each level's map of a multi-level token sequence (weights shared)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, shapes: Sequence[Tuple[int, int]]) -> torch.Tensor:
        levels = x.split([h * w for h, w in shapes], dim=1)
        return torch.cat([self.dwconv(t.transpose(1, 2).unflatten(-1, s)).flatten(2).transpose(1, 2)
                          for t, s in zip(levels, shapes)], dim=1)


class ConvFFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, shapes: Sequence[Tuple[int, int]]) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), shapes)))


class Injector(nn.Module):
    """``x + gamma * attn(LN(x), LN(c))``: the backbone's tokens read the spatial prior (three levels)."""

    def __init__(self, dim: int, num_heads: int, n_points: int, n_levels: int, deform_ratio: float,
                 init_values: float):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=1e-6)
        self.feat_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MSDeformAttn(dim, n_levels, num_heads, n_points, deform_ratio)
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, query: torch.Tensor, feat: torch.Tensor, geometry: Geometry) -> torch.Tensor:
        return query + self.gamma * self.attn(self.query_norm(query), self.feat_norm(feat), geometry)


class Extractor(nn.Module):
    """``c + attn(LN(c), LN(x))``, then ``+ drop_path(ConvFFN(LN(c)))``: the prior reads the backbone's tokens."""

    def __init__(self, dim: int, num_heads: int, n_points: int, deform_ratio: float, cffn_ratio: float,
                 drop_path: float):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=1e-6)
        self.feat_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MSDeformAttn(dim, 1, num_heads, n_points, deform_ratio)
        self.ffn = ConvFFN(dim, int(dim * cffn_ratio))
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-6)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, query: torch.Tensor, feat: torch.Tensor, geometry: Geometry,
                shapes: Sequence[Tuple[int, int]]) -> torch.Tensor:
        query = query + self.attn(self.query_norm(query), self.feat_norm(feat), geometry)
        return query + self.drop_path(self.ffn(self.ffn_norm(query), shapes))


class InteractionBlock(nn.Module):
    """Injector, a group of backbone blocks, extractor (and, in the last block, two extra extractors)."""

    def __init__(self, dim: int, num_heads: int, n_points: int, deform_ratio: float, cffn_ratio: float,
                 init_values: float, drop_path: float, extra_extractor: bool):
        super().__init__()
        self.injector = Injector(dim, num_heads, n_points, 3, deform_ratio, init_values)
        self.extractor = Extractor(dim, num_heads, n_points, deform_ratio, cffn_ratio, drop_path)
        self.extra_extractors = nn.Sequential(*[
            Extractor(dim, num_heads, n_points, deform_ratio, cffn_ratio, drop_path) for _ in range(2)
        ]) if extra_extractor else None

    def forward(self, x: torch.Tensor, c: torch.Tensor, blocks: nn.Sequential, inject: Geometry, extract: Geometry,
                shapes: Sequence[Tuple[int, int]], grad_checkpointing: bool = False) -> Tuple[torch.Tensor, ...]:
        """``x``: the backbone's map ``(B, H, W, C)``; ``c``: the prior's tokens, levels of ``shapes``."""
        x = self.injector(x.flatten(1, 2), c, inject).view(x.shape)
        x = checkpoint_seq(blocks, x) if grad_checkpointing else blocks(x)
        tokens = x.flatten(1, 2)
        for extractor in [self.extractor, *(self.extra_extractors or ())]:
            c = extractor(c, tokens, extract, shapes)
        return x, c


def _conv_bn_relu(cin: int, cout: int, stride: int) -> List[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SpatialPriorModule(nn.Module):
    """The convolutional stem of the adapter: maps at strides 4 (``None`` without ``with_stride4``), 8, 16, 32,
    projected to ``embed_dim``. (Officially SyncBatchNorms; convert them with mmengine's ``sync_bn='torch'``.)"""

    def __init__(self, inplanes: int = 64, embed_dim: int = 384, with_stride4: bool = True):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(3, inplanes, 2), *_conv_bn_relu(inplanes, inplanes, 1),
                                  *_conv_bn_relu(inplanes, inplanes, 1), nn.MaxPool2d(3, stride=2, padding=1))
        self.conv2 = nn.Sequential(*_conv_bn_relu(inplanes, 2 * inplanes, 2))
        self.conv3 = nn.Sequential(*_conv_bn_relu(2 * inplanes, 4 * inplanes, 2))
        self.conv4 = nn.Sequential(*_conv_bn_relu(4 * inplanes, 4 * inplanes, 2))
        self.fc1 = nn.Conv2d(inplanes, embed_dim, 1) if with_stride4 else None
        self.fc2 = nn.Conv2d(2 * inplanes, embed_dim, 1)
        self.fc3 = nn.Conv2d(4 * inplanes, embed_dim, 1)
        self.fc4 = nn.Conv2d(4 * inplanes, embed_dim, 1)

    def forward(self, x: torch.Tensor) -> Tuple[Optional[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        return (self.fc1(c1) if self.fc1 is not None else None), self.fc2(c2), self.fc3(c3), self.fc4(c4)


class ViTAdapter(nn.Module):
    """The adapter around a plain model: NCHW maps at the ``out_indices`` levels (0..3: strides 4, 8, 16, 32).

    Args:
        model: a PlainMamba with a stride-16 tokenizer; its final norm and head are removed.
        out_indices: the levels to return.
        interaction_indexes: ``[first, last]`` block of each interaction, in order, covering every block.
        conv_inplane: the SPM's width at stride 4 (x2 at 8, x4 at 16 and 32).
        n_points: sampling points per head and level.
        deform_num_heads: heads of the deformable attentions.
        cffn_ratio: hidden width of the ConvFFN over C.
        deform_ratio: value width of the deformable attentions over C.
        init_values: initial injector scale ``gamma``.
        drop_path: stochastic depth of every ConvFFN (officially the backbone's ``drop_path_rate``).
    """

    def __init__(
            self,
            model: nn.Module,
            out_indices: Sequence[int] = (0, 1, 2, 3),
            interaction_indexes: Sequence[Sequence[int]] = ((0, 5), (6, 11), (12, 17), (18, 23)),
            conv_inplane: int = 64,
            n_points: int = 4,
            deform_num_heads: int = 6,
            cffn_ratio: float = 0.25,
            deform_ratio: float = 1.0,
            init_values: float = 0.,
            drop_path: float = 0.,
    ):
        super().__init__()
        if not isinstance(model, PlainMamba):
            raise ValueError(f'the adapter is built for PlainMamba (a plain model whose blocks run on (B, H, W, C) '
                             f'maps), got {type(model).__name__}')
        if model.patch_embed.stride != 16:
            raise ValueError(f'the adapter works on stride-16 tokens, the model has stride {model.patch_embed.stride}')
        depth = len(model.blocks)
        groups = [tuple(int(i) for i in g) for g in interaction_indexes]
        expected_starts = [0] + [g[1] + 1 for g in groups[:-1]]
        if not groups or any(len(g) != 2 or g[0] > g[1] for g in groups) \
                or [g[0] for g in groups] != expected_starts or groups[-1][1] != depth - 1:
            raise ValueError(f'interaction_indexes must be consecutive [first, last] block ranges covering the '
                             f'{depth} blocks (e.g. [[0, 5], [6, 11], ...]), got {[list(g) for g in groups]}')
        self.out_indices = tuple(out_indices)
        model.prune_intermediate_layers(1, prune_norm=True, prune_head=True)  # all blocks; no final norm, no head
        self.model = model
        self.interaction_indexes = groups
        dim = model.embed_dim
        with_stride4 = 0 in self.out_indices

        self.level_embed = nn.Parameter(torch.zeros(3, dim))
        self.spm = SpatialPriorModule(conv_inplane, dim, with_stride4)
        self.interactions = nn.Sequential(*[
            InteractionBlock(dim, deform_num_heads, n_points, deform_ratio, cffn_ratio, init_values, drop_path,
                             extra_extractor=i == len(groups) - 1)
            for i in range(len(groups))])
        self.up = nn.ConvTranspose2d(dim, dim, 2, stride=2) if with_stride4 else None
        self.feature_info = FeatureInfo(
            [dict(num_chs=dim, reduction=4 * 2 ** i, module=f'level{i}') for i in self.out_indices],
            tuple(range(len(self.out_indices))))
        self._init_weights()

    def _init_weights(self):
        # The official initialization of the new parts: Linear trunc-normal(0.02), zero bias; convs normal with
        # std sqrt(2 / fan_out), zero bias; norms 1 / 0; then the deformable attentions' own; level embedding N(0, 1).
        for module in [m for m in (self.spm, self.interactions, self.up) if m is not None]:
            for m in module.modules():
                if isinstance(m, nn.Linear):
                    trunc_normal_(m.weight, std=.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                    fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                    nn.init.normal_(m.weight, std=math.sqrt(2.0 / fan_out))
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        for m in self.interactions.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, image: torch.Tensor) -> List[torch.Tensor]:
        height, width = image.shape[-2:]
        if height % 32 or width % 32:
            raise ValueError(f'the adapter needs an input size divisible by 32 (its levels go to stride 32), got '
                             f'{height}x{width}; pad it (mmdet: pad_size_divisor=32)')
        c1, *prior = self.spm(image)
        shapes = [tuple(p.shape[-2:]) for p in prior]                       # strides 8, 16, 32
        c = torch.cat([p.flatten(2).transpose(1, 2) + e for p, e in zip(prior, self.level_embed)], 1)

        x = self.model._embed(image)                                          # (B, H/16, W/16, C)
        grid = [tuple(x.shape[1:3])]
        inject = _geometry(grid, shapes, image.device)   # the backbone's tokens sample the three prior levels
        extract = _geometry(shapes, grid, image.device)  # the prior's tokens sample the backbone's map
        checkpointing = self.model.grad_checkpointing and self.training and not torch.jit.is_scripting()
        for (first, last), interaction in zip(self.interaction_indexes, self.interactions):
            x, c = interaction(x, c, self.model.blocks[first:last + 1], inject, extract, shapes, checkpointing)

        c2, c3, c4 = [t.transpose(1, 2).unflatten(-1, s)
                      for t, s in zip(c.split([h * w for h, w in shapes], 1), shapes)]
        x = x.permute(0, 3, 1, 2)
        levels = {1: c2, 2: c3, 3: c4}
        if self.up is not None:
            levels[0] = self.up(c2) + c1
        scales = {0: 4., 1: 2., 2: 1., 3: .5}
        return [levels[i] + (x if scales[i] == 1. else
                             F.interpolate(x, scale_factor=scales[i], mode='bilinear', align_corners=False))
                for i in self.out_indices]
