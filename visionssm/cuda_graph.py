"""A module's training forward and backward replayed as CUDA graphs: the eager kernels, without their host time.

An eager training step of a Mamba backbone is over a thousand small launches, each costing the host Python and
dispatch time: VMamba-T's forward and backward took 87 ms of host time per step on an H100 machine, whatever the
batch, where the GPU needs about 60 ms for a batch of 128 (``visionssm.HostTimeHook``,
``benchmarks/results/h100-2026-12-06c/``). Captured once into two CUDA graphs
(forward, and backward to the parameters' gradients), a step replays them with two launches. The kernels are the
eager ones (no compiler): the same values as the eager step, RNG included (drop path draws from the generator's
graph-safe state, fresh at every replay).

``GraphedModule(module)`` is called like ``module`` in its training forward: for each input signature (shape,
dtype, device, autocast state) it warms up, captures and then replays. What a graph cannot follow takes the eager
path, never a wrong result:

* eval mode, no grad, inputs not on CUDA: the eager module;
* a parameter that moved (``model.to``, ``load_state_dict(assign=True)``) or changed ``requires_grad``: the graphs
  are captured again;
* more than ``max_graphs`` signatures (a varying batch size; set ``drop_last=True``): eager, with one warning.

What it needs from the training loop:

* gradients set to None between steps (``zero_grad()``, PyTorch's default): the backward graph writes each step's
  gradients into the same buffers, which become the parameters' ``.grad``. Gradient accumulation over several
  steps would read them after the next replay overwrote them, so a forward that finds gradients from an earlier
  step raises instead of accumulating wrong sums;
* inputs that do not require grad (images);
* a tensor as output (logits), or a list or tuple of them (a backbone's feature maps).

The graphs keep their activations and workspace in a memory pool of their own, about the eager step's peak, for
as long as the module lives.
"""
from __future__ import annotations

import warnings
from typing import Dict, Tuple

import torch
import torch.nn as nn

__all__ = ['GraphedModule']

Signature = Tuple


class _Graphs:
    """One input signature's captured forward and backward, with their static tensors."""

    def __init__(self, module: nn.Module, params: Tuple[nn.Parameter, ...], sample: torch.Tensor, warmup: int):
        self.params = params
        self.storage = tuple(p.data_ptr() for p in params)
        self.input = sample.detach().clone()
        stream = torch.cuda.Stream()
        # Lazy work (cuDNN's algorithm search, Triton's compiles, cuBLAS workspaces) must happen before the capture.
        # The warm-up steps must not count as training: buffers they update (BatchNorm's statistics) are restored.
        buffers = [(b, b.clone()) for b in module.buffers()]
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                outputs = self._outputs(module(self.input))
                torch.autograd.grad(outputs, params, [torch.ones_like(o) for o in outputs], allow_unused=True)
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        self.forward, self.backward = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        pool = torch.cuda.graph_pool_handle()
        # thread_local: another thread (visionssm's prefetching loop) may prepare the next batch meanwhile
        with torch.cuda.graph(self.forward, pool=pool, stream=stream, capture_error_mode='thread_local'):
            result = module(self.input)
        self.container = None if isinstance(result, torch.Tensor) else type(result)
        self.outputs = self._outputs(result)
        self.grad_outputs = tuple(torch.empty_like(o) for o in self.outputs)
        with torch.cuda.graph(self.backward, pool=pool, stream=stream, capture_error_mode='thread_local'):
            self.grads = torch.autograd.grad(self.outputs, params, self.grad_outputs, allow_unused=True)
        torch.cuda.synchronize()
        # Keep the static tensors, not the captured step's autograd graph: alive, it would keep the parameters'
        # gradient accumulators of the side stream, and every real backward would synchronise with that stream.
        # Its memory stays the graphs' (their private pool, which nothing else allocates from).
        self.outputs = tuple(o.detach() for o in self.outputs)

    @staticmethod
    def _outputs(result) -> Tuple[torch.Tensor, ...]:
        """The module's output as a tuple of tensors that carry gradients: a tensor, or a list / tuple of them
        (a backbone's feature maps)."""
        outputs = (result,) if isinstance(result, torch.Tensor) else tuple(result) \
            if isinstance(result, (list, tuple)) else None
        if outputs is None or not all(isinstance(o, torch.Tensor) and o.requires_grad for o in outputs):
            raise TypeError('cuda_graph needs a module that returns a tensor, or a list or tuple of tensors, '
                            f'each depending on a trained parameter; got {type(result).__name__}')
        return outputs

    def valid_for(self, params: Tuple[nn.Parameter, ...]) -> bool:
        return (len(params) == len(self.params) and all(p is q for p, q in zip(params, self.params))
                and self.storage == tuple(p.data_ptr() for p in params))

    def result(self, outputs: Tuple[torch.Tensor, ...]):
        """``outputs`` in the module's own container."""
        return outputs[0] if self.container is None else self.container(outputs)


class _Replay(torch.autograd.Function):
    """The captured forward as one autograd node over the parameters; its backward replays the backward graph."""

    @staticmethod
    def forward(ctx, graphs: _Graphs, inputs: torch.Tensor, *params):
        ctx.graphs = graphs
        graphs.input.copy_(inputs)
        graphs.forward.replay()
        # views of the static outputs: valid until the next replay
        return tuple(o.detach() for o in graphs.outputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grad_outputs):
        graphs = ctx.graphs
        for static, grad in zip(graphs.grad_outputs, grad_outputs):   # (autograd gives zeros for unused outputs)
            static.copy_(grad)
        graphs.backward.replay()
        return (None, None, *(None if g is None else g.detach() for g in graphs.grads))


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

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        module = self.module
        if not (module.training and torch.is_grad_enabled()):
            return module(inputs)
        if not inputs.is_cuda:
            self._warn_once('device', f'cuda_graph: the inputs are on {inputs.device}, not a CUDA device: eager steps')
            return module(inputs)
        if inputs.requires_grad:
            raise ValueError('cuda_graph: the graphed module takes inputs that do not require grad (images); '
                             'this input requires grad')
        params = tuple(p for p in module.parameters() if p.requires_grad)
        stale = [p for p in params if p.grad is not None]
        if stale:
            raise RuntimeError(
                f'cuda_graph: {len(stale)} parameters still hold gradients from an earlier step. The graphed '
                'backward writes every step\'s gradients into the same buffers, so gradients cannot accumulate '
                'over steps: set them to None between steps (optimizer.zero_grad(), the default) and do not use '
                'gradient accumulation (accumulative_counts > 1) with cuda_graph.')
        device = inputs.device
        signature = (tuple(inputs.shape), inputs.dtype, device, torch.is_autocast_enabled('cuda'),
                     torch.get_autocast_dtype('cuda'))
        graphs = self.graphs.get(signature)
        if graphs is None or not graphs.valid_for(params):
            if graphs is None and len(self.graphs) >= self.max_graphs:
                self._warn_once('signatures', f'cuda_graph: more than {self.max_graphs} input signatures (now '
                                f'{signature[:2]}); the others run eagerly. Keep the batch size fixed '
                                '(drop_last=True).')
                return module(inputs)
            self.graphs.pop(signature, None)
            try:
                with torch.cuda.device(device), torch.autocast('cuda', dtype=signature[4], enabled=signature[3],
                                                               cache_enabled=False):
                    graphs = self.graphs[signature] = _Graphs(module, params, inputs, self.warmup)
            except RuntimeError as e:
                raise RuntimeError(f'cuda_graph: capturing the training step of {type(module).__name__} failed '
                                   f'(an op that waits for the GPU, or is not capturable?); train without '
                                   f'cuda_graph. {e}') from e
        return graphs.result(_Replay.apply(graphs, inputs, *params))

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(message)
