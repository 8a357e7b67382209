"""Classification datasets: ImageNet-style image folders, and the 8x8 digits that ship with scikit-learn."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Sequence

import cv2
import numpy as np
from mmengine.dataset import BaseDataset

from ..registry import DATASETS, TRANSFORMS

__all__ = ['ImageFolderDataset', 'DigitsDataset', 'IMG_EXTENSIONS']

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.pgm', '.tif', '.tiff', '.webp')


def _build_pipeline(pipeline: Sequence) -> list:
    # Built from our registry, so the transforms resolve whatever the current default scope is (or none).
    return [TRANSFORMS.build(t) if isinstance(t, dict) else t for t in pipeline]


@DATASETS.register_module()
class ImageFolderDataset(BaseDataset):
    """Images in ``data_root/<split>/<class>/<file>`` (the ImageNet layout); classes are the sorted folder names.

    Pass ``metainfo=dict(classes=...)`` to require a class list (e.g. the training one for ``val``). The pipeline
    should start with ``LoadImage`` (or be ``PackEncodedImage``, for decoding on the model's device); a sample whose
    image cannot be read is skipped for the next one.
    """

    def __init__(self, data_root: str, split: str = 'train', pipeline: Sequence = (),
                 extensions: Sequence[str] = IMG_EXTENSIONS, **kwargs):
        self.split = split
        self.extensions = tuple(e.lower() for e in extensions)
        super().__init__(data_root=data_root, pipeline=_build_pipeline(pipeline), **kwargs)

    def load_data_list(self) -> List[Dict[str, Any]]:
        layout = f'{self.data_root}/{self.split}/<class>/<image>'
        if not os.path.isdir(self.data_root):
            raise FileNotFoundError(f'data root {self.data_root!r} does not exist (expected {layout})')
        split_dir = os.path.join(self.data_root, self.split)
        if not os.path.isdir(split_dir):
            raise FileNotFoundError(f'split folder {split_dir!r} does not exist (expected {layout})')
        classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
        if not classes:
            raise ValueError(f'{split_dir!r} has no class folders (expected {layout})')
        expected = self._metainfo.get('classes')
        if expected is not None and tuple(expected) != tuple(classes):
            missing, extra = sorted(set(expected) - set(classes)), sorted(set(classes) - set(expected))
            raise ValueError(f'class folders in {split_dir!r} differ from metainfo classes: '
                             f'missing {missing[:5]}, unexpected {extra[:5]}')
        self._metainfo['classes'] = tuple(classes)

        data_list = []
        for label, name in enumerate(classes):
            class_dir = os.path.join(split_dir, name)
            files = sorted(f for f in os.listdir(class_dir) if f.lower().endswith(self.extensions))
            if not files:
                raise ValueError(f'class folder {class_dir!r} has no images (extensions {", ".join(self.extensions)})')
            data_list += [dict(img_path=os.path.join(class_dir, f), gt_label=label) for f in files]
        return data_list

    def __getitem__(self, idx: int) -> Dict[str, Any]:
        # mmengine refetches a random sample in training and raises in test mode; the next sample is
        # deterministic and keeps evaluation running past a corrupt file (LoadImage logs it).
        if not self._fully_initialized:
            self.full_init()
        for offset in range(self.max_refetch + 1):
            data = self.prepare_data((idx + offset) % len(self))
            if data is not None:
                return data
        raise RuntimeError(f'no readable image in the {self.max_refetch + 1} samples from index {idx} of {self.split}')


@DATASETS.register_module()
class DigitsDataset(BaseDataset):
    """scikit-learn's 1,797 handwritten digits (8x8, 10 classes) as ``img_size``² RGB ``uint8`` images.

    The split is stratified and seeded: ``val_fraction`` of every class is held out, the same on every machine.
    Images are in memory, so the pipeline needs no loading step.
    """

    METAINFO = dict(classes=tuple(str(d) for d in range(10)))

    def __init__(self, split: str = 'train', img_size: int = 32, val_fraction: float = 0.2, seed: int = 0,
                 pipeline: Sequence = (), **kwargs):
        if split not in ('train', 'val'):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.split, self.img_size, self.val_fraction, self.seed = split, img_size, val_fraction, seed
        super().__init__(pipeline=_build_pipeline(pipeline), **kwargs)

    def load_data_list(self) -> List[Dict[str, Any]]:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        train_idx, val_idx = train_test_split(
            np.arange(len(digits.target)), test_size=self.val_fraction, random_state=self.seed,
            stratify=digits.target)
        data_list = []
        for i in train_idx if self.split == 'train' else val_idx:
            gray = (digits.images[i] * (255 / 16)).astype(np.uint8)  # pixel values are 0..16
            gray = cv2.resize(gray, (self.img_size, self.img_size), interpolation=cv2.INTER_LINEAR)
            img = np.repeat(gray[:, :, None], 3, axis=2)
            data_list.append(dict(img=img, img_shape=img.shape[:2], ori_shape=img.shape[:2],
                                  gt_label=int(digits.target[i]), digits_index=int(i)))
        return data_list
