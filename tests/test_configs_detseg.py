"""Every detection and segmentation config builds its model at full size (on the meta device: no memory, no
weights downloaded), with heads that read the backbone's channels and init weights that are the variant's official
ImageNet checkpoint; the optimizer settings spare what should not decay; the albumentations pipelines run."""
import warnings
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import DefaultScope
from timm.models import get_pretrained_cfg

from visionssm.mm.backbone import VisionSSMBackbone
from visionssm.mm.synthetic import dataset_cfg_options, make_synthetic_data
from visionssm.models import FAMILIES

CONFIGS = Path(__file__).resolve().parents[1] / 'configs'
DETSEG = sorted(p for task in ('detection', 'segmentation') for p in (CONFIGS / task).glob('**/*.py')
                if '_base_' not in p.parts)
ALBU = [p for p in DETSEG if '_albu' in p.name]


def _registry(cfg):
    if cfg.default_scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    return MODELS


def test_every_family_and_recipe_has_configs():
    names = [p.stem for p in DETSEG]
    for family in ('vmamba', 'efficientvmamba', 'groupmamba', 'spatialmamba'):
        assert f'mask-rcnn_{family}-t_fpn_1x_coco' in names and f'mask-rcnn_{family}-t_fpn_ms-3x_coco' in names
    for family in ('vmamba', 'efficientvmamba', 'groupmamba', 'spatialmamba', 'vim'):
        for size in 'tsb':
            assert f'upernet_{family}-{size}_8xb2-160k_ade20k-512x512' in names
    for size in ('l1', 'l2', 'l3'):
        assert f'upernet_plainmamba-{size}_8xb2-160k_ade20k-512x512' in names
        for detector in ('mask-rcnn', 'retinanet'):  # on the adapter, as the PlainMamba authors published
            assert f'{detector}_plainmamba-adapter-{size}_fpn_1x_coco' in names
    assert 'retinanet_vmamba-t_fpn_1x_coco' in names and len(ALBU) == 2
    for size in 'mt':
        assert {f'mask-rcnn_msvmamba-{size}_fpn_1x_coco', f'mask-rcnn_msvmamba-{size}_fpn_ms-3x_coco',
                f'upernet_msvmamba-{size}_8xb2-160k_ade20k-512x512'} <= set(names)
    for size in 'tsb':  # the recipes the MambaVision authors published results for
        assert f'cascade-mask-rcnn_mambavision-{size}_fpn_ms-3x_coco' in names
        assert f'upernet_mambavision-{size}_8xb2-160k_ade20k-512x512' in names


@pytest.mark.parametrize('path', DETSEG, ids=lambda p: p.stem)
def test_config_builds_its_model(path):
    cfg = Config.fromfile(path)
    with DefaultScope.overwrite_default_scope(cfg.default_scope), torch.device('meta'):
        model = _registry(cfg).build(cfg.model)
    backbone = model.backbone
    assert isinstance(backbone, VisionSSMBackbone)
    if cfg.default_scope == 'mmdet':
        assert list(cfg.model.neck.in_channels) == backbone.channels
    else:
        assert list(cfg.model.decode_head.in_channels) == backbone.channels
        assert cfg.model.auxiliary_head.in_channels == backbone.channels[cfg.model.auxiliary_head.in_index]
    url = get_pretrained_cfg(backbone.model_name).url
    if url.startswith('https://drive.google.com/drive/folders/'):   # a folder, not a file: the config names the
        # downloaded file, and its header says where to get it
        checkpoint = backbone.init_cfg['checkpoint']
        assert checkpoint.endswith('.pth') and not checkpoint.startswith('http') and url in path.read_text()
    else:
        assert backbone.init_cfg == dict(type='Pretrained', checkpoint=url)
    header = path.read_text().splitlines()[:3]
    assert any(line.startswith('# Published: ') for line in header), 'the published result (or its absence) comes first'


@pytest.mark.parametrize('name', [f'test_{family}' for family in FAMILIES])
def test_weight_decay_spares_ssm_parameters_norms_and_biases(name):
    cfg = Config.fromfile(CONFIGS / 'detection' / 'mask-rcnn_vmamba-t_fpn_1x_coco.py').optim_wrapper
    backbone = VisionSSMBackbone(name)
    params = []
    DefaultOptimWrapperConstructor(cfg, cfg.paramwise_cfg).add_params(params, backbone)
    decay = {id(group['params'][0]): group.get('weight_decay', cfg.optimizer.weight_decay) for group in params}
    exempt = {f'body.model.{n}' for n in backbone.body.model.no_weight_decay()}  # the model's own list
    for n, p in backbone.named_parameters():
        expected = 0. if n in exempt or p.ndim <= 1 or n.endswith(('_bias', 'out_norm_weight')) else 0.05
        assert decay[id(p)] == expected, n


@pytest.mark.parametrize('path', ALBU, ids=lambda p: p.stem)
def test_albumentations_pipeline_runs_on_synthetic_data(path, tmp_path):
    cfg = Config.fromfile(path)
    task = 'det' if cfg.default_scope == 'mmdet' else 'seg'
    root = make_synthetic_data(tmp_path, num_train=2, num_val=1, size=(64, 96))[task]
    cfg.merge_from_dict(dataset_cfg_options(task, root))
    dataset = cfg.train_dataloader.dataset
    for step in dataset.pipeline:
        if step['type'] == 'Albu':
            step['transforms'] = [dict(t, p=1.0) for t in step['transforms']]  # every transform runs
        elif step['type'] in ('Resize', 'RandomResize'):
            step['scale'] = (96, 64)
        elif step['type'] == 'RandomCrop':
            step['crop_size'] = (64, 64)
    if task == 'det':
        from mmdet.registry import DATASETS
    else:
        from mmseg.registry import DATASETS
    with DefaultScope.overwrite_default_scope(cfg.default_scope), warnings.catch_warnings():
        warnings.filterwarnings('error', module='albumentations')  # e.g. a deprecated transform or argument
        data = DATASETS.build(dataset)[0]
    assert data['inputs'].shape[0] == 3
    if task == 'det':
        instances = data['data_samples'].gt_instances
        assert len(instances) and instances.masks.masks.shape[1:] == tuple(data['inputs'].shape[1:])
    else:
        assert data['data_samples'].gt_sem_seg.data.shape[1:] == data['inputs'].shape[1:]
