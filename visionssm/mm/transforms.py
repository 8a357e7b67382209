"""Classification pipelines in mmengine transform form: load, augment with albumentations (or timm's RandAugment),
pack into a batchable tensor and a data sample.

Images travel through the pipeline as RGB ``uint8`` HWC arrays under ``results['img']``. ``PackEncodedImage`` is
the whole pipeline of the other route, where the model's ``BatchAugmentDataPreprocessor`` decodes and augments.
"""
from __future__ import annotations

import copy
from abc import ABCMeta, abstractmethod
from typing import Any, Dict, Optional, Sequence

import cv2
import numpy as np
import torch
from mmengine.logging import print_log
from mmengine.structures import BaseDataElement

from ..registry import TRANSFORMS

__all__ = ['BaseTransform', 'LoadImage', 'Albumentations', 'RandAugment', 'PackClsInputs', 'PackEncodedImage']


class BaseTransform(metaclass=ABCMeta):
    """mmcv's transform interface (a ``transform(results)`` method; the transform is called on ``results``), here
    so that classification needs mmengine alone: mmcv, with its compiled ops, is only needed for detection and segmentation.
    mmcv's pipelines take these transforms as they take their own."""

    def __call__(self, results: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        return self.transform(results)

    @abstractmethod
    def transform(self, results: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """The transformed ``results``, or None to skip the sample."""


@TRANSFORMS.register_module()
class LoadImage(BaseTransform):
    """Read ``results['img_path']`` as RGB ``uint8``.

    A file that cannot be decoded is logged and yields ``None``; the dataset then moves on to the next sample,
    so one corrupt file in a million does not end a run.
    """

    def transform(self, results: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        path = results['img_path']
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            print_log(f'skipping {path}: not a readable image', logger='current', level=30)
            return None
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        results.update(img=img, img_shape=img.shape[:2], ori_shape=img.shape[:2])
        return results


def _build_albumentation(cfg: Dict[str, Any]):
    import albumentations as A

    cfg = copy.deepcopy(cfg)
    name = cfg.pop('type')
    if not hasattr(A, name):
        raise ValueError(f'albumentations {A.__version__} has no transform {name!r}')
    if 'transforms' in cfg:  # OneOf, SomeOf, Sequential, ...
        cfg['transforms'] = [_build_albumentation(t) for t in cfg['transforms']]
    if isinstance(cfg.get('interpolation'), str):  # 'cubic' reads better in a config than cv2.INTER_CUBIC == 2
        cfg['interpolation'] = getattr(cv2, 'INTER_' + cfg['interpolation'].upper())
    return getattr(A, name)(**cfg)


@TRANSFORMS.register_module()
class Albumentations(BaseTransform):
    """A list of albumentations transforms, each a ``dict(type=<class name>, **kwargs)`` (nesting allowed)."""

    def __init__(self, transforms: Sequence[Dict[str, Any]]):
        import albumentations as A

        self.transforms = A.Compose([_build_albumentation(t) for t in transforms])

    def transform(self, results: Dict[str, Any]) -> Dict[str, Any]:
        img = self.transforms(image=results['img'])['image']
        results.update(img=img, img_shape=img.shape[:2])
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.transforms})'


def _posterize(img, bits_to_keep, **_):
    # timm's PosterizeIncreasing keeps 0 bits at magnitude 10, which rand-m9-mstd0.5 draws for 2% of its ops; Pillow
    # 13 refuses 0 bits (ValueError, which would end the run) where the Pillow timm was written for gave black
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return img
    return ImageOps.posterize(img, bits_to_keep) if bits_to_keep > 0 else Image.new(img.mode, img.size)


@TRANSFORMS.register_module()
class RandAugment(BaseTransform):
    """timm's RandAugment (``rand-m9-mstd0.5-inc1`` in the official recipes); albumentations has no equivalent."""

    def __init__(self, config: str = 'rand-m9-mstd0.5-inc1', img_size: int = 224,
                 mean: Sequence[float] = (0.485, 0.456, 0.406)):
        from timm.data.auto_augment import rand_augment_transform

        hparams = dict(translate_const=int(img_size * 0.45), img_mean=tuple(round(255 * m) for m in mean))
        self.config = config
        self.augment = rand_augment_transform(config, hparams)
        for op in self.augment.ops:
            if op.name.startswith('Posterize'):
                op.aug_fn = _posterize

    def transform(self, results: Dict[str, Any]) -> Dict[str, Any]:
        from PIL import Image

        results['img'] = np.asarray(self.augment(Image.fromarray(results['img'])))
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.config!r})'


@TRANSFORMS.register_module()
class PackClsInputs(BaseTransform):
    """``img`` to a CHW ``uint8`` tensor, ``gt_label`` (when present) into a ``BaseDataElement``."""

    meta_keys = ('img_path', 'ori_shape', 'img_shape')

    def transform(self, results: Dict[str, Any]) -> Dict[str, Any]:
        img = results['img']
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f'expected an HxWx3 image, got shape {img.shape}')
        sample = BaseDataElement(metainfo={k: results[k] for k in self.meta_keys if k in results})
        if 'gt_label' in results:
            sample.gt_label = torch.as_tensor(results['gt_label'], dtype=torch.long)
        return dict(inputs=torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), data_samples=sample)



@TRANSFORMS.register_module()
class PackEncodedImage(BaseTransform):
    """Read ``results['img_path']``'s bytes, undecoded, into a 1-D ``uint8`` tensor and pack it with the label.

    For ``BatchAugmentDataPreprocessor``, which decodes and augments whole batches on the model's device: a worker
    only reads files. The collate (``pack_collate``, or mmengine's ``pseudo_collate``) keeps the variable-length
    tensors as a list. An empty file is logged and yields ``None`` (the dataset moves on); other unreadable files are found when the
    batch is decoded.
    """

    meta_keys = ('img_path',)

    def transform(self, results: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        path = results['img_path']
        with open(path, 'rb') as f:
            data = f.read()
        if not data:
            print_log(f'skipping {path}: empty file', logger='current', level=30)
            return None
        sample = BaseDataElement(metainfo={k: results[k] for k in self.meta_keys if k in results})
        if 'gt_label' in results:
            sample.gt_label = torch.as_tensor(results['gt_label'], dtype=torch.long)
        return dict(inputs=torch.frombuffer(bytearray(data), dtype=torch.uint8), data_samples=sample)
