"""Small synthetic datasets of drawn shapes, in the COCO instance and ADE20K layouts, for tests and demos.

Both are drop-in replacements for the real datasets: same directory layout, file formats and label conventions,
with real category ids and names, so the stock ``CocoDataset`` / ``ADE20KDataset`` configs read them with only
their paths changed (``dataset_cfg_options`` lists the overrides). The shapes stand for three classes of each:

=========  ============================  ============================
shape      COCO category (id)            ADE20K class (png value)
=========  ============================  ============================
rectangle  book (84)                     painting (23)
ellipse    sports ball (37)              ball (120)
triangle   kite (38)                     flag (150)
(rest)     —                             wall (1); outlines 0
=========  ============================  ============================

ADE20K pngs hold ``class index + 1`` with 0 for unlabeled pixels (here each shape's 1-px outline), which the
``reduce_zero_label=True`` of the ADE20K configs turns into the ignore index 255. Output is deterministic per seed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

__all__ = ['COCO_CATEGORIES', 'SHAPES', 'make_coco_instances', 'make_ade_segmentation', 'make_synthetic_data',
           'dataset_cfg_options']

# The 80 COCO detection categories in id order; ids run 1..90 with these ten unused.
_COCO_NAMES = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat', 'traffic light',
    'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow',
    'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee',
    'skis', 'snowboard', 'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard',
    'tennis racket', 'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple',
    'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch',
    'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'keyboard', 'cell phone',
    'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors', 'teddy bear',
    'hair drier', 'toothbrush')
_UNUSED_COCO_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
COCO_CATEGORIES = [dict(id=i, name=n, supercategory='')
                   for i, n in zip((i for i in range(1, 91) if i not in _UNUSED_COCO_IDS), _COCO_NAMES)]

# shape -> (COCO category id, ADE20K png value = class index + 1, base colour BGR)
SHAPES = {
    'rectangle': (84, 23, (60, 60, 200)),
    'ellipse': (37, 120, (60, 190, 60)),
    'triangle': (38, 150, (200, 120, 40)),
}
_ADE_BACKGROUND = 1  # wall
_ADE_UNLABELED = 0


def _shape_polygon(rng: np.random.Generator, shape: str, box: Tuple[int, int, int, int]) -> np.ndarray:
    """Vertices (N, 2) int32 of ``shape`` inscribed in ``box`` = (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    if shape == 'rectangle':
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.int32)
    if shape == 'triangle':
        apex = int(rng.integers(x0, x1 + 1))
        return np.array([[apex, y0], [x1, y1], [x0, y1]], np.int32)
    center = ((x0 + x1) // 2, (y0 + y1) // 2)
    return cv2.ellipse2Poly(center, ((x1 - x0) // 2, (y1 - y0) // 2), 0, 0, 360, 10).astype(np.int32)


def _draw_image(rng: np.random.Generator, height: int, width: int, max_shapes: int = 4):
    """A noisy background with 1..``max_shapes`` non-overlapping shapes: the BGR image and [(shape, polygon)]."""
    background = rng.integers(90, 170, size=3)
    image = np.clip(background + rng.normal(0, 12, size=(height, width, 3)), 0, 255).astype(np.uint8)
    shapes: List[Tuple[str, np.ndarray]] = []
    taken: List[Tuple[int, int, int, int]] = []
    min_side = max(8, min(height, width) // 8)
    max_side = max(min_side + 1, min(height, width) // 2)
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        for _attempt in range(20):  # rejection sampling: shapes never overlap, so each mask is its drawn polygon
            w, h = (int(s) for s in rng.integers(min_side, max_side, size=2))
            x0, y0 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            box = (x0, y0, x0 + w - 1, y0 + h - 1)
            if all(box[2] + 2 < t[0] or t[2] + 2 < box[0] or box[3] + 2 < t[1] or t[3] + 2 < box[1] for t in taken):
                break
        else:
            continue
        name = str(rng.choice(list(SHAPES)))
        polygon = _shape_polygon(rng, name, box)
        colour = np.clip(np.array(SHAPES[name][2]) + rng.integers(-30, 31, size=3), 0, 255)
        cv2.fillPoly(image, [polygon], tuple(int(c) for c in colour))
        shapes.append((name, polygon))
        taken.append(box)
    return image, shapes


def _check_args(num_train: int, num_val: int, size: Sequence[int]) -> Tuple[int, int]:
    if num_train < 1 or num_val < 1:
        raise ValueError(f'need at least one training and one validation image, got {num_train} and {num_val}')
    if len(size) != 2 or min(size) < 32:
        raise ValueError(f'size must be (height, width) with both at least 32, got {tuple(size)}')
    return int(size[0]), int(size[1])


def make_coco_instances(root: str | os.PathLike, num_train: int = 8, num_val: int = 4,
                        size: Sequence[int] = (128, 128), seed: int = 0) -> Path:
    """Write a COCO instance set: ``{train,val}/*.jpg`` and ``annotations/instances_{train,val}.json``.

    Every annotation has a bbox (xywh), a polygon segmentation and its area; ``categories`` lists all 80 COCO
    categories. Returns ``root``.
    """
    height, width = _check_args(num_train, num_val, size)
    root = Path(root)
    (root / 'annotations').mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ann_id = 1
    for split, count in (('train', num_train), ('val', num_val)):
        (root / split).mkdir(exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            image_id = len(images) + 1
            file_name = f'{index:06d}.jpg'
            image, shapes = _draw_image(rng, height, width)
            cv2.imwrite(str(root / split / file_name), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
            images.append(dict(id=image_id, file_name=file_name, height=height, width=width))
            for name, polygon in shapes:
                mask = np.zeros((height, width), np.uint8)
                cv2.fillPoly(mask, [polygon], 1)
                ys, xs = np.nonzero(mask)
                x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
                annotations.append(dict(
                    id=ann_id, image_id=image_id, category_id=SHAPES[name][0], iscrowd=0, area=int(mask.sum()),
                    bbox=[x0, y0, x1 - x0, y1 - y0], segmentation=[polygon.reshape(-1).astype(float).tolist()]))
                ann_id += 1
        with open(root / 'annotations' / f'instances_{split}.json', 'w') as f:
            json.dump(dict(images=images, annotations=annotations, categories=COCO_CATEGORIES), f)
    return root


def make_ade_segmentation(root: str | os.PathLike, num_train: int = 8, num_val: int = 4,
                          size: Sequence[int] = (128, 128), seed: int = 0) -> Path:
    """Write an ADE20K-layout set: ``images/{training,validation}/*.jpg`` and
    ``annotations/{training,validation}/*.png`` (class index + 1, 0 unlabeled). Returns ``root``."""
    height, width = _check_args(num_train, num_val, size)
    root = Path(root)
    rng = np.random.default_rng(seed + 1)  # not the COCO set's images
    for split, count in (('training', num_train), ('validation', num_val)):
        (root / 'images' / split).mkdir(parents=True, exist_ok=True)
        (root / 'annotations' / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            stem = f'ADE_synthetic_{split}_{index:06d}'
            image, shapes = _draw_image(rng, height, width)
            labels = np.full((height, width), _ADE_BACKGROUND, np.uint8)
            for name, polygon in shapes:
                cv2.fillPoly(labels, [polygon], SHAPES[name][1])
                cv2.polylines(labels, [polygon], True, _ADE_UNLABELED, thickness=1)
            cv2.imwrite(str(root / 'images' / split / f'{stem}.jpg'), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(str(root / 'annotations' / split / f'{stem}.png'), labels)
    return root


def make_synthetic_data(root: str | os.PathLike, num_train: int = 8, num_val: int = 4,
                        size: Sequence[int] = (128, 128), seed: int = 0) -> Dict[str, Path]:
    """Both sets, under ``root/coco`` and ``root/ade``; returns those two directories by task."""
    root = Path(root)
    return dict(det=make_coco_instances(root / 'coco', num_train, num_val, size, seed),
                seg=make_ade_segmentation(root / 'ade', num_train, num_val, size, seed))


def dataset_cfg_options(task: str, data_root: str | os.PathLike) -> Dict[str, str]:
    """``--cfg-options`` that point a stock COCO instance ('det') or ADE20K ('seg') config at a generated set."""
    data_root = os.fspath(data_root)
    if task == 'det':
        options = {}
        for loader, split in (('train', 'train'), ('val', 'val'), ('test', 'val')):
            options.update({
                f'{loader}_dataloader.dataset.data_root': data_root,
                f'{loader}_dataloader.dataset.ann_file': f'annotations/instances_{split}.json',
                f'{loader}_dataloader.dataset.data_prefix.img': f'{split}/',
            })
        for evaluator in ('val_evaluator', 'test_evaluator'):
            options[f'{evaluator}.ann_file'] = os.path.join(data_root, 'annotations', 'instances_val.json')
        return options
    if task == 'seg':
        return {f'{loader}_dataloader.dataset.data_root': data_root for loader in ('train', 'val', 'test')}
    raise ValueError(f"task must be 'det' or 'seg', got {task!r}")
