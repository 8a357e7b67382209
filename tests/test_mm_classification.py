"""Classification in mmengine, piece by piece: datasets, transforms, metric, model, checkpoints, configs."""
import glob
import logging
import os

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip('mmengine')
pytest.importorskip('albumentations')

from mmengine.config import Config  # noqa: E402
from mmengine.logging import MMLogger  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.runner import load_checkpoint  # noqa: E402
from mmengine.structures import BaseDataElement  # noqa: E402

import visionssm.mm  # noqa: E402, F401
from visionssm.mm.classification import ClsDataPreprocessor, ImageClassifier, create_backbone, samples_to_device  # noqa: E402,E501
from visionssm.mm.datasets import DigitsDataset, ImageFolderDataset  # noqa: E402
from visionssm.mm.metrics import Accuracy  # noqa: E402
from visionssm.mm.runner import Runner  # noqa: E402
from visionssm.mm.transforms import Albumentations, PackClsInputs, RandAugment  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, 'configs/classification/**/*.py'), recursive=True)
                 if '/_base_/' not in p)
DIGITS = os.path.join(ROOT, 'configs/classification/digits_demo.py')


def _write_image_folder(root, classes=('cat', 'dog'), per_class=2, size=24):
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for name in classes:
            os.makedirs(root / split / name)
            for i in range(per_class):
                cv2.imwrite(str(root / split / name / f'{i}.png'), rng.integers(0, 255, (size, size, 3), np.uint8))


def _tiny_classifier(num_classes=4, **kwargs):
    return ImageClassifier(backbone=dict(model_name='test_vmamba'), num_classes=num_classes, **kwargs)


# --- datasets -------------------------------------------------------------------------------------------------------

def test_image_folder_lists_classes_and_images(tmp_path):
    _write_image_folder(tmp_path, per_class=3)
    ds = ImageFolderDataset(str(tmp_path), split='val', pipeline=[dict(type='LoadImage'), dict(type='PackClsInputs')])
    assert ds.metainfo['classes'] == ('cat', 'dog')
    assert len(ds) == 6 and [ds.get_data_info(i)['gt_label'] for i in range(6)] == [0, 0, 0, 1, 1, 1]
    sample = ds[4]
    assert sample['inputs'].shape == (3, 24, 24) and sample['inputs'].dtype == torch.uint8
    assert int(sample['data_samples'].gt_label) == 1


def test_image_folder_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match='data root .*nowhere.* does not exist'):
        ImageFolderDataset(str(tmp_path / 'nowhere'))


def test_image_folder_without_classes(tmp_path):
    (tmp_path / 'train').mkdir()
    with pytest.raises(ValueError, match='has no class folders'):
        ImageFolderDataset(str(tmp_path))


def test_image_folder_empty_class(tmp_path):
    _write_image_folder(tmp_path)
    (tmp_path / 'train' / 'emu').mkdir()
    with pytest.raises(ValueError, match=r"class folder .*emu.* has no images"):
        ImageFolderDataset(str(tmp_path))


def test_image_folder_classes_must_match_metainfo(tmp_path):
    _write_image_folder(tmp_path)
    with pytest.raises(ValueError, match=r"missing \['emu'\]"):
        ImageFolderDataset(str(tmp_path), metainfo=dict(classes=('cat', 'dog', 'emu')))


@pytest.fixture
def mm_log_records():
    """What mmengine's current logger logs during the test (its handlers write to streams bound at creation)."""
    logger, records = MMLogger.get_current_instance(), []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def test_corrupt_image_is_logged_and_skipped(tmp_path, mm_log_records):
    _write_image_folder(tmp_path)
    (tmp_path / 'val' / 'cat' / '1.png').write_bytes(b'not a png at all')
    ds = ImageFolderDataset(str(tmp_path), split='val', test_mode=True,
                            pipeline=[dict(type='LoadImage'), dict(type='PackClsInputs')])
    sample = ds[1]  # the corrupt one: the next sample (dog/0.png) comes instead
    assert sample['data_samples'].img_path.endswith(os.path.join('dog', '0.png'))
    message = f"skipping {tmp_path / 'val' / 'cat' / '1.png'}: not a readable image"
    assert [r.levelname for r in mm_log_records if r.getMessage() == message] == ['WARNING']


def test_digits_split_is_deterministic_stratified_and_disjoint():
    train, val = DigitsDataset(split='train'), DigitsDataset(split='val')
    assert (len(train), len(val)) == (1437, 360)
    train_ids = {train.get_data_info(i)['digits_index'] for i in range(len(train))}
    val_ids = {val.get_data_info(i)['digits_index'] for i in range(len(val))}
    assert not train_ids & val_ids and len(train_ids | val_ids) == 1797
    again = DigitsDataset(split='val')
    assert val_ids == {again.get_data_info(i)['digits_index'] for i in range(len(again))}
    counts = np.bincount([val.get_data_info(i)['gt_label'] for i in range(len(val))])
    assert counts.min() >= 35 and counts.max() <= 37  # 20% of each class's ~180
    img = train.get_data_info(0)['img']
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8 and (img[..., 0] == img[..., 2]).all()
    with pytest.raises(ValueError, match="split must be 'train' or 'val'"):
        DigitsDataset(split='test')


# --- transforms and metric ------------------------------------------------------------------------------------------

def test_albumentations_pipeline_and_unknown_transform():
    aug = Albumentations([dict(type='RandomResizedCrop', size=(16, 16), interpolation='cubic'),
                          dict(type='OneOf', transforms=[dict(type='HorizontalFlip'), dict(type='VerticalFlip')])])
    out = aug(dict(img=np.zeros((40, 30, 3), np.uint8)))
    assert out['img'].shape == (16, 16, 3) and out['img_shape'] == (16, 16)
    with pytest.raises(ValueError, match="no transform 'JpegCompression'"):
        Albumentations([dict(type='JpegCompression', quality_lower=80)])
    with pytest.raises(ValueError, match='expected an HxWx3 image'):
        PackClsInputs()(dict(img=np.zeros((8, 8), np.uint8)))


def test_rand_augment_posterize_at_full_magnitude():
    """Magnitude 10 (2% of rand-m9-mstd0.5's draws) keeps 0 bits: a black image, not Pillow 13's ValueError."""
    aug = RandAugment('rand-m9-mstd0.5-inc1', img_size=32)
    (op,) = [op for op in aug.augment.ops if op.name == 'PosterizeIncreasing']
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0
    aug.augment.ops = [op]
    img = np.full((32, 32, 3), 200, np.uint8)
    assert not aug(dict(img=img))['img'].any()
    op.magnitude = 5  # 4 - int(2) = 2 bits: 200 = 0b11001000 -> 0b11000000
    assert (aug(dict(img=img))['img'] == 192).all()


def test_accuracy_topk():
    scores = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1], [0.2, 0.5, 0.3]])
    labels = [0, 1, 1, 2]  # top-1 hits: 1 of 4; top-2 hits: 0, 1 (0.3 is 2nd), 1, 2 -> 4 of 4
    metric = Accuracy(topk=(1, 2, 5))
    metric.process(None, [dict(pred_score=s, gt_label=torch.tensor(y)) for s, y in zip(scores, labels)])
    assert metric.evaluate(4) == {'accuracy/top1': 25.0, 'accuracy/top2': 100.0, 'accuracy/top5': 100.0}
    for batch in ((0, 1, 2), (3,)):   # batch by batch, as the loop hands them over: the same
        metric.process(None, [dict(pred_score=scores[i], gt_label=torch.tensor(labels[i])) for i in batch])
    assert metric.evaluate(4) == {'accuracy/top1': 25.0, 'accuracy/top2': 100.0, 'accuracy/top5': 100.0}
    with pytest.raises(ValueError, match='topk must be positive'):
        Accuracy(topk=0)


# --- model ----------------------------------------------------------------------------------------------------------

def test_classifier_modes_and_mixup():
    torch.manual_seed(0)
    model = _tiny_classifier(label_smoothing=0.1, mixup=dict(mixup_alpha=0.8, cutmix_alpha=1.0))
    samples = [BaseDataElement(gt_label=torch.tensor(i % 4)) for i in range(4)]
    batch = model.data_preprocessor(dict(inputs=[torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8)] * 4,
                                         data_samples=samples), training=True)
    assert model(batch['inputs'], mode='tensor').shape == (4, 4)
    loss = model(**batch, mode='loss')['loss']
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.backbone.head.fc.weight.grad is not None
    predicted = model(**batch, mode='predict')
    assert predicted[0].pred_score.shape == (4,) and 0 <= int(predicted[0].pred_label) < 4
    with pytest.raises(ValueError, match='mixup needs an even batch size, got 3'):
        model(batch['inputs'][:3], samples[:3], mode='loss')
    with pytest.raises(ValueError, match="mode must be 'loss', 'predict' or 'tensor'"):
        model(batch['inputs'], mode='logits')


def test_cls_data_preprocessor_matches_mmengines_and_moves_the_labels_as_one_batch():
    from mmengine.model import ImgDataPreprocessor
    mean, std = [120.0, 110.0, 100.0], [50.0, 60.0, 70.0]
    data = dict(inputs=[torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8) for _ in range(4)],
                data_samples=[BaseDataElement(gt_label=torch.tensor(i), metainfo=dict(img_path=f'{i}.jpg'))
                              for i in (3, 1, 4, 1)])
    ours = ClsDataPreprocessor(mean=mean, std=std)(dict(data), True)
    theirs = ImgDataPreprocessor(mean=mean, std=std)(dict(data), True)
    assert torch.equal(ours['inputs'], theirs['inputs'])
    assert [int(s.gt_label) for s in ours['data_samples']] == [3, 1, 4, 1]
    assert [s.img_path for s in ours['data_samples']] == ['3.jpg', '1.jpg', '4.jpg', '1.jpg']

    # to another device: one copy, every sample's label a row of it (meta: the copy without a GPU)
    samples = samples_to_device([BaseDataElement(gt_label=torch.tensor(i)) for i in range(4)], 'meta')
    labels = [s.gt_label for s in samples]
    assert all(t.device.type == 'meta' and t.shape == () for t in labels)
    assert len({t._base is not None and id(t._base) for t in labels}) == 1 and labels[0]._base is not None
    # samples holding other host tensors are cast as mmengine casts them
    mixed = samples_to_device([BaseDataElement(gt_label=torch.tensor(0), mask=torch.ones(2))], 'meta')
    assert mixed[0].gt_label.device.type == 'meta' and mixed[0].mask.device.type == 'meta'
    assert samples_to_device(None, 'meta') is None


def test_compiled_backbone_matches_eager_and_each_copy_compiles_its_own():
    import copy
    torch.manual_seed(0)
    eager = _tiny_classifier().eval()
    compiled = _tiny_classifier(compile_backbone=dict(backend='eager')).eval()   # Dynamo, no code generation
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x))
        assert 'backbone' in compiled.__dict__['_compiled_submodules']
        assert compiled.state_dict().keys() == eager.state_dict().keys()   # the compiled form is no submodule
        # an EMA-style deep copy runs its own weights, through a compiled form of its own
        ema = copy.deepcopy(compiled)
        assert '_compiled_submodules' not in ema.__dict__
        for p in ema.parameters():
            p.mul_(0.5)
        torch.testing.assert_close(ema(x), ema.backbone(x))
        assert ema.compiled('backbone', {}) is not compiled.compiled('backbone', {})
        assert not torch.allclose(ema(x), compiled(x))
    with pytest.raises(TypeError, match='compile_backbone must be a bool or a dict'):
        _tiny_classifier(compile_backbone='max-autotune')
    # static graphs unless asked otherwise
    assert _tiny_classifier(compile_backbone=True).compile_backbone == dict(dynamic=False)
    assert _tiny_classifier(compile_backbone=dict(dynamic=None)).compile_backbone == dict(dynamic=None)


def test_unknown_model_name_suggests_close_matches():
    with pytest.raises(ValueError, match=r"unknown model 'vmamba_tiny_s1l9'; did you mean vmamba_tiny_s1l8"):
        create_backbone(dict(model_name='vmamba_tiny_s1l9'), 10)
    with pytest.raises(ValueError, match='backbone needs model_name'):
        create_backbone(dict(name='vmamba_tiny_s1l8'), 10)


def test_checkpoint_with_other_classes_or_model_is_one_clear_error(tmp_path):
    path = str(tmp_path / 'ten_classes.pth')
    torch.save(dict(state_dict=_tiny_classifier(num_classes=10).state_dict()), path)
    load_checkpoint(_tiny_classifier(num_classes=10), path)  # the matching model loads
    with pytest.raises(ValueError, match=r'checkpoint has 10 classes, the config 4 .*backbone\.head\.fc\.weight: '
                                         r'checkpoint \(10, 128\) vs model \(4, 128\)'):
        load_checkpoint(_tiny_classifier(num_classes=4), path)
    other = ImageClassifier(backbone=dict(model_name='test_groupmamba'), num_classes=10)
    with pytest.raises(ValueError, match='missing from the checkpoint: backbone.*not in the model: backbone'):
        load_checkpoint(other, path)


class _Payload:
    pass


def test_checkpoint_loader_allows_mmengine_contents_only(tmp_path):
    from mmengine.logging import HistoryBuffer

    from visionssm.mm.runner import load_local_checkpoint

    hub = dict(log_scalars={'loss': HistoryBuffer([1.0, 2.0], [1, 1])})
    ours = dict(state_dict={'w': torch.ones(2)}, message_hub=hub, meta=dict(seed=np.int64(3), lr=np.float64(0.1)))
    torch.save(ours, tmp_path / 'ours.pth')
    loaded = load_local_checkpoint(str(tmp_path / 'ours.pth'))
    assert loaded['message_hub']['log_scalars']['loss'].mean() == 1.5 and loaded['meta']['seed'] == 3
    torch.save(dict(state_dict={}, meta=dict(payload=_Payload())), tmp_path / 'foreign.pth')
    with pytest.raises(Exception, match='Weights only load failed'):
        load_local_checkpoint(str(tmp_path / 'foreign.pth'))
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        load_local_checkpoint(str(tmp_path / 'missing.pth'))


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import mmengine.runner.runner as mm_runner

    cfg = Config.fromfile(DIGITS)
    cfg.merge_from_dict({'work_dir': str(tmp_path), 'experiment_name': 'atomic_save',
                         'model.backbone.dims': 8, 'train_dataloader.dataset.indices': 8})
    runner = Runner.from_cfg(cfg)
    out_dir = tmp_path / 'checkpoints'
    runner.save_checkpoint(str(out_dir), 'epoch_1.pth', save_optimizer=False, save_param_scheduler=False)
    good = torch.load(out_dir / 'epoch_1.pth', weights_only=False)['state_dict']

    def dies_half_way(checkpoint, filename, **kwargs):
        with open(filename, 'wb') as f:
            f.write(b'PK\x03\x04 half a zip')
        raise OSError('No space left on device')

    monkeypatch.setattr(mm_runner, 'save_checkpoint', dies_half_way)
    with torch.no_grad():
        next(runner.model.parameters()).add_(1.0)
    with pytest.raises(OSError, match='No space left'):
        runner.save_checkpoint(str(out_dir), 'epoch_1.pth', save_optimizer=False, save_param_scheduler=False)
    kept = torch.load(out_dir / 'epoch_1.pth', weights_only=False)['state_dict']
    assert all(torch.equal(good[k], kept[k]) for k in good)
    assert os.listdir(out_dir) == ['epoch_1.pth']  # and no half-written leftovers


# --- configs --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: os.path.relpath(p, os.path.join(ROOT, 'configs')))
def test_config_builds_its_model_and_optimizer(path):
    cfg = Config.fromfile(path)
    init_default_scope(cfg.default_scope)
    model_cfg = cfg.model.copy()
    if cfg.get('data_preprocessor'):  # the dataset config's, which mmengine's Runner puts into the model
        model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
    with torch.device('meta'):  # the base models are ~100M parameters: shapes only, no memory, no download
        model = visionssm.registry.MODELS.build(model_cfg)
    assert isinstance(model, ImageClassifier) and model.num_classes == (10 if 'digits' in path else 1000)
    expected = 'BatchAugmentDataPreprocessor' if 'gpu-aug' in path else 'ClsDataPreprocessor'
    assert type(model.data_preprocessor).__name__ == expected
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    decayed = {id(p) for g in optim_wrapper.optimizer.param_groups if g['weight_decay'] > 0 for p in g['params']}
    assert all(id(p) not in decayed for n, p in model.named_parameters() if p.ndim <= 1 or n.endswith('.bias'))
    assert cfg.train_cfg.max_epochs > 0 and cfg.val_evaluator.type == 'Accuracy'
