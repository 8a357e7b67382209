"""Model benchmark: parameters, GFLOPs, throughput, latency and peak memory, for any set of timm models in one run.

What is measured (``MODES``): ``infer`` (eval, no_grad), ``latency`` (``infer`` at batch 1, every iteration timed on
its own), ``fwd_bwd`` (train mode, forward, cross-entropy, backward: the "training" of the model cards, no optimizer) and
``train`` (``fwd_bwd`` plus an AdamW step). Precisions (``PRECISIONS``): ``fp32`` with TF32 off for matmuls and
cuDNN, ``tf32`` with both on, ``bf16`` autocast with TF32 off.

Timing: random input batches are generated on the device before timing and used in turn. After ``warmup``
iterations (which absorb compilation, Triton JIT and cuDNN autotuning), ``repeats`` runs of ``n`` back-to-back
iterations are timed with CUDA events (the host clock on a CPU), ``n`` chosen so that one repeat lasts about
``repeat_s``; a row reports the median per-iteration time and the min-max over repeats. Peak memory on a GPU is
``max_memory_allocated`` after a reset at the end of warm-up (steady state), counting one input batch.

GFLOPs follow the papers' (fvcore) convention: one multiply-add is one FLOP, LayerNorm 5 per element, and the
selective scan ``9*B*L*D*N + B*L*D`` per route (``visionssm.ops.count_scan_flops``). They are counted on the meta
device, so the count needs no memory.

Robustness: measurements run in a spawned worker process that keeps the last model built. Out-of-memory halves the
batch and retries (the row records it); an error is recorded in the row; a CUDA error that poisons the context, a
crash or a hang past the time budget restarts the worker and the run goes on. On a CPU every model gets a fresh
worker, so its peak resident memory is its own. The JSON file is rewritten after every measurement.

Outputs: JSON (environment, protocol, one row per measurement), a markdown table and matplotlib plots;
``merge`` joins several JSON files (parts of one run on a device) into one set of outputs.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import datetime
import functools
import gc
import inspect
import json
import math
import multiprocessing
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ['Setting', 'Protocol', 'count_gflops', 'measure', 'run', 'environment', 'merge', 'format_table',
           'format_summary', 'plot_throughput_vs_params', 'plot_scaling', 'write_outputs', 'parse_measure', 'main',
           'MODES', 'PRECISIONS', 'BASELINES']

PRECISIONS = ('fp32', 'tf32', 'bf16')
COMPILE_MODES = (None, 'default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')
CUDA_GRAPH_MODES = ('reduce-overhead', 'max-autotune')
MODES = ('infer', 'latency', 'fwd_bwd', 'train')
MODE_LABELS = dict(infer='inference', latency='latency, batch 1', fwd_bwd='fwd+bwd (no optimizer)',
                   train='fwd+bwd+AdamW step')
TRAINING_MODES = ('fwd_bwd', 'train')

# timm baselines measured with every run (unless --no-baselines), with the anchors' protocol: drop_path_rate 0.2 in
# training (VMamba-T's released value, not timm's default 0) and channels_last for the convolutional ones.
BASELINES = {
    'convnext_tiny': dict(drop_path_rate=0.2, channels_last=True),
    'swin_tiny_patch4_window7_224': dict(drop_path_rate=0.2, channels_last=False),
    'mambaout_tiny': dict(drop_path_rate=0.2, channels_last=True),
}


@dataclasses.dataclass(frozen=True)
class Setting:
    """One measurement of a model: what runs, in which precision, at which input size and batch."""
    mode: str
    precision: str
    img_size: int
    batch_size: int

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f'mode must be one of {MODES}, got {self.mode!r}')
        if self.precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, got {self.precision!r}')
        if self.img_size < 1 or self.batch_size < 1:
            raise ValueError(f'img_size and batch_size must be positive, got {self.img_size} and {self.batch_size}')


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How every measurement of a run is taken.

    Attributes:
        channels_last: ``'auto'`` (the baselines as in ``BASELINES``, every other model in its default layout),
            ``'all'`` or ``'none'``: channels_last memory format for model and input.
        drop_path: drop_path_rate for every model in training modes; None: each model's own default (the released
            value for visionssm models), the baselines as in ``BASELINES``.
        pool: random input batches generated before timing and used in turn.
        compile / compile_mode: ``torch.compile`` each model, in this mode (``COMPILE_MODES``; None: torch's
            default). ``'reduce-overhead'`` replays CUDA graphs: no kernel-launch host time in the step.
        fused_adamw: the ``train`` mode's AdamW as one fused kernel (``fused=True``, the classification recipes'
            optimizer) instead of torch's default (multi-tensor on CUDA).
        cuda_graph: training modes replay the eager model's forward and backward as CUDA graphs
            (``visionssm.GraphedModule``, the recipes' ``cuda_graph=True``): the eager kernels without their host
            time. Inference stays eager.
    """
    device: str = 'cpu'
    warmup: int = 5
    repeats: int = 5
    repeat_s: float = 0.25
    pool: int = 3
    channels_last: str = 'auto'
    compile: bool = False
    compile_mode: Optional[str] = None
    drop_path: Optional[float] = None
    fused_adamw: bool = False
    cuda_graph: bool = False

    def __post_init__(self):
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f'compile_mode must be one of {COMPILE_MODES}, got {self.compile_mode!r}')
        if self.channels_last not in ('auto', 'all', 'none'):
            raise ValueError(f"channels_last must be 'auto', 'all' or 'none', got {self.channels_last!r}")
        if min(self.warmup, self.repeats, self.pool) < 1 or self.repeat_s < 0:
            raise ValueError(f'warmup, repeats and pool must be >= 1 and repeat_s >= 0, got {self.warmup}, '
                             f'{self.repeats}, {self.pool} and {self.repeat_s}')
        if self.cuda_graph and self.compile:
            raise ValueError("cuda_graph replays the eager model; not with compile (compile_mode='reduce-overhead' "
                             'is the compiled form of CUDA graphs)')

    def channels_last_for(self, name: str) -> bool:
        if self.channels_last == 'auto':
            return BASELINES.get(name, {}).get('channels_last', False)
        return self.channels_last == 'all'

    def drop_path_for(self, name: str) -> Optional[float]:
        return self.drop_path if self.drop_path is not None else BASELINES.get(name, {}).get('drop_path_rate')


# ---------------------------------------------------------------------------------------------------- model info

def _layer_norm_flops(input_shape, normalized_shape, *args, **kwargs) -> int:
    return 2 * 5 * math.prod(input_shape)  # FlopCounterMode counts 2 per multiply-add; halved with the rest below


@functools.lru_cache(maxsize=None)
def _native_img_size(name: str) -> Optional[int]:
    """The input size an architecture is built for, where it is fixed at construction (ViT-style models take an
    ``img_size`` argument); None where any size runs on one model."""
    import timm
    with torch.device('meta'):
        model = timm.create_model(name)
    if 'img_size' not in inspect.signature(type(model)).parameters:
        return None
    return model.pretrained_cfg.get('input_size', (3, 224, 224))[-1]


def _size_kwargs(name: str, img_size: int) -> dict:
    native = _native_img_size(name)
    return {} if native in (None, img_size) else dict(img_size=img_size)


def count_gflops(name: str, img_size: int = 224) -> float:
    """GFLOPs of one ``img_size`` image through model ``name`` (fvcore convention, scan included), on the meta
    device: the count of a batch of two less that of one, so that work done once per call whatever the batch
    (weights composed for inference, e.g. SS2D's Δ projection) is not counted per image."""
    import timm
    from torch.utils.flop_counter import FlopCounterMode
    from visionssm.ops import count_scan_flops

    with torch.device('meta'):
        model = timm.create_model(name, **_size_kwargs(name, img_size)).eval()

    def flops(batch: int) -> float:
        x = torch.empty(batch, 3, img_size, img_size, device='meta')
        counter = FlopCounterMode(display=False,
                                  custom_mapping={torch.ops.aten.native_layer_norm: _layer_norm_flops})
        with counter, count_scan_flops() as scan, torch.no_grad():
            model(x)
        return counter.get_total_flops() / 2 + sum(scan)

    return (flops(2) - flops(1)) / 1e9


def _family(name: str) -> tuple[Optional[str], bool]:
    """(timm module of the model, e.g. 'vmamba' or 'convnext'; whether it is a visionssm model)."""
    from timm.models import is_model, model_entrypoint
    if not is_model(name):
        return None, False
    module = model_entrypoint(name).__module__
    return module.rsplit('.', 1)[-1], module.startswith('visionssm.')


# ---------------------------------------------------------------------------------------------------- measuring

def _set_precision(precision: str, device: torch.device) -> dict:
    """Set the TF32 flags for ``precision``; returns them as recorded in a row."""
    if device.type == 'cuda':
        # The legacy flags: timm and torch.compile read them, and reading them after a change through the newer
        # fp32_precision API raises (torch >= 2.9).
        torch.backends.cuda.matmul.allow_tf32 = precision == 'tf32'
        torch.backends.cudnn.allow_tf32 = precision == 'tf32'
        torch.backends.cudnn.benchmark = True
        return dict(tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32,
                    cudnn_benchmark=True)
    return {}


def _autocast(precision: str, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == 'bf16')


def _sync(device: torch.device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


class _Clock:
    """CUDA events on a GPU (device time, no host sync inside a timed region), the host clock on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == 'cuda'

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, start, end) -> float:
        if not self.cuda:
            return end - start
        end.synchronize()
        return start.elapsed_time(end) / 1e3


def _random_batches(pool: int, batch_size: int, img_size: int, num_classes: int, device: torch.device,
                    channels_last: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return [(torch.randn(batch_size, 3, img_size, img_size, device=device).contiguous(memory_format=layout),
             torch.randint(0, num_classes, (batch_size,), device=device)) for _ in range(pool)]


def _time_iterations(step: Callable[[int], None], device: torch.device, protocol: Protocol,
                     per_iteration: bool) -> dict:
    """Warm up, then time ``protocol.repeats`` repeats; per-iteration times in seconds and the memory peaks."""
    warm = []
    for i in range(protocol.warmup):
        t0 = time.perf_counter()
        step(i)
        _sync(device)
        warm.append(time.perf_counter() - t0)
    # the fastest warm-up iteration past the first (compilation, autotuning) sets how many make one repeat
    n = max(1, round(protocol.repeat_s / min(warm[1:] or warm)))
    stats = dict(first_iter_s=warm[0], iters_per_repeat=n)
    if device.type == 'cuda':
        stats['warmup_peak_bytes'] = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    clock, times, i = _Clock(device), [], protocol.warmup
    for _ in range(protocol.repeats):
        if per_iteration:  # latency: each iteration on its own, waited for
            for _ in range(n):
                start = clock.mark()
                step(i)
                times.append(clock.seconds(start, clock.mark()))
                i += 1
        else:
            start = clock.mark()
            for _ in range(n):
                step(i)
                i += 1
            times.append(clock.seconds(start, clock.mark()) / n)
    if device.type == 'cuda':
        stats['peak_bytes'] = torch.cuda.max_memory_allocated(device)
        stats['peak_reserved_bytes'] = torch.cuda.max_memory_reserved(device)
    stats['times'] = times
    return stats


def _benchmark(model: torch.nn.Module, setting: Setting, batch_size: int, channels_last: bool,
               protocol: Protocol, device: torch.device) -> dict:
    training = setting.mode in TRAINING_MODES
    num_classes = getattr(model, 'num_classes', 1000) or 1000
    batches = _random_batches(protocol.pool, batch_size, setting.img_size, num_classes, device, channels_last)
    model.train(training)
    # lr is tiny so that many steps leave the weights (and the kernels' inputs) in a normal range
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-7, **({'fused': True} if protocol.fused_adamw else {})
                                  ) if setting.mode == 'train' else None
    autocast = _autocast(setting.precision, device)
    run = model
    if training and protocol.cuda_graph and device.type == 'cuda':
        from .cuda_graph import GraphedModule
        run = GraphedModule(model)   # captured in the first (warm-up) step

    def step(i: int):
        x, y = batches[i % len(batches)]
        if not training:
            with torch.no_grad(), autocast:
                model(x)
            return
        with autocast:
            loss = F.cross_entropy(run(x), y)
        loss.backward()
        if optimizer is not None:
            optimizer.step()
        model.zero_grad(set_to_none=True)  # as the anchors: gradients are None before each step

    stats = _time_iterations(step, device, protocol, per_iteration=setting.mode == 'latency')
    # the extra batches of the pool are not the model's memory: count one input batch, as the anchors do
    extra = sum(t.numel() * t.element_size() for t in batches[0]) * (len(batches) - 1)
    for key in ('warmup_peak_bytes', 'peak_bytes', 'peak_reserved_bytes'):
        if key in stats:
            stats[key] -= extra
    return stats


def _halvings(batch_size: int):
    while batch_size >= 1:
        yield batch_size
        batch_size //= 2


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or 'out of memory' in str(e).lower() \
        or 'CUBLAS_STATUS_ALLOC_FAILED' in str(e)


def _is_fatal(e: BaseException) -> bool:
    """A CUDA error that leaves the context unusable: the process must be replaced."""
    text = str(e)
    return isinstance(e, getattr(torch, 'AcceleratorError', ())) or 'CUDA error' in text \
        or 'illegal memory access' in text or 'device-side assert' in text


def _error(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [''])[0]
    return f'error: {type(e).__name__}: {first}'[:300]


def _free_memory(device: torch.device):
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()


# The worker keeps the last model built: the settings of one model reuse it.
_CACHE: dict = {}


def _get_model(name: str, img_size: int, protocol: Protocol) -> tuple[torch.nn.Module, dict]:
    """The model to time and facts about it; built (or rebuilt for a ViT-style model's new input size) on demand."""
    import timm
    import visionssm  # noqa: F401  (registers the models in a fresh process)

    size_kwargs = _size_kwargs(name, img_size)
    key = (name, tuple(size_kwargs.items()), protocol)
    if _CACHE.get('key') == key:
        return _CACHE['model'], dict(_CACHE['info'], build_s=0.0)
    _release_model()
    t0 = time.perf_counter()
    drop_path = protocol.drop_path_for(name)
    kwargs = dict(size_kwargs, **({} if drop_path is None else dict(drop_path_rate=drop_path)))
    with torch.device(protocol.device):  # parameters are created (and initialised) on the device
        model = timm.create_model(name, **kwargs)
    if protocol.channels_last_for(name):
        model = model.to(memory_format=torch.channels_last)
    rates = [m.drop_prob for m in model.modules() if isinstance(getattr(m, 'drop_prob', None), float)]
    info = dict(params_m=sum(p.numel() for p in model.parameters()) / 1e6, drop_path_rate=max(rates, default=0.0))
    if protocol.compile:
        model = torch.compile(model, mode=protocol.compile_mode)
    info['build_s'] = time.perf_counter() - t0
    _CACHE.update(key=key, model=model, info=info)
    return model, info


def _release_model():
    compiled = _CACHE.get('key') is not None and _CACHE['key'][2].compile
    _CACHE.clear()
    if compiled:
        torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def measure(name: str, setting: Setting, protocol: Protocol) -> dict:
    """One measurement; returns its row. Never raises: failures are the row's ``status``."""
    device = torch.device(protocol.device)
    channels_last = protocol.channels_last_for(name)
    row = dict(model=name, mode=setting.mode, precision=setting.precision, img_size=setting.img_size,
               batch_size=setting.batch_size, batch_size_requested=setting.batch_size,
               channels_last=channels_last, compile=protocol.compile, status='ok')
    if protocol.compile and protocol.compile_mode:
        row['compile_mode'] = protocol.compile_mode
    if protocol.cuda_graph and setting.mode in TRAINING_MODES and device.type == 'cuda':
        row['cuda_graph'] = True
    t0 = time.perf_counter()
    try:
        model, info = _get_model(name, setting.img_size, protocol)
        row.update(params_m=info['params_m'], build_s=info['build_s'])
        if setting.mode in TRAINING_MODES:
            row['drop_path_rate'] = info['drop_path_rate']
        if setting.mode == 'train':
            row['optimizer'] = 'AdamW (fused)' if protocol.fused_adamw else 'AdamW (torch default implementation)'
        row.update(_set_precision(setting.precision, device))
        oom_at, stats = [], None
        for batch in _halvings(setting.batch_size):
            try:
                stats = _benchmark(model, setting, batch, channels_last, protocol, device)
                break
            except Exception as e:
                if not _is_oom(e):
                    raise
                oom_at.append(batch)
            # out of the except block: the traceback, and the activations it held, are gone
            model.zero_grad(set_to_none=True)
            _free_memory(device)
        row['batch_size'] = batch
        if oom_at:
            row['oom_batch_sizes'] = oom_at
        if stats is None:
            row['status'] = 'oom'
        else:
            times = stats['times']
            median = statistics.median(times)
            row.update(ms=median * 1e3, ms_min=min(times) * 1e3, ms_max=max(times) * 1e3,
                       img_per_s=batch / median, img_per_s_min=batch / max(times), img_per_s_max=batch / min(times),
                       warmup=protocol.warmup, repeats=protocol.repeats, iters_per_repeat=stats['iters_per_repeat'],
                       repeat_s=protocol.repeat_s, first_iter_s=stats['first_iter_s'],
                       timing='CUDA events' if device.type == 'cuda' else 'host clock')
            if device.type == 'cuda' and (protocol.compile and protocol.compile_mode in CUDA_GRAPH_MODES
                                          or row.get('cuda_graph')):
                # replayed graphs allocate nothing: their memory is the private pool, reserved when they were
                # recorded (possibly by an earlier measurement of the same model): count what is reserved
                row.update(peak_mem_gib=stats['peak_reserved_bytes'] / 2 ** 30,
                           warmup_peak_mem_gib=stats['warmup_peak_bytes'] / 2 ** 30,
                           peak_mem_kind='max_memory_reserved after warm-up (CUDA graphs: their private pool '
                                         'included; an upper bound), one input batch')
            elif device.type == 'cuda':
                row.update(peak_mem_gib=stats['peak_bytes'] / 2 ** 30,
                           warmup_peak_mem_gib=stats['warmup_peak_bytes'] / 2 ** 30,
                           peak_mem_kind='max_memory_allocated after warm-up, one input batch')
            else:
                row.update(peak_mem_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
                           peak_mem_kind='peak RSS of the measuring process')
    except Exception as e:
        row['status'] = 'oom' if _is_oom(e) else _error(e)
        if _is_fatal(e):
            row['fatal'] = True
    finally:
        if 'model' in _CACHE:
            _CACHE['model'].zero_grad(set_to_none=True)
        _free_memory(device)
    row['wall_s'] = time.perf_counter() - t0
    return row


# ---------------------------------------------------------------------------------------------------- the run

def _serve(conn):
    """Worker loop: run ``fn(*args)`` for each task received, send back the result; None ends it."""
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        fn, args = task
        conn.send(fn(*args))


class _Worker:
    """A spawned process that runs measurements (``isolate``), or the calling process itself."""

    def __init__(self, isolate: bool):
        self.isolate = isolate
        self.process = self.conn = None

    def call(self, fn: Callable, *args, timeout: Optional[float] = None):
        """``fn(*args)`` in the worker; raises TimeoutError (the worker is killed) or ChildProcessError."""
        if not self.isolate:
            return fn(*args)
        if self.process is None:
            ctx = multiprocessing.get_context('spawn')
            self.conn, child = ctx.Pipe()
            # not a daemon: torch.compile starts compile workers of its own
            self.process = ctx.Process(target=_serve, args=(child,), name='benchmark-worker')
            self.process.start()
            child.close()
        self.conn.send((fn, args))
        if not self.conn.poll(timeout):
            self.stop(kill=True)
            raise TimeoutError
        try:
            return self.conn.recv()
        except EOFError:
            self.process.join(5)
            code = self.process.exitcode
            self.stop(kill=True)
            raise ChildProcessError(f'the measuring process died (exit code {code})') from None

    def stop(self, kill: bool = False):
        if not self.isolate:
            _release_model()
            return
        if self.process is None:
            return
        if not kill:
            try:
                self.conn.send(None)
                self.process.join(30)
            except (BrokenPipeError, OSError):
                pass
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()
        self.process = self.conn = None


class _InlineExecutor(concurrent.futures.Executor):
    """Runs a submitted call at once."""

    def submit(self, fn, /, *args, **kwargs):
        future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as e:
            future.set_exception(e)
        return future


def _nvidia_driver() -> Optional[str]:
    try:
        out = subprocess.run(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        return out.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent, check=True).stdout
        return out.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: str) -> dict:
    """Versions and hardware of this machine, as recorded with a run."""
    import timm
    import visionssm
    from visionssm.ops.selective_scan import BACKENDS

    env = dict(python=platform.python_version(), torch=torch.__version__, timm=timm.__version__, triton=None,
               visionssm=visionssm.__version__, git_commit=_git_commit(), machine=platform.machine(),
               processor=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
               torch_threads=torch.get_num_threads(), scan_backends=list(BACKENDS), device=str(device))
    try:
        import triton
        env['triton'] = triton.__version__
    except ImportError:
        pass
    dev = torch.device(device)
    if dev.type == 'cuda':
        props = torch.cuda.get_device_properties(dev)
        env.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2 ** 30, sm_count=props.multi_processor_count,
                   capability=f'{props.major}.{props.minor}', driver=_nvidia_driver(), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    return env


def _write_json(path: Optional[str], data: dict):
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(f'{path}.tmp')
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)  # a run killed mid-write leaves the previous complete file


def _count_quietly(name: str, img_size: int) -> tuple[Optional[float], Optional[str]]:
    try:
        return count_gflops(name, img_size), None
    except Exception as e:
        return None, _error(e)


def run(
        models: Sequence[str],
        settings: Sequence[Setting],
        protocol: Protocol = Protocol(),
        gflops_sizes: Optional[Sequence[int]] = None,
        isolate: bool = True,
        time_budget: Optional[float] = None,
        json_path: Optional[str] = None,
        command: str = '',
        progress: bool = True,
) -> dict:
    """Measure every model in every setting; returns ``dict(runs=[{environment, protocol}], results=[rows])``.

    Args:
        gflops_sizes: input sizes at which to count GFLOPs per model (default 224 and every measured size).
        isolate: measure in a spawned worker process.
        time_budget: seconds for the whole run: a measurement still running when it ends is stopped, later ones are
            recorded as skipped. Needs ``isolate`` to stop a running measurement.
        json_path: written after every measurement, so a run cut short leaves its results.
    """
    try:
        from tqdm import tqdm
    except ImportError:  # progress is a nicety
        tqdm = None
    deadline = time.monotonic() + time_budget if time_budget is not None else math.inf
    gflops_sizes = sorted(set(gflops_sizes if gflops_sizes is not None else
                              [224, *(s.img_size for s in settings)]))
    env = dict(environment(protocol.device), command=command,
               started=datetime.datetime.now().astimezone().isoformat(timespec='seconds'))
    data = dict(runs=[dict(environment=env, protocol=dataclasses.asdict(protocol), time_budget_s=time_budget,
                           modes=MODE_LABELS)], results=[])
    # On a GPU with a worker process, GFLOPs are counted here while the worker measures; otherwise before each
    # model, so that the count neither competes with a CPU measurement nor sees its scans.
    concurrent_count = isolate and torch.device(protocol.device).type == 'cuda'
    counter = concurrent.futures.ThreadPoolExecutor(1) if concurrent_count else _InlineExecutor()
    counts: dict[tuple[str, int], concurrent.futures.Future] = {}
    worker = _Worker(isolate)
    total = len(models) * len(settings)
    bar = tqdm(total=total, desc='benchmark', unit='run', disable=not progress,
               mininterval=0.1 if sys.stderr.isatty() else 15) if tqdm else None

    def fill_gflops(row: dict, wait: bool):
        for size, key in ((224, 'gflops_224'), (row['img_size'], 'gflops')):
            future = counts.get((row['model'], size))
            if future is not None and (wait or future.done()) and not future.cancelled():
                row[key], error = future.result()
                if error:
                    row['gflops_error'] = error

    try:
        for name in models:
            family, is_visionssm = _family(name)
            for size in gflops_sizes if time.monotonic() < deadline else ():
                counts[(name, size)] = counter.submit(_count_quietly, name, size)
            for setting in settings:
                if bar:
                    bar.set_postfix_str(f'{name} {setting.mode} {setting.precision} {setting.img_size}')
                left = deadline - time.monotonic()
                if left <= 0:
                    row = dict(model=name, **dataclasses.asdict(setting), status='skipped (time budget)')
                else:
                    try:
                        row = worker.call(measure, name, setting, protocol,
                                          timeout=left if math.isfinite(left) else None)
                    except TimeoutError:
                        row = dict(model=name, **dataclasses.asdict(setting),
                                   status='timeout (time budget): measurement stopped')
                    except ChildProcessError as e:
                        row = dict(model=name, **dataclasses.asdict(setting), status=f'error: {e}')
                    if row.pop('fatal', False):
                        worker.stop(kill=True)
                row.update(family=family, visionssm=is_visionssm, run=0)
                fill_gflops(row, wait=False)
                data['results'].append(row)
                _write_json(json_path, data)
                if bar:
                    bar.update()
            if torch.device(protocol.device).type == 'cpu':
                worker.stop()  # a fresh process per model: its peak RSS is the model's own
    finally:
        worker.stop()
        if bar:
            bar.close()
    # counts still running at the deadline are waited for (seconds); those not started are dropped
    concurrent.futures.wait(list(counts.values()), timeout=max(0.0, deadline - time.monotonic())
                            if math.isfinite(deadline) else None)
    counter.shutdown(wait=True, cancel_futures=True)
    for row in data['results']:
        fill_gflops(row, wait=True)
    env['finished'] = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
    _write_json(json_path, data)
    return data


def merge(paths: Sequence[str]) -> dict:
    """Join the JSON files of several runs (or merges) into one: runs concatenated, rows renumbered."""
    merged = dict(runs=[], results=[])
    for path in paths:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or not {'runs', 'results'} <= data.keys():
            raise ValueError(f'{path} is not a benchmark JSON file (expected the keys "runs" and "results")')
        offset = len(merged['runs'])
        merged['runs'] += data['runs']
        merged['results'] += [dict(r, run=r.get('run', 0) + offset) for r in data['results']]
    return merged


# ---------------------------------------------------------------------------------------------------- reporting

def _options(row: dict) -> str:
    compiled = 'compile' + (f" ({row['compile_mode']})" if row.get('compile_mode') else '')
    return ', '.join(o for o, on in (('channels_last', row.get('channels_last')), (compiled, row.get('compile')),
                                     ('CUDA graphs', row.get('cuda_graph'))) if on)


def _fmt(value, spec: str = '.2f') -> str:
    return '' if value is None else format(value, spec)


def format_table(results: Sequence[dict]) -> str:
    """Markdown, one row per model x resolution x precision x mode (and options)."""
    head = ('| model | params (M) | GFLOPs @224 | size | GFLOPs | batch | precision | mode | options | '
            'img/s (min-max) | ms/iter (min-max) | peak GiB | status |')
    lines = [head, '|' + '---|' * 13]
    for r in results:
        ok = r['status'] == 'ok'
        batch = str(r['batch_size'])
        if r.get('batch_size_requested', r['batch_size']) != r['batch_size']:
            batch += f" (OOM at {', '.join(map(str, r.get('oom_batch_sizes', [])))})"
        ips = f"{r['img_per_s']:.1f} ({r['img_per_s_min']:.1f}-{r['img_per_s_max']:.1f})" if ok else ''
        ms = f"{r['ms']:.2f} ({r['ms_min']:.2f}-{r['ms_max']:.2f})" if ok else ''
        lines.append(f"| {r['model']} | {_fmt(r.get('params_m'))} | {_fmt(r.get('gflops_224'))} | {r['img_size']} | "
                     f"{_fmt(r.get('gflops'))} | {batch} | {r['precision']} | {MODE_LABELS[r['mode']]} | "
                     f"{_options(r)} | {ips} | {ms} | {_fmt(r.get('peak_mem_gib'))} | {r['status']} |")
    return '\n'.join(lines)


def _column(r: dict) -> str:
    unit = 'ms' if r['mode'] == 'latency' else 'img/s'
    return f"{r['precision']} {r['mode']} @{r['img_size']} ({unit})"


def format_summary(results: Sequence[dict]) -> str:
    """Markdown, one row per model (and options), one column per setting: img/s, or ms for latency."""
    columns = list(dict.fromkeys(_column(r) for r in results))
    table = collections.defaultdict(dict)
    facts = {}
    for r in results:
        key = (r['model'], _options(r))
        if r['status'] == 'ok':
            cell = f"{r['ms']:.2f}" if r['mode'] == 'latency' else f"{r['img_per_s']:.0f}"
            if r['batch_size'] != r.get('batch_size_requested', r['batch_size']):
                cell += f" (bs {r['batch_size']})"
        else:
            cell = r['status'].split(':')[0]
        table[key][_column(r)] = cell
        # params of the 224 row where there is one: Vim's position embedding grows with the input size
        if key not in facts or r.get('params_m') is not None and (facts[key][0] is None or r['img_size'] == 224):
            facts[key] = (r.get('params_m'), r.get('gflops_224'))
    lines = ['| model | params (M) | GFLOPs @224 | ' + ' | '.join(columns) + ' |', '|' + '---|' * (3 + len(columns))]
    for (model, options), cells in table.items():
        params, gflops = facts[(model, options)]
        label = f'{model} ({options})' if options else model
        lines.append(f'| {label} | {_fmt(params)} | {_fmt(gflops)} | '
                     + ' | '.join(cells.get(c, '') for c in columns) + ' |')
    return '\n'.join(lines)


def _describe_runs(data: dict) -> str:
    lines = []
    for i, run_info in enumerate(data['runs']):
        env, p = run_info['environment'], run_info['protocol']
        where = (f"{env['gpu']}, driver {env.get('driver')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}"
                 if env.get('gpu') else f"CPU ({env.get('processor')}, {env.get('torch_threads')} threads)")
        lines.append(f"- run {i}: {where}; torch {env['torch']}, triton {env.get('triton')}, timm {env['timm']}, "
                     f"visionssm {env.get('visionssm')} ({env.get('git_commit') or 'commit unknown'}); "
                     f"warm-up {p['warmup']}, {p['repeats']} repeats of about {p['repeat_s']} s, "
                     f"pool of {p['pool']} random batches; `{env.get('command', '')}`")
    return '\n'.join(lines)


def _plot_rows(results: Sequence[dict]) -> tuple[list[dict], Optional[str]]:
    """The uncompiled inference rows in one precision (bf16 where measured), for the plots."""
    rows = [r for r in results if r['status'] == 'ok' and r['mode'] == 'infer' and not r.get('compile')]
    if not rows:
        return [], None
    precisions = collections.Counter(r['precision'] for r in rows)
    precision = 'bf16' if 'bf16' in precisions else precisions.most_common(1)[0][0]
    return [r for r in rows if r['precision'] == precision], precision


def _style(families: Sequence[Optional[str]], visionssm_families: set) -> dict:
    markers = iter('osD^vP<>ph')
    baseline_markers = iter('*Xd8H')
    colors = iter(f'C{i}' for i in range(10))
    style = {}
    for f in sorted(set(families), key=lambda f: (f not in visionssm_families, str(f))):
        if f in visionssm_families:
            style[f] = dict(marker=next(markers, 'o'), color=next(colors, 'k'))
        else:
            style[f] = dict(marker=next(baseline_markers, 'x'), color='0.35')
    return style


def _plain_log_axes(ax, xticks: Sequence[float] = ()):
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 1, 2, 5, 10, 20, ...: labels within a decade
        axis.set_major_formatter(FuncFormatter(lambda v, _: f'{v:g}'))
        axis.set_minor_formatter(NullFormatter())
    if xticks:
        ax.set_xticks(list(xticks))
    ax.grid(True, which='both', alpha=0.3)


def plot_throughput_vs_params(results: Sequence[dict], path) -> bool:
    """Inference throughput against parameter count at 224 (or the smallest size measured), one marker per
    family; False when nothing fits."""
    from matplotlib.figure import Figure

    rows, precision = _plot_rows(results)
    rows = [r for r in rows if r.get('params_m')]
    if not rows:
        return False
    size = 224 if any(r['img_size'] == 224 for r in rows) else min(r['img_size'] for r in rows)
    rows = [r for r in rows if r['img_size'] == size]
    style = _style([r['family'] for r in rows], {r['family'] for r in rows if r.get('visionssm')})
    fig = Figure(figsize=(9, 6), layout='constrained')
    ax = fig.subplots()
    for family, st in style.items():
        fam = [r for r in rows if r['family'] == family]
        ax.scatter([r['params_m'] for r in fam], [r['img_per_s'] for r in fam], s=60, label=family, **st)
        for r in fam:
            label = r['model'] + (f' ({_options(r)})' if _options(r) else '')
            ax.annotate(label, (r['params_m'], r['img_per_s']), fontsize=7, xytext=(4, 3),
                        textcoords='offset points')
    ax.set(xscale='log', yscale='log', xlabel='parameters (M)', ylabel='images/s',
           title=f'{precision} inference at {size}x{size}, batch {rows[0]["batch_size_requested"]}')
    _plain_log_axes(ax)
    ax.legend(title='family')
    fig.savefig(path, dpi=120)
    return True


def plot_scaling(results: Sequence[dict], path) -> bool:
    """Inference throughput against input size per model: absolute, and relative to the smallest size with the
    slopes of a cost linear and quadratic in the number of pixels; False when no model has two sizes."""
    from matplotlib.figure import Figure

    rows, precision = _plot_rows(results)
    series = collections.defaultdict(dict)
    for r in rows:
        series[(r['model'], _options(r), r['family'], r.get('visionssm'))][r['img_size']] = r['img_per_s']
    series = {k: sorted(v.items()) for k, v in series.items() if len(v) >= 2}
    if not series:
        return False
    style = _style([k[2] for k in series], {k[2] for k in series if k[3]})
    fig = Figure(figsize=(15, 6), layout='constrained')
    absolute, relative = fig.subplots(1, 2)
    seen = collections.Counter()  # within a family, line styles in model order (tiny, small, base)
    for (model, options, family, _), points in series.items():
        sizes, ips = zip(*points)
        label = model + (f' ({options})' if options else '')
        kw = dict(style[family], linestyle=('-', '--', ':', '-.')[seen[family] % 4], label=label)
        seen[family] += 1
        absolute.plot(sizes, ips, **kw)
        relative.plot(sizes, [v / ips[0] for v in ips], **kw)
    lo = min(p[0][0] for p in series.values())
    hi = max(p[-1][0] for p in series.values())
    grid = [lo * (hi / lo) ** (i / 20) for i in range(21)]
    relative.plot(grid, [(s / lo) ** -2 for s in grid], color='k', linewidth=2, alpha=0.25,
                  label='cost linear in pixels (slope -2)')
    relative.plot(grid, [(s / lo) ** -4 for s in grid], color='r', linewidth=2, alpha=0.25,
                  label='cost quadratic in pixels (slope -4)')
    absolute.set(xscale='log', yscale='log', xlabel='input size (px)', ylabel='images/s',
                 title=f'{precision} inference')
    relative.set(xscale='log', yscale='log', xlabel='input size (px)', ylabel=f'images/s relative to {lo}px',
                 title='scaling: slope -2 is linear cost, -4 quadratic')
    sizes = sorted({size for points in series.values() for size, _ in points})
    for ax in (absolute, relative):
        _plain_log_axes(ax, sizes)
    relative.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.02, 1))
    fig.savefig(path, dpi=120)
    return True


def write_outputs(data: dict, out_dir, plots: bool = True) -> list[Path]:
    """Write ``benchmark.json``, ``benchmark.md`` and (with matplotlib) the plots into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / 'benchmark.json', out / 'benchmark.md']
    written[0].write_text(json.dumps(data, indent=1))
    results = data['results']
    written[1].write_text(
        '# Benchmark\n\n' + _describe_runs(data) + '\n\nModes: ' +
        '; '.join(f'`{m}` {label}' for m, label in MODE_LABELS.items()) +
        '. Peak memory: steady state (GPU: `max_memory_allocated` after warm-up, one input batch counted; with CUDA '
        'graphs (compile reduce-overhead / max-autotune) `max_memory_reserved`, their pool included).\n\n'
        '## Summary (img/s; latency in ms)\n\n' + format_summary(results) +
        '\n\n## All measurements\n\n' + format_table(results) + '\n')
    if plots:
        for plot, name in ((plot_throughput_vs_params, 'throughput_vs_params.png'), (plot_scaling, 'scaling.png')):
            if plot(results, out / name):
                written.append(out / name)
            else:
                print(f'{name}: nothing to plot (needs inference rows; scaling needs two sizes of one model)')
    return written


# ---------------------------------------------------------------------------------------------------- CLI

def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(',')]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated integers, got {text!r}') from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f'expected positive integers, got {text!r}')
    return values


def _choice_list(choices: Sequence[str]):
    def parse(text: str) -> list[str]:
        values = text.split(',')
        bad = [v for v in values if v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(map(repr, bad))}; choose from {', '.join(choices)}")
        return values
    return parse


def parse_measure(spec: str, modes: Sequence[str], precisions: Sequence[str],
                  sizes: Sequence[int]) -> list[tuple[str, str, int]]:
    """``MODES[:PRECISIONS][@SIZES]`` (e.g. ``infer:fp32,bf16@224,512``) -> (mode, precision, size) triples; a part
    left out takes the run's ``--modes`` / ``--precisions`` / ``--resolutions``."""
    head, _, at = spec.partition('@')
    mode_text, _, precision_text = head.partition(':')
    try:
        modes = _choice_list(MODES)(mode_text) if mode_text else modes
        precisions = _choice_list(PRECISIONS)(precision_text) if precision_text else precisions
        sizes = _int_list(at) if at else sizes
    except argparse.ArgumentTypeError as e:
        raise ValueError(f'--measure {spec!r}: {e}') from None
    return [(m, p, s) for s in sizes for p in precisions for m in modes]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                epilog='Modes: ' + '; '.join(f'{m}: {label}' for m, label in MODE_LABELS.items()))
    p.add_argument('--models', nargs='+', metavar='MODEL',
                   help='timm model names or patterns (default: every visionssm model)')
    p.add_argument('--no-baselines', action='store_true', help=f"leave out the baselines {', '.join(BASELINES)}")
    p.add_argument('--quick', action='store_true',
                   help='a fast pass: inference, no baselines; on a CPU batch 2 at 64 px fp32, on a GPU batch 64 at '
                        '224 px bf16; GFLOPs at 224')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--modes', type=_choice_list(MODES), help=f"comma-separated, of {', '.join(MODES)} (default infer)")
    p.add_argument('--precisions', '--precision', type=_choice_list(PRECISIONS),
                   help='comma-separated (default: bf16 on a GPU, fp32 on a CPU)')
    p.add_argument('--resolutions', '--img-size', type=_int_list,
                   help='input sizes, comma-separated (default: 224,512,1024 on a GPU, 224 on a CPU)')
    p.add_argument('--batch-sizes', '--batch-size', type=_int_list,
                   help='one batch size, or one per --resolutions entry (default: 128,32,8 on a GPU matched to the '
                        'default resolutions, else 128; 8 on a CPU); latency always runs at batch 1')
    p.add_argument('--measure', nargs='+', metavar='MODES[:PRECISIONS][@SIZES]',
                   help='measure these groups instead of the full grid of --modes x --precisions x --resolutions, '
                        'e.g. infer:fp32,tf32,bf16@224 train:bf16@224 infer:bf16@512,1024')
    p.add_argument('--channels-last', choices=('auto', 'all', 'none'), default='auto',
                   help='channels_last model and input: auto = the baselines as the anchors ran them (convnext, '
                        'mambaout), others not')
    p.add_argument('--compile', action='store_true', help='torch.compile each model (compile time is in first_iter_s)')
    p.add_argument('--fused-adamw', action='store_true',
                   help="train mode: AdamW(fused=True), the classification recipes' optimizer (default: torch's "
                        'default implementation)')
    p.add_argument('--compile-mode', choices=[m for m in COMPILE_MODES if m],
                   help="torch.compile mode (implies --compile); 'reduce-overhead' replays CUDA graphs, which takes "
                        'the host (kernel launches) out of the step')
    p.add_argument('--cuda-graph', action='store_true',
                   help='training modes: the eager forward and backward replayed as CUDA graphs '
                        '(visionssm.GraphedModule, the recipes\' cuda_graph=True); not with --compile')
    p.add_argument('--drop-path', type=float,
                   help='drop_path_rate in training modes for every model (default: each model its released value, '
                        'the baselines 0.2 as in the anchors)')
    p.add_argument('--warmup', type=int, help='warm-up iterations (default 5; 1 on a CPU)')
    p.add_argument('--repeats', type=int, help='timed repeats; the median is reported (default 5; 3 on a CPU)')
    p.add_argument('--repeat-time', type=float, help='seconds one repeat should last (default 0.25; 0 on a CPU)')
    p.add_argument('--pool', type=int, default=3, help='random input batches used in turn (default 3)')
    p.add_argument('--gflops', choices=('all', '224', 'none'),
                   help='count GFLOPs at 224 and every measured size (all, the default), at 224 only, or not')
    p.add_argument('--time-budget', type=float,
                   help='seconds for the whole run: a measurement running when it ends is stopped, later ones skipped')
    p.add_argument('--in-process', action='store_true',
                   help='measure in this process (no worker process: no per-model RSS, no stopping at the budget)')
    p.add_argument('--json', help='write the results to this JSON file (rewritten after every measurement)')
    p.add_argument('--out-dir', help='write benchmark.json, benchmark.md and the PNG plots here')
    p.add_argument('--no-plots', action='store_true', help='with --out-dir: no plots (no matplotlib needed)')
    p.add_argument('--merge', nargs='+', metavar='JSON',
                   help='join these result files into one set of outputs in --out-dir; measures nothing')
    p.add_argument('--no-progress', action='store_true')
    return p


def _expand_models(names: Sequence[str]) -> list[str]:
    import timm
    out = []
    for name in names:
        if any(c in name for c in '*?['):
            found = timm.list_models(name)
            if not found:
                raise ValueError(f'--models pattern {name!r} matches no timm model')
            out += found
        else:
            out.append(name)  # an unknown name becomes an error row, not a failed run
    return list(dict.fromkeys(out))


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
    """The command line (``tools/benchmark.py``); returns the result rows."""
    import timm
    from visionssm.models import FAMILIES

    parser = _parser()
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    if (args.out_dir and not args.no_plots) or args.merge:
        if args.merge and not args.out_dir:
            parser.error('--merge needs --out-dir')
        if not args.no_plots:
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                parser.error('the plots need matplotlib (pip install matplotlib), or pass --no-plots')
    if args.merge:
        data = merge(args.merge)
        for path in write_outputs(data, args.out_dir, plots=not args.no_plots):
            print(f'wrote {path}')
        print(format_summary(data['results']))
        return data['results']

    gpu = torch.device(args.device).type == 'cuda'
    if args.quick:
        defaults = dict(modes=['infer'], precisions=['bf16' if gpu else 'fp32'], resolutions=[224 if gpu else 64],
                        batch_sizes=[64 if gpu else 2], gflops='224')
    else:
        defaults = dict(modes=['infer'], precisions=['bf16' if gpu else 'fp32'],
                        resolutions=[224, 512, 1024] if gpu else [224], batch_sizes=[128, 32, 8] if gpu else [8],
                        gflops='all')
    defaults.update(warmup=5 if gpu else 1, repeats=5 if gpu else 3, repeat_time=0.25 if gpu else 0.0)
    if args.resolutions is not None:  # sizes of one's own: one batch size for all unless told
        defaults['batch_sizes'] = defaults['batch_sizes'][:1]
    opts = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in defaults.items()}
    sizes, batches = opts['resolutions'], opts['batch_sizes']
    if len(batches) not in (1, len(sizes)):
        parser.error(f'--batch-sizes: got {len(batches)} batch sizes for {len(sizes)} resolutions; '
                     f'give one, or one per resolution')
    batch_for = dict(zip(sizes, batches))
    try:
        triples = ([t for spec in args.measure for t in parse_measure(spec, opts['modes'], opts['precisions'], sizes)]
                   if args.measure else parse_measure('', opts['modes'], opts['precisions'], sizes))
        if len(batches) == 1:
            batch_for.update((s, batches[0]) for _, _, s in triples)
        missing = sorted({s for m, _, s in triples if m != 'latency' and s not in batch_for})
        if missing:
            raise ValueError(f'no batch size for size(s) {missing}: add them to --resolutions, with a batch size '
                             f'each in --batch-sizes')
        settings = list(dict.fromkeys(Setting(m, p, s, 1 if m == 'latency' else batch_for[s])
                                      for m, p, s in triples))
        protocol = Protocol(device=args.device, warmup=opts['warmup'], repeats=opts['repeats'],
                            repeat_s=opts['repeat_time'], pool=args.pool, channels_last=args.channels_last,
                            compile=args.compile or args.compile_mode is not None, compile_mode=args.compile_mode,
                            drop_path=args.drop_path, fused_adamw=args.fused_adamw, cuda_graph=args.cuda_graph)
        models = _expand_models(args.models or timm.list_models(module=list(FAMILIES)))
    except ValueError as e:
        parser.error(str(e))
    if not (args.no_baselines or args.quick):
        models += [b for b in BASELINES if b not in models]
    gflops_sizes = {'all': None, '224': [224], 'none': []}[opts['gflops']]
    if args.time_budget is not None and args.in_process:
        parser.error('--time-budget needs the worker process: leave out --in-process')
    if not gpu:
        print(f'No GPU: measuring on the CPU ({torch.get_num_threads()} threads). These are CPU figures, not '
              f'comparable with GPU throughput.', flush=True)

    data = run(models, settings, protocol, gflops_sizes=gflops_sizes, isolate=not args.in_process,
               time_budget=args.time_budget, json_path=args.json, command=shlex.join(['tools/benchmark.py', *argv]),
               progress=not args.no_progress)
    if args.out_dir:
        for path in write_outputs(data, args.out_dir, plots=not args.no_plots):
            print(f'wrote {path}')
    env = data['runs'][0]['environment']
    where = env.get('gpu') or f"CPU, {env['torch_threads']} threads"
    print(f"\n{where} · torch {env['torch']} · warm-up {protocol.warmup}, median of {protocol.repeats} repeats\n")
    # one setting (--quick): every column fits; several: one row per model
    print(format_table(data['results']) if len(settings) == 1 else format_summary(data['results']))
    return data['results']
