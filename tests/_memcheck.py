"""Out-of-bounds checking for the Triton kernels that the tests run in Triton's interpreter (CPU tensors), and which
kernels ran.

On a GPU, a kernel's load or store outside its tensors faults ("an illegal memory access was encountered") only where
the address leaves mapped memory; inside the caching allocator's segments it silently reads or corrupts a neighbour,
and which of the two happens depends on the batch, the allocator's history and what else the process holds. The
interpreter reads and writes host memory wherever an address points, so a test there passes either way.

``memory_checked()`` closes that gap while the interpreter runs: every element that a load, store or atomic's mask
lets through must lie inside the storage of one of the launch's tensor arguments, else the launch fails with an
``AssertionError`` that names the kernel, its program, the access and the argument it strayed from: a CPU stand-in
for compute-sanitizer's memcheck. tests/conftest.py turns it on for every test under the interpreter.
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple

import numpy as np


class _Storage(NamedTuple):
    name: str
    start: int
    end: int
    shape: tuple
    dtype: str


class _Launch:
    """The kernel being interpreted and the storages of its tensor arguments."""
    kernel = '?'
    storages: tuple = ()


def _storages(names, args, kwargs) -> tuple:
    found = []

    def add(name, value):
        if isinstance(value, tuple):
            for i, item in enumerate(value):
                add(f'{name}[{i}]', item)
        elif hasattr(value, 'untyped_storage'):
            storage = value.untyped_storage()
            found.append(_Storage(name, storage.data_ptr(), storage.data_ptr() + storage.nbytes(),
                                  tuple(value.shape), str(value.dtype)))

    for name, value in zip(names, args):
        add(name, value)
    for name, value in kwargs.items():
        add(name, value)
    return tuple(found)


def _where(address: int, storages: tuple) -> str:
    """Where ``address`` lies relative to the nearest argument."""
    if not storages:
        return 'the launch has no tensor arguments'
    nearest = min(storages, key=lambda s: min(abs(address - s.start), abs(address - s.end)))
    if address >= nearest.end:
        offset = f'{address - nearest.end} bytes past the end of'
    else:
        offset = f'{nearest.start - address} bytes before the start of'
    return f'{offset} {nearest.name} (shape {nearest.shape}, {nearest.dtype}, {nearest.end - nearest.start} bytes)'


def _check(interpreter, access: str, pointers, mask) -> None:
    addresses = np.asarray(pointers.data)
    if mask is not None:
        # masks may hold 0 / 1 integers: as an index they would pick elements 0 and 1, not the masked-in ones
        addresses = addresses[np.broadcast_to(np.asarray(mask.data).astype(bool), addresses.shape)]
    if addresses.size == 0:
        return
    addresses = addresses.astype(np.uint64).ravel()
    size = np.dtype(interpreter._get_np_dtype(pointers.get_element_ty())).itemsize
    inside = np.zeros(addresses.shape, dtype=bool)
    for s in _Launch.storages:
        inside |= (addresses >= s.start) & (addresses + size <= s.end)
    if not inside.all():
        outside = addresses[~inside]
        program = tuple(int(i) for i in interpreter.interpreter_builder.grid_idx)
        raise AssertionError(f'{_Launch.kernel} program {program}: a {access} of {outside.size} element(s) of '
                             f'{size} bytes outside every tensor argument; the first '
                             f'{_where(int(outside[0]), _Launch.storages)}')


@contextlib.contextmanager
def memory_checked():
    """Inside the block, the interpreter checks every memory access of the kernels it runs (module docstring)."""
    import triton.runtime.interpreter as interpreter

    builder, executor = interpreter.InterpreterBuilder, interpreter.GridExecutor
    saved = dict(load=builder.create_masked_load, store=builder.create_masked_store,
                 rmw=builder.create_atomic_rmw, cas=builder.create_atomic_cas, init=executor._init_args_hst)

    def load(self, pointers, mask, *rest):
        _check(interpreter, 'load', pointers, mask)
        return saved['load'](self, pointers, mask, *rest)

    def store(self, pointers, value, mask, *rest):
        _check(interpreter, 'store', pointers, mask)
        return saved['store'](self, pointers, value, mask, *rest)

    def rmw(self, op, pointers, value, mask, *rest):
        _check(interpreter, 'atomic', pointers, mask)
        return saved['rmw'](self, op, pointers, value, mask, *rest)

    def cas(self, pointers, compare, value, *rest):
        _check(interpreter, 'atomic compare-and-swap', pointers, None)
        return saved['cas'](self, pointers, compare, value, *rest)

    def init(self, args, kwargs):
        # the arguments as the kernel sees them (host copies of device tensors: the addresses it computes from)
        host_args, host_kwargs = saved['init'](self, args, kwargs)
        _Launch.kernel = getattr(self.fn, '__name__', '?')
        _Launch.storages = _storages(self.arg_names, host_args, host_kwargs)
        return host_args, host_kwargs

    builder.create_masked_load, builder.create_masked_store = load, store
    builder.create_atomic_rmw, builder.create_atomic_cas = rmw, cas
    executor._init_args_hst = init
    try:
        yield
    finally:
        builder.create_masked_load, builder.create_masked_store = saved['load'], saved['store']
        builder.create_atomic_rmw, builder.create_atomic_cas = saved['rmw'], saved['cas']
        executor._init_args_hst = saved['init']


@contextlib.contextmanager
def launched_kernels():
    """The names of the kernels that the interpreter runs inside the block, in launch order."""
    import triton.runtime.interpreter as interpreter

    executor = interpreter.GridExecutor
    saved = executor.__call__
    names: list = []

    def call(self, *args, **kwargs):
        names.append(getattr(self.fn, '__name__', '?'))
        return saved(self, *args, **kwargs)

    executor.__call__ = call
    try:
        yield names
    finally:
        executor.__call__ = saved
