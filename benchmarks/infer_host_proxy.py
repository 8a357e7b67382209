"""CPU proxies of the host cost of a model's eager GPU inference step: is it launch-bound, and by how much?

    python benchmarks/infer_host_proxy.py [MODEL ...] [--batch 8] [--img-size 224] [--time-size 32] [--top 15]

At small batches an eager inference step on a fast GPU is bound by the host: every ATen op is Python and dispatch
work and, on a GPU, mostly a kernel launch of ~10-25 µs of host time. Two figures per model, both on a CPU:

* ops: the ATen ops dispatched in one eval forward (``no_grad``, bf16 autocast with CUDA's float32 policy for
  layer_norm / group_norm as ``cpu_step_proxy.py``, and a plain ``F.rms_norm`` — in other models than
  visionssm's, whose norms take the Triton path below — as CUDA's one fused op), at ``--batch`` and
  ``--img-size``; of them, the launches: the ops that do device work (not views, not bare allocations).
  Autocast is entered for each forward, as ``tools/benchmark.py`` does, so its weight casts count. The scan, the
  token conv1d and the LayerNorm / RMSNorm kernels run their Triton host paths (launch decisions, allocations,
  the scan's merge) with the kernel launches stubbed out; each launch counts as one op (``triton_launch``).
* µs: the wall time of one forward of the same architecture made narrow (``NARROW``: every width about a
  twelfth, so ~1/150 of the weights) at batch 1 and ``--time-size`` pixels (median of ``--repeats``): the same ops
  in the same order, with their compute (and autocast's weight casts) reduced to almost nothing, so what is left is
  Python and dispatch, what the GPU waits for. Same autocast and scan host path, without the counting (and without
  the norm policy, a Python mode that would slow every call). It is the process's CPU time, not wall time, so that
  other work on the machine disturbs it less; torch runs single-threaded for it (``torch.set_num_threads(1)``).

The default models are VMamba-T and Vim-T against ConvNeXt-T and DeiT-T. Every forward before the measured ones
(two) does the one-time work (route plans, launch decisions, inference caches), as on a GPU after warm-up. Run
from the repository root with ``OMP_NUM_THREADS=1`` for steady timings.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

os.environ.setdefault('TRITON_INTERPRET', '1')   # triton imports without a GPU; no kernel runs (see _stub_launches)
sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import torch.nn.functional as F  # noqa: E402

from cpu_step_proxy import CudaAutocastNorms, NoLaunch, OpCounter as LaunchCounter, stub_triton_launches  # noqa: E402

MODELS = ('vmamba_tiny_s1l8', 'convnext_tiny', 'vim_tiny', 'deit_tiny_patch16_224')
# Widths of the timed (narrow) variant of each family: T models' widths / 12 (96 -> 8 per stage-1 channel group,
# ViT-T 192 -> 16; DeiT keeps its 3 heads). A family not listed is timed at its own widths.
NARROW = (('vmamba_', dict(dims=8)), ('convnext_', dict(dims=(8, 16, 32, 64))), ('vim_', dict(embed_dim=16)),
          ('deit_', dict(embed_dim=24)))


class CudaNorms(CudaAutocastNorms):
    """CUDA's norms on the CPU: autocast's float32 policy for layer_norm / group_norm, and ``rms_norm`` counted as
    the one fused op (``aten._fused_rms_norm``) that CUDA tensors run, where the CPU decomposes it into six."""

    def __init__(self, counter: LaunchCounter):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.rms_norm and self.counter in LaunchCounter.active and not self.counter.paused:
            self.counter.counts['aten._fused_rms_norm'] += 1
            self.counter.launches += 1
            self.counter.paused = True
            try:
                return func(*args, **(kwargs or {}))
            finally:
                self.counter.paused = False
        return super().__torch_function__(func, types, args, kwargs)


def _stub_launches() -> contextlib.ExitStack:
    """The Triton backends on CPU tensors, every kernel launch a no-op: the host paths of the scan, the token conv1d
    and the norms as on a GPU. Undone by closing the returned stack."""
    import importlib
    from unittest import mock
    import visionssm.kernels.triton_scan as ts
    ss = importlib.import_module('visionssm.ops.selective_scan')   # the module, not the function it exports
    stack = stub_triton_launches()
    for name in ('_scan_fwd_kernel', '_scan_bwd_kernel', '_scan_fwd_chunked_kernel', '_scan_bwd_chunked_kernel'):
        stack.enter_context(mock.patch.object(ts, name, NoLaunch(name)))
    # a cached launch holds the kernel it was built with: those cached before hold the real kernels, those cached
    # inside hold the stubs
    for launches in (ts._forward_launch, ts._backward_launch):
        launches.cache_clear()
        stack.callback(launches.cache_clear)
    stack.enter_context(mock.patch.dict(ss.BACKENDS, triton=(ts.selective_scan_triton,
                                                             lambda u: u.dtype != torch.float64)))
    return stack


def _build(name: str, img_size: int, narrow: bool = False):
    import timm
    kwargs = next((dict(w) for prefix, w in NARROW if name.startswith(prefix)), {}) if narrow else {}
    if name.startswith(('vim', 'deit', 'vit')):   # the position embedding is sized for one input size
        kwargs['img_size'] = img_size
    return timm.create_model(name, **kwargs).eval()


def count_ops(name: str, batch: int, img_size: int) -> LaunchCounter:
    model = _build(name, img_size)
    x = torch.randn(batch, 3, img_size, img_size)
    counter = LaunchCounter()
    for i in range(3):
        # autocast entered per forward, as tools/benchmark.py does: its weight casts are part of every step
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16), CudaNorms(counter):
            if i < 2:
                model(x)
                continue
            with counter:
                model(x)
    return counter


def forward_us(name: str, img_size: int, repeats: int) -> float:
    model = _build(name, img_size, narrow=True)
    x = torch.randn(1, 3, img_size, img_size)
    times = []
    for i in range(max(2, repeats // 10) + repeats):
        t0 = time.process_time()
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
            model(x)
        times.append(time.process_time() - t0)
    times = times[-repeats:]
    return statistics.median(times) * 1e6


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('models', nargs='*', default=list(MODELS))
    ap.add_argument('--batch', type=int, default=8, help='batch of the op count')
    ap.add_argument('--img-size', type=int, default=224, help='input size of the op count')
    ap.add_argument('--time-size', type=int, default=32, help='input size of the timed batch-1 forward')
    ap.add_argument('--repeats', type=int, default=200)
    ap.add_argument('--top', type=int, default=0, help='also list the N most frequent ops')
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    import visionssm  # noqa: F401  (registers the models)
    _stub_launches()
    torch.set_num_threads(1)
    print(f'ops: eval forward, batch {a.batch}, {a.img_size}px, bf16 autocast (CUDA norm policy), scan host path; '
          f'µs: batch 1, {a.time_size}px, median of {a.repeats}; torch threads {torch.get_num_threads()}')
    for name in a.models:
        counter = count_ops(name, a.batch, a.img_size)
        us = forward_us(name, a.time_size, a.repeats)
        print(f'{name}: ops {sum(counter.counts.values())}, launches {counter.launches}, {us:.0f} µs', flush=True)
        if a.top:
            print('  ' + ', '.join(f'{op} {n}' for op, n in counter.counts.most_common(a.top)))


if __name__ == '__main__':
    main()
