"""benchmarks/data_pipeline.py on a tiny ImageNet-layout folder: per-stage costs and the loader's rate."""
import os

import pytest

pytest.importorskip('mmengine')

from _scripts import load_benchmark  # noqa: E402
from visionssm.mm.synthetic import make_imagenet_folder  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, 'configs/classification/vmamba/vmamba-t-s1l8_8xb128_in1k.py')
GPU_AUG = os.path.join(ROOT, 'configs/classification/vmamba/vmamba-t-s1l8_8xb128_in1k_gpu-aug.py')
DEVICE_STAGES = ['decode', 'crop+flip', 'RandAugment', 'normalise+erasing', 'eval view']


def _tool():
    return load_benchmark('data_pipeline')


def test_stages_and_loader_rate(tmp_path):
    make_imagenet_folder(tmp_path / 'inet', num_classes=4, train_per_class=3, val_per_class=1, workers=0)
    result = _tool().main([CONFIG, '--data-root', str(tmp_path / 'inet'), '--workers', '0', '--batches', '2',
                           '--batch-size', '4', '--stage-images', '6', '--device-batch', '4', '--device-batches', '1',
                           '--json', str(tmp_path / 'new' / 'out.json')])
    assert [s['stage'] for s in result['stages']] == ['LoadImage', 'Albumentations', 'RandAugment', 'Albumentations',
                                                      'PackClsInputs']
    assert all(s['ms_per_img'] > 0 for s in result['stages'])
    assert result['ms_per_img'] == pytest.approx(sum(s['ms_per_img'] for s in result['stages']), abs=1e-2)
    (row,) = result['loader']
    assert row['workers'] == 0 and row['batch'] == 4 and row['batches'] == 2 and row['img_per_s'] > 0
    assert (tmp_path / 'new' / 'out.json').exists()   # its folder made
    # the same recipe on the device (here the CPU), per step
    assert [s['stage'] for s in result['device_stages']] == DEVICE_STAGES
    assert all(s['ms_per_img'] > 0 for s in result['device_stages'])
    assert result['device_ms_per_img'] == pytest.approx(
        sum(s['ms_per_img'] for s in result['device_stages'][:-1]), abs=1e-3)


def test_gpu_aug_config(tmp_path):
    """The workers only read files; the loader delivers lists of encoded files; the device steps are timed."""
    make_imagenet_folder(tmp_path / 'inet', num_classes=2, train_per_class=4, val_per_class=1, workers=0)
    result = _tool().main([GPU_AUG, '--data-root', str(tmp_path / 'inet'), '--workers', '0', '--batches', '1',
                           '--batch-size', '4', '--stage-images', '4', '--device-batch', '4', '--device-batches', '1'])
    assert [s['stage'] for s in result['stages']] == ['PackEncodedImage']
    assert [s['stage'] for s in result['device_stages']] == DEVICE_STAGES
    assert result['loader'][0]['img_per_s'] > 0


def test_rejects_a_folder_without_train(tmp_path):
    with pytest.raises(FileNotFoundError, match="no 'train' folder"):
        _tool().main([CONFIG, '--data-root', str(tmp_path), '--stage-images', '0'])
