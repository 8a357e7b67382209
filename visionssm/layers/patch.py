"""Stems and downsampling layers of the hierarchical families. Channel-last in and out: ``(B, H, W, C)``."""
from __future__ import annotations

from typing import Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_notrace_function

from .cache import CastCachedConv2d

__all__ = ['PatchEmbed', 'ConvStem', 'PatchMerging', 'ConvDownsample', 'pad_to_even']


@register_notrace_function  # a size-dependent branch: a torch.fx leaf
def pad_to_even(x: torch.Tensor) -> torch.Tensor:
    """Zero-pad a channel-last map ``(B, H, W, C)`` at the bottom/right to even H and W (unchanged if they are)."""
    height, width = x.shape[1:3]
    if height % 2 or width % 2:
        x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
    return x


def _conv_nhwc(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` convolution, then a norm. Takes NCHW images; remainder pixels are dropped
    (floor), as in the original."""

    def __init__(self, in_chans: int = 3, dim: int = 96, patch_size: int = 4,
                 norm_layer: Type[nn.Module] = nn.LayerNorm):
        super().__init__()
        self.proj = CastCachedConv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvStem(nn.Module):
    """Two overlapping stride-2 3x3 convolutions (VMamba v2's stem): conv → norm → GELU → conv → norm.
    Takes NCHW images; odd sizes round up as in any padded stride-2 conv."""

    def __init__(self, in_chans: int = 3, dim: int = 96, norm_layer: Type[nn.Module] = nn.LayerNorm,
                 act_layer: Type[nn.Module] = nn.GELU):
        super().__init__()
        self.conv1 = CastCachedConv2d(in_chans, dim // 2, kernel_size=3, stride=2, padding=1)
        self.norm1 = norm_layer(dim // 2)
        self.act = act_layer()
        self.conv2 = CastCachedConv2d(dim // 2, dim, kernel_size=3, stride=2, padding=1)
        self.norm2 = norm_layer(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.conv1(x).permute(0, 2, 3, 1)))
        return self.norm2(_conv_nhwc(self.conv2, x))


class PatchMerging(nn.Module):
    """Swin's 2x2 merge: gather each 2x2 neighbourhood into 4C (odd sizes zero-padded at the bottom/right),
    norm, then a linear reduction to ``out_dim``."""

    def __init__(self, dim: int, out_dim: int, norm_layer: Type[nn.Module] = nn.LayerNorm):
        super().__init__()
        self.norm = norm_layer(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_to_even(x)
        # Channel order (top-left, bottom-left, top-right, bottom-right) is what the checkpoints were trained with.
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class ConvDownsample(nn.Module):
    """Stride-2 convolution, then a norm: 3x3 overlapping (VMamba v2's downsample, "v3" in the original) or
    2x2 (its "v2")."""

    def __init__(self, dim: int, out_dim: int, kernel_size: int = 3, norm_layer: Type[nn.Module] = nn.LayerNorm):
        super().__init__()
        self.conv = CastCachedConv2d(dim, out_dim, kernel_size=kernel_size, stride=2, padding=(kernel_size - 1) // 2)
        self.norm = norm_layer(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(_conv_nhwc(self.conv, x))
