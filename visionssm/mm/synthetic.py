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

The ImageNet layout (``make_imagenet_folder``) is for classification runs and data-loading measurements:
``{train,val}/<wnid>/*.JPEG`` with the real ImageNet-1k synset ids, JPEGs of ImageNet-like sizes and of content
that costs what a photo costs to decode (smooth colour fields, shapes, grain), written by several processes.
"""
from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

__all__ = ['COCO_CATEGORIES', 'SHAPES', 'make_coco_instances', 'make_ade_segmentation', 'make_imagenet_folder',
           'imagenet_wnids', 'make_synthetic_data', 'dataset_cfg_options']

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


def imagenet_wnids(num_classes: int = 1000) -> List[str]:
    """The first ``num_classes`` ImageNet-1k synset ids in sorted order (the class order of a folder dataset)."""
    from timm.data import ImageNetInfo

    wnids = sorted(ImageNetInfo().label_names())
    if not 1 <= num_classes <= len(wnids):
        raise ValueError(f'num_classes must be between 1 and {len(wnids)} (the ImageNet-1k classes), got {num_classes}')
    return wnids[:num_classes]


def _imagenet_size(rng: np.random.Generator) -> Tuple[int, int]:
    """(height, width) resembling ImageNet-1k's sizes: most images have a 500 px longer side at 4:3 or 3:2 (its
    commonest sizes are 500x375 and 500x333), some are square, one in five is portrait, and a quarter spread
    log-uniformly from 100 to 1600 px on the longer side at aspect ratios from 1:2 to 1:1."""
    if rng.random() < 0.75:
        longer = 500
        shorter = int(rng.choice([375, 333, 500, 281, 400], p=[0.5, 0.3, 0.08, 0.06, 0.06]))
    else:
        longer = int(np.exp(rng.uniform(np.log(100), np.log(1600))))
        shorter = max(50, int(longer * rng.uniform(0.5, 1.0)))
    return (longer, shorter) if rng.random() < 0.2 else (shorter, longer)


def _class_style(seed: int, label: int) -> Tuple[np.ndarray, int]:
    """A class's palette (4 BGR colours) and favourite shape: a visual signal that a model can learn."""
    rng = np.random.default_rng([seed, 7, label])
    return rng.integers(0, 256, size=(4, 3)), int(rng.integers(0, 3))


def _imagenet_image(rng: np.random.Generator, height: int, width: int, palette: np.ndarray, shape: int) -> np.ndarray:
    """A BGR image: a smooth random colour field, shapes in the class's colours (its favourite one most often), and
    grain. The grain is what makes the JPEG cost what a photo costs (about 100 KB and 4 ms to decode at 500x375); it
    repeats every 128 px, which JPEG's 8x8 blocks cannot exploit, and is added with saturating uint8 arithmetic."""
    cells = rng.integers(2, 7, size=2)
    field = rng.integers(0, 256, size=(cells[0], cells[1], 3)).astype(np.uint8)
    field = cv2.resize(field, (max(2, width // 16), max(2, height // 16)), interpolation=cv2.INTER_CUBIC)
    image = cv2.resize(field, (width, height), interpolation=cv2.INTER_LINEAR)
    side = min(height, width)
    for _ in range(int(rng.integers(2, 7))):
        colour = tuple(int(c) for c in np.clip(palette[rng.integers(0, 4)] + rng.integers(-25, 26, size=3), 0, 255))
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        kind = shape if rng.random() < 0.6 else int(rng.integers(0, 3))
        size = (int(rng.integers(side // 12 + 1, side // 3 + 2)), int(rng.integers(side // 12 + 1, side // 3 + 2)))
        if kind == 0:
            cv2.ellipse(image, centre, size, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
        elif kind == 1:
            points = np.array(centre) + rng.integers(-size[0], size[0] + 1, size=(int(rng.integers(3, 7)), 2))
            cv2.fillPoly(image, [points.astype(np.int32)], colour, cv2.LINE_AA)
        else:
            end = (centre[0] + size[0], centre[1] - size[1])
            cv2.line(image, centre, end, colour, int(rng.integers(2, max(3, side // 30))), cv2.LINE_AA)
    reps = (height // 128 + 1, width // 128 + 1, 1)
    up, down = (np.tile(rng.integers(0, 25, size=(128, 128, 3), dtype=np.uint8), reps)[:height, :width]
                for _ in range(2))
    return cv2.subtract(cv2.add(image, up), down)


def _write_imagenet_image(job: Tuple[str, int, int, int, int]) -> None:
    """One file: (path, label, seed, split index, image index); its content depends on those alone."""
    path, label, seed, split_index, index = job
    rng = np.random.default_rng([seed, split_index, label, index])
    height, width = _imagenet_size(rng)
    palette, shape = _class_style(seed, label)
    image = _imagenet_image(rng, height, width, palette, shape)
    if rng.random() < 0.02:   # ImageNet has some grayscale JPEGs; the loader must give them three channels
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if not cv2.imwrite(path, image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(85, 96))]):
        raise OSError(f'could not write {path}')


def _init_worker():
    cv2.setNumThreads(1)   # one process per core already


def make_imagenet_folder(root: str | os.PathLike, num_classes: int = 1000, train_per_class: int = 3,
                         val_per_class: int = 1, seed: int = 0, workers: Optional[int] = None) -> Path:
    """Write an ImageNet-1k-layout image folder: ``train/<wnid>/<wnid>_<n>.JPEG`` and
    ``val/<wnid>/ILSVRC2012_val_<n>.JPEG`` for the first ``num_classes`` synsets (every class in both splits, so
    both list the same classes). ``workers`` processes write the files (default: one per CPU; 0 or 1: this
    process); the output depends only on the arguments other than ``workers``. Returns ``root``."""
    if train_per_class < 1 or val_per_class < 1:
        raise ValueError(f'every class needs at least one training and one validation image, got train_per_class='
                         f'{train_per_class} and val_per_class={val_per_class}')
    wnids = imagenet_wnids(num_classes)
    root = Path(root)
    rng = np.random.default_rng([seed, 11])
    val_numbers = iter(1 + rng.permutation(num_classes * val_per_class))   # ILSVRC2012 val files are numbered
    jobs = []
    for split_index, (split, per_class) in enumerate((('train', train_per_class), ('val', val_per_class))):
        for label, wnid in enumerate(wnids):
            (root / split / wnid).mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                name = (f'{wnid}_{index}.JPEG' if split == 'train'
                        else f'ILSVRC2012_val_{next(val_numbers):08d}.JPEG')
                jobs.append((str(root / split / wnid / name), label, seed, split_index, index))
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers <= 1:
        for job in jobs:
            _write_imagenet_image(job)
    else:
        # fresh interpreters, not forks: a fork of a process whose thread pools are running (torch, OpenCV) can
        # inherit a held lock and hang
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context('spawn'),
                                 initializer=_init_worker) as pool:
            for _ in pool.map(_write_imagenet_image, jobs, chunksize=max(1, len(jobs) // (8 * workers))):
                pass
    return root


_TASKS = ('det', 'seg', 'cls')


def make_synthetic_data(root: str | os.PathLike, num_train: int = 8, num_val: int = 4,
                        size: Sequence[int] = (128, 128), seed: int = 0, tasks: Sequence[str] = ('det', 'seg'),
                        num_classes: int = 1000, train_per_class: int = 3, val_per_class: int = 1,
                        workers: Optional[int] = None) -> Dict[str, Path]:
    """The sets of ``tasks`` under ``root``: ``coco`` ('det'), ``ade`` ('seg'), ``imagenet`` ('cls'; sized by
    ``num_classes``, ``train_per_class``, ``val_per_class``, written by ``workers`` processes); returns their
    directories by task."""
    unknown = sorted(set(tasks) - set(_TASKS))
    if unknown:
        raise ValueError(f'unknown tasks {unknown}; choose from {_TASKS}')
    root = Path(root)
    out = {}
    if 'det' in tasks:
        out['det'] = make_coco_instances(root / 'coco', num_train, num_val, size, seed)
    if 'seg' in tasks:
        out['seg'] = make_ade_segmentation(root / 'ade', num_train, num_val, size, seed)
    if 'cls' in tasks:
        out['cls'] = make_imagenet_folder(root / 'imagenet', num_classes, train_per_class, val_per_class, seed,
                                          workers)
    return out


def dataset_cfg_options(task: str, data_root: str | os.PathLike) -> Dict[str, object]:
    """``--cfg-options`` that point a stock COCO instance ('det'), ADE20K ('seg') or ImageNet-folder ('cls')
    config at a generated set. For 'cls' the head is sized to the class folders in ``data_root/train``."""
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
    if task in ('seg', 'cls'):
        options = {f'{loader}_dataloader.dataset.data_root': data_root for loader in ('train', 'val', 'test')}
        if task == 'cls':
            train = os.path.join(data_root, 'train')
            if not os.path.isdir(train):
                raise FileNotFoundError(f'{train!r} does not exist: not an ImageNet-layout folder')
            num_classes = sum(e.is_dir() for e in os.scandir(train))
            if num_classes != 1000:
                options['model.num_classes'] = num_classes
        return options
    raise ValueError(f"task must be 'det', 'seg' or 'cls', got {task!r}")
