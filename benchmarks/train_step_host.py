"""Host time against GPU time of one training step: is the step launch-bound?

    python3 benchmarks/train_step_host.py [--compile [--compile-mode reduce-overhead] | --cuda-graph]
        [--optimizer none|adamw|adamw-fused] [--cprofile] [--torchprof]

For one model (VMamba-T by default; bf16 autocast, batch 128, 224²) it prints, for the whole step and for its parts
(forward with the loss, forward + backward, optimizer step), the median CUDA-event time and the median host time
spent enqueuing it. Where the host time comes close to the GPU time, the GPU waits for kernel launches and the step
time follows the host CPU's speed. ``--cuda-graph`` replays the eager forward and backward as CUDA graphs
(``visionssm.GraphedModule``), which takes their host time away. ``--cprofile`` / ``--torchprof`` add the host-side
profiles (Python functions; ops by self CPU time). Run from the repository root; imports ``visionssm`` from the
current directory first, so an older tree extracted elsewhere can be measured the same way
(``cd old && python3 ../benchmarks/train_step_host.py``).
"""
import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time

sys.path.insert(0, os.getcwd())

import torch  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--model', default='vmamba_tiny_s1l8')
    ap.add_argument('--batch', type=int, default=128)
    ap.add_argument('--compile', action='store_true')
    ap.add_argument('--compile-mode', default=None)
    ap.add_argument('--cuda-graph', action='store_true', help='forward and backward through visionssm.GraphedModule')
    ap.add_argument('--optimizer', choices=('none', 'adamw', 'adamw-fused'), default='adamw')
    ap.add_argument('--cprofile', action='store_true')
    ap.add_argument('--torchprof', action='store_true')
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit('benchmarks/train_step_host.py needs a CUDA device')
    import timm
    import visionssm
    print('visionssm from', visionssm.__file__, flush=True)

    torch.backends.cudnn.benchmark = True
    model = timm.create_model(a.model, drop_path_rate=0.2).cuda().train()
    if (a.compile or a.compile_mode) and a.cuda_graph:
        raise SystemExit('--cuda-graph is the eager model replayed; not with --compile')
    if a.compile or a.compile_mode:
        model = torch.compile(model, mode=a.compile_mode)
    run = visionssm.GraphedModule(model) if a.cuda_graph else model
    opt = None
    if a.optimizer != 'none':
        opt = torch.optim.AdamW(model.parameters(), lr=1e-7, fused=(a.optimizer == 'adamw-fused') or None)
    x = torch.randn(a.batch, 3, 224, 224, device='cuda')
    target = torch.randint(0, 1000, (a.batch,), device='cuda')
    amp = torch.autocast('cuda', dtype=torch.bfloat16)

    def forward():
        with amp:
            return torch.nn.functional.cross_entropy(run(x), target)

    def fwd_bwd():
        forward().backward()
        model.zero_grad(set_to_none=True)

    def step():
        forward().backward()
        if opt is not None:
            opt.step()
        model.zero_grad(set_to_none=True)

    for _ in range(10):
        step()
    torch.cuda.synchronize()

    def timed(fn, n=10):
        gpu, host = [], []
        for _ in range(n):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            t0 = time.perf_counter()
            fn()
            host.append((time.perf_counter() - t0) * 1e3)
            e.record()
            torch.cuda.synchronize()
            gpu.append(s.elapsed_time(e))
        return statistics.median(gpu), statistics.median(host)

    mode = f"compiled {a.compile_mode or 'default'}" if (a.compile or a.compile_mode) else \
        'cuda-graph' if a.cuda_graph else 'eager'
    tag = f'{a.model} {mode} {a.optimizer}'
    print(tag, 'step ms %.2f host %.2f' % timed(step))
    print(tag, 'fwd(loss, grad-enabled) ms %.2f host %.2f' % timed(forward))
    print(tag, 'fwd+bwd ms %.2f host %.2f' % timed(fwd_bwd))
    if opt is not None:
        forward().backward()
        print(tag, 'opt.step ms %.2f host %.2f' % timed(opt.step))
        model.zero_grad(set_to_none=True)
    if a.cprofile:
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(5):
            step()
        torch.cuda.synchronize()
        pr.disable()
        for key in ('tottime', 'cumtime'):
            s = io.StringIO()
            pstats.Stats(pr, stream=s).sort_stats(key).print_stats(45)
            print(s.getvalue()[:12000])
    if a.torchprof:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as p:
            for _ in range(3):
                step()
            torch.cuda.synchronize()
        print(p.key_averages().table(sort_by='self_cpu_time_total', row_limit=40, max_name_column_width=70))


if __name__ == '__main__':
    main()
