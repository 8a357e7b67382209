"""The timm model API shared by the four-stage families (VMamba, EfficientVMamba, Spatial-Mamba).

A subclass builds ``stem`` (NCHW image → channel-last map), ``stages`` (each with a ``grad_checkpointing`` flag and
its downsampling first, so stage outputs are the features at strides 4..32), ``norm`` (the final norm),
``head`` (a timm ``ClassifierHead`` on NHWC), ``feature_info``, ``num_classes``, and a ``load_pretrained`` that calls
``_load_checkpoint`` with its family's ``checkpoint_filter_fn``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.models._features import feature_take_indices

from ._checkpoint import extract_state_dict, load_checkpoint_file, load_converted

__all__ = ['HierarchicalBackbone']


class HierarchicalBackbone(nn.Module):
    """stem → stages → norm → head, channel-last inside; NCHW feature maps outside."""
    output_fmt = 'NHWC'  # forward_features' layout: timm reads the spatial and channel axes from it

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        # The SSM's A (as log) and D are not weights to shrink: decay would push A towards -1 and D towards 0.
        return {n for n, _ in self.named_parameters() if n.endswith(('.A_logs', '.Ds'))}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^norm', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    def _load_checkpoint(self, checkpoint_path: str, filter_fn: Callable, first_conv: str,
                         containers: Sequence[str] = ('model', 'state_dict')):
        """Load an official (or our own) checkpoint file through ``filter_fn``; for ``load_pretrained``."""
        state_dict = extract_state_dict(load_checkpoint_file(checkpoint_path), containers, source=str(checkpoint_path))
        load_converted(self, state_dict, filter_fn, source=str(checkpoint_path), first_conv=first_conv)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image → first-stage map ``(B, H/4, W/4, C)``."""
        return self.stem(x)

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

        Args:
            indices: last n stages if int, all if None, else the stage indices to return.
            norm: apply the final norm to the last stage's output when it is returned.
            stop_early: stop after the last requested stage.
            output_fmt: 'NCHW' or 'NHWC'.
        """
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last = len(self.stages) - 1
        stages = self.stages[:max_index + 1] if stop_early and not torch.jit.is_scripting() else self.stages
        intermediates = []
        x = self.embed(x)
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                y = self.norm(x) if norm and i == last else x
                intermediates.append(y.permute(0, 3, 1, 2).contiguous() if output_fmt == 'NCHW' else y)
        if intermediates_only:
            return intermediates
        if i == last:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages (and norm / head) that the requested intermediates do not need."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if prune_norm or max_index < len(self.feature_info) - 1:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normed last-stage map, channel-last ``(B, H/32, W/32, C)``."""
        return self.norm(self.stages(self.embed(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
