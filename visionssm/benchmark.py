"""Model benchmark: parameters, GFLOPs, inference throughput and peak memory, one table for the machine it runs on.

GFLOPs follow the convention of the papers (fvcore): one multiply-add is one FLOP, LayerNorm 5 per element, and the
selective scan ``9*B*L*D*N + B*L*D`` per route (``visionssm.ops.count_scan_flops``). They are counted on the meta
device, so the count costs no memory and is independent of the measured batch and resolution.

Timing: after warm-up, every iteration is timed on a fresh random input (CUDA events on a GPU, the wall clock on a
CPU) and the median is reported. On a CPU every model is measured in its own process, so that its peak resident
memory is its own; on a GPU peak memory is ``torch.cuda.max_memory_allocated``. An out-of-memory failure is recorded
as such, not raised.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import platform
import resource
import statistics
import sys
import time
from typing import Optional, Sequence

import torch

__all__ = ['count_gflops', 'measure', 'run', 'format_table', 'main']

PRECISIONS = ('fp32', 'tf32', 'bf16')


def _layer_norm_flops(input_shape, normalized_shape, *args, **kwargs) -> int:
    numel = 1
    for s in input_shape:
        numel *= s
    return 2 * 5 * numel  # FlopCounterMode counts 2 per multiply-add; halved with everything else below


def count_gflops(name: str, img_size: int = 224) -> float:
    """GFLOPs of one ``img_size`` image through model ``name`` (fvcore convention, scan included)."""
    import timm
    from torch.utils.flop_counter import FlopCounterMode
    from visionssm.ops import count_scan_flops

    with torch.device('meta'):
        model = timm.create_model(name).eval()
        x = torch.empty(1, 3, img_size, img_size)
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.native_layer_norm: _layer_norm_flops})
    with counter, count_scan_flops() as scan, torch.no_grad():
        model(x)
    return (counter.get_total_flops() / 2 + sum(scan)) / 1e9


def _precision_context(precision: str, device: torch.device):
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = precision == 'tf32'
        torch.backends.cudnn.allow_tf32 = precision == 'tf32'
    if precision == 'bf16':
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def measure(
        name: str,
        device: str = 'cpu',
        batch_size: int = 2,
        img_size: int = 64,
        precision: str = 'fp32',
        warmup: int = 1,
        iters: int = 3,
) -> dict:
    """Inference throughput of one model; returns a result row (``status`` 'ok', 'oom' or the error)."""
    import timm
    import visionssm  # noqa: F401  (registers the models in a fresh process)

    dev = torch.device(device)
    row = dict(model=name, device=str(dev), batch_size=batch_size, img_size=img_size, precision=precision)
    try:
        model = timm.create_model(name).eval().to(dev)
        row['params_m'] = sum(p.numel() for p in model.parameters()) / 1e6
        if dev.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(dev)
        times = []
        with torch.no_grad(), _precision_context(precision, dev):
            for i in range(warmup + iters):
                x = torch.randn(batch_size, 3, img_size, img_size, device=dev)
                if dev.type == 'cuda':
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    model(x)
                    end.record()
                    end.synchronize()
                    elapsed = start.elapsed_time(end) / 1e3
                else:
                    t0 = time.perf_counter()
                    model(x)
                    elapsed = time.perf_counter() - t0
                if i >= warmup:
                    times.append(elapsed)
        median = statistics.median(times)
        row.update(img_per_s=batch_size / median, latency_ms=median * 1e3, status='ok')
        if dev.type == 'cuda':
            row['peak_mem_mib'] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
        else:  # this process measures one model only: its peak resident set is the model's
            row['peak_mem_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            row['peak_mem_kind'] = 'process RSS'
    except torch.OutOfMemoryError:
        row['status'] = 'oom'
    except RuntimeError as e:
        row['status'] = 'oom' if 'out of memory' in str(e).lower() else f'error: {str(e).splitlines()[0]}'
    return row


def run(
        models: Sequence[str],
        device: str = 'cpu',
        batch_size: int = 2,
        img_size: int = 64,
        precision: str = 'fp32',
        warmup: int = 1,
        iters: int = 3,
        gflops_size: int = 224,
        progress: bool = True,
) -> list[dict]:
    """Benchmark ``models``; on a CPU each in its own process."""
    try:
        from tqdm import tqdm
    except ImportError:  # progress is a nicety
        tqdm = None
    bar = tqdm(total=len(models), desc='benchmark', unit='model', disable=not progress) if tqdm else None
    results = []
    kwargs = dict(device=device, batch_size=batch_size, img_size=img_size, precision=precision, warmup=warmup,
                  iters=iters)
    if torch.device(device).type == 'cpu':
        ctx = multiprocessing.get_context('spawn')
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=1) as pool:
            for name in models:
                if bar:
                    bar.set_postfix_str(name)
                try:
                    row = pool.submit(measure, name, **kwargs).result()
                except concurrent.futures.process.BrokenProcessPool:  # killed, e.g. by the OOM killer
                    row = dict(model=name, status='oom (process killed)', **kwargs)
                results.append(row)
                if bar:
                    bar.update()
    else:
        for name in models:
            if bar:
                bar.set_postfix_str(name)
            results.append(measure(name, **kwargs))
            torch.cuda.empty_cache()
            if bar:
                bar.update()
    if bar:
        bar.close()
    for row in results:
        row[f'gflops_{gflops_size}'] = count_gflops(row['model'], gflops_size)
    return results


def format_table(results: list[dict], gflops_size: int = 224) -> str:
    rss = any(r.get('peak_mem_kind') == 'process RSS' for r in results)
    memory = 'peak RSS of its process (MiB)' if rss else 'peak memory (MiB)'
    head = f'| model | params (M) | GFLOPs @{gflops_size} | images/s | latency (ms/batch) | {memory} |'
    lines = [head, '|' + '---|' * 6]
    for r in results:
        if r['status'] == 'ok':
            lines.append(f"| {r['model']} | {r['params_m']:.2f} | {r[f'gflops_{gflops_size}']:.2f} | "
                         f"{r['img_per_s']:.1f} | {r['latency_ms']:.1f} | {r['peak_mem_mib']:.0f} |")
        else:
            lines.append(f"| {r['model']} | {r.get('params_m', float('nan')):.2f} | "
                         f"{r[f'gflops_{gflops_size}']:.2f} | {r['status']} | | |")
    return '\n'.join(lines)


def environment(device: str) -> dict:
    import timm
    env = dict(python=platform.python_version(), torch=torch.__version__, timm=timm.__version__,
               machine=platform.machine(), processor=platform.processor() or platform.machine(),
               cpu_threads=torch.get_num_threads(), command=' '.join(sys.argv))
    try:
        import triton
        env['triton'] = triton.__version__
    except ImportError:
        env['triton'] = None
    if torch.device(device).type == 'cuda':
        env['gpu'] = torch.cuda.get_device_name(device)
        env['cuda'] = torch.version.cuda
    return env


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
    import timm
    from visionssm.models import FAMILIES

    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--models', nargs='*', help='timm model names (default: every visionssm model)')
    parser.add_argument('--quick', action='store_true',
                        help='a fast pass over every model: on a CPU batch 2 at 64 px, on a GPU batch 64 at 224 px')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--batch-size', type=int)
    parser.add_argument('--img-size', type=int)
    parser.add_argument('--precision', choices=PRECISIONS)
    parser.add_argument('--warmup', type=int)
    parser.add_argument('--iters', type=int)
    parser.add_argument('--json', help='also write the results and environment to this JSON file')
    args = parser.parse_args(argv)

    gpu = torch.device(args.device).type == 'cuda'
    defaults = dict(batch_size=64 if gpu else 2, img_size=224 if gpu else 64, precision='bf16' if gpu else 'fp32',
                    warmup=10 if gpu else 1, iters=30 if gpu else 3)
    if not args.quick:
        defaults.update(batch_size=128 if gpu else 8, img_size=224, warmup=50 if gpu else 2, iters=30 if gpu else 5)
    opts = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in defaults.items()}
    models = args.models or timm.list_models(module=list(FAMILIES))
    if not gpu:
        print(f'No GPU: measuring on the CPU ({torch.get_num_threads()} threads) at batch {opts["batch_size"]}, '
              f'{opts["img_size"]}x{opts["img_size"]}, {opts["precision"]}. These are CPU figures, '
              f'not comparable with GPU throughput.', flush=True)
    results = run(models, device=args.device, **opts)
    env = environment(args.device)
    where = env.get('gpu') or f"CPU, {env['cpu_threads']} threads"
    print(f"\n{where} · torch {env['torch']} · batch {opts['batch_size']} · {opts['img_size']}x{opts['img_size']} · "
          f"{opts['precision']} · inference, median of {opts['iters']} after {opts['warmup']} warm-up\n")
    print(format_table(results))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(environment=env, options=opts, results=results), f, indent=1)
    return results
