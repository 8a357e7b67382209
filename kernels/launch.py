"""What the Triton kernels of this folder share around a launch: triton itself (absent on some machines, where the
modules still import), the launch itself, the device to launch on and the GPU's SM count.

``run_kernel(kernel, grid, *args, **kwargs)`` is ``kernel[grid](*args, **kwargs)``, optionally with less host time.
Triton's ``JITFunction.run`` binds and specializes every argument, hashes the specialization and looks the kernel up on
every launch: 18 µs of host time for an empty 3-argument kernel on an H100 host with Triton 3.6
(``benchmarks/launch_overhead.py``), growing with the arguments (the scan's kernels take about 45), and an eager
training step makes over a hundred launches. Here the first launch of each specialization goes through Triton, which
compiles and returns the compiled kernel; the later ones compute a key that is at least as fine as Triton's
specialization (every constexpr's value; each tensor's dtype and 16-byte alignment; each integer's equality to 1,
divisibility by 16 and width; option keywords such as ``num_warps``) and call the compiled kernel's launcher with the
same arguments Triton passes it. Anything the key does not cover (an argument of another type, launch hooks set by a
profiler, the interpreter, a Triton before 3.3) takes Triton's own path. The direct launches are opt-in while they await
a check on a GPU: ``VISIONSSM_TRITON_LAUNCH=direct`` (read at each launch, like the kernels' other switches) turns them
on.
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch

try:  # the kernels' modules must import on machines without triton
    import triton
    import triton.language as tl
    HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the machine
    triton = None
    tl = None
    HAS_TRITON = False

__all__ = ['HAS_TRITON', 'capture_holds', 'cdiv', 'held', 'next_power_of_2', 'on_device', 'on_gpu', 'run_kernel',
           'sm_count', 'tl', 'triton']

# Set by kernels/compile_check.py while it records the launches of CPU tensors (recorded, compiled, never run).
RECORDING = False

# Device tensors that bounded caches hand to kernels by address (route tables, gather indices): a CUDA graph
# captured meanwhile reads those addresses at every replay, never the cache, so it must own the tensors lest the cache
# drop them and their memory be reused (visionssm.GraphedModule). One list per capture under way.
_CAPTURE_HOLDS: list = []


@contextlib.contextmanager
def capture_holds():
    """While capturing a CUDA graph: collects everything ``held`` returns, for the graph to keep."""
    holds: list = []
    _CAPTURE_HOLDS.append(holds)
    try:
        yield holds
    finally:
        _CAPTURE_HOLDS.remove(holds)


def held(value):
    """``value`` (a cached object holding device tensors), also kept by the CUDA graph being captured, if any."""
    if _CAPTURE_HOLDS:
        _CAPTURE_HOLDS[-1].append(value)
    return value


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)``: ``triton.cdiv`` for host code, where Triton's (a constexpr function in recent releases)
    costs microseconds per call."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of 2 >= ``n`` (1 for n <= 1): ``triton.next_power_of_2`` for host code."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


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


def run_kernel(kernel, grid, *args, **kwargs):
    """``kernel[grid](*args, **kwargs)``; with ``VISIONSSM_TRITON_LAUNCH=direct``, a specialization launched before
    skips Triton's binding (module docstring). ``grid`` is a tuple of ints."""
    if os.environ.get('VISIONSSM_TRITON_LAUNCH', 'triton') != 'direct' or RECORDING:
        return kernel[grid](*args, **kwargs)
    launcher = _launchers.get(kernel, _UNSEEN)
    if launcher is _UNSEEN:
        launcher = _launchers[kernel] = _DirectLauncher.for_kernel(kernel)
    if launcher is None or _hooks_set():
        return kernel[grid](*args, **kwargs)
    return launcher(grid, args, kwargs, *_current_stream())


def _current_stream():
    """``(device index, raw stream)`` of the current CUDA device: where Triton launches."""
    device = torch.cuda.current_device()
    return device, torch._C._cuda_getCurrentRawStream(device)


_launchers: dict = {}
_UNSEEN = object()


def _hooks_set() -> bool:
    """Whether a profiler set Triton's launch hooks. Triton 3.5 and later keep them as hook chains, never None:
    an empty chain is no hook."""
    runtime = triton.knobs.runtime
    return any(hook is not None and bool(getattr(hook, 'calls', True))
               for hook in (runtime.launch_enter_hook, runtime.launch_exit_hook))


_NO_DEFAULT = object()
_WIDTHS = (-2 ** 31, 2 ** 31, 2 ** 63)


class _DirectLauncher:
    """The compiled kernels of one JITFunction by specialization key, and the launch through them."""

    def __init__(self, kernel):
        params = kernel.params
        self.kernel = kernel
        self.names = tuple(p.name for p in params)            # the parameters in order
        self.name_set = frozenset(self.names)
        self.constexpr = tuple(p.is_constexpr for p in params)  # keyed by value
        self.defaults = tuple(p.default if p.has_default else _NO_DEFAULT for p in params)
        self.compiled: dict = {}

    @classmethod
    def for_kernel(cls, kernel):
        """A launcher for a compiled (not interpreted) ``JITFunction`` of a Triton whose launch this mirrors
        (3.3 and later: ``triton.knobs``, every bound argument handed to the launcher); None otherwise."""
        if not (HAS_TRITON and hasattr(triton, 'knobs')):
            return None
        from triton.runtime.jit import JITFunction
        if type(kernel) is not JITFunction or triton.knobs.runtime.interpret:
            return None
        return cls(kernel)

    def bind(self, args: tuple, kwargs: dict):
        """``(values, key)``: every parameter's value in order (keywords and defaults filled in) and the
        specialization key; key None where an argument is of a type the key does not cover."""
        values = list(args)
        names, defaults = self.names, self.defaults
        for i in range(len(args), len(names)):
            value = kwargs.get(names[i], defaults[i])
            if value is _NO_DEFAULT:
                return values, None
            values.append(value)
        # the compile options first (num_warps, num_stages, ...), then one entry per parameter
        key = [tuple(sorted((k, v) for k, v in kwargs.items() if k not in self.name_set))]
        for value, constexpr in zip(values, self.constexpr):
            if constexpr:
                key.append(value)
            elif isinstance(value, torch.Tensor):
                key.append((value.dtype, value.data_ptr() & 15 == 0))
            elif isinstance(value, bool) or value is None:
                key.append(value)
            elif isinstance(value, int):
                key.append((value == 1, value & 15 == 0, value < _WIDTHS[0] or value >= _WIDTHS[1],
                            value >= _WIDTHS[2]))
            elif isinstance(value, float):
                key.append(float)
            else:
                return values, None
        return values, tuple(key)

    def __call__(self, grid, args, kwargs, device, stream):
        values, key = self.bind(args, kwargs)
        if key is None:
            return self.kernel[grid](*args, **kwargs)
        try:
            compiled = self.compiled.get((device, key))
        except TypeError:   # an unhashable constexpr
            return self.kernel[grid](*args, **kwargs)
        if compiled is None:
            compiled = self.kernel[grid](*args, **kwargs)   # Triton binds, compiles where needed, launches
            if hasattr(compiled, 'packed_metadata'):        # a CompiledKernel (not a future of an async compile)
                self.compiled[(device, key)] = compiled
            return compiled
        grid_y = grid[1] if len(grid) > 1 else 1
        grid_z = grid[2] if len(grid) > 2 else 1
        compiled.run(grid[0], grid_y, grid_z, stream, compiled.function, compiled.packed_metadata, None, None, None,
                     *values)
        return compiled
