"""Hooks: the learning curve that the demo plots, and the AMP loss scale in the training log."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

import torch
from mmengine.dist import master_only
from mmengine.hooks import Hook

from ..registry import HOOKS

__all__ = ['LearningCurveHook', 'LossScaleHook']


@HOOKS.register_module()
class LearningCurveHook(Hook):
    """Writes ``<work_dir>/learning_curve.json``: per epoch, the mean training loss and the validation metrics.

    A resumed run keeps the epochs before the one it resumes from.
    """

    priority = 'LOW'

    def __init__(self, filename: str = 'learning_curve.json'):
        self.filename = filename
        self.history: List[Dict[str, Any]] = []
        self._losses: List[float] = []

    @property
    def _path(self) -> str:
        return os.path.join(self._work_dir, self.filename)

    def before_train(self, runner) -> None:
        self._work_dir = runner.work_dir
        self.history = []
        if os.path.exists(self._path):
            with open(self._path) as f:
                self.history = [e for e in json.load(f) if e['epoch'] <= runner.epoch]

    def before_train_epoch(self, runner) -> None:
        self._losses = []

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs: Optional[dict] = None) -> None:
        if outputs and 'loss' in outputs:
            self._losses.append(float(torch.as_tensor(outputs['loss']).detach()))

    def after_train_epoch(self, runner) -> None:
        loss = sum(self._losses) / len(self._losses) if self._losses else float('nan')
        self.history.append(dict(epoch=runner.epoch + 1, train_loss=loss))
        self._save()

    def after_val_epoch(self, runner, metrics: Optional[Dict[str, float]] = None) -> None:
        # validation runs after the epoch counter moved on, so runner.epoch is the epoch just trained
        if metrics and self.history and self.history[-1]['epoch'] == runner.epoch:
            self.history[-1].update({k: float(v) for k, v in metrics.items()})
            self._save()

    @master_only
    def _save(self) -> None:
        tmp = self._path + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(self.history, f, indent=1)
        os.replace(tmp, self._path)


@HOOKS.register_module()
class LossScaleHook(Hook):
    """Logs fp16 AMP's dynamic loss scale as ``loss_scale`` with the other training scalars.

    A scale that keeps halving means overflowing gradients (fp16 activations or gradients out of range); the
    hook makes that visible in the log and in ``vis_data/scalars.json``. Without a loss scaler (fp32, bf16) it
    logs nothing.
    """

    priority = 'LOW'

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs: Optional[dict] = None) -> None:
        scaler = getattr(runner.optim_wrapper, 'loss_scaler', None)
        if scaler is not None and hasattr(scaler, 'get_scale'):
            runner.message_hub.update_scalar('train/loss_scale', float(scaler.get_scale()))
