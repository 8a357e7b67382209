"""Image classification in mmengine: any timm model (visionssm's or timm's own) as an mmengine ``BaseModel``."""
from __future__ import annotations

import difflib
from typing import Any, Dict, List, Optional, Sequence, Union

import timm
import torch
import torch.nn.functional as F
from mmengine.model import BaseModel, ImgDataPreprocessor
from mmengine.structures import BaseDataElement

from ..registry import MODELS
from .compiled import CompiledSubmodules, compile_options

__all__ = ['ClsDataPreprocessor', 'ImageClassifier', 'create_backbone', 'samples_to_device']

IMAGENET_MEAN = [255 * m for m in timm.data.IMAGENET_DEFAULT_MEAN]
IMAGENET_STD = [255 * s for s in timm.data.IMAGENET_DEFAULT_STD]


def create_backbone(cfg: Dict[str, Any], num_classes: int) -> torch.nn.Module:
    """``timm.create_model(**cfg, num_classes=num_classes)``, with one clear error for an unknown model name."""
    cfg = dict(cfg)
    name = cfg.pop('model_name', None)
    if not isinstance(name, str):
        raise ValueError(f"backbone needs model_name, a timm model name (e.g. 'vmamba_tiny_s1l8'), got {name!r}")
    if ':' not in name and not timm.is_model(name):  # 'hf-hub:...' and 'local-dir:...' are resolved by timm
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f'; did you mean {", ".join(close)}?' if close else "; see timm.list_models('*mamba*')"
        raise ValueError(f'unknown model {name!r}{hint}')
    return timm.create_model(name, num_classes=num_classes, **cfg)


def samples_to_device(samples: Optional[Sequence[BaseDataElement]], device: Union[str, torch.device],
                      non_blocking: bool = False) -> Optional[Sequence[BaseDataElement]]:
    """The data samples with their ``gt_label`` on ``device``, moved as one batch.

    mmengine's data preprocessors cast each sample on its own: a classification batch of 128 images made 128
    host-to-device copies of 8 bytes from pageable memory per step, each a wait of the host. Here the labels are
    stacked on the host, pinned (CUDA), copied once, and each sample gets its row as a view. Samples with other
    tensors still on the host are then cast as mmengine casts them."""
    if not samples:
        return samples
    device = torch.device(device)
    labels = [s.get('gt_label') for s in samples]
    if (all(isinstance(t, torch.Tensor) and t.device != device for t in labels)
            and len({(t.shape, t.dtype, t.device) for t in labels}) == 1):
        batch = torch.stack(labels)
        if device.type == 'cuda' and batch.device.type == 'cpu':
            batch, non_blocking = batch.pin_memory(), True   # pinned: the copy runs without the host waiting
        for sample, label in zip(samples, batch.to(device, non_blocking=non_blocking).unbind(0)):
            sample.gt_label = label
    if all(v.device == device for s in samples for v in s.values() if isinstance(v, torch.Tensor)):
        return samples
    return [s.to(device, non_blocking=non_blocking) for s in samples]


@MODELS.register_module()
class ClsDataPreprocessor(ImgDataPreprocessor):
    """mmengine's ``ImgDataPreprocessor`` (stacking, normalisation of the images) whose data samples' labels reach
    the device as one copy (``samples_to_device``) instead of one per image. Same arguments."""

    def forward(self, data: dict, training: bool = False) -> Dict[str, Any]:
        samples = data.get('data_samples')
        batch = super().forward({**data, 'data_samples': None}, training)
        return dict(batch, data_samples=samples_to_device(samples, self.device, self._non_blocking))


@MODELS.register_module()
class ImageClassifier(CompiledSubmodules, BaseModel):
    """A timm model trained with (label-smoothed, optionally mixed-up) cross-entropy.

    Args:
        backbone: ``timm.create_model`` arguments: ``model_name`` and anything the model accepts
            (``drop_path_rate``, ``pretrained``, ``pretrained_cfg_overlay=dict(file=...)``, architecture kwargs).
        num_classes: Size of the head.
        label_smoothing: Target smoothing of the cross-entropy.
        mixup: ``timm.data.Mixup`` arguments (``mixup_alpha``, ``cutmix_alpha``, ``prob``, ``switch_prob``, ...),
            applied to training batches; None for none. Batches must then have an even size (``drop_last=True``).
        data_preprocessor: Batching and normalisation; default ``ClsDataPreprocessor`` with ImageNet mean/std.
        compile_backbone: ``torch.compile`` the backbone: True, or ``torch.compile``'s keyword arguments (``mode``,
            ``backend``, ...; ``dynamic`` defaults to False: one static graph per input size). An eager step of a
            Mamba backbone costs the host more time than a large batch costs the GPU (thousands of small launches);
            compiled, it is a few fused kernels. The module, its parameters
            and its checkpoints stay those of the eager model, and a copy (mmengine's EMA model) compiles its own
            (``visionssm.mm.compiled``).
            mmengine's own ``compile`` option compiles the whole ``train_step`` with the optimizer, which Dynamo
            fails on with mmengine 0.10.
        cuda_graph: replay the backbone's training forward and backward as CUDA graphs
            (``visionssm.GraphedModule``): the eager kernels without their host time, captured once per input
            size. Needs a fixed batch size (``drop_last=True``) and one backward per forward; evaluation runs
            eagerly. Not with ``compile_backbone`` (whose ``mode='reduce-overhead'`` is the compiled form of the
            same).
        init_cfg: mmengine initialisation config (e.g. ``dict(type='Pretrained', checkpoint=...)``).

    Modes: ``loss`` returns ``dict(loss=...)``; ``predict`` returns the data samples with ``pred_score``
    (softmax) and ``pred_label``; ``tensor`` returns the logits.

    Loading a state dict (``load_from``, ``--resume``, ``init_cfg``) whose keys or shapes differ from the model
    raises one error that names them: mmengine would only log a warning and go on with random weights.
    """

    def __init__(
            self,
            backbone: Dict[str, Any],
            num_classes: int,
            label_smoothing: float = 0.0,
            mixup: Optional[Dict[str, Any]] = None,
            data_preprocessor: Optional[Dict[str, Any]] = None,
            compile_backbone: Union[bool, Dict[str, Any]] = False,
            cuda_graph: bool = False,
            init_cfg: Optional[Union[Dict, List[Dict]]] = None,
    ):
        if data_preprocessor is None:
            data_preprocessor = dict(type='visionssm.ClsDataPreprocessor', mean=IMAGENET_MEAN, std=IMAGENET_STD)
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if num_classes < 1:
            raise ValueError(f'num_classes must be positive, got {num_classes}')
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.backbone = create_backbone(backbone, num_classes)
        # timm initialised (or loaded) the backbone; mmengine's init_weights must not run a second init over it.
        self.backbone.is_init = True
        self.mixup = None
        if mixup:
            self.mixup = timm.data.Mixup(**dict(mixup, label_smoothing=label_smoothing, num_classes=num_classes))
        self.compile_backbone = compile_options(compile_backbone, 'compile_backbone')
        if self.compile_backbone is not None:
            # one graph per input size: a frame that meets a second size is otherwise recompiled with dynamic
            # shapes, which failed in Inductor's code generation for the VMamba-T recipe (torch 2.11, CUDA)
            self.compile_backbone.setdefault('dynamic', False)
        if not isinstance(cuda_graph, bool):
            raise TypeError(f'cuda_graph must be True or False, got {cuda_graph!r}')
        if cuda_graph and self.compile_backbone is not None:
            raise ValueError("cuda_graph and compile_backbone exclude each other: use one (compile_backbone="
                             "dict(mode='reduce-overhead') is the compiled form of CUDA graphs)")
        self.cuda_graph = cuda_graph

    def run_backbone(self, inputs: torch.Tensor) -> torch.Tensor:
        """The backbone's logits, through its compiled form with ``compile_backbone``, its CUDA graphs with
        ``cuda_graph``."""
        if self.cuda_graph:
            return self.graphed('backbone')(inputs)
        if self.compile_backbone is None:
            return self.backbone(inputs)
        return self.compiled('backbone', self.compile_backbone)(inputs)

    def forward(self, inputs: torch.Tensor, data_samples: Optional[List[BaseDataElement]] = None,
                mode: str = 'tensor'):
        if mode == 'tensor':
            return self.run_backbone(inputs)
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")

    def loss(self, inputs: torch.Tensor, data_samples: Sequence[BaseDataElement]) -> Dict[str, torch.Tensor]:
        labels = torch.stack([s.gt_label for s in data_samples]).to(inputs.device)
        if self.mixup is None:
            return dict(loss=F.cross_entropy(self.run_backbone(inputs), labels, label_smoothing=self.label_smoothing))
        if len(inputs) % 2:
            raise ValueError(f'mixup needs an even batch size, got {len(inputs)}: set drop_last=True in the '
                             'train_dataloader')
        inputs, soft_targets = self.mixup(inputs, labels)  # smoothing is folded into the soft targets
        return dict(loss=F.cross_entropy(self.run_backbone(inputs), soft_targets))

    def predict(self, inputs: torch.Tensor,
                data_samples: Optional[List[BaseDataElement]] = None) -> List[BaseDataElement]:
        scores = self.run_backbone(inputs).float().softmax(dim=-1)
        if data_samples is None:
            data_samples = [BaseDataElement() for _ in range(len(scores))]
        for sample, score in zip(data_samples, scores):
            sample.set_data(dict(pred_score=score, pred_label=score.argmax()))
        return data_samples

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        self._check_state_dict(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _check_state_dict(self, state_dict: Dict[str, torch.Tensor], prefix: str) -> None:
        model = {k: tuple(v.shape) for k, v in self.state_dict().items()}
        given = {k[len(prefix):]: tuple(v.shape) for k, v in state_dict.items() if k.startswith(prefix)}
        shapes = [f'{k}: checkpoint {given[k]} vs model {s}' for k, s in model.items() if k in given and given[k] != s]
        missing = [k for k in model if k not in given]
        unexpected = [k for k in given if k not in model]
        if not (shapes or missing or unexpected):
            return

        def listed(keys):
            return ', '.join(keys[:8]) + (f' (and {len(keys) - 8} more)' if len(keys) > 8 else '')

        problems = [f'{what} {listed(keys)}' for what, keys in (
            ('mismatching shapes:', shapes), ('missing from the checkpoint:', missing),
            ('not in the model:', unexpected)) if keys]
        pretrained_cfg = getattr(self.backbone, 'pretrained_cfg', {})
        head_weight = f'backbone.{pretrained_cfg.get("classifier")}.weight'
        if head_weight in given and head_weight in model and given[head_weight][0] != model[head_weight][0]:
            problems.insert(0, f'the checkpoint has {given[head_weight][0]} classes, the config '
                               f'{model[head_weight][0]} (model.num_classes)')
        name = pretrained_cfg.get('architecture', type(self.backbone).__name__)
        raise ValueError(f'checkpoint does not match {name}: ' + '; '.join(problems))
