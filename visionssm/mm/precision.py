"""bfloat16 training of MMDetection models: float32 where mmcv has no bfloat16 kernel.

mmcv 2.1 compiles RoIAlign (CPU and CUDA), the CUDA sigmoid focal loss and the CPU NMS for float32 / float64 (and
float16 on CUDA) only. Under bfloat16 autocast the FPN features, the RPN scores and the classification logits are
bfloat16, so a Mask R-CNN, Cascade Mask R-CNN or RetinaNet training step stops at the first of these ops
(``NotImplementedError: "roi_align_forward_cuda_kernel" not implemented for 'BFloat16'``). RoI extraction needs
float32 for a second reason: mmdet casts the RoIs to the features' dtype, and bfloat16 box coordinates are 8 pixels
apart at 1024-2048 pixels.

``use_float32_where_mmcv_lacks_bf16()`` (idempotent; ``tools/train.py`` and ``tools/test.py`` call it for mmdet
configs) makes these run in float32 when they are handed bfloat16 tensors:

* mmdet's RoI extractors (``SingleRoIExtractor``, ``GenericRoIExtractor``): features and RoIs in float32 (the
  RoI features come out in float32; the heads' layers cast them back under autocast);
* mmcv's ``nms`` (and so ``batched_nms``, which mmdet's RPN and R-CNN heads call): boxes and scores in float32;
* mmdet's focal loss on CUDA (mmcv's ``sigmoid_focal_loss``): logits in float32.

Every other dtype takes the original code path unchanged; float16 AMP is not affected.
"""
from __future__ import annotations

import functools
import importlib

import torch

__all__ = ['use_float32_where_mmcv_lacks_bf16']

_MARK = '_visionssm_float32_for_bf16'


def _is_bf16(t) -> bool:
    return isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16


def _float32_roi_extraction(forward):
    @functools.wraps(forward)
    def extract(self, feats, rois, *args, **kwargs):
        if not _is_bf16(feats[0]):
            return forward(self, feats, rois, *args, **kwargs)
        with torch.autocast(feats[0].device.type, enabled=False):
            return forward(self, tuple(f.float() for f in feats), rois.float(), *args, **kwargs)
    setattr(extract, _MARK, True)
    return extract


def _float32_nms(nms):
    @functools.wraps(nms)
    def nms_float32(boxes, scores, *args, **kwargs):
        if _is_bf16(boxes) or _is_bf16(scores):
            boxes, scores = boxes.float(), scores.float()
        return nms(boxes, scores, *args, **kwargs)
    setattr(nms_float32, _MARK, True)
    return nms_float32


def _float32_focal_loss(focal_loss):
    @functools.wraps(focal_loss)
    def focal_loss_float32(pred, *args, **kwargs):
        return focal_loss(pred.float() if _is_bf16(pred) else pred, *args, **kwargs)
    setattr(focal_loss_float32, _MARK, True)
    return focal_loss_float32


def _patch(owner, name: str, wrap) -> None:
    current = getattr(owner, name)
    if not getattr(current, _MARK, False):
        setattr(owner, name, wrap(current))


def use_float32_where_mmcv_lacks_bf16() -> None:
    """Install the float32 paths above (once; later calls do nothing). Needs mmdet and full mmcv."""
    mmcv_nms = importlib.import_module('mmcv.ops.nms')   # the module: ``mmcv.ops.nms`` is also its function
    from mmdet.models.losses import focal_loss
    from mmdet.models.roi_heads.roi_extractors import GenericRoIExtractor, SingleRoIExtractor

    for extractor in (SingleRoIExtractor, GenericRoIExtractor):
        _patch(extractor, 'forward', _float32_roi_extraction)
    _patch(mmcv_nms, 'nms', _float32_nms)   # batched_nms looks ``nms`` up in this module at each call
    _patch(focal_loss, '_sigmoid_focal_loss', _float32_focal_loss)
