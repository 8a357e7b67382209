"""A module's training forward and backward replayed as CUDA graphs: the eager kernels, without their host time.

An eager training step of a Mamba backbone is over a thousand small launches, each costing the host Python and
dispatch time: VMamba-T's forward and backward took 87 ms of host time per step on an H100 machine, whatever the
batch, where the GPU needs about 60 ms for a batch of 128 (``visionssm.HostTimeHook``,
``benchmarks/results/h100-2026-12-06c/``). Captured once into two CUDA graphs (forward, and backward to the
parameters' gradients), a step replays them with two launches. The kernels are the eager ones (no compiler), so the
values are the eager step's up to rounding; drop path draws fresh randomness at every replay (from the generator's
graph-safe state: the masks follow the same distribution, not the same draws as an eager run of the same seed).

``GraphedModule(module)`` is called like ``module`` in its training forward: for each input signature (shape,
dtype, device, autocast state) it warms up, captures and then replays. The graphs follow the module's state where
they can, and step eagerly where they cannot:

* eval mode, no grad, inputs not on CUDA, or hooks on a submodule (they must run): the eager module;
* a parameter or buffer that moved (``model.to``, ``load_state_dict(assign=True)``), a ``requires_grad`` or a
  submodule's train / eval mode that changed: the graphs are captured again;
* more than ``max_graphs`` signatures (a varying batch size; set ``drop_last=True``): eager, with one warning.

Python attributes the forward reads (a drop-path rate changed during training, gradient checkpointing switched on)
are baked into the graphs: change them only before the first step, or make a new ``GraphedModule``.

Each backward hands autograd fresh gradient tensors (one batched copy out of the graph's buffers), so gradients
accumulate over steps as in eager mode and outlive the next replay. One forward's output, though, lives in the
graph's buffers until the next replay: a second forward before the first one's backward, or a second backward
through one forward (``retain_graph=True``), raises instead of reading overwritten activations.

The graphs keep their activations and workspace in a memory pool of their own, about the eager step's peak, for
as long as they live. Tensors the kernels take from bounded caches (route tables, gather indices) are kept alive by
the graphs that read them (``visionssm.kernels.launch.held``).
"""
from __future__ import annotations

import warnings
import weakref
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from visionssm.kernels.launch import capture_holds

__all__ = ['GraphedModule']

Signature = Tuple


def _inspect(module: nn.Module) -> Tuple[Tuple, Tuple[nn.Parameter, ...], Optional[nn.Module]]:
    """One pass over the module tree (host reads only, once per step): the state a capture bakes in besides the
    input (every submodule's train / eval mode; every parameter's and buffer's identity, storage and
    ``requires_grad``), the trainable parameters in ``module.parameters()``'s order, and a submodule with hooks
    (which a replay would skip), if any."""
    modes, tensors, params, seen, hooked = [], [], [], set(), None
    for m in module.modules():
        modes.append(m.training)
        if hooked is None and (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                               or m._backward_pre_hooks):
            hooked = m
        for p in m._parameters.values():
            if p is not None:
                tensors.append((id(p), p.data_ptr(), p.requires_grad))
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        for b in m._buffers.values():
            if b is not None:
                tensors.append((id(b), b.data_ptr()))
    return (tuple(modes), tuple(tensors)), tuple(params), hooked


def _global_hooks() -> bool:
    return any(getattr(nn.modules.module, f'_global_{kind}', None) for kind in (
        'forward_hooks', 'forward_pre_hooks', 'backward_hooks', 'backward_pre_hooks'))


class _Graphs:
    """One input signature's captured forward and backward, with their static tensors."""

    def __init__(self, module: nn.Module, state: Tuple, params: Tuple[nn.Parameter, ...], sample: torch.Tensor,
                 warmup: int):
        self.state = state
        self.input = sample.detach().clone()
        self.pending = None   # a weak reference to the last forward's output while its backward has not run
        # A high-priority stream: the pool of ordinary side streams is shared with other users (the prefetching
        # loop's, nvJPEG's), whose work must not land in the capture.
        stream = torch.cuda.Stream(priority=-1)
        # Lazy work (cuDNN's algorithm search, Triton's compiles, cuBLAS workspaces) must happen before the capture.
        # The warm-up steps must not count as training: buffers they update (BatchNorm's statistics) are restored.
        buffers = [(b, b.clone()) for b in module.buffers()]
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                outputs = self._outputs(module(self.input))
                grads_of = [o for o in outputs if o.requires_grad]
                torch.autograd.grad(grads_of, params, [torch.ones_like(o) for o in grads_of], allow_unused=True)
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        self.forward, self.backward = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        pool = torch.cuda.graph_pool_handle()
        # thread_local: another thread (visionssm's prefetching loop) may prepare the next batch meanwhile
        with capture_holds() as self.holds:
            with torch.cuda.graph(self.forward, pool=pool, stream=stream, capture_error_mode='thread_local'):
                result = module(self.input)
            self.container = None if isinstance(result, torch.Tensor) else type(result)
            outputs = self._outputs(result)
            self.differentiable = tuple(o.requires_grad for o in outputs)
            grads_of = [o for o in outputs if o.requires_grad]
            self.grad_outputs = tuple(torch.empty_like(o) for o in grads_of)
            with torch.cuda.graph(self.backward, pool=pool, stream=stream, capture_error_mode='thread_local'):
                self.grads = torch.autograd.grad(grads_of, params, self.grad_outputs, allow_unused=True)
        torch.cuda.synchronize()
        # Keep the static tensors, not the captured step's autograd graph: alive, it would keep the parameters'
        # gradient accumulators of the capture stream, and every real backward would synchronise with that stream.
        # Its memory stays the graphs' (their private pool, which nothing else allocates from).
        self.outputs = tuple(o.detach() for o in outputs)
        self.grad_index = [i for i, g in enumerate(self.grads) if g is not None]

    @staticmethod
    def _outputs(result) -> Tuple[torch.Tensor, ...]:
        """The module's output as a tuple of tensors: a tensor, or a list / tuple of them (a backbone's maps)."""
        outputs = (result,) if isinstance(result, torch.Tensor) else tuple(result) \
            if isinstance(result, (list, tuple)) else None
        if outputs is None or not all(isinstance(o, torch.Tensor) for o in outputs) \
                or not any(o.requires_grad for o in outputs):
            raise TypeError('cuda_graph needs a module that returns a tensor, or a list or tuple of tensors, at '
                            f'least one of them depending on a trained parameter; got {type(result).__name__}')
        return outputs

    def valid_for(self, state: Tuple) -> bool:
        return state == self.state   # (it holds every parameter's identity: the trainable ones are the same)

    def result(self, outputs: Tuple[torch.Tensor, ...]):
        """``outputs`` in the module's own container."""
        return outputs[0] if self.container is None else self.container(outputs)


class _Replay(torch.autograd.Function):
    """The captured forward as one autograd node over the parameters; its backward replays the backward graph."""

    @staticmethod
    def forward(ctx, graphs: _Graphs, inputs: torch.Tensor, *params):
        if graphs.pending is not None and graphs.pending() is not None:
            raise RuntimeError('cuda_graph: a second forward before the first one\'s backward would overwrite the '
                               'activations that backward reads. Run backward (or drop the output) first, or '
                               'concatenate the inputs into one batch.')
        ctx.graphs, ctx.replayed = graphs, False
        graphs.input.copy_(inputs)
        graphs.forward.replay()
        # views of the static outputs: valid until the next replay
        outputs = tuple(o.detach() for o in graphs.outputs)
        ctx.mark_non_differentiable(*(o for o, d in zip(outputs, graphs.differentiable) if not d))
        graphs.pending = weakref.ref(outputs[graphs.differentiable.index(True)])
        return outputs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grad_outputs):
        graphs = ctx.graphs
        if ctx.replayed:
            raise RuntimeError('cuda_graph: a second backward through one graphed forward (retain_graph=True): the '
                               'first one overwrote the activations it reads. Compute both losses first and call '
                               'backward once on their sum.')
        ctx.replayed, graphs.pending = True, None
        grads = [g for g, d in zip(grad_outputs, graphs.differentiable) if d]
        for static, grad in zip(graphs.grad_outputs, grads):   # (autograd gives zeros for unused outputs)
            static.copy_(grad)
        graphs.backward.replay()
        # fresh tensors, in one batched copy: the graph's buffers are overwritten by the next replay
        fresh = torch._foreach_mul([graphs.grads[i] for i in graphs.grad_index], 1) if graphs.grad_index else []
        param_grads = [None] * len(graphs.grads)
        for i, g in zip(graphs.grad_index, fresh):
            param_grads[i] = g
        return (None, None, *param_grads)


class GraphedModule:
    """``module``'s training forward and backward through CUDA graphs, one pair per input signature (see the
    module docstring). Not an ``nn.Module``: it holds no parameters of its own, and is kept out of the owner's state
    dict and copies (``CompiledSubmodules``)."""

    def __init__(self, module: nn.Module, max_graphs: int = 2, warmup: int = 3):
        self.module = module
        self.max_graphs = max_graphs
        self.warmup = warmup
        self.graphs: Dict[Signature, _Graphs] = {}
        self._warned = set()

    def __call__(self, inputs: torch.Tensor):
        module = self.module
        if not (module.training and torch.is_grad_enabled()):
            return module(inputs)
        if inputs.requires_grad:
            raise ValueError('cuda_graph: the graphed module takes inputs that do not require grad (images); '
                             'this input requires grad')
        if not inputs.is_cuda:
            self._warn_once('device', f'cuda_graph: the inputs are on {inputs.device}, not a CUDA device: eager steps')
            return module(inputs)
        state, params, hooked = _inspect(module)
        if hooked is not None or _global_hooks():
            name = 'a global module hook' if hooked is None else \
                next(n or type(module).__name__ for n, m in module.named_modules() if m is hooked)
            self._warn_once('hooks', f'cuda_graph: {name} has hooks, which a replay would skip: eager steps')
            return module(inputs)
        device = inputs.device
        signature = (tuple(inputs.shape), inputs.dtype, device, torch.is_autocast_enabled('cuda'),
                     torch.get_autocast_dtype('cuda'))
        graphs = self.graphs.get(signature)
        if graphs is None or not graphs.valid_for(state):
            if graphs is None and len(self.graphs) >= self.max_graphs:
                self._warn_once('signatures', f'cuda_graph: more than {self.max_graphs} input signatures (now '
                                f'{signature[:2]}); the others run eagerly. Keep the batch size fixed '
                                '(drop_last=True).')
                return module(inputs)
            self.graphs.pop(signature, None)
            try:
                with torch.cuda.device(device), torch.autocast('cuda', dtype=signature[4], enabled=signature[3],
                                                               cache_enabled=False):
                    graphs = self.graphs[signature] = _Graphs(module, state, params, inputs, self.warmup)
            except RuntimeError as e:
                raise RuntimeError(f'cuda_graph: capturing the training step of {type(module).__name__} failed '
                                   f'(an op that waits for the GPU, or is not capturable?); train without '
                                   f'cuda_graph. {e}') from e
        return graphs.result(_Replay.apply(graphs, inputs, *params))

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(message)
