"""The two Python steps of ``benchmarks/dist_scaling.sh``: write the data and the run configs, then the report.

    python benchmarks/dist_scaling.py prepare DIR [--iters 200] [--cls-batch 128] [--det-batch 2] [--workers 8]
    python benchmarks/dist_scaling.py report DIR [--warmup 50]

``prepare`` writes ``DIR/data/imagenet`` (an ImageNet-layout folder of generated images), ``DIR/data/coco`` (the
synthetic COCO set of ``visionssm.mm.synthetic``) and ``DIR/configs/{cls,det}.py``: the VMamba-T ImageNet recipe
and the VMamba-T Mask R-CNN 1x config as released, changed only in what a fixed-length timing run needs: an
iteration-based loop of ``--iters`` iterations, no validation, no checkpoints, one log entry per 10 iterations
averaging those 10, seed 0, the synthetic data, no pretrained download. The classification warm-up runs over
those iterations rather than over 20 epochs, so that the learning rate at an iteration is the same on any number
of GPUs (an epoch of the small set is a different number of iterations on each).

``report`` reads each run's ``vis_data/scalars.json`` (rank 0's log) and writes ``DIR/dist_scaling.json`` and
``DIR/dist_scaling.md`` (and the loss curves as ``DIR/dist_scaling_loss.png``): per run s/iter and data s/iter
(medians of the entries after ``--warmup`` iterations), images/s = GPUs × batch per GPU / s/iter, scaling efficiency
= images/s on N GPUs ÷ (N × images/s on 1 GPU), peak memory (rank 0's ``max_memory_allocated``; every rank holds the
same model and batch) and the loss curve (rank 0's loss, over its own batch per GPU, as mmengine logs it).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import re
import statistics
import subprocess
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    'cls': 'configs/classification/vmamba/vmamba-t-s1l8_8xb128_in1k.py',
    'det': 'configs/detection/mask-rcnn_vmamba-t_fpn_1x_coco.py',
}
LOG_INTERVAL = 10


def write_image_folder(root: Path, classes: int = 100, per_class: int = 16, val_per_class: int = 2,
                       size: tuple = (320, 400), seed: int = 0) -> Path:
    """An ImageNet-layout folder, ``root/{train,val}/<class>/<n>.JPEG``: per class a colour and a stripe
    direction under noise (learnable, so that the loss falls), JPEG at about ImageNet's mean size."""
    import cv2

    rng = np.random.default_rng(seed)
    height, width = size
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    for c in range(classes):
        colour = rng.integers(40, 216, size=3)
        angle = np.pi * c / classes
        stripes = (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) / 6.0)[..., None] * 40).astype(np.float32)
        for split, count in (('train', per_class), ('val', val_per_class)):
            folder = root / split / f'n{c:08d}'
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                noise = rng.normal(0, 25, size=(height, width, 3)).astype(np.float32)
                image = np.clip(colour + stripes + noise, 0, 255).astype(np.uint8)
                cv2.imwrite(str(folder / f'{i:04d}.JPEG'), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return root


def _nest(options: dict) -> dict:
    """Dotted ``--cfg-options`` keys as nested dicts: {'a.b.c': 1} -> {'a': {'b': {'c': 1}}}."""
    tree: dict = {}
    for key, value in options.items():
        *parents, leaf = key.split('.')
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def run_config(task: str, data: Path, iters: int, batch: int, workers: int) -> str:
    """The text of a config that inherits the released one and sets what a fixed-length timing run changes."""
    from visionssm.mm.synthetic import dataset_cfg_options

    settings = dict(
        train_cfg=dict(_delete_=True, type='IterBasedTrainLoop', max_iters=iters),
        val_dataloader=None, val_cfg=None, val_evaluator=None,
        default_hooks=dict(checkpoint=None, logger=dict(interval=LOG_INTERVAL)),
        log_processor=dict(by_epoch=False, window_size=LOG_INTERVAL),
        randomness=dict(seed=0, deterministic=False),
        train_dataloader=dict(batch_size=batch, num_workers=workers, persistent_workers=workers > 0))
    if task == 'cls':
        settings['train_dataloader']['dataset'] = dict(data_root=str(data / 'imagenet'))
        settings['param_scheduler'] = [dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=iters)]
    else:
        settings['model'] = dict(backbone=dict(init_cfg=None))  # speed does not depend on pretrained weights
        coco = _nest({k: v for k, v in dataset_cfg_options('det', data / 'coco').items()
                      if k.startswith('train_dataloader.')})
        settings['train_dataloader']['dataset'] = coco['train_dataloader']['dataset']
    lines = [f'_base_ = [{str(ROOT / CONFIGS[task])!r}]'] + [f'{k} = {v!r}' for k, v in settings.items()]
    return '\n'.join(lines) + '\n'


def prepare(args) -> None:
    from visionssm.mm.synthetic import make_coco_instances

    data = args.out / 'data'
    write_image_folder(data / 'imagenet', classes=args.classes, per_class=args.per_class)
    make_coco_instances(data / 'coco', num_train=args.coco_train, num_val=2, size=(480, 640))
    (args.out / 'configs').mkdir(parents=True, exist_ok=True)
    batches = dict(cls=args.cls_batch, det=args.det_batch)
    paths = {}
    for task, batch in batches.items():
        paths[task] = args.out / 'configs' / f'{task}.py'
        paths[task].write_text(run_config(task, data, args.iters, batch, args.workers))
    plan = dict(iters=args.iters, batch_per_gpu=batches,
                configs={task: CONFIGS[task] for task in paths})
    (args.out / 'plan.json').write_text(json.dumps(plan, indent=1))
    print('\n'.join(str(p) for p in paths.values()))


# --------------------------------------------------------------------------------------------------- report

def _scalars(work_dir: Path) -> list[dict]:
    files = sorted(work_dir.glob('*/vis_data/scalars.json'))  # one folder per start, named by its time
    if not files:
        return []
    return [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]


def summarise_run(work_dir: Path, gpus: int, batch: int, warmup: int) -> dict:
    """One run's row from its log; ``status`` says why numbers are missing."""
    rc_file = work_dir.with_suffix('.rc')
    rc = int(rc_file.read_text()) if rc_file.exists() else None
    # every LOG_INTERVAL iterations (mmengine also logs at the end of the first pass over the data: left out)
    logs = [s for s in _scalars(work_dir) if 'loss' in s and 'time' in s and s['iter'] % LOG_INTERVAL == 0]
    problems = [f'exit code {rc}' if rc else 'no exit code' if rc is None else '', '' if logs else 'no training log']
    row = dict(gpus=gpus, batch_per_gpu=batch, global_batch=gpus * batch,
               status=', '.join(p for p in problems if p) + f' (see runs/{work_dir.name}.log)' if any(problems)
               else 'ok')
    if not logs:
        return row
    steady = [s for s in logs if s['iter'] > warmup] or logs
    s_per_iter = statistics.median(s['time'] for s in steady)
    memory = [s['memory'] for s in logs if 'memory' in s]  # MB, CUDA only
    row.update(
        iters=logs[-1]['iter'],
        s_per_iter=round(s_per_iter, 4),
        data_s_per_iter=round(statistics.median(s.get('data_time', 0.0) for s in steady), 4),
        img_per_s=round(gpus * batch / s_per_iter, 1),
        peak_mem_gib=round(max(memory) / 1024, 2) if memory else None,
        nonfinite_losses=sum(not math.isfinite(s['loss']) for s in logs),
        loss_curve=[[s['iter'], round(s['loss'], 4)] for s in logs])
    return row


def _environment() -> dict:
    import torch

    env = dict(torch=torch.__version__, python=platform.python_version(), cuda=torch.version.cuda,
               gpus=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
    try:
        env['commit'] = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True, text=True,
                                       check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return env


def report(out: Path, warmup: int = 50) -> dict:
    plan = json.loads((out / 'plan.json').read_text())
    runs = []
    for work_dir in sorted(p for p in (out / 'runs').iterdir() if p.is_dir()):
        match = re.fullmatch(r'(\w+?)_(\d+)gpu', work_dir.name)
        if not match:
            continue
        task, gpus = match[1], int(match[2])
        row = summarise_run(work_dir, gpus, plan['batch_per_gpu'][task], warmup)
        runs.append(dict(task=task, config=plan['configs'][task], **row))
    runs.sort(key=lambda r: (r['task'], r['gpus']))
    for run in runs:
        base = next((r for r in runs if r['task'] == run['task'] and r['gpus'] == 1 and 'img_per_s' in r), None)
        if base and 'img_per_s' in run:
            run['scaling_efficiency'] = round(run['img_per_s'] / (run['gpus'] * base['img_per_s']), 3)
    result = dict(iters=plan['iters'], warmup_iters=warmup, environment=_environment(), runs=runs)
    (out / 'dist_scaling.json').write_text(json.dumps(result, indent=1))
    (out / 'dist_scaling.md').write_text(to_markdown(result))
    plot_loss_curves(result, out / 'dist_scaling_loss.png')
    return result


def plot_loss_curves(result: dict, path: Path) -> None:
    """Loss against iteration, one panel per task, one line per GPU count (skipped without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return
    tasks = sorted({r['task'] for r in result['runs'] if r.get('loss_curve')})
    if not tasks:
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for r in result['runs']:
            if r['task'] == task and r.get('loss_curve'):
                ax.plot(*zip(*r['loss_curve']), marker='o', ms=3,
                        label=f"{r['gpus']} GPU, batch {r['batch_per_gpu']} per GPU")
        ax.set(title=f'{task}: {CONFIGS[task].rsplit("/", 1)[-1]}', xlabel='iteration', ylabel='loss (rank 0)')
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def to_markdown(result: dict) -> str:
    env = result['environment']
    lines = [f"{result['iters']} iterations per run; s/iter and img/s are medians after iteration "
             f"{result['warmup_iters']}. torch {env['torch']}, {', '.join(env['gpus']) or 'no GPU'}.", '',
             '| task | GPUs | batch (per GPU × GPUs) | s/iter | data s/iter | img/s | scaling efficiency | '
             'peak GiB per GPU | loss first → last | status |',
             '|---|---|---|---|---|---|---|---|---|---|']
    for r in result['runs']:
        curve = r.get('loss_curve') or []
        cells = [r['task'], r['gpus'], f"{r['batch_per_gpu']} × {r['gpus']}",
                 *(r.get(k) or '–' for k in ('s_per_iter', 'data_s_per_iter', 'img_per_s', 'scaling_efficiency',
                                             'peak_mem_gib')),
                 f'{curve[0][1]} → {curve[-1][1]}' if curve else '–', r['status']]
        lines.append('| ' + ' | '.join(map(str, cells)) + ' |')
    for task in sorted({r['task'] for r in result['runs']}):
        runs = [r for r in result['runs'] if r['task'] == task and r.get('loss_curve')]
        if not runs:
            continue
        curves = [dict(map(tuple, r['loss_curve'])) for r in runs]
        lines += ['', f'Loss ({task}, mean over the {LOG_INTERVAL} iterations up to each):', '',
                  '| iter | ' + ' | '.join(f"{r['gpus']} GPU" for r in runs) + ' |',
                  '|---' * (len(runs) + 1) + '|']
        for it in sorted(set().union(*curves)):
            lines.append(f'| {it} | ' + ' | '.join(str(c.get(it, '–')) for c in curves) + ' |')
    return '\n'.join(lines) + '\n'


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = parser.add_subparsers(dest='step', required=True)
    p = sub.add_parser('prepare', help='write the synthetic data and the run configs')
    p.add_argument('out', type=Path)
    p.add_argument('--iters', type=int, default=200)
    p.add_argument('--cls-batch', type=int, default=128, help="per GPU (the recipe's 128)")
    p.add_argument('--det-batch', type=int, default=2, help="per GPU (the recipe's 2)")
    p.add_argument('--workers', type=int, default=8, help='dataloader workers per GPU')
    p.add_argument('--classes', type=int, default=100)
    p.add_argument('--per-class', type=int, default=16, help='training images per class')
    p.add_argument('--coco-train', type=int, default=64)
    r = sub.add_parser('report', help='summarise the runs under DIR/runs')
    r.add_argument('out', type=Path)
    r.add_argument('--warmup', type=int, default=50, help='iterations left out of the timing medians')
    args = parser.parse_args(argv)
    if args.step == 'prepare':
        prepare(args)
    else:
        print(to_markdown(report(args.out, args.warmup)))


if __name__ == '__main__':
    main()
