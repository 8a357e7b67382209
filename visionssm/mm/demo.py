"""The embedded demo behind ``make demo``: train the digits config from scratch, evaluate, save, plot, report."""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import time
from typing import Dict, List, Optional, Sequence

import torch
from mmengine.config import DictAction

from .runner import build_runner, load_config

__all__ = ['demo_main', 'plot_learning_curve']

DEFAULT_CONFIG = 'configs/classification/digits_demo.py'


def plot_learning_curve(history: List[Dict[str, float]], path: str, title: str = '') -> None:
    """Training loss and validation top-1/top-5 against the epoch, side by side, as a PNG."""
    import matplotlib

    matplotlib.use('Agg')  # files only: no display needed
    import matplotlib.pyplot as plt

    epochs = [e['epoch'] for e in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [e['train_loss'] for e in history], marker='o', ms=3)
    ax_loss.set(xlabel='epoch', ylabel='training loss', title='loss')
    for key in ('accuracy/top1', 'accuracy/top5'):
        points = [(e['epoch'], e[key]) for e in history if key in e]
        if points:
            ax_acc.plot(*zip(*points), marker='o', ms=3, label=key.split('/')[-1])
    ax_acc.set(xlabel='epoch', ylabel='validation accuracy (%)', title='validation')
    ax_acc.legend(loc='lower right')
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def demo_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description='Train the digits demo from scratch, evaluate it and plot it')
    parser.add_argument('--config', default=DEFAULT_CONFIG)
    parser.add_argument('--work-dir', help='default: work_dirs/<config name>')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE')
    args = parser.parse_args(argv)

    cfg = load_config(args.config, args.cfg_options, args.work_dir)
    cfg.resume, cfg.load_from = False, None  # from scratch, whatever the work dir holds
    load_before = os.getloadavg()
    start, cpu_start = time.perf_counter(), time.process_time()
    runner = build_runner(cfg)
    runner.train()
    train_seconds = time.perf_counter() - start
    metrics = runner.test()
    total_seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start

    with open(osp.join(cfg.work_dir, 'last_checkpoint')) as f:
        checkpoint = f.read().strip()
    with open(osp.join(cfg.work_dir, 'learning_curve.json')) as f:
        history = json.load(f)
    plot_path = osp.abspath(osp.join(cfg.work_dir, 'learning_curve.png'))
    backbone = cfg.model.backbone.model_name
    plot_learning_curve(history, plot_path, title=f'{backbone} on {cfg.train_dataloader.dataset.type}')

    rows = [
        ('config', args.config),
        ('backbone', f'{backbone} ({sum(p.numel() for p in runner.model.parameters()) / 1e6:.2f}M params)'),
        ('epochs', str(runner.epoch)),
        ('wall time', f'{train_seconds / 60:.1f} min training, {total_seconds / 60:.1f} min in all '
                      f'({cpu_seconds / 60:.1f} CPU-min over {torch.get_num_threads()} threads)'),
        ('val top-1', f'{metrics["accuracy/top1"]:.2f}%'),
        ('val top-5', f'{metrics["accuracy/top5"]:.2f}%'),
        ('best val top-1', f'{max(e.get("accuracy/top1", 0.0) for e in history):.2f}%'),
        ('checkpoint', checkpoint),
        ('learning curve', plot_path),
        ('load average', f'{load_before[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end '
                         f'(1-minute, {os.cpu_count()} CPUs; other work slows the run)'),
    ]
    width = max(len(k) for k, _ in rows)
    print('\n' + '\n'.join(f'{k:<{width}}  {v}' for k, v in rows))
    return 0
