"""Latency of exported models against PyTorch eager, batch 1 at 224x224 (and batch 32 on a GPU).

CPU: onnxruntime (CPUExecutionProvider) running the ONNX export vs PyTorch eager (the reference scan), and eager
with the export form of the scan (``backend='export'`` forced) for comparison. GPU: the AOTInductor package vs
eager and ``torch.compile``, at batch 1 and 32 (with ``--static`` both packages: the export form's, and one that
calls visionssm's Triton scan). Prints a table and writes JSON.

    python benchmarks/export_latency.py --models vmamba_tiny_s1l8 efficientvmamba_tiny --out export_latency.json

Times are medians of ``--iters`` runs after ``--warmup`` runs, one process, ``--threads`` intra-op threads for
both torch and onnxruntime.
"""
import argparse
import contextlib
import importlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402

import visionssm  # noqa: E402,F401
from visionssm.export import example_input, export_aoti, export_onnx  # noqa: E402

_scan_module = importlib.import_module('visionssm.ops.selective_scan')


@contextlib.contextmanager
def forced_backend(name):
    """Run every scan on backend ``name`` (swaps the 'auto' choice for the duration)."""
    select = _scan_module._select_backend
    _scan_module._select_backend = lambda backend, u: name if backend == 'auto' else select(backend, u)
    try:
        yield
    finally:
        _scan_module._select_backend = select


def median_ms(fn, warmup, iters, sync=lambda: None):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench_cpu(name, args, workdir):
    import onnxruntime as ort
    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, args.img_size, args.img_size)
    row = {'model': name, 'device': 'cpu', 'batch': 1, 'img_size': args.img_size}
    with torch.no_grad():
        row['eager_ms'] = median_ms(lambda: model(x), args.warmup, args.iters)
        with forced_backend('export'):
            row['eager_export_scan_ms'] = median_ms(lambda: model(x), args.warmup, args.iters)
        want = model(x).numpy()
    # static: traced at batch 1 (a dynamic export traces batch 2, see visionssm.export.example_input)
    example = x if args.static else example_input(model, args.img_size)
    start = time.perf_counter()
    path = export_onnx(model, os.path.join(workdir, f'{name}.onnx'), example, dynamic=not args.static)
    row['onnx_export_s'] = time.perf_counter() - start
    row['onnx_dynamic'] = not args.static
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    feed = {'input': x.numpy()}
    row['onnxruntime_ms'] = median_ms(lambda: session.run(None, feed), args.warmup, args.iters)
    got = session.run(None, feed)[0]
    row['onnx_rel_err'] = float(np.abs(got - want).max() / np.abs(want).max())
    return row


def bench_gpu(name, args, workdir, emit):
    """At each of --batches (1 and 32 by default): eager, torch.compile and the AOTInductor packages (one
    dynamic package for all batches, or with --static one package per batch, faster to compile), with each
    package's compile time. With --static also a package that calls visionssm's Triton scan (``scan='triton'``,
    static sizes only) beside the export form's."""
    device = torch.device('cuda')
    model = timm.create_model(name).eval().to(device)
    sync = torch.cuda.synchronize
    compiled = torch.compile(model)
    runners = {}
    scans = ('triton', 'export') if args.static else ('export',)

    def package_for(batch, scan):
        key = (batch if args.static else 'dynamic', scan)
        if key not in runners:
            t0 = time.time()
            x = example_input(model, args.img_size).to(device)
            x = x[:1].expand(batch, *x.shape[1:]).contiguous() if args.static else x
            path = export_aoti(model, os.path.join(workdir, f'{name}_{key[0]}_{scan}.aoti.pt2'), x,
                               dynamic=not args.static, scan=scan)
            runners[key] = torch._inductor.aoti_load_package(path), round(time.time() - t0, 1)
        return runners[key]

    for batch in args.batches:
        x = torch.randn(batch, 3, args.img_size, args.img_size, device=device)
        row = {'model': name, 'device': torch.cuda.get_device_name(), 'batch': batch, 'img_size': args.img_size,
               'aoti_shapes': 'static' if args.static else 'dynamic'}
        with torch.no_grad():
            row['eager_ms'] = median_ms(lambda: model(x), args.warmup, args.iters, sync)
            row['compile_ms'] = median_ms(lambda: compiled(x), args.warmup, args.iters, sync)
            want = model(x)
        emit(row)   # the packages take minutes to build: a time limit keeps these two
        for scan in scans:
            suffix = '' if scan == 'export' else f'_{scan}'   # aoti_ms: the export form's package, as before
            try:
                runner, row[f'aoti{suffix}_export_s'] = package_for(batch, scan)
                with torch.no_grad():
                    row[f'aoti{suffix}_ms'] = median_ms(lambda: runner(x), args.warmup, args.iters, sync)
                    row[f'aoti{suffix}_rel_err'] = float((runner(x) - want).abs().max() / want.abs().max())
            except Exception as e:   # one package failing keeps the other's figures
                row[f'aoti{suffix}_error'] = f'{type(e).__name__}: {str(e)[:500]}'
                row[f'aoti{suffix}_ms'] = row[f'aoti{suffix}_rel_err'] = float('nan')
            emit(row)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--models', nargs='+', default=['vmamba_tiny_s1l8', 'efficientvmamba_tiny'])
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--batches', type=int, nargs='+', default=[1, 32], help='GPU: the batch sizes timed')
    p.add_argument('--threads', type=int, default=torch.get_num_threads())
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--iters', type=int, default=10)
    p.add_argument('--static', action='store_true', help='export for the measured shapes only (faster to export; on a GPU one package per batch size)')
    p.add_argument('--out', default='export_latency.json')
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    gpu = torch.cuda.is_available()
    meta = {'torch': torch.__version__, 'threads': args.threads, 'machine': platform.processor() or platform.machine(),
            'cpu_count': os.cpu_count(), 'iters': args.iters, 'warmup': args.warmup}
    rows = []

    def emit(row):
        """Print the row and rewrite the JSON file with it, so that a time limit keeps what was measured; the row
        emitted last may come again with more columns."""
        print(json.dumps(row), flush=True)
        if rows and rows[-1] is row:
            rows.pop()
        rows.append(row)
        with open(args.out, 'w') as f:
            json.dump({'meta': meta, 'rows': rows}, f, indent=1)

    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models:
            if gpu:
                bench_gpu(name, args, workdir, emit)
            else:
                emit(bench_cpu(name, args, workdir))
    columns = ['eager_ms', 'compile_ms', 'aoti_ms', 'aoti_rel_err'] + (
        ['aoti_triton_ms', 'aoti_triton_rel_err'] if args.static else []) if gpu else \
        ['eager_ms', 'eager_export_scan_ms', 'onnxruntime_ms', 'onnx_rel_err']
    print(f"{'model':24s} {'batch':>5s} " + ' '.join(f'{c:>20s}' for c in columns))
    for row in rows:
        print(f"{row['model']:24s} {row['batch']:5d} " + ' '.join(
            f'{row[c]:20.2e}' if c.endswith('err') else f'{row[c]:20.1f}' for c in columns))
    print(f'[export_latency] wrote {args.out}')


if __name__ == '__main__':
    main()
