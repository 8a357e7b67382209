"""The synthetic ImageNet-layout folder: layout, JPEG contents, size distribution, determinism, and a classification
config reading it through its own pipelines."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip('mmengine')
cv2 = pytest.importorskip('cv2')

from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

import visionssm.mm  # noqa: E402, F401
from visionssm.mm.synthetic import (  # noqa: E402
    _imagenet_size, dataset_cfg_options, imagenet_wnids, make_imagenet_folder, make_synthetic_data,
)
from visionssm.registry import DATA_SAMPLERS, DATASETS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VMAMBA_T = ROOT / 'configs/classification/vmamba/vmamba-t-s1l8_8xb128_in1k.py'


def _digests(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob('*.JPEG'))}


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return make_imagenet_folder(tmp_path_factory.mktemp('imagenet'), num_classes=6, train_per_class=2,
                                val_per_class=1, seed=3, workers=0)


def test_layout_is_imagenets(folder):
    wnids = imagenet_wnids(6)
    assert wnids[:2] == ['n01440764', 'n01443537'] and wnids == sorted(wnids)
    for split, per_class in (('train', 2), ('val', 1)):
        assert sorted(os.listdir(folder / split)) == wnids
        for wnid in wnids:
            files = sorted(os.listdir(folder / split / wnid))
            assert len(files) == per_class and all(f.endswith('.JPEG') for f in files)
            if split == 'train':
                assert files == [f'{wnid}_{i}.JPEG' for i in range(per_class)]
    val = sorted(f for wnid in wnids for f in os.listdir(folder / 'val' / wnid))
    assert val == [f'ILSVRC2012_val_{n:08d}.JPEG' for n in range(1, 7)]


def test_files_are_real_jpegs_of_varied_sizes(folder):
    shapes, bytes_per_pixel = set(), []
    for path in folder.rglob('*.JPEG'):
        data = path.read_bytes()
        assert data[:3] == b'\xff\xd8\xff'     # a JPEG stream, whatever the extension says
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert image is not None and image.dtype == np.uint8 and min(image.shape[:2]) >= 50
        shapes.add(image.shape[:2])
        bytes_per_pixel.append(len(data) / (image.shape[0] * image.shape[1]))
    assert len(shapes) > 3
    # grain and detail: far from the ~0.05 bytes per pixel of a smooth or flat image at this quality
    assert np.median(bytes_per_pixel) > 0.3


def test_sizes_follow_imagenets_distribution():
    rng = np.random.default_rng(0)
    sizes = np.array([_imagenet_size(rng) for _ in range(4000)])
    longer, shorter = sizes.max(1), sizes.min(1)
    assert np.median(longer) == 500 and 0.5 <= (longer == 500).mean() <= 0.85
    assert 0.3 <= ((longer == 500) & (shorter == 375)).mean() <= 0.5
    assert 0.15 <= (sizes[:, 0] > sizes[:, 1]).mean() <= 0.25           # portrait
    assert longer.min() >= 100 and longer.max() <= 1600 and (longer > 1000).mean() > 0.03
    assert (shorter / longer).min() >= 0.5 - 1e-2


def test_deterministic_whatever_the_number_of_processes(tmp_path):
    one = make_imagenet_folder(tmp_path / 'a', num_classes=3, train_per_class=2, val_per_class=2, workers=0)
    two = make_imagenet_folder(tmp_path / 'b', num_classes=3, train_per_class=2, val_per_class=2, workers=2)
    assert _digests(one) == _digests(two) and len(_digests(one)) == 12
    other = make_imagenet_folder(tmp_path / 'c', num_classes=3, train_per_class=2, val_per_class=2, seed=1, workers=0)
    assert _digests(other) != _digests(one)


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match='num_classes must be between 1 and 1000'):
        make_imagenet_folder(tmp_path, num_classes=1001)
    with pytest.raises(ValueError, match='val_per_class=0'):
        make_imagenet_folder(tmp_path, num_classes=2, val_per_class=0)
    with pytest.raises(ValueError, match="unknown tasks \\['imagenet'\\]"):
        make_synthetic_data(tmp_path, tasks=('imagenet',))
    with pytest.raises(FileNotFoundError, match='not an ImageNet-layout folder'):
        dataset_cfg_options('cls', tmp_path / 'nowhere')


def test_cfg_options_size_the_head(folder):
    options = dataset_cfg_options('cls', folder)
    assert options == {f'{loader}_dataloader.dataset.data_root': str(folder) for loader in ('train', 'val', 'test')} | {
        'model.num_classes': 6}


@pytest.mark.parametrize('loader', ['train_dataloader', 'val_dataloader'])
def test_classification_config_loads_a_batch(folder, loader):
    """The ImageNet recipe's dataset and pipeline (RandomResizedCrop, RandAugment, erasing / resize and centre
    crop), built from the config with the printed options, give a batch of 224x224 images with their labels."""
    pytest.importorskip('albumentations')
    cfg = Config.fromfile(VMAMBA_T)
    cfg.merge_from_dict(dataset_cfg_options('cls', folder))
    assert cfg.model.num_classes == 6
    init_default_scope(cfg.default_scope)
    dataset = DATASETS.build(cfg[loader].dataset)
    assert dataset.metainfo['classes'] == tuple(imagenet_wnids(6)) and len(dataset) == (12 if 'train' in loader
                                                                                         else 6)
    sampler = DATA_SAMPLERS.build(cfg[loader].sampler, default_args=dict(dataset=dataset, seed=0))
    batch = [dataset[i] for i in list(sampler)[:4]]
    inputs = torch.stack([b['inputs'] for b in batch])
    assert inputs.shape == (4, 3, 224, 224) and inputs.dtype == torch.uint8
    labels = [int(b['data_samples'].gt_label) for b in batch]
    paths = [b['data_samples'].img_path for b in batch]
    assert labels == [imagenet_wnids(6).index(Path(p).parent.name) for p in paths]


def test_tool_prints_the_options(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / 'tools/make_synthetic_data.py'), str(tmp_path), '--tasks', 'cls',
         '--num-classes', '2', '--train-per-class', '1', '--val-per-class', '1', '--workers', '0'],
        capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert result.returncode == 0, result.stderr[-2000:]
    root = tmp_path / 'imagenet'
    assert f'cls: {root}' in result.stdout
    assert f'train_dataloader.dataset.data_root={root}' in result.stdout and 'model.num_classes=2' in result.stdout
    assert len(list(root.rglob('*.JPEG'))) == 4
