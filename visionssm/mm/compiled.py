"""``torch.compile`` of a model's submodule, opted into by config, that leaves the model as it was.

An eager training step of a Mamba backbone is thousands of small kernel launches: its host time exceeds the GPU
time of a large batch, and at detection's batch 2 it is most of the step. Compiled, the backbone runs as a few
fused kernels. ``torch.compile(module)`` wraps the module, and assigning the wrapper to the model would register it
(its parameters reappear under ``_orig_mod.`` in the state dict, so checkpoints change), while a wrapper kept on
the instance would travel into deep copies and call the original's weights (mmengine's EMA model is a deep copy).
``CompiledSubmodules`` keeps the wrapper outside both, and so the CUDA graphs of a submodule
(``visionssm.GraphedModule``), which hold the graphs' memory and must not be copied either.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Union

import torch

__all__ = ['CompiledSubmodules', 'compile_options']


def compile_options(value: Union[bool, Dict[str, Any], None], name: str = 'compile') -> Optional[Dict[str, Any]]:
    """``torch.compile``'s keyword arguments for a ``compile`` setting (True: the defaults), None for eager."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if isinstance(value, dict):
        return dict(value)
    raise TypeError(f'{name} must be a bool or a dict of torch.compile arguments (mode, backend, dynamic, ...), '
                    f'got {type(value).__name__}')


class CompiledSubmodules:
    """Mixin for ``nn.Module`` classes: ``self.compiled(name, options)`` is ``torch.compile(getattr(self, name),
    **options)`` and ``self.graphed(name)`` its CUDA-graphed form, each made once per instance and kept out of the
    module's registry, its state dict and its copies (a deep copy or an unpickled instance makes its own on first
    use)."""

    def compiled(self, name: str, options: Dict[str, Any]):
        cache = self.__dict__.setdefault('_compiled_submodules', {})
        if name not in cache:
            cache[name] = torch.compile(getattr(self, name), **options)
        return cache[name]

    def graphed(self, name: str):
        """``GraphedModule(getattr(self, name))``: its training steps replayed as CUDA graphs, kept like the
        compiled wrappers."""
        from ..cuda_graph import GraphedModule
        cache = self.__dict__.setdefault('_compiled_submodules', {})
        key = ('cuda_graph', name)
        if key not in cache:
            cache[key] = GraphedModule(getattr(self, name))
        return cache[key]

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop('_compiled_submodules', None)
        return state
