"""Host time of one call of each op that the models' eager steps are made of, on tiny CUDA tensors: what a launch
costs the host when the GPU is not the bottleneck (batch-8 inference, detection at batch 2).

    python benchmarks/launch_overhead.py [--calls 2000]

Each line is the median over 5 rounds of the host time per call, measured over ``--calls`` back-to-back calls
(``time.perf_counter``; the GPU finishes each tiny kernel long before the next launch, so the queue never fills):

* ``torch.add``, ``F.linear``, ``F.layer_norm`` (+ cast): PyTorch's own ops, the baseline cost of a launch;
* ``triton: empty kernel``: a Triton kernel doing nothing, launched through ``kernel[grid](...)``: Triton's launcher;
  then through ``run_kernel`` (kernels/launch.py), which launches a specialization seen before through its compiled
  kernel directly;
* ``visionssm layer_norm`` / ``rms_norm``: the Triton LayerNorm and RMSNorm as the blocks call them (one launch),
  the RMSNorm beside PyTorch's ``F.rms_norm`` and the cast it replaces;
* ``depthwise_conv1d``: Vim's token conv (one launch) and the PyTorch form it replaces;
* ``selective_scan, 4 cross routes``: the scan op as VMamba-T's blocks call it in inference (checks cached, one
  launch plus the merge);
* the same inside ``torch.cuda.device``, which a Triton launch enters where the tensors' GPU is not the current one.

The visionssm ops and ``run_kernel`` run twice: with every launch through Triton's ``JITFunction.run`` (the default,
``VISIONSSM_TRITON_LAUNCH=triton``) and with ``run_kernel``'s direct launches (``VISIONSSM_TRITON_LAUNCH=direct``).

Compare a model's launches (``benchmarks/infer_host_proxy.py`` counts them) with these costs to see where a
host-bound step's time goes. GPU only.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from visionssm.kernels.launch import run_kernel, tl, triton  # noqa: E402  (None where triton is missing)

if triton is not None:
    @triton.jit
    def _empty(x_ptr, n, BLOCK: tl.constexpr):   # nothing to do: Triton's launcher alone
        pass


# the cases timed with Triton's launches and with run_kernel's direct ones
_SWITCHED = ('visionssm', 'depthwise_conv1d, Vim (T', 'selective', 'triton: empty kernel through')


def per_call_us(fn, calls: int, rounds: int = 5) -> float:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls * 1e6)
        torch.cuda.synchronize()
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--calls', type=int, default=2000)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available() or triton is None:
        raise SystemExit('benchmarks/launch_overhead.py needs a CUDA device and triton')

    from visionssm.layers.conv1d import _torch_form, depthwise_conv1d
    from visionssm.layers.norm import layer_norm, rms_norm
    from visionssm.ops import cross_routes, selective_scan
    dev = torch.device('cuda')
    x = torch.randn(8, 96, device=dev)
    w = torch.randn(96, 96, device=dev)
    ln_w, ln_b = torch.ones(96, device=dev), torch.zeros(96, device=dev)
    xb = x.to(torch.bfloat16)
    # one VMamba-T stage-4 scan at batch 1 (7 x 7 map, 4 routes of 96 channels, d_state 1)
    b, h, wd, k, c, n = 1, 7, 7, 4, 96, 1
    u = torch.randn(b, h, wd, c, device=dev, dtype=torch.bfloat16)
    delta = torch.randn(b, h, wd, k * c, device=dev, dtype=torch.bfloat16)
    A = -torch.rand(k * c, n, device=dev)
    Bm = torch.randn(b, h, wd, k, n, device=dev, dtype=torch.bfloat16)
    Cm = torch.randn_like(Bm)
    D, bias = torch.ones(k * c, device=dev), torch.zeros(k * c, device=dev)
    routes = cross_routes()
    # Vim-T's token conv at batch 1: x a chunk of in_proj's output, both directions' 7-tap convs, bias
    xz = torch.randn(1, 197, 768, device=dev, dtype=torch.bfloat16)
    conv_w = torch.randn(768, 7, device=dev, dtype=torch.bfloat16)
    conv_b = torch.randn(768, device=dev, dtype=torch.bfloat16)
    conv = lambda: depthwise_conv1d(xz[..., :384], conv_w, conv_b, left=3, repeats=2)
    cases = [
        ('torch.add', lambda: torch.add(x, x)),
        ('F.linear', lambda: F.linear(x, w)),
        ('F.layer_norm + cast to bf16', lambda: F.layer_norm(x, (96,), ln_w, ln_b).to(torch.bfloat16)),
        ('triton: empty kernel', lambda: _empty[(1,)](x, 8, BLOCK=64)),
        ('triton: empty kernel in torch.cuda.device', lambda: _with_device(dev, lambda: _empty[(1,)](x, 8, BLOCK=64))),
        ('triton: empty kernel through run_kernel', lambda: run_kernel(_empty, (1,), x, 8, BLOCK=64)),
        ('visionssm layer_norm (Triton, bf16 out)', lambda: layer_norm(x, ln_w, ln_b, out_dtype=torch.bfloat16)),
        ('visionssm layer_norm, bf16 in (Triton)', lambda: layer_norm(xb, ln_w, ln_b)),
        ('F.rms_norm + cast to bf16', lambda: F.rms_norm(x, (96,), ln_w).to(torch.bfloat16)),
        ('visionssm rms_norm (Triton, bf16 out)', lambda: rms_norm(x, ln_w, out_dtype=torch.bfloat16)),
        ('depthwise_conv1d, Vim (Triton)', conv),
        ('depthwise_conv1d, Vim (its PyTorch form)', lambda: _torch_form(xz[..., :384], conv_w, conv_b, 3, 2, True)),
        ('selective_scan, 4 cross routes', lambda: selective_scan(u, delta, A, Bm, Cm, D, bias, routes=routes)),
    ]
    print(f'{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; '
          f'host µs per call, median of 5 rounds of {args.calls}')
    with torch.no_grad():
        for name, fn in cases:
            if not name.startswith(_SWITCHED):
                print(f'{per_call_us(fn, args.calls):8.1f} µs  {name}', flush=True)
                continue
            for direct in (False, True):
                os.environ['VISIONSSM_TRITON_LAUNCH'] = 'direct' if direct else 'triton'
                mode = 'direct launch' if direct else 'JITFunction.run'
                print(f'{per_call_us(fn, args.calls):8.1f} µs  {name} [{mode}]', flush=True)


def _with_device(device, fn):
    with torch.cuda.device(device):
        return fn()


if __name__ == '__main__':
    main()
