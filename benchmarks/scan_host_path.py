"""Host time of the scan op's Python path, kernel launches stubbed out: runs on a CPU, no GPU needed.

    python3 benchmarks/scan_host_path.py

Times (median µs per call, tiny VMamba-like shapes so that the torch ops themselves cost little) the op as compiled
code calls it (``torch.ops.visionssm.selective_scan`` / ``selective_scan_backward`` with grad off), the public entry
``visionssm.ops.selective_scan`` as an eager inference step calls it (grad off: checks, route plan, dispatch), the
eager autograd path (``run_scan``), and ``triton_forward`` / ``triton_backward`` alone. On a GPU every torch op of these
paths is a kernel launch of similar host cost, and a compiled VMamba-T step calls the op 28 times.
"""
import os
import statistics
import sys
import time

os.environ.setdefault('TRITON_INTERPRET', '1')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import importlib  # noqa: E402

import torch  # noqa: E402

import visionssm.kernels.triton_scan as ts  # noqa: E402
from visionssm.ops import cross_routes, plan_routes, selective_scan  # noqa: E402


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def _median_us(fn, n=300):
    for _ in range(20):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main():
    for name in ('_scan_fwd_kernel', '_scan_bwd_kernel', '_scan_fwd_chunked_kernel', '_scan_bwd_chunked_kernel'):
        setattr(ts, name, _NoLaunch())
    backends = importlib.import_module('visionssm.ops.selective_scan').BACKENDS
    backends['triton'] = (backends['triton'][0], lambda u: True)   # the Triton path for these CPU tensors
    b, h, w, d, k, n = 2, 7, 7, 16, 4, 1
    routes = cross_routes()
    plan = plan_routes(routes, h, w, d, d, d)
    key = '|'.join(r.key for r in routes)
    x = torch.randn(b, h * w, d, requires_grad=True)
    proj = torch.randn(b, h * w, k * d + 2 * k * n, requires_grad=True)   # Δ, B and C as views of one projection
    dts, BC = proj.split([k * d, 2 * k * n], -1)
    BC = BC.unflatten(-1, (k, 2 * n))
    B, C = BC[..., :n], BC[..., n:]
    A = -torch.rand(k * d, n, requires_grad=True)
    D = torch.ones(k * d, requires_grad=True)
    bias = torch.zeros(k * d, requires_grad=True)
    g = torch.randn(b, h * w, d)
    flags = (True, False, False)

    def op():
        return torch.ops.visionssm.selective_scan(x, dts, A, B, C, D, bias, key, h, w, d, *flags, torch.float32, True)

    maps = [t.detach().unflatten(1, (h, w)) for t in (x, dts, B, C)]   # the public op takes maps

    def entry():
        return selective_scan(maps[0], maps[1], A, maps[2], maps[3], D, bias, routes=routes, out_dtype=torch.float32)

    def eager_fwd_bwd():
        ts.run_scan(x, dts, A, B, C, D, bias, plan, key, h, w, d, *flags, torch.float32).backward(g)

    _, saved = ts.triton_forward(x, dts, A, B, C, D, bias, plan, *flags, torch.float32, True)
    rows = [('eager fwd+bwd (run_scan, autograd)', eager_fwd_bwd),
            ('triton_forward', lambda: ts.triton_forward(x, dts, A, B, C, D, bias, plan, *flags, torch.float32, True)),
            ('triton_backward', lambda: ts.triton_backward(g, x, dts, A, B, C, D, bias, saved, plan, *flags))]
    with torch.no_grad():
        rows = [('op forward, as compiled code calls it', op),
                ('op backward, as compiled code calls it',
                 lambda: torch.ops.visionssm.selective_scan_backward(g, x, dts, A, B, C, D, bias, saved, key, h, w, d,
                                                                     *flags)),
                ('selective_scan, eager inference', entry)] + rows
        for label, fn in rows[:3]:
            print(f'{label}: {_median_us(fn):.1f} us')
    for label, fn in rows[3:]:
        print(f'{label}: {_median_us(fn):.1f} us')


if __name__ == '__main__':
    main()
