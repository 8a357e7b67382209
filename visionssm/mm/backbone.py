"""One MMDetection / MMSegmentation backbone for every visionssm family.

``VisionSSMBackbone`` wraps a timm-registered visionssm model built with ``features_only`` (hierarchical families:
their stage outputs at strides 4..32; Vim: its simple feature pyramid), or a plain model inside a ViT-Adapter
(``adapter=dict(...)``: PlainMamba's official detection backbone, ``visionssm/mm/adapter.py``), and adds what dense
heads expect of a backbone, as mmdet's Swin and the official VMamba / EfficientVMamba / Spatial-Mamba detection
backbones do: a LayerNorm per output (``norm{i}``; the official ``outnorm{i}``; a BatchNorm after the adapter),
frozen stages, BatchNorm in eval mode, and ``init_cfg=dict(type='Pretrained', checkpoint=...)`` that reads official
classification checkpoints (converted by the family's ``checkpoint_filter_fn``, loaded with the safe loader) as well
as our own.

Configs of either toolbox name it ``type='visionssm.VisionSSMBackbone'``; the scope prefix makes mmengine import
``visionssm.registry`` and, through its ``locations``, this module. Neither mmdet nor mmseg is imported here.
"""
from __future__ import annotations

import difflib
import importlib
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union
from urllib.parse import parse_qs, urlparse

import timm
import torch
import torch.nn as nn
from mmengine.model import BaseModule
from mmengine.model.weight_init import initialize
from timm.layers import LayerNorm2d
from torch.nn.modules.batchnorm import _BatchNorm

from ..models import FAMILIES
from ..models._checkpoint import extract_state_dict, load_checkpoint_file, load_converted
from ..models.vim import VimFeaturePyramid
from ..registry import MODELS
from .compiled import CompiledSubmodules, compile_options
from .runner import load_local_checkpoint

__all__ = ['VisionSSMBackbone']

_PRETRAINED_KEYS = {'type', 'checkpoint', 'prefix', 'map_location'}


def _family_of(model: str) -> str:
    """The visionssm family module that registers the timm model ``model``; a ValueError naming close names if none."""
    arch = model.split('.', 1)[0]  # a pretrained tag ('.in1k') names weights, not an architecture
    for family in FAMILIES:
        if arch in timm.list_models(module=family):
            return family
    known = timm.list_models(module=list(FAMILIES))
    close = difflib.get_close_matches(arch, known, n=3)
    hint = f'; did you mean {", ".join(map(repr, close))}?' if close else f'; visionssm models: {", ".join(known)}'
    raise ValueError(f'unknown visionssm model {model!r}{hint}')


def _local_file(checkpoint: str) -> str:
    """A local path for ``checkpoint``, downloading an http(s) url once into timm's (torch hub's) cache."""
    if not checkpoint.startswith(('http://', 'https://')):
        return os.path.expanduser(checkpoint)
    from timm.models._hub import download_cached_file
    url = urlparse(checkpoint)
    filename = os.path.basename(url.path)
    file_id = parse_qs(url.query).get('id')
    if file_id:  # Google Drive links differ only in their query: name the cached file after the file id
        filename = f'{filename}_{file_id[0]}.pth'
    return download_cached_file((checkpoint, filename), progress=True)


def _read_checkpoint(path: str):
    """A checkpoint's contents, unpickled with nothing executed: mmengine's own checkpoints (numpy values and
    HistoryBuffers in ``meta`` / ``message_hub``) through the runner's allow-list, official release files (yacs,
    argparse objects) through the inert stand-ins of the model loader, which also names unreadable files."""
    if not path.endswith('.safetensors'):
        try:
            return load_local_checkpoint(path)
        except Exception:  # not an mmengine checkpoint: the other loader decides, with a clear error if need be
            pass
    return load_checkpoint_file(path)


@MODELS.register_module()
class VisionSSMBackbone(CompiledSubmodules, BaseModule):
    """A visionssm model as an mmdet / mmseg backbone: a tuple of NCHW maps, one per ``out_indices`` entry.

    Args:
        model: timm name of a visionssm model (``timm.list_models(module=visionssm.models.FAMILIES)``).
        out_indices: feature levels to return, 0..3 at strides 4, 8, 16, 32.
        frozen_stages: as mmdet's backbones: -1 freezes nothing, 0 the stem, ``i`` the stem and the first ``i``
            stages with their output norms. Frozen parts get ``requires_grad=False`` and stay in eval mode. For
            Vim the stem is the embeddings and stage ``i`` is what only pyramid level ``i`` adds: the blocks after
            the previous level's, and the level's own layers.
        norm_eval: keep every BatchNorm in eval mode (frozen statistics) while training.
        drop_path_rate: stochastic depth of the model; None keeps the variant's default.
        with_cp: gradient checkpointing in the model's stages (less memory, slower).
        pretrained: a checkpoint path or url; shorthand for ``init_cfg=dict(type='Pretrained', checkpoint=...)``
            (mmseg's ``EncoderDecoder(pretrained=...)`` sets it).
        init_cfg: mmengine init configs; ``dict(type='Pretrained', checkpoint=..., prefix=None)`` is handled here:
            see ``load_checkpoint``.
        adapter: build the model whole (not ``features_only``) inside ``ViTAdapter(model, out_indices, **adapter)``
            (``visionssm.mm.adapter``: PlainMamba's official detection backbone); its output norms are BatchNorms,
            as officially, and ``frozen_stages`` can freeze the tokenizer and position embedding (0) only.
        compile: ``torch.compile`` the model (not the output norms): True, or ``torch.compile``'s keyword arguments
            (at detection's changing input sizes Dynamo recompiles once, for dynamic sizes). The eager model's step
            is thousands of small launches, most of a detector's step at batch 2 on a GPU's host; parameters and
            checkpoints stay the eager model's (``visionssm.mm.compiled``).
        cuda_graph: replay the model's training forward and backward as CUDA graphs (``visionssm.GraphedModule``):
            the eager kernels without their host time, one capture per input size, up to two, further sizes eager:
            for segmentation's fixed crops, not detection's changing sizes. Not with ``compile`` or ``with_cp``.
        **model_kwargs: passed to ``timm.create_model`` (e.g. ``img_size`` for Vim, ``depths``).
    """

    def __init__(
            self,
            model: str = 'vmamba_tiny_s1l8',
            out_indices: Sequence[int] = (0, 1, 2, 3),
            frozen_stages: int = -1,
            norm_eval: bool = False,
            drop_path_rate: Optional[float] = None,
            with_cp: bool = False,
            pretrained: Optional[str] = None,
            init_cfg: Union[dict, List[dict], None] = None,
            adapter: Optional[dict] = None,
            compile: Union[bool, dict] = False,
            cuda_graph: bool = False,
            **model_kwargs,
    ):
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError('give the checkpoint as pretrained or as init_cfg, not both '
                                 f'(pretrained={pretrained!r}, init_cfg={init_cfg!r})')
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        super().__init__(init_cfg)
        self.family = _family_of(model)
        self.model_name = model
        if drop_path_rate is not None:
            model_kwargs['drop_path_rate'] = drop_path_rate
        self.model_kwargs = model_kwargs
        out_indices = tuple(out_indices)
        if not out_indices or any(not isinstance(i, int) or not 0 <= i <= 3 for i in out_indices) \
                or list(out_indices) != sorted(set(out_indices)):
            raise ValueError(f'out_indices must be increasing levels in 0..3 (strides 4..32), got {out_indices}')
        self.out_indices = out_indices
        self.with_adapter = adapter is not None
        if adapter is None:
            self.body = timm.create_model(model, pretrained=False, features_only=True, out_indices=out_indices,
                                          **model_kwargs)
        else:
            from .adapter import ViTAdapter  # needs mmcv's deformable-attention op
            self.body = ViTAdapter(timm.create_model(model, pretrained=False, **model_kwargs), out_indices, **adapter)
        # The official dense backbones' output norms: eps 1e-5, or the family's own (MambaVision: 1e-6); the
        # adapter's are (Sync)BatchNorms.
        out_norm_eps = getattr(importlib.import_module(f'visionssm.models.{self.family}'), 'OUT_NORM_EPS', 1e-5)
        for i, channels in zip(out_indices, self.body.feature_info.channels()):
            norm = LayerNorm2d(channels, eps=out_norm_eps) if adapter is None else nn.BatchNorm2d(channels)
            self.add_module(f'norm{i}', norm)
        if with_cp:
            self.body.model.set_grad_checkpointing(True)

        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self._stages = self._stage_parts()
        if not -1 <= frozen_stages < len(self._stages):
            raise ValueError(f'frozen_stages must be in -1..{len(self._stages) - 1} for {model} with out_indices '
                             f'{out_indices}, got {frozen_stages}')
        self._freeze_stages()
        self.compile_cfg = compile_options(compile)   # not self.compile: nn.Module.compile is a method
        if not isinstance(cuda_graph, bool):
            raise TypeError(f'cuda_graph must be True or False, got {cuda_graph!r}')
        if cuda_graph and (self.compile_cfg is not None or with_cp):
            raise ValueError('cuda_graph cannot be combined with ' + ('compile' if self.compile_cfg is not None else
                             'with_cp (checkpointing reads the RNG state on the host, which a capture forbids)'))
        self.cuda_graph = cuda_graph

    @property
    def channels(self) -> List[int]:
        """Channels of each output (the ``in_channels`` of a neck or decode head)."""
        return self.body.feature_info.channels()

    def _stage_parts(self) -> List[List[Union[nn.Module, nn.Parameter]]]:
        """The stem, then each stage: the modules and parameters that ``frozen_stages`` freezes, in order."""
        net = self.body.model
        if self.with_adapter:  # the stem only: the adapter's parts interleave with the blocks
            return [[net.patch_embed] + ([net.pos_embed] if net.pos_embed is not None else [])]
        if isinstance(self.body, VimFeaturePyramid):   # plain models (Vim, PlainMamba): embeddings, then blocks
            parts = [[net.patch_embed] + [p for p in (getattr(net, 'cls_token', None), net.pos_embed) if p is not None]]
            start = 0
            for level in range(4):
                if level not in self.out_indices:
                    parts.append([])
                    continue
                k = self.out_indices.index(level)
                end = self.body.block_indices[k] + 1
                parts.append([*net.blocks[start:end], self.body.fpn[k], getattr(self, f'norm{level}')])
                start = max(start, end)
            return parts
        parts = [[net.stem]]
        for i, stage in enumerate(net.stages):
            parts.append([stage] + ([getattr(self, f'norm{i}')] if i in self.out_indices else []))
        return parts

    def _freeze_stages(self):
        for part in self._stages[:self.frozen_stages + 1]:
            for item in part:
                params = [item] if isinstance(item, nn.Parameter) else list(item.parameters())
                if isinstance(item, nn.Module):
                    item.eval()
                for p in params:
                    p.requires_grad = False

    def train(self, mode: bool = True) -> 'VisionSSMBackbone':
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        # LayerNorm2d hands back a permuted view; heads and later copies are faster on contiguous NCHW.
        body = self.graphed('body') if self.cuda_graph else \
            self.body if self.compile_cfg is None else self.compiled('body', self.compile_cfg)
        return tuple(getattr(self, f'norm{i}')(f).contiguous() for i, f in zip(self.out_indices, body(x)))

    # --- weights ----------------------------------------------------------------------------------------------

    def init_weights(self):
        """Apply ``init_cfg``: other initializers through mmengine, then a ``Pretrained`` checkpoint here.

        mmengine's own ``PretrainedInit`` would neither convert official checkpoints nor load them safely.
        Without a checkpoint the model keeps its timm initialization.
        """
        if self._is_init:
            return
        cfgs = [] if self.init_cfg is None else [self.init_cfg] if isinstance(self.init_cfg, dict) else self.init_cfg
        pretrained = [c for c in cfgs if c.get('type') == 'Pretrained']
        initialize(self, [c for c in cfgs if c.get('type') != 'Pretrained'])
        if len(pretrained) > 1:
            raise ValueError(f'init_cfg holds {len(pretrained)} Pretrained entries; expected at most one')
        if pretrained:
            cfg = pretrained[0]
            unknown = sorted(set(cfg) - _PRETRAINED_KEYS)
            if unknown or not cfg.get('checkpoint'):
                raise ValueError(f'init_cfg Pretrained takes checkpoint (required) and prefix, got {cfg}')
            self.load_checkpoint(cfg['checkpoint'], prefix=cfg.get('prefix'))
        self._is_init = True

    def load_checkpoint(self, checkpoint: str, prefix: Optional[str] = None):
        """Load a checkpoint file or url into the backbone.

        Accepted: an official classification (or dense-backbone) checkpoint of the family, in any container the
        family's loader reads; a timm / visionssm state dict of the model; and a checkpoint of a whole visionssm
        detector, segmentor or classifier (weights under ``prefix``, by default ``backbone.`` when present). Parts
        the backbone does not have (classifier head, final norm, stages past the last output) are skipped; the
        output norms and Vim's pyramid layers keep their initialization unless the checkpoint has them.

        Raises:
            ValueError: the checkpoint does not fit the model (names the mismatched, missing or unexpected keys).
        """
        contents = _read_checkpoint(_local_file(checkpoint))
        state = extract_state_dict(contents, ('state_dict', 'model', 'model_ema'), source=checkpoint)
        prefix = prefix if prefix is not None else 'backbone.' if any(k.startswith('backbone.') for k in state) else ''
        if prefix:
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if not state:
                raise ValueError(f'{checkpoint} has no weights under the prefix {prefix!r}')
        if any(k.startswith('body.') for k in state):  # saved from this class
            load_converted(self, state, lambda sd, _: sd, source=checkpoint, head_prefix=None)
        else:
            self._load_model_state(state, checkpoint)

    def _load_model_state(self, state: Dict[str, torch.Tensor], source: str):
        """Load a classifier-layout state dict (official or ours) into the wrapped model, and output norms if any."""
        out_norms = {re.sub(r'^outnorm(\d+)\.', r'norm\1.', k): v for k, v in state.items() if k.startswith('outnorm')}
        state = {k: v for k, v in state.items() if not k.startswith('outnorm')}
        family = importlib.import_module(f'visionssm.models.{self.family}')
        with torch.device('meta'):  # the whole classifier, as the conversion's reference: shapes only, no memory
            reference = timm.create_model(self.model_name, pretrained=False, **self.model_kwargs)
        reference_keys = set(reference.state_dict())
        net = self.body.model
        own = set(net.state_dict())

        def convert(sd: Dict[str, torch.Tensor], _) -> Dict[str, torch.Tensor]:
            sd = family.checkpoint_filter_fn(sd, reference)
            # What features_only pruned (head, final norm, later stages) is in the classifier but not here.
            return {k: v for k, v in sd.items() if k in own or k not in reference_keys}

        load_converted(net, state, convert, source=source, head_prefix=None,
                       first_conv=net.pretrained_cfg.get('first_conv'))
        # Output norms of a dense checkpoint, for the levels it has; the others keep their initialization.
        norms = nn.ModuleDict({f'norm{i}': getattr(self, f'norm{i}') for i in self.out_indices
                               if any(k.startswith(f'norm{i}.') for k in out_norms)})
        if len(norms):
            load_converted(norms, {k: v for k, v in out_norms.items() if k.split('.')[0] in norms},
                           lambda sd, _: sd, source=source, head_prefix=None)
