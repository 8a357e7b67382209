"""Can the host feed the GPU? A classification config's training pipeline, measured without a model.

Three measurements on the config's own ``train_pipeline``, ``train_dataloader`` and data preprocessor (an
ImageNet-layout folder, e.g. from ``tools/make_synthetic_data.py --tasks cls``):

- **per stage**: milliseconds per image of each transform (decode, crop/flip, RandAugment, erasing, packing), in
  this process, one thread: where a worker's time goes;
- **loader**: images/s delivered by the config's DataLoader (collate and, for the model, the host-to-device copy
  of each batch when a GPU is present) for each ``--workers`` count: what the training loop can consume at most;
- **device**: milliseconds per image of each step of the same recipe on the device (``BatchAugmentDataPreprocessor``,
  the ``imagenet_bs128_gpu_aug.py`` route: decode, crop/flip, RandAugment, normalise/erasing, and the evaluation
  view) at ``--device-batch`` images per batch, on the GPU if there is one (else the CPU, for information): time
  that the training step then spends on its device. With a gpu-aug config its own settings are measured.

Compare the loader's images/s with the model's training throughput (``tools/benchmark.py --measure train``); the
lower of the two bounds ``tools/train.py``. On the device route the workers only read files, and the device's
augmentation time adds to the step's.

    python benchmarks/data_pipeline.py configs/classification/vmamba/vmamba-t-s1l8_8xb128_in1k.py \\
        --data-root data/synthetic/imagenet --workers 4 8 16 --batches 20 --json data_pipeline.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import torch  # noqa: E402


def per_stage(cfg, data_root: str, images: int) -> list[dict]:
    """Each transform's mean ms/image over ``images`` training files, run in this process."""
    import cv2

    from visionssm.mm.datasets import ImageFolderDataset  # noqa: F401  (registers the dataset)
    from visionssm.registry import TRANSFORMS

    cv2.setNumThreads(0)
    dataset_cfg = cfg.train_dataloader.dataset
    stages = [(t['type'], TRANSFORMS.build(t)) for t in dataset_cfg.pipeline]
    dataset = _dataset(cfg, data_root, pipeline=[])
    if len(dataset) == 0:
        raise ValueError(f'no training images under {data_root!r}')
    spent = [0.0] * len(stages)
    count = 0
    for index in range(min(images, len(dataset))):
        results = dataset.get_data_info(index)
        for s, (_, transform) in enumerate(stages):
            start = time.perf_counter()
            results = transform(results)
            spent[s] += time.perf_counter() - start
            if results is None:
                break
        count += results is not None
    return [dict(stage=name, ms_per_img=round(1e3 * t / max(count, 1), 3)) for (name, _), t in zip(stages, spent)]


def _dataset(cfg, data_root: str, pipeline=None):
    from visionssm.registry import DATASETS

    dataset_cfg = cfg.train_dataloader.dataset.copy()
    dataset_cfg['data_root'] = data_root
    if pipeline is not None:
        dataset_cfg['pipeline'] = pipeline
    return DATASETS.build(dataset_cfg)


def loader_rate(cfg, data_root: str, workers: int, batches: int, device: torch.device) -> dict:
    """Images/s of the config's DataLoader with ``workers`` processes (after one warm-up batch per worker)."""
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner

    loader_cfg = cfg.train_dataloader.copy()
    loader_cfg['dataset'] = cfg.train_dataloader.dataset.copy()
    loader_cfg['dataset']['data_root'] = data_root
    loader_cfg.update(num_workers=workers, persistent_workers=workers > 0)
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope') or 'visionssm'):
        loader = Runner.build_dataloader(loader_cfg, seed=0)
    batch_size = loader_cfg['batch_size']
    times, it = [], iter(loader)
    needed = max(workers, 1) + batches
    start = time.perf_counter()
    for b in range(needed):
        try:
            data = next(it)
        except StopIteration:  # a small folder: start another epoch
            it = iter(loader)
            data = next(it)
        # encoded files (PackEncodedImage) stay on the host: the device's data preprocessor reads them there
        encoded = isinstance(data['inputs'], list) and all(x.ndim == 1 for x in data['inputs'])
        if device.type == 'cuda' and not encoded:
            data['inputs'] = [x.to(device, non_blocking=True) for x in data['inputs']] \
                if isinstance(data['inputs'], list) else data['inputs'].to(device, non_blocking=True)
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        if b >= max(workers, 1):  # the first batches only measure the workers' start
            times.append(now - start)
        start = now
    return dict(workers=workers, batch=batch_size, batches=len(times),
                img_per_s=round(batch_size / statistics.median(times), 1),
                img_per_s_mean=round(batch_size * len(times) / sum(times), 1))


def device_stages(cfg, data_root: str, batch_size: int, batches: int, device: torch.device) -> list[dict]:
    """Mean ms/image of each step of ``BatchAugmentDataPreprocessor`` on ``device`` (one warm-up batch first)."""
    from visionssm.registry import MODELS

    pre_cfg = cfg.get('data_preprocessor') or {}
    if pre_cfg.get('type') != 'BatchAugmentDataPreprocessor':  # a CPU-route config: the same recipe's defaults
        pre_cfg = dict(type='BatchAugmentDataPreprocessor')
    pre = MODELS.build(pre_cfg).to(device)
    dataset = _dataset(cfg, data_root, pipeline=[dict(type='PackEncodedImage')])
    if len(dataset) == 0:
        raise ValueError(f'no training images under {data_root!r}')
    files = [dataset[i % len(dataset)] for i in range(batch_size)]
    encoded = [f['inputs'] for f in files]

    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    steps = [
        ('decode', lambda _: pre.decode(encoded)[0]),
        ('crop+flip', pre.crop_flip),
        ('RandAugment', lambda x: pre.rand_augment(x, pre.generators()[0]) if pre.rand_augment else x),
        ('normalise+erasing', lambda x: pre.normalize(x, erase=True)),
    ]
    spent = {name: 0.0 for name, _ in steps}
    spent['eval view'] = 0.0
    for b in range(batches + 1):
        x = None
        for name, step in steps:
            sync()
            start = time.perf_counter()
            x = step(x)
            sync()
            if b:  # the first batch warms up (cuDNN, nvJPEG handles, allocator)
                spent[name] += time.perf_counter() - start
            if name == 'decode':
                images = x
        sync()
        start = time.perf_counter()
        pre.normalize(pre.center_crop(images))
        sync()
        if b:
            spent['eval view'] += time.perf_counter() - start
    per_img = 1e3 / (batches * batch_size)
    return [dict(stage=name, ms_per_img=round(t * per_img, 4)) for name, t in spent.items()]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('config')
    p.add_argument('--data-root', required=True, help='an ImageNet-layout folder (train/<class>/*.JPEG)')
    p.add_argument('--workers', type=int, nargs='+', default=[os.cpu_count() or 1])
    p.add_argument('--batches', type=int, default=20, help='timed batches per worker count')
    p.add_argument('--batch-size', type=int, help="override the config's train_dataloader.batch_size")
    p.add_argument('--stage-images', type=int, default=200, help='images for the per-stage timing (0: skip)')
    p.add_argument('--device-batch', type=int, default=128,
                   help='batch size of the device-route timing (0: skip)')
    p.add_argument('--device-batches', type=int, default=5, help='timed batches of the device-route timing')
    p.add_argument('--json')
    args = p.parse_args(argv)

    from mmengine.config import Config

    import visionssm.mm  # noqa: F401  (registers the transforms and datasets)
    cfg = Config.fromfile(args.config)
    if args.batch_size:
        cfg.train_dataloader.batch_size = args.batch_size
    if not os.path.isdir(os.path.join(args.data_root, 'train')):
        raise FileNotFoundError(f"{args.data_root!r} has no 'train' folder: not an ImageNet-layout folder")
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    result = dict(config=args.config, cpu_count=os.cpu_count(), machine=platform.processor() or platform.machine(),
                  torch=torch.__version__, device=str(device))
    if args.stage_images:
        result['stages'] = per_stage(cfg, args.data_root, args.stage_images)
        total = sum(s['ms_per_img'] for s in result['stages'])
        result['ms_per_img'] = round(total, 3)
        print(f"{'stage':24s} {'ms/img':>8s}")
        for s in result['stages']:
            print(f"{s['stage']:24s} {s['ms_per_img']:8.2f}")
        print(f"{'total (one core)':24s} {total:8.2f}  -> {1e3 / total:.0f} img/s per core")
    if args.device_batch:
        result['device_stages'] = device_stages(cfg, args.data_root, args.device_batch, args.device_batches, device)
        train = sum(s['ms_per_img'] for s in result['device_stages'] if s['stage'] != 'eval view')
        result['device_ms_per_img'] = round(train, 4)
        print(f"{'on ' + device.type + ', batch ' + str(args.device_batch):24s} {'ms/img':>8s}")
        for s in result['device_stages']:
            print(f"{s['stage']:24s} {s['ms_per_img']:8.3f}")
        print(f"{'training total':24s} {train:8.3f}  -> {1e3 / train:.0f} img/s on the device")
    result['loader'] = []
    for workers in args.workers:
        row = loader_rate(cfg, args.data_root, workers, args.batches, device)
        result['loader'].append(row)
        print(f"loader, {workers:3d} workers, batch {row['batch']}: {row['img_per_s']:8.1f} img/s "
              f"(mean {row['img_per_s_mean']:.1f})", flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == '__main__':
    main()
