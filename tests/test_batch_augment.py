"""The ImageNet pipeline on the model's device (visionssm/mm/batch_augment.py), run on the CPU: decoding, the crop
and flip statistics, each RandAugment op against timm's PIL op, erasing, the evaluation view against the CPU test
pipeline, and tools/train.py with the gpu-aug recipe."""
import io
import json
import os

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip('mmengine')

from mmengine.config import Config  # noqa: E402
from mmengine.dataset import pseudo_collate  # noqa: E402
from PIL import Image  # noqa: E402
from timm.data import auto_augment as timm_aa  # noqa: E402

from visionssm.mm import batch_augment as ba  # noqa: E402
from visionssm.mm.runner import test_main as evaluate_main  # noqa: E402  (not collected as a test)
from visionssm.mm.runner import train_main  # noqa: E402
from visionssm.registry import MODELS, TRANSFORMS  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, 'configs/classification')
GPU_AUG = os.path.join(CONFIGS, 'vmamba/vmamba-t-s1l8_8xb128_in1k_gpu-aug.py')


def _photo(height, width, seed=0, grain=6.0):
    """Smooth colour fields, a sharp diagonal edge and fine grain: what a photo costs a decoder."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([128 + 100 * np.sin(x / 17.0 + seed), 128 + 90 * np.cos(y / 23.0), (x + y) % 256], -1)
    return np.clip(img + rng.normal(0, grain, img.shape), 0, 255).astype(np.uint8)


def _encode(img, ext='.jpg'):
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(img[..., ::-1]),
                           [cv2.IMWRITE_JPEG_QUALITY, 95] if ext == '.jpg' else [])
    assert ok
    return torch.from_numpy(buf.ravel().copy())


def _bytes(data: bytes):
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


# ------------------------------------------------------------------------------------------------------ decoding

def test_decode_jpeg_png_gray_cmyk_bmp_and_garbage():
    img = _photo(60, 80)
    gray = img[..., 0]
    pil_cmyk = io.BytesIO()
    Image.fromarray(img).convert('CMYK').save(pil_cmyk, format='JPEG', quality=95)
    pil_bmp = io.BytesIO()
    Image.fromarray(img).save(pil_bmp, format='BMP')
    gray_jpeg = torch.from_numpy(cv2.imencode('.jpg', gray, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].ravel().copy())
    encoded = [_encode(img), _encode(img, '.png'), gray_jpeg, _bytes(pil_cmyk.getvalue()), _bytes(pil_bmp.getvalue()),
               _bytes(b'\xff\xd8 truncated jpeg')]
    images = ba.decode_images(encoded, torch.device('cpu'))
    assert images[-1] is None
    for image in images[:-1]:
        assert image.dtype == torch.uint8 and image.shape == (3, 60, 80)

    def hwc(t):
        return t.permute(1, 2, 0).numpy().astype(int)

    # the same libjpeg as OpenCV's: within a decoder's rounding of cv2's decode
    reference = cv2.cvtColor(cv2.imdecode(encoded[0].numpy(), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(int)
    assert np.abs(hwc(images[0]) - reference).max() <= 2
    assert np.array_equal(hwc(images[1]), img)  # PNG is lossless
    reference = cv2.imdecode(encoded[2].numpy(), cv2.IMREAD_GRAYSCALE).astype(int)
    assert all(np.abs(hwc(images[2])[..., c] - reference).max() <= 1 for c in range(3))
    reference = np.asarray(Image.open(io.BytesIO(pil_cmyk.getvalue())).convert('RGB')).astype(int)
    assert np.abs(hwc(images[3]) - reference).max() <= 2
    assert np.array_equal(hwc(images[4]), img)  # BMP, through PIL


def test_pack_encoded_image_collates_to_a_list(tmp_path):
    for name, (h, w) in (('a.jpg', (40, 50)), ('b.jpg', (70, 30))):
        cv2.imwrite(str(tmp_path / name), _photo(h, w))
    (tmp_path / 'empty.jpg').write_bytes(b'')
    pack = TRANSFORMS.build(dict(type='PackEncodedImage'))
    samples = [pack(dict(img_path=str(tmp_path / n), gt_label=k)) for k, n in enumerate(('a.jpg', 'b.jpg'))]
    assert pack(dict(img_path=str(tmp_path / 'empty.jpg'), gt_label=0)) is None
    batch = pseudo_collate(samples)
    assert isinstance(batch['inputs'], list) and len(batch['inputs']) == 2
    assert [len(x) for x in batch['inputs']] == [os.path.getsize(tmp_path / n) for n in ('a.jpg', 'b.jpg')]
    assert all(x.dtype == torch.uint8 and x.ndim == 1 for x in batch['inputs'])
    assert [int(s.gt_label) for s in batch['data_samples']] == [0, 1]
    assert batch['data_samples'][1].img_path == str(tmp_path / 'b.jpg')


# ------------------------------------------------------------------------------------------ the data preprocessor

def _preprocessor(**kwargs):
    import visionssm.mm  # noqa: F401  (registers)
    return MODELS.build(dict(type='BatchAugmentDataPreprocessor', **kwargs))


def _batch(sizes, labels=True):
    from mmengine.structures import BaseDataElement
    samples = []
    for k in range(len(sizes)):
        sample = BaseDataElement(metainfo=dict(img_path=f'img{k}.jpg'))
        if labels:
            sample.gt_label = torch.tensor(k)
        samples.append(sample)
    return dict(inputs=[_encode(_photo(h, w, seed=k)) for k, (h, w) in enumerate(sizes)], data_samples=samples)


def test_preprocessor_outputs_and_errors(caplog):
    pre = _preprocessor(img_size=32)
    sizes = [(40, 50), (70, 30), (33, 33), (64, 48)]
    for training in (True, False):
        out = pre(_batch(sizes), training=training)
        assert out['inputs'].shape == (4, 3, 32, 32) and out['inputs'].dtype == torch.float32
        assert [int(s.gt_label) for s in out['data_samples']] == [0, 1, 2, 3]
        assert out['inputs'].abs().max() < 5  # normalised
    assert pre.state_dict() == {}  # checkpoints stay those of ImgDataPreprocessor's models

    data = _batch(sizes)
    data['inputs'][1] = _bytes(b'not an image')
    out = pre(data, training=True)
    assert out['inputs'].shape[0] == 4 and int(out['data_samples'][1].gt_label) == 0  # replaced by image 0
    data['inputs'] = [_bytes(b'not an image')] * 4
    with pytest.raises(ValueError, match='no readable image in the batch'):
        pre(data, training=True)
    with pytest.raises(TypeError, match="PackEncodedImage"):
        pre(dict(inputs=[torch.zeros(3, 8, 8, dtype=torch.uint8)]), training=True)
    with pytest.raises(ValueError, match='unsupported section'):
        _preprocessor(rand_augment='rand-m9-tweights')


def test_seeded_runs_are_reproducible_and_ranks_differ(monkeypatch):
    data = _batch([(40, 50), (70, 30), (50, 60), (64, 48)])

    def run(seed, rank=0):
        monkeypatch.setattr('mmengine.dist.get_rank', lambda: rank)
        torch.manual_seed(seed)
        pre = _preprocessor(img_size=32)
        return pre(data, training=True)['inputs'], pre(data, training=True)['inputs']

    (a, a2), (b, b2) = run(3), run(3)
    assert torch.equal(a, b) and torch.equal(a2, b2) and not torch.equal(a, a2)
    assert not torch.equal(run(4)[0], a) and not torch.equal(run(3, rank=1)[0], a)


def test_autocast_does_not_reach_the_augmentation():
    """mmengine runs the data preprocessor inside the AMP context; the augmentation stays in full precision."""
    data = _batch([(40, 50), (70, 30), (50, 60), (64, 48)] * 4)
    outputs = []
    for enabled in (False, True):
        torch.manual_seed(0)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=enabled):
            outputs.append(_preprocessor(img_size=32)(data, training=True)['inputs'])
    assert outputs[1].dtype == torch.float32 and torch.equal(*outputs)


def test_random_resized_crop_follows_torchvision():
    from torchvision.transforms import RandomResizedCrop
    torch.manual_seed(0)
    n, height, width = 4000, 300, 400
    boxes = ba.random_resized_crop_params(torch.tensor([[height, width]] * n)).double()
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    area = h * w / (height * width)
    # within the scale and ratio bounds, up to the rounding of the sides to pixels
    assert area.min() >= 0.08 * 0.95 and area.max() <= 1.0
    assert (w / h).min() >= 0.75 * 0.95 and (w / h).max() <= 4 / 3 * 1.05
    reference = torch.tensor([RandomResizedCrop.get_params(torch.empty(1, height, width), (0.08, 1.0), (3 / 4, 4 / 3))
                              for _ in range(n)], dtype=torch.float64)
    ref_area = reference[:, 2] * reference[:, 3] / (height * width)
    assert abs(area.mean() - ref_area.mean()) < 0.02 and abs(area.std() - ref_area.std()) < 0.02
    assert abs((w / h).log().mean() - (reference[:, 3] / reference[:, 2]).log().mean()) < 0.02
    assert abs(top.mean() - reference[:, 0].mean()) < 5 and abs(left.mean() - reference[:, 1].mean()) < 5

    # a strip no candidate fits: torchvision's fallback, the centre crop at the nearest ratio in range
    strip = ba.random_resized_crop_params(torch.tensor([[10, 1000], [1000, 10]]), scale=(0.9, 1.0))
    assert strip.tolist() == [[0, 493, 10, 13], [493, 0, 13, 10]]


def test_flip_probability_and_crop():
    # with the crop fixed to the whole (square) image, each output is the resized image or its mirror image
    pre = _preprocessor(img_size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), rand_augment=None, erasing_prob=0.0)
    img = _photo(32, 32)
    data = dict(inputs=[_encode(img, '.png')] * 400)
    torch.manual_seed(0)
    out = pre(data, training=True)['inputs']
    plain = (torch.from_numpy(img).permute(2, 0, 1).float() - pre.mean[0]) / pre.std[0]
    same = (out - plain).abs().amax(dim=(1, 2, 3)) < 1e-4
    mirrored = (out - plain.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-4
    assert (same ^ mirrored).all()
    assert abs(mirrored.float().mean() - 0.5) < 0.08


# ------------------------------------------------------------------------------------------------------ RandAugment

@pytest.mark.parametrize('inc', [0, 1])
def test_rand_augment_op_set_and_config(inc):
    aug = ba.BatchRandAugment(f'rand-m9-mstd0.5-inc{inc}')
    assert list(aug.ops) == (timm_aa._RAND_INCREASING_TRANSFORMS if inc else timm_aa._RAND_TRANSFORMS)
    assert (aug.magnitude, aug.magnitude_std, aug.num_layers, aug.prob, aug.magnitude_max) == (9, 0.5, 2, 0.5, 10)
    torch.manual_seed(0)
    choice = aug.sample(60000)
    assert abs(choice['applied'].double().mean() - 0.5) < 0.01
    assert abs(choice['magnitude'].mean() - 9) < 0.01 and abs(choice['magnitude'].std() - 0.5) < 0.01
    assert choice['magnitude'].max() <= 10
    counts = torch.bincount(choice['op'], minlength=len(aug.ops)).double() / 60000
    assert (counts - 1 / len(aug.ops)).abs().max() < 0.005
    assert abs((choice['sign'] < 0).double().mean() - 0.5) < 0.01
    with pytest.raises(ValueError, match="must start with 'rand'"):
        ba.BatchRandAugment('augmix-m5')


@pytest.mark.parametrize('name', sorted(ba.RAND_AUGMENT_OPS))
def test_rand_augment_op_matches_timm(name, monkeypatch):
    """Each op's argument is timm's for the magnitude and sign, and its output timm's PIL op's."""
    img = _photo(48, 40)
    batch = torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()
    level_to_arg, op = ba.RAND_AUGMENT_OPS[name]
    for magnitude in (2.0, 9.0, 9.7, 10.0):
        for sign in (1.0, -1.0):
            monkeypatch.setattr(timm_aa, '_randomly_negate', (lambda v: -v) if sign < 0 else (lambda v: v))
            timm_level_to_arg = timm_aa.LEVEL_TO_ARG[name]
            timm_args = timm_level_to_arg(magnitude, {}) if timm_level_to_arg else ()
            args = None
            if level_to_arg is not None:
                args = level_to_arg(torch.tensor([magnitude / 10], dtype=torch.float64),
                                    torch.tensor([sign], dtype=torch.float64))
                assert args.item() == pytest.approx(timm_args[0], abs=1e-9), (magnitude, sign)
            for resample, bicubic in ((Image.BILINEAR, False), (Image.BICUBIC, True)):
                if name.startswith('Posterize') and timm_args[0] == 0:
                    expected = np.zeros_like(img)  # Pillow >= 12 refuses 0 bits; older Pillow gave black
                else:
                    expected = np.asarray(timm_aa.NAME_TO_OP[name](Image.fromarray(img), *timm_args,
                                                                    fillcolor=(124, 116, 104), resample=resample))
                if op is None:
                    out = ba._affine(batch, ba._affine_matrices([name], args, 48, 40), torch.tensor([bicubic]),
                                     torch.tensor([124.0, 116.0, 104.0]))
                else:
                    out = op(batch, args.float() if args is not None else None)
                diff = np.abs(out[0].permute(1, 2, 0).numpy().astype(int) - expected.astype(int))
                if op is not None or not bicubic:
                    assert diff.max() <= 1, (magnitude, sign, diff.max())  # PIL's rounding
                else:  # torch's bicubic kernel (a = -0.75) is not PIL's (a = -0.5): edges differ a little
                    assert diff.mean() < 1.0, (magnitude, sign, diff.mean())
                if op is not None:
                    break  # one resampling mode is enough for the ops that do not resample


def test_rand_augment_batch_applies_ops_per_image():
    aug = ba.BatchRandAugment('rand-m9-mstd0.5-inc1')
    images = torch.from_numpy(_photo(32, 32)).permute(2, 0, 1)[None].repeat(64, 1, 1, 1)
    torch.manual_seed(0)
    choice = aug.sample(64)
    out = aug.apply(images.clone(), choice)
    changed = (out != images).flatten(1).any(1)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert not changed[~choice['applied']].any()  # the ops not applied leave their image alone
    assert changed[choice['applied']].double().mean() > 0.8  # nearly every op changes a photo
    for i in choice['applied'].nonzero().squeeze(1)[:8].tolist():  # each image got its own op
        name = aug.ops[choice['op'][i]]
        level_to_arg, op = ba.RAND_AUGMENT_OPS[name]
        args = level_to_arg(choice['magnitude'][i:i + 1] / 10, choice['sign'][i:i + 1]) if level_to_arg else None
        if op is None:
            expected = ba._affine(images[:1], ba._affine_matrices([name], args, 32, 32), choice['bicubic'][i:i + 1],
                                  aug.fill)
        else:
            expected = op(images[:1], args.float() if args is not None else None)
        assert torch.equal(out[i:i + 1], expected), name


# ------------------------------------------------------------------------------------------------------- erasing

def test_random_erasing_probability_and_boxes():
    torch.manual_seed(0)
    n = 2000
    images = ba.random_erasing(torch.zeros(n, 3, 40, 40), prob=0.25)
    erased = images.ne(0).flatten(1).any(1)
    assert abs(erased.double().mean() - 0.25) < 0.03
    mask = images[erased].ne(0).all(1)  # noise in every channel of the box
    area = mask.flatten(1).double().mean(1)
    assert area.min() >= 0.02 * 0.8 and area.max() <= 1 / 3 * 1.15
    rows, cols = mask.any(2).sum(1), mask.any(1).sum(1)
    assert torch.equal(rows * cols, mask.flatten(1).sum(1))  # one rectangle per image
    noise = images[erased][mask[:, None].expand(-1, 3, -1, -1)]
    assert abs(noise.mean()) < 0.02 and abs(noise.std() - 1) < 0.02


# ------------------------------------------------------------------------------------------------ evaluation view

def test_eval_view_matches_the_cpu_test_pipeline(tmp_path):
    """Shorter side to 256, centre 224: the preprocessor against the CPU recipe's test pipeline and PIL's resize
    (timm's). cv2's bicubic has no antialiasing: grain and sharp edges differ from the antialiased resize, so the
    image here is smooth; without antialiasing the two resizes agree to within 1."""
    import visionssm.mm  # noqa: F401
    cfg = Config.fromfile(os.path.join(CONFIGS, '_base_/datasets/imagenet_bs128.py'))
    cpu = [TRANSFORMS.build(t) for t in cfg.test_pipeline]
    pre = _preprocessor()
    for k, (h, w) in enumerate(((375, 500), (333, 500), (300, 260))):
        path = str(tmp_path / f'{k}.png')
        img = _photo(h, w, seed=k, grain=0)
        img[..., 2] = 128 + 60 * np.sin(np.arange(w) / 11.0)  # no sharp edge either
        cv2.imwrite(path, img[..., ::-1])
        results = dict(img_path=path)
        for t in cpu:
            results = t(results)
        expected = results['inputs'].float()
        out = pre(dict(inputs=[_bytes(open(path, 'rb').read())]), training=False)['inputs'][0]
        out = out * pre.std[0] + pre.mean[0]
        assert out.shape == expected.shape == (3, 224, 224)
        diff = (out - expected).abs()
        assert diff.mean() < 0.5 and diff.max() <= 4, (h, w, diff.mean(), diff.max())
        new_w, new_h = (256, 256 * h // w) if w <= h else (256 * w // h, 256)
        top, left = (new_h - 224) // 2, (new_w - 224) // 2
        pil = np.asarray(Image.fromarray(img).resize((new_w, new_h), Image.BICUBIC))[top:top + 224, left:left + 224]
        diff = (out - torch.from_numpy(pil.copy()).permute(2, 0, 1)).abs()
        assert diff.mean() < 0.1 and diff.max() <= 1, (h, w, diff.mean(), diff.max())


# ------------------------------------------------------------------------------------------------- tools/train.py

def test_train_gpu_aug_recipe_on_a_generated_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / 'data'
    for split, n in (('train', 6), ('val', 2)):
        for c in range(3):
            os.makedirs(root / split / f'n0{c}')
            for i in range(n):
                cv2.imwrite(str(root / split / f'n0{c}' / f'{i}.jpg'), rng.integers(0, 255, (40, 48, 3), np.uint8))
    (root / 'train' / 'n00' / 'broken.jpg').write_bytes(b'\xff\xd8 truncated jpeg')
    options = ['data_preprocessor.img_size=32', 'model.backbone.model_name=test_vmamba', 'model.num_classes=3',
               f'train_dataloader.dataset.data_root={root}', f'val_dataloader.dataset.data_root={root}',
               'train_dataloader.batch_size=4', 'val_dataloader.batch_size=4',
               # one worker: the batches cross a process boundary as pack_collate packs them
               'train_dataloader.num_workers=1', 'val_dataloader.num_workers=0',
               'train_dataloader.persistent_workers=False', 'val_dataloader.persistent_workers=False',
               'train_cfg.max_epochs=1', 'experiment_name=gpu_aug_recipe']
    work_dir = tmp_path / 'work'
    train_main([GPU_AUG, '--work-dir', str(work_dir), '--amp', '--cfg-options', *options])
    checkpoint = torch.load(work_dir / 'epoch_1.pth', map_location='cpu', weights_only=False)
    assert checkpoint['meta']['iter'] == 4  # 19 files, 4 full batches of 4; the broken one is replaced in its batch
    assert not any('data_preprocessor' in k for k in checkpoint['state_dict'])
    cfg = Config.fromfile(work_dir / os.path.basename(GPU_AUG))
    assert cfg.data_preprocessor.type == 'BatchAugmentDataPreprocessor' and 'data_preprocessor' not in cfg.model
    assert 'ema_state_dict' in checkpoint  # the recipe's EMA
    (epoch,) = json.load(open(work_dir / 'learning_curve.json'))

    # tools/test.py through the same route reproduces the validation of the last epoch
    test_options = [o.replace('val_dataloader', 'test_dataloader') for o in options if 'val_dataloader' in o]
    evaluate_main([GPU_AUG, str(work_dir / 'epoch_1.pth'), '--work-dir', str(tmp_path / 'test'), '--cfg-options',
                   *options[:-1], *test_options, 'experiment_name=gpu_aug_recipe_test'])
    logs = sorted((tmp_path / 'test').glob('*/*.json'))
    tested = json.loads(logs[-1].read_text().splitlines()[-1])
    assert tested['accuracy/top1'] == pytest.approx(epoch['accuracy/top1'])


# ------------------------------------------------------------------------------------------------------ on CUDA

@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_route_matches_the_cpu_route():
    """nvJPEG against libjpeg, then each step on CUDA against the CPU with the same draws."""
    data = _batch([(375, 500), (333, 500), (500, 375), (64, 48)] * 4)
    cpu_images = ba.decode_images(data['inputs'], torch.device('cpu'))
    cuda_images = ba.decode_images(data['inputs'], torch.device('cuda'))
    for a, b in zip(cpu_images, cuda_images):
        assert b.is_cuda and b.shape == a.shape
        diff = (a.int() - b.cpu().int()).abs().float()
        assert diff.mean() < 1.5 and diff.quantile(0.99) <= 6  # the decoders' IDCT and chroma upsampling differ

    cpu_pre, cuda_pre = _preprocessor(erasing_prob=0.0), _preprocessor(erasing_prob=0.0).cuda()
    for training in (True, False):
        torch.manual_seed(0)
        cpu_pre._generators = cuda_pre._generators = None
        a = cpu_pre(data, training=training)['inputs']
        b = cuda_pre(data, training=training)['inputs']
        assert b.is_cuda
        diff = (a - b.cpu()).abs() * cpu_pre.std  # in grey levels
        assert diff.mean() < 2.0, (training, diff.mean())

    aug = ba.BatchRandAugment()
    batch = ba.resize_center_crop(cpu_images, 256, 224)
    for _ in range(4):
        choice = aug.sample(len(batch))
        a, b = aug.apply(batch.clone(), choice), aug.apply(batch.cuda(), choice).cpu()
        diff = (a.int() - b.int()).abs()
        assert diff.float().mean() < 0.05 and (diff > 1).float().mean() < 1e-3  # float rounding at .5 only
