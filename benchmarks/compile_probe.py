"""Where ``torch.compile`` splits or recompiles a model's training step: graph breaks (with the user code that
caused each) and the recompilations of a few steps, then the compiled step's time beside eager.

    python benchmarks/compile_probe.py MODEL [--batch 8] [--img-size 224] [--steps 3] [--dynamic auto|true|false]

Training mode with drop path, bf16 autocast on CUDA (the classification recipes' setting), forward and backward.
``torch._dynamo.explain`` lists the breaks; the recompilations are those Dynamo logs while the steps run
(``TORCH_LOGS=recompiles``). Run from the repository root.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.getcwd())

import torch  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('model')
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--img-size', type=int, default=224)
    ap.add_argument('--steps', type=int, default=3)
    ap.add_argument('--drop-path', type=float, default=0.2)
    ap.add_argument('--dynamic', choices=('auto', 'true', 'false'), default='auto',
                    help="torch.compile's dynamic argument (auto: None, PyTorch's default)")
    a = ap.parse_args(argv)
    import timm
    import visionssm  # noqa: F401  (registers the models)
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    dtype = torch.bfloat16
    torch.manual_seed(0)
    model = timm.create_model(a.model, drop_path_rate=a.drop_path).to(device).train()
    x = torch.randn(a.batch, 3, a.img_size, a.img_size, device=device)

    def forward(inputs):
        with torch.autocast(device, dtype=dtype):
            return model(inputs)

    explained = torch._dynamo.explain(forward)(x)
    print(f'[compile_probe] {a.model}: {explained.graph_count} graphs, {explained.graph_break_count} breaks')
    for k, reason in enumerate(explained.break_reasons):
        print(f'  break {k}: {str(reason.reason)[:400]}')
        for frame in reason.user_stack[-4:]:
            print(f'      {os.path.relpath(frame.filename)}:{frame.lineno}  {frame.line}')
    torch._dynamo.reset()

    torch._logging.set_logs(recompiles=True, graph_breaks=True)
    dynamic = {'auto': None, 'true': True, 'false': False}[a.dynamic]
    compiled = torch.compile(model, dynamic=dynamic)

    def step(fn):
        with torch.autocast(device, dtype=dtype):
            loss = fn(x).float().logsumexp(-1).mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    times = {}
    for name, fn in (('compiled', compiled), ('eager', model)):
        start = time.perf_counter()
        step(fn)   # compiles (compiled) or warms up (eager)
        if device == 'cuda':
            torch.cuda.synchronize()
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(a.steps):
            step(fn)
        if device == 'cuda':
            torch.cuda.synchronize()
        times[name] = (first, (time.perf_counter() - start) / a.steps)
        print(f'[compile_probe] {name}: first step {first:.1f} s, then {1e3 * times[name][1]:.1f} ms/step '
              f'(batch {a.batch}, {a.img_size}², bf16)', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
