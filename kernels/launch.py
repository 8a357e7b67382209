"""What the Triton kernels of this folder share around a launch: triton itself (absent on some machines, where the
modules still import), the device to launch on and the GPU's SM count."""
from __future__ import annotations

import contextlib
import functools

import torch

try:  # the kernels' modules must import on machines without triton
    import triton
    import triton.language as tl
    HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the machine
    triton = None
    tl = None
    HAS_TRITON = False

__all__ = ['HAS_TRITON', 'on_device', 'on_gpu', 'sm_count', 'tl', 'triton']

# Set by kernels/compile_check.py while it records the launches of CPU tensors (recorded, compiled, never run).
RECORDING = False


def on_gpu(t: torch.Tensor) -> bool:
    """Whether ``t``'s kernels launch on a GPU: a CUDA tensor, or any while compile_check records launches."""
    return t.is_cuda or RECORDING


def on_device(device: torch.device):
    """The context to launch a kernel for tensors on ``device`` in: Triton launches on the current CUDA device, not
    the tensors', so theirs is made current; nothing where it is current already (a launch's host time counts: an
    eager training step makes hundreds) or for CPU tensors, which the interpreter runs."""
    if device.type != 'cuda' or device.index is None or device.index == torch.cuda.current_device():
        return _NO_CONTEXT
    return torch.cuda.device(device)


_NO_CONTEXT = contextlib.nullcontext()


@functools.lru_cache(maxsize=8)
def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA ``device`` (132, an H100's / H200's, for the interpreter)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == 'cuda' else 132
