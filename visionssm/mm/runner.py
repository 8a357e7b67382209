"""The logic of ``tools/train.py`` and ``tools/test.py``, on mmengine's Runner.

    train: CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--cfg-options k=v ...] [--launcher none|pytorch|slurm]
    test:  CONFIG CHECKPOINT [--work-dir DIR] [--cfg-options k=v ...] [--launcher none|pytorch|slurm]

Importing ``visionssm.mm`` registers our classes, so configs need no ``custom_imports``. This module also fixes
three things mmengine 0.10.7 gets wrong for us:

* torch >= 2.6 loads with ``weights_only=True`` and refuses mmengine's own checkpoints (``HistoryBuffer`` and
  numpy values in ``message_hub``): local checkpoints load with the few globals they hold allow-listed.
* Checkpoints were written in place, so a run killed mid-save left a truncated file where the good one was:
  ``Runner.save_checkpoint`` writes a temporary file and renames it into place.
* The ``pytorch`` launcher and ``--amp`` assumed GPUs: on a CPU-only machine DDP runs on gloo and AMP is bf16.

For mmdet configs it also routes the mmcv ops that have no bfloat16 kernel through float32 (``precision.py``), so
that detectors train under bf16 autocast.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
from contextlib import contextmanager
from typing import Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from mmengine.config import Config, DictAction
from mmengine.dist import master_only
from mmengine.fileio import LocalBackend, get_file_backend
from mmengine.logging import HistoryBuffer, print_log
from mmengine.optim import OptimWrapper
from mmengine.runner import CheckpointLoader
from mmengine.runner import Runner as _MMRunner

from ..registry import OPTIM_WRAPPERS, RUNNERS

__all__ = ['Runner', 'CPUAmpOptimWrapper', 'load_local_checkpoint', 'load_config', 'build_runner', 'train_main',
           'test_main']


# What Runner.save_checkpoint pickles besides tensors and containers: the message hub's HistoryBuffers (numpy
# arrays and scalars inside, their statistics methods pickled as getattr(HistoryBuffer, 'min')).
_MMENGINE_CHECKPOINT_GLOBALS = [
    HistoryBuffer, getattr, np.ndarray, np.dtype, np.zeros(1).__reduce__()[0], np.float64(0).__reduce__()[0],
    *(type(np.dtype(t)) for t in ('float64', 'float32', 'float16', 'int64', 'int32', 'uint8', 'bool'))]


@CheckpointLoader.register_scheme(prefixes='', force=True)
def load_local_checkpoint(filename: str, map_location=None) -> dict:
    """mmengine's loader for local files, with ``weights_only=True`` and the allowlist of its own checkpoints.

    The allowlist (``getattr`` included) holds only while this loads: other ``torch.load`` calls in the process,
    e.g. of downloaded weights, keep torch's default list.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename!r} does not exist')
    with torch.serialization.safe_globals(_MMENGINE_CHECKPOINT_GLOBALS):
        return torch.load(filename, map_location=map_location, weights_only=True)


@RUNNERS.register_module()
class Runner(_MMRunner):
    """mmengine's Runner whose checkpoints are replaced atomically: a save that dies half way (killed, disk
    full) leaves the previous checkpoint intact and no truncated file under the final name."""

    @master_only
    def save_checkpoint(self, out_dir: str, filename: str, *args, **kwargs):
        if not isinstance(get_file_backend(out_dir, backend_args=kwargs.get('backend_args')), LocalBackend):
            return super().save_checkpoint(out_dir, filename, *args, **kwargs)
        partial = f'{filename}.partial'
        try:
            super().save_checkpoint(out_dir, partial, *args, **kwargs)
            os.replace(osp.join(out_dir, partial), osp.join(out_dir, filename))
        finally:
            if osp.exists(osp.join(out_dir, partial)):
                os.remove(osp.join(out_dir, partial))


@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(OptimWrapper):
    """Mixed precision on CPU: bf16 autocast, which needs no loss scaling (mmengine's AmpOptimWrapper is GPU-only)."""

    def __init__(self, dtype: str = 'bfloat16', **kwargs):
        super().__init__(**kwargs)
        self.cast_dtype = getattr(torch, dtype)

    @contextmanager
    def optim_context(self, model: torch.nn.Module):
        with super().optim_context(model), torch.autocast('cpu', dtype=self.cast_dtype):
            yield


def _parser(test: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=f'{"Evaluate a checkpoint" if test else "Train a model"} with an mmengine config')
    parser.add_argument('config', help='config file')
    if test:
        parser.add_argument('checkpoint', help='checkpoint file to evaluate')
    parser.add_argument('--work-dir', help='where logs and checkpoints go (default: work_dirs/<config name>)')
    if not test:
        parser.add_argument('--resume', nargs='?', const='auto', metavar='CKPT',
                            help='resume from CKPT, or without it from the latest checkpoint in the work dir')
        parser.add_argument('--amp', action='store_true',
                            help='mixed precision: fp16 (with loss scaling) on GPU, bf16 on CPU')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries, e.g. train_cfg.max_epochs=2 model.num_classes=10')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none',
                        help='distributed launcher: pytorch under torchrun, slurm under srun')
    return parser


def load_config(path: str, cfg_options: Optional[dict] = None, work_dir: Optional[str] = None,
                launcher: str = 'none') -> Config:
    """The config at ``path`` with overrides, its work dir resolved and the launcher set."""
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('work_dirs', osp.splitext(osp.basename(path))[0])
    return cfg


def _setup_cpu_distributed(cfg: Config) -> None:
    # mmengine's launchers call torch.cuda.set_device and give DDP a GPU id; on CPU we start gloo ourselves
    # (the Runner then finds the process group up) and build DDP without device ids.
    if cfg.launcher != 'pytorch':
        raise ValueError(f'--launcher {cfg.launcher} needs GPUs; on CPU-only machines use torchrun '
                         'with --launcher pytorch')
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    wrapper = dict(type='MMDistributedDataParallel', broadcast_buffers=False,
                   find_unused_parameters=cfg.get('find_unused_parameters', False))
    cfg.model_wrapper_cfg = {**wrapper, **(cfg.get('model_wrapper_cfg') or {}), 'device_ids': None}


def _enable_amp(cfg: Config) -> None:
    wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if wrapper.split('.')[-1] in ('AmpOptimWrapper', 'CPUAmpOptimWrapper'):
        print_log('AMP is already enabled in the config', logger='current')
    elif wrapper != 'OptimWrapper':
        raise ValueError(f'--amp replaces OptimWrapper, but the config uses {wrapper}')
    elif torch.cuda.is_available():
        cfg.optim_wrapper.update(type='AmpOptimWrapper', loss_scale='dynamic')
    else:  # scoped, so that mmdet / mmseg configs find it too
        cfg.optim_wrapper.type = 'visionssm.CPUAmpOptimWrapper'


def build_runner(cfg: Config) -> _MMRunner:
    """``RUNNERS.build`` when the config names a runner type, else our atomic-save ``Runner``."""
    if cfg.get('launcher', 'none') != 'none' and not torch.cuda.is_available():
        _setup_cpu_distributed(cfg)
    if cfg.get('default_scope') == 'mmdet':   # bf16 AMP: float32 where mmcv has no bf16 kernel (precision.py)
        from .precision import use_float32_where_mmcv_lacks_bf16
        use_float32_where_mmcv_lacks_bf16()
    return RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)


@contextmanager
def _process_group_closed():
    """Tear the process group down (mmengine leaves it up) once every rank is done. A rank that reached the end
    first used to exit while rank 0 still saved its best checkpoint; gloo's threads, torn down with the interpreter
    under a live peer, then aborted it ("terminate called without an active exception")."""
    distributed = lambda: dist.is_available() and dist.is_initialized()
    try:
        yield
        if distributed() and dist.get_world_size() > 1:
            dist.barrier()
    finally:
        if distributed():
            dist.destroy_process_group()


def train_main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser(test=False).parse_args(argv)
    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    if args.amp:
        _enable_amp(cfg)
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        if not osp.isfile(args.resume):
            raise FileNotFoundError(f'--resume checkpoint {args.resume!r} does not exist')
        cfg.resume, cfg.load_from = True, args.resume
    with _process_group_closed():
        build_runner(cfg).train()
    return 0


def test_main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser(test=True).parse_args(argv)
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint {args.checkpoint!r} does not exist')
    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    cfg.load_from, cfg.resume = args.checkpoint, False
    with _process_group_closed():
        build_runner(cfg).test()
    return 0
