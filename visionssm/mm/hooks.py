"""Hooks: the learning curve that the demo plots, the AMP loss scale in the training log, training scalars read once
per log window instead of every iteration, a profile of where a training iteration's time goes, and its host time
by phase without a profiler."""
from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Dict, List, Optional

import torch
from mmengine.dist import master_only
from mmengine.hooks import CheckpointHook, Hook, LoggerHook, RuntimeInfoHook

from ..registry import HOOKS

__all__ = ['DeferredRuntimeInfoHook', 'HostTimeHook', 'LearningCurveHook', 'LossScaleHook', 'StepProfileHook',
           'defer_scalar']


@HOOKS.register_module()
class LearningCurveHook(Hook):
    """Writes ``<work_dir>/learning_curve.json``: per epoch, the mean training loss and the validation metrics.

    A resumed run keeps the epochs before the one it resumes from.
    """

    priority = 'LOW'

    def __init__(self, filename: str = 'learning_curve.json'):
        self.filename = filename
        self.history: List[Dict[str, Any]] = []
        self._loss_sum, self._loss_count = None, 0

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
        self._loss_sum, self._loss_count = None, 0

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs: Optional[dict] = None) -> None:
        # summed where the loss lives and read once per epoch: reading it each iteration would make the host wait
        # for the GPU every step
        if outputs and 'loss' in outputs:
            loss = torch.as_tensor(outputs['loss']).detach().float()
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_count += 1

    def after_train_epoch(self, runner) -> None:
        loss = float(self._loss_sum) / self._loss_count if self._loss_count else float('nan')
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


_PENDING = '_visionssm_pending_scalars'   # the message hub's attribute that holds the deferred scalars


def defer_scalar(message_hub, key: str, value) -> None:
    """``message_hub.update_scalar(key, value)``, deferred to the next read of the scalars where a
    ``DeferredRuntimeInfoHook`` runs (a tensor stays where it is until then); at once otherwise."""
    pending = getattr(message_hub, _PENDING, None)
    if pending is not None and isinstance(value, torch.Tensor):
        pending.append((key, value.detach()))
    else:
        message_hub.update_scalar(key, value)


@HOOKS.register_module()
class DeferredRuntimeInfoHook(RuntimeInfoHook):
    """mmengine's ``RuntimeInfoHook`` whose training scalars stay tensors until they are read.

    mmengine converts every loss to a Python number at every iteration (``update_scalar`` calls ``.item()``), and
    its optimizer wrapper the gradient norm too: each conversion makes the host wait until the GPU has finished
    the step, so the host cannot queue the next step's work while the GPU runs this one. This hook keeps the
    iteration's scalars (and what ``defer_scalar`` hands it: the gradient norm of ``GroupedOptimWrapperConstructor``'s
    wrappers, ``LossScaleHook``'s loss scale) and converts them all at once, in their order, before the logger reads
    them (its interval, an epoch's end), before validation and at the iterations where a checkpoint (which holds
    the message hub) is saved. What the log and ``scalars.json`` hold is unchanged. Use it in ``default_hooks``:
    ``runtime_info=dict(type='visionssm.DeferredRuntimeInfoHook')``.
    """

    def before_train(self, runner) -> None:
        super().before_train(runner)
        setattr(runner.message_hub, _PENDING, [])
        loggers = [h for h in runner.hooks if isinstance(h, LoggerHook)]
        self._interval = min((h.interval for h in loggers), default=1)
        self._iter_checkpoints = [h for h in runner.hooks if isinstance(h, CheckpointHook) and not h.by_epoch]

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs: Optional[dict] = None) -> None:
        for key, value in (outputs or {}).items():
            defer_scalar(runner.message_hub, f'train/{key}', value)
        saves = any(h.every_n_train_iters(runner, h.interval, h.save_begin)   # as CheckpointHook, which runs later
                    or (h.save_last and h.is_last_train_iter(runner)) for h in self._iter_checkpoints)
        logs = (self.every_n_inner_iters(batch_idx, self._interval) or self.every_n_train_iters(runner, self._interval)
                or self.end_of_epoch(runner.train_dataloader, batch_idx))
        if saves or logs:
            self.flush(runner.message_hub)

    @staticmethod
    def flush(message_hub) -> None:
        """Convert the deferred scalars (one transfer per device) and update the message hub with them in order."""
        pending = getattr(message_hub, _PENDING, None)
        if not pending:
            return
        by_device: Dict[torch.device, List[int]] = {}
        for i, (_, value) in enumerate(pending):
            by_device.setdefault(value.device, []).append(i)
        numbers: List[float] = [0.] * len(pending)
        for indices in by_device.values():
            values = torch.stack([pending[i][1].float().reshape(()) for i in indices]).tolist()
            for i, v in zip(indices, values):
                numbers[i] = v
        for (key, _), v in zip(pending, numbers):
            message_hub.update_scalar(key, v)
        pending.clear()

    def after_train_epoch(self, runner) -> None:
        self.flush(runner.message_hub)
        super().after_train_epoch(runner)

    def before_val(self, runner) -> None:
        self.flush(runner.message_hub)
        super().before_val(runner)

    def after_train(self, runner) -> None:
        self.flush(runner.message_hub)
        delattr(runner.message_hub, _PENDING)
        super().after_train(runner)


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
            scale = scaler._get_scale_async() if hasattr(scaler, '_get_scale_async') else None   # no host read
            defer_scalar(runner.message_hub, 'train/loss_scale',
                         scale.clone() if isinstance(scale, torch.Tensor) else scaler.get_scale())


@HOOKS.register_module()
class StepProfileHook(Hook):
    """Where a training iteration's time goes: ``torch.profiler`` over ``iters`` iterations after ``start`` of them.

    Writes ``<work_dir>/step_profile.json`` and logs a summary:

    * ``wall_ms``: wall time per profiled iteration, the data loading included, synchronized at both ends;
      ``data_ms``: the part spent waiting for the data loader;
    * ``kernel_ms``: the GPU's kernel time per iteration (CUDA only) and ``gpu_busy`` = kernel / wall: far below 1,
      the GPU waits for the host (launches, Python, the loader, synchronizations);
    * ``forward``: per part of the model (``backbone``, ``neck``, heads: its direct children, or theirs where a
      child runs other than through its forward), the host time of its forward and, on CUDA, the kernel time it
      launched;
    * ``kernels``: the kernels by total time; ``host_ops``: the operators by their own CPU time.

    The profiler slows the host a little (a few µs per operator), so read the host figures as a ranking.
    """

    priority = 'VERY_LOW'
    # the summary's per-iteration figures (logged, and what benchmarks/train_gpu.py reports)
    SUMMARY_KEYS = ('iters', 'wall_ms', 'data_ms', 'kernel_ms', 'gpu_busy', 'forward')

    def __init__(self, start: int = 20, iters: int = 5, top: int = 20, filename: str = 'step_profile.json'):
        if start < 0 or iters < 1:
            raise ValueError(f'StepProfileHook: start must be >= 0 and iters >= 1, got start={start}, iters={iters}')
        self.start, self.iters, self.top, self.filename = start, iters, top, filename
        self._prof = None
        self._handles: list = []
        self._t0, self._data_s, self._done = 0.0, 0.0, 0
        self.summary: Optional[dict] = None

    def _sync(self) -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if runner.iter == self.start and self._prof is None and self.summary is None:
            from torch.profiler import ProfilerActivity, profile
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            self._label_parts(runner)
            self._sync()
            self._prof = profile(activities=activities)
            self._prof.__enter__()
            # the loader was waited for before this hook: from here the data time is read from the next ones
            self._t0, self._data_s, self._done = time.perf_counter(), 0.0, 0

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs: Optional[dict] = None) -> None:
        if self._prof is None:
            return
        self._done += 1
        hub = runner.message_hub
        if self._done > 1 and 'train/data_time' in hub.log_scalars:
            # IterTimerHook's data time of this iteration; the first one's wait came before the profile started
            self._data_s += hub.get_scalar('train/data_time').current()
        if self._done == self.iters:
            self._finish(runner)

    def after_train(self, runner) -> None:
        if self._prof is not None:   # training ended inside the profiled window: report what ran
            self._finish(runner)

    def _finish(self, runner) -> None:
        self._sync()
        wall = time.perf_counter() - self._t0
        self._prof.__exit__(None, None, None)
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.summary = self._summarize(self._prof, wall, max(1, self._done))
        self._prof = None
        runner.logger.info('step profile: ' + json.dumps({k: self.summary[k] for k in self.SUMMARY_KEYS}))
        self._write(runner.work_dir)

    def _label_parts(self, runner) -> None:
        """record_function ranges around the forward of the model's parts: its direct children (backbone, neck,
        heads) and theirs, for a part that is not called as a module itself (mmdet's ``roi_head.loss`` calls its
        ``bbox_head`` and ``mask_head``); ``_summarize`` keeps the second level only where the first did not run."""
        from torch.profiler import record_function

        def enter(module, args, label):
            module.__dict__.setdefault('_step_profile_ranges', []).append(record_function(label).__enter__())

        def leave(module, args, output):
            ranges = module.__dict__.get('_step_profile_ranges')
            if ranges:
                ranges.pop().__exit__(None, None, None)

        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        for name, child in model.named_children():
            if name == 'data_preprocessor' or not any(True for _ in child.parameters()):
                continue
            parts = [(name, child)] + [(f'{name}.{sub}', grandchild) for sub, grandchild in child.named_children()]
            for label, module in parts:
                self._handles += [
                    module.register_forward_pre_hook(lambda m, a, label=f'forward:{label}': enter(m, a, label)),
                    module.register_forward_hook(leave, always_call=True)]   # closes the range on an exception

    def _summarize(self, prof, wall: float, n: int) -> dict:
        events = prof.key_averages()
        # the GPU timeline mirrors record_function ranges (the parts below, the optimizer step) as annotations: they
        # span kernels, they are none (counted as kernels they had doubled the kernel time of a Mask R-CNN step)
        device = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA
                  and not getattr(e, 'is_user_annotation', False)]
        host = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
        kernel_us = sum(e.self_device_time_total for e in device) / n if device else None
        ran = {e.key.split(':', 1)[1]: e for e in host if e.key.startswith('forward:')}
        parts = {name: dict(host_ms=round(e.cpu_time_total / n / 1e3, 3),
                            kernel_ms=round(e.device_time_total / n / 1e3, 3) if device else None)
                 for name, e in ran.items() if '.' not in name or name.split('.')[0] not in ran}
        ops = [e for e in host if not e.key.startswith(('forward:', 'ProfilerStep'))]
        return dict(
            iters=n, wall_ms=round(wall / n * 1e3, 3), data_ms=round(self._data_s / n * 1e3, 3),
            kernel_ms=None if kernel_us is None else round(kernel_us / 1e3, 3),
            gpu_busy=None if kernel_us is None else round(kernel_us / 1e3 / (wall / n * 1e3), 3),
            forward=parts,
            kernels=[dict(name=e.key[:160], ms=round(e.self_device_time_total / n / 1e3, 4), calls=e.count // n)
                     for e in sorted(device, key=lambda e: -e.self_device_time_total)[:self.top]],
            host_ops=[dict(name=e.key[:160], ms=round(e.self_cpu_time_total / n / 1e3, 4), calls=e.count // n)
                      for e in sorted(ops, key=lambda e: -e.self_cpu_time_total)[:self.top]],
            aten_calls=sum(e.count for e in ops if e.key.startswith('aten::')) // n)

    @master_only
    def _write(self, work_dir: str) -> None:
        with open(os.path.join(work_dir, self.filename), 'w') as f:
            json.dump(self.summary, f, indent=1)


_MISSING = object()


@HOOKS.register_module()
class HostTimeHook(Hook):
    """Where the training process's host time goes, per iteration, without a profiler attached.

    For ``iters`` iterations from iteration ``start`` it times, with ``time.perf_counter`` around the calls the
    training loop makes on its own thread:

    * ``data``: the loop's wait for the next batch (between one iteration's last hook and the next one's first);
    * ``hooks_before`` / ``hooks_after``: every hook's ``before_train_iter`` / ``after_train_iter`` (the EMA update,
      logging, checkpoints);
    * ``preprocess``: the model's data preprocessor (decoding and augmentation with the ``_gpu-aug`` recipes; a
      batch prepared in ``PrefetchEpochBasedTrainLoop``'s thread is counted where the training thread uses it);
    * ``forward``: the rest of ``model.train_step`` before the backward: the model's forward and its loss;
    * ``backward``, ``step`` (loss-scale unscaling, gradient clipping, the optimizer, the scaler's update),
      ``zero_grad``: the optimizer wrapper's three calls;
    * ``wall``: the whole iteration.

    Where the host waits for the GPU (a synchronization, or a full launch queue), the wait lands in the phase that
    waited. Writes the medians in milliseconds to ``<work_dir>/<filename>`` and the log; ``summary`` holds them.
    The profiler of ``StepProfileHook`` inflates small Python calls several times over: this hook's figures are
    the ones to compare host time with.
    """

    priority = 'VERY_HIGH'
    PHASES = ('data', 'hooks_before', 'preprocess', 'forward', 'backward', 'step', 'zero_grad', 'hooks_after', 'wall')

    def __init__(self, start: int = 20, iters: int = 20, filename: str = 'host_time.json'):
        if start < 0 or iters < 1:
            raise ValueError(f'HostTimeHook: start must be >= 0 and iters >= 1, got start={start}, iters={iters}')
        self.start, self.iters, self.filename = start, iters, filename
        self.summary: Optional[dict] = None
        self._records: List[Dict[str, float]] = []
        self._current: Optional[Dict[str, float]] = None
        self._patched: list = []
        self._last_end: Optional[float] = None

    def before_train(self, runner) -> None:
        import threading
        main = threading.get_ident()   # the training loop's thread (PrefetchEpochBasedTrainLoop's runs the other)

        def timed(owner, name: str, phase: str):
            original = getattr(owner, name)

            def wrapper(*args, **kwargs):
                if self._current is None or threading.get_ident() != main:
                    return original(*args, **kwargs)
                begin = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    self._current[phase] = self._current.get(phase, 0.0) + time.perf_counter() - begin
            self._patch(owner, name, wrapper)

        call_hook = runner.call_hook

        def timed_call_hook(fn_name: str, **kwargs):
            begin = time.perf_counter()
            try:
                return call_hook(fn_name, **kwargs)
            finally:
                end = time.perf_counter()
                if self._current is not None and fn_name in ('before_train_iter', 'after_train_iter'):
                    phase = 'hooks_before' if fn_name == 'before_train_iter' else 'hooks_after'
                    self._current[phase] = self._current.get(phase, 0.0) + end - begin
                if fn_name == 'after_train_iter':
                    if self._current is not None:
                        self._end_iteration(runner, end)
                    self._last_end = end

        self._patch(runner, 'call_hook', timed_call_hook)
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        timed(runner.model, 'train_step', 'train_step')
        timed(model.data_preprocessor, 'forward', 'preprocess')
        for name in ('backward', 'step', 'zero_grad'):
            if hasattr(runner.optim_wrapper, name):
                timed(runner.optim_wrapper, name, name)

    def _patch(self, owner, name: str, wrapper) -> None:
        """``owner.name = wrapper`` until ``_restore``, which puts back what the instance held (an instance
        attribute such as mmengine's scheduler's step counter, or nothing: the class's method)."""
        original = getattr(owner, name)
        functools.update_wrapper(wrapper, original)   # keeps marks such as the scheduler's `_with_counter`
        self._patched.append((owner, name, owner.__dict__.get(name, _MISSING)))
        setattr(owner, name, wrapper)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        # inside call_hook('before_train_iter'): the iteration opens here; the loop waited for its batch since the
        # previous iteration's last hook returned
        if self.summary is None and self.start <= runner.iter < self.start + self.iters:
            now = time.perf_counter()
            self._begin = self._last_end if self._last_end is not None else now
            self._current = {'data': now - self._begin} if self._last_end is not None else {}

    def _end_iteration(self, runner, end: float) -> None:
        record, self._current = self._current, None
        record['wall'] = end - self._begin
        inner = sum(record.get(k, 0.0) for k in ('preprocess', 'backward', 'step', 'zero_grad'))
        record['forward'] = record.pop('train_step', 0.0) - inner
        if 'data' in record:   # the run's very first iteration has no measured wait: not a full record
            self._records.append(record)
        if runner.iter + 1 >= self.start + self.iters:   # runner.iter counts this iteration after the hooks
            self._finish(runner)

    def after_train(self, runner) -> None:
        if self.summary is None and self._records:
            self._finish(runner)
        self._restore()

    def _finish(self, runner) -> None:
        import statistics
        self.summary = dict(iters=len(self._records), **{
            phase: round(1e3 * statistics.median(r.get(phase, 0.0) for r in self._records), 3)
            for phase in self.PHASES})
        self._restore()
        runner.logger.info('host time per iteration, ms (median): ' + json.dumps(self.summary))
        self._write(runner.work_dir)

    def _restore(self) -> None:
        for owner, name, held in reversed(self._patched):
            if held is _MISSING:
                owner.__dict__.pop(name, None)
            else:
                owner.__dict__[name] = held
        self._patched = []

    @master_only
    def _write(self, work_dir: str) -> None:
        with open(os.path.join(work_dir, self.filename), 'w') as f:
            json.dump(self.summary, f, indent=1)
