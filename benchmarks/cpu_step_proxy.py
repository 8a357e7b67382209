"""CPU proxies of a model's GPU training-step cost: activation memory saved for backward, and ops dispatched.

    python benchmarks/cpu_step_proxy.py MODEL [MODEL ...] [--batch 8] [--img-size 224] [--top 15] [--by-module 20]

One training step (train mode, bf16 autocast, forward + cross-entropy + backward) on the CPU, measuring:

* saved MiB: the bytes of the distinct storages that autograd saves for the backward
  (``torch.autograd.graph.saved_tensors_hooks``), parameters excluded, split by dtype. At batch 8 this scales
  linearly to the activation part of a batch-128 GPU peak (x16). With ``--by-module N`` also split by the module
  whose forward saved a storage first (the innermost one running), block indices folded to ``*``: the N largest.
* ops: the ATen ops dispatched in the forward (with the loss) and in the backward (a ``TorchDispatchMode``
  counter, views included): each is host work; the launches among them (ops that do device work: not views, not
  bare allocations) are kernel launches on a GPU. With ``--top N`` the most frequent ones. The counted step follows
  a warm-up step and a change of every parameter, as after an optimizer step (no weight cache survives it).

Two things are made to behave as on a CUDA device, so the numbers track the GPU step rather than the CPU's:

* Norms under autocast: CUDA autocast runs ``layer_norm`` / ``group_norm`` in float32 (float32 output) whatever
  the input dtype; CPU autocast keeps the input dtype. ``--norms cuda`` (default) applies the CUDA policy.
* The selective scan: on a CPU it runs the pure-PyTorch reference, whose many small ops and intermediates would
  swamp both counts. ``--scan stub`` (default) replaces it by one autograd function that saves what the Triton
  backend saves (its inputs, and its fp32 state checkpoints where ``keeps_states`` keeps them, at their size for
  a batch-128 step scaled to the batch run) and returns zeros; ``--scan reference`` keeps the reference. With
  the stub, the token conv1d and the norms also take their Triton host paths, each kernel launch counted and not
  run (``stub_triton_launches``).

Run from the repository root (imports ``visionssm`` from the current directory first).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import sys

sys.path.insert(0, os.getcwd())

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402


class OpCounter(TorchDispatchMode):
    """Counts every ATen op dispatched inside the block, by name, and the launches among them: the ops that do
    device work (not views, not bare allocations), each a kernel launch on a GPU. ``paused`` counts nothing."""

    _NO_KERNEL = {'aten.empty', 'aten.new_empty', 'aten.empty_like', 'aten.empty_strided'}
    active: list = []   # the counters entered now, innermost last: a stubbed Triton launch counts in them

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()
        self.kernels = collections.Counter()   # the stubbed Triton launches by kernel
        self.launches = 0
        self.paused = False

    def __enter__(self):
        OpCounter.active.append(self)
        return super().__enter__()

    def __exit__(self, *exc):
        OpCounter.active.remove(self)
        return super().__exit__(*exc)

    def count_launch(self, name: str = 'triton_launch', kernel: str = 'triton'):
        if not self.paused:
            self.counts[name] += 1
            self.kernels[kernel] += 1
            self.launches += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.paused:
            name = str(func.overloadpacket)
            self.counts[name] += 1
            self.launches += not func.is_view and name not in self._NO_KERNEL
        return func(*args, **(kwargs or {}))


class NoLaunch:
    """Stands in for the jitted Triton kernel ``name``: ``kernel[grid](...)`` does nothing but count one launch in
    the active counters (as ``triton_launch``, and by kernel in their ``kernels``)."""

    def __init__(self, name: str = 'triton'):
        self.name = name

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            for counter in OpCounter.active:
                counter.count_launch(kernel=self.name)
        return launch


def stub_triton_launches() -> contextlib.ExitStack:
    """The Triton paths of the token conv1d (``visionssm.layers.conv1d``) and of the LayerNorm / RMSNorm
    (``visionssm.layers.norm``) serve CPU tensors, every kernel launch a no-op that counts one launch: their host
    paths, launches and saved tensors as on a GPU (outputs left unwritten; float64 stays on PyTorch, as the kernels
    take none). Undone by closing the returned stack."""
    from unittest import mock
    from visionssm.kernels import conv1d, layer_norm
    stack = contextlib.ExitStack()
    for module, kernels in ((conv1d, ('_conv_fwd_kernel', '_conv_gp_kernel', '_conv_dw_kernel', '_conv_dx_kernel')),
                            (layer_norm, ('_ln_fwd_kernel', '_ln_bwd_kernel'))):
        for name in kernels:
            stack.enter_context(mock.patch.object(module, name, NoLaunch(name)))
        stack.enter_context(mock.patch.object(module, 'on_gpu', lambda t: True))
    return stack


class CudaAutocastNorms(TorchFunctionMode):
    """CUDA autocast's float32 policy for norms, on the CPU: inputs (and weights) of layer_norm / group_norm go to
    float32 while CPU autocast is on."""

    _NORMS = (F.layer_norm, F.group_norm, torch.layer_norm, torch.group_norm)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._NORMS and torch.is_autocast_enabled('cpu'):
            up = lambda t: t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
            args = tuple(up(a) for a in args)
            kwargs = {k: up(v) for k, v in kwargs.items()}
            with torch.autocast('cpu', enabled=False):
                return func(*args, **kwargs)
        return func(*args, **kwargs)


GPU_BATCH = 128   # the step the saved bytes are scaled to (x16 from batch 8): its kernel choice sets the checkpoints'


def _checkpoints(u: torch.Tensor, plan, n_state: int) -> torch.Tensor:
    """The fp32 state checkpoints the Triton forward keeps for ``u``'s batch (``keeps_states``), spaced as a
    ``GPU_BATCH`` step spaces them (at N = 1 the kernel choice, and with it the spacing, depends on the batch); an
    empty tensor where the backward recomputes them."""
    from visionssm.kernels import triton_scan as ts
    if not ts.keeps_states(n_state):
        return u.new_empty(0, dtype=torch.float32)
    shape = ts.checkpoint_shape(GPU_BATCH, plan, n_state, torch.device('cpu'))
    return u.new_empty((u.shape[0],) + shape[1:], dtype=torch.float32)


class _ScanStub(torch.autograd.Function):
    """Stands in for the Triton scan: saves its inputs and checkpoints, returns zeros; zero gradients."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, states, out_shape, out_dtype):
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, states)
        return u.new_zeros(out_shape, dtype=out_dtype)

    @staticmethod
    def backward(ctx, dout):
        saved = ctx.saved_tensors[:-1]
        return tuple(torch.zeros_like(t) if t is not None else None for t in saved) + (None, None, None)


def _scan_stub(u, delta, A, B, C, D, delta_bias, plan, delta_softplus=True, return_hidden=False, mean=False,
               out_dtype=None):
    shape = (u.shape[0], u.shape[1], plan.out_channels) + ((A.shape[-1],) if return_hidden else ())
    states = _checkpoints(u, plan, A.shape[-1]) if torch.is_grad_enabled() else None
    return _ScanStub.apply(u, delta, A, B, C, D, delta_bias, states, shape, out_dtype or u.dtype)


def measure(name: str, batch: int, img_size: int, dtype, norms: str, model=None) -> dict:
    """One counted training step of ``name`` (or of ``model``, built by the caller): saved bytes by dtype and by
    module, ops and launches."""
    import timm
    model = (model if model is not None else timm.create_model(name)).train()
    names = {m: re.sub(r'\.\d+(?=\.|$)', '.*', n) or '(model)' for n, m in model.named_modules()}
    running = []   # the modules whose forward is running, innermost last

    def enter(module, args):
        running.append(names.get(module, type(module).__name__))

    def leave(module, args, out):
        running.pop()
    params = {p.untyped_storage().data_ptr() for p in list(model.parameters()) + list(model.buffers())}
    x = torch.randn(batch, 3, img_size, img_size)
    target = torch.randint(0, max(getattr(model, 'num_classes', 0), 1), (batch,))

    saved = {}  # storage data_ptr -> (nbytes, dtype, module)

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params and s.nbytes() and s.data_ptr() not in saved:
            saved[s.data_ptr()] = (s.nbytes(), t.dtype, running[-1] if running else '(loss)')
        return t

    def step(fwd=contextlib.nullcontext(), bwd=contextlib.nullcontext(), hooks=contextlib.nullcontext()):
        with torch.autocast('cpu', dtype=dtype or torch.bfloat16, enabled=dtype is not None), hooks, \
                (CudaAutocastNorms() if norms == 'cuda' and dtype is not None else contextlib.nullcontext()), fwd:
            out = model(x)
            if isinstance(out, (tuple, list)):
                out = out[0]
            loss = F.cross_entropy(out.float(), target)
        with bwd:
            loss.backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up: one-time work (route plans, caches) is not part of a step
    with torch.no_grad():   # as an optimizer step would: every parameter changes, so no weight cache survives it
        for p in model.parameters():
            p.add_(0)
    fwd, bwd = OpCounter(), OpCounter()
    hooks = (torch.nn.modules.module.register_module_forward_pre_hook(enter),
             torch.nn.modules.module.register_module_forward_hook(leave, always_call=True))
    try:
        step(fwd, bwd, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t))
    finally:
        for h in hooks:
            h.remove()
    by_dtype, by_module = collections.Counter(), collections.Counter()
    for nbytes, dt, module in saved.values():
        by_dtype[str(dt).replace('torch.', '')] += nbytes
        by_module[module] += nbytes
    return dict(saved_mib=sum(by_dtype.values()) / 2 ** 20, by_dtype={k: v / 2 ** 20 for k, v in by_dtype.items()},
                by_module={k: v / 2 ** 20 for k, v in by_module.items()},
                fwd_ops=sum(fwd.counts.values()), bwd_ops=sum(bwd.counts.values()), fwd=fwd.counts, bwd=bwd.counts,
                fwd_launches=fwd.launches, bwd_launches=bwd.launches)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('models', nargs='+')
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--img-size', type=int, default=224)
    ap.add_argument('--precision', choices=('bf16', 'fp16', 'fp32'), default='bf16')
    ap.add_argument('--norms', choices=('cuda', 'cpu'), default='cuda',
                    help="autocast policy for layer_norm/group_norm: CUDA's (float32) or the CPU's (input dtype)")
    ap.add_argument('--scan', choices=('stub', 'reference'), default='stub')
    ap.add_argument('--top', type=int, default=0, help='also list the N most frequent ops, forward and backward')
    ap.add_argument('--by-module', type=int, default=0, metavar='N',
                    help='also list the N modules that save the most for the backward')
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    import visionssm  # noqa: F401  (registers the models)
    if a.scan == 'stub':
        import importlib
        ss = importlib.import_module('visionssm.ops.selective_scan')
        ss.BACKENDS['reference'] = (_scan_stub, lambda u: True)
        stub_triton_launches()
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16, 'fp32': None}[a.precision]
    print(f'batch {a.batch}, {a.img_size}px, {a.precision} autocast, {a.norms} norm policy, scan {a.scan}')
    for name in a.models:
        r = measure(name, a.batch, a.img_size, dtype, a.norms)
        split = ', '.join(f'{k} {v:.1f}' for k, v in sorted(r['by_dtype'].items()))
        print(f"{name}: saved {r['saved_mib']:.1f} MiB ({split}); ops forward {r['fwd_ops']}, "
              f"backward {r['bwd_ops']}, total {r['fwd_ops'] + r['bwd_ops']}; launches forward {r['fwd_launches']}, "
              f"backward {r['bwd_launches']}, total {r['fwd_launches'] + r['bwd_launches']}", flush=True)
        if a.by_module:
            top = sorted(r['by_module'].items(), key=lambda kv: -kv[1])[:a.by_module]
            print('  saved MiB by module: ' + ', '.join(f'{m} {v:.1f}' for m, v in top))
        if a.top:
            for part in ('fwd', 'bwd'):
                print(f'  {part}: ' + ', '.join(f'{op} {n}' for op, n in r[part].most_common(a.top)))


if __name__ == '__main__':
    main()
