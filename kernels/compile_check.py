"""Compile the Triton kernels for a GPU without a GPU: every launch that the models make, to machine code.

    python -m visionssm.kernels.compile_check [--arch 90] [--models test_vmamba ...] [--dtypes float32 bfloat16]

Triton's interpreter, which runs the kernels on CPU tensors in the tests, executes the kernels' Python and never
meets the compiler's rules: a helper with two returns of different shapes, a type the code generator rejects, PTX
that ptxas refuses. This check closes that gap on machines without a GPU. It runs the models (forward and backward)
and the scan at long routes on CPU tensors with the kernels' dispatch opened to the CPU and every launch recorded
instead of run, the host path deciding block sizes, chunking and constexprs as on a GPU (which it does from the
route plan and an H100 / H200's SM count), then compiles each distinct launch through Triton's own pipeline for
``--arch`` (TTIR, TTGIR, LLVM IR, PTX, cubin with the ptxas that Triton ships). Nothing runs: outputs are left
unwritten, so values are meaningless and only the launches count.

It must run in a process where triton was imported without ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import time
from typing import Iterable, NamedTuple, Optional, Sequence

import torch

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}
ARCH = 90   # the GPU generation the launches are specialized and compiled for (H100 / H200)


class Launch(NamedTuple):
    """One distinct kernel launch, specialized as Triton's JIT specializes it on the GPU: the argument types, the
    constexprs (with integer arguments equal to 1 among them), the divisibility attributes of pointers and
    integers, and the compile options (num_warps, ...)."""
    kernel: object                 # the JITFunction
    signature: dict                # argument name -> Triton type ('*bf16', 'i32', 'constexpr', ...)
    constexprs: dict               # argument path -> value
    attrs: dict                    # argument path -> attributes (e.g. 16-byte divisibility)
    options: dict                  # the backend's compile options

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__

    def key(self) -> str:
        return repr((self.name, sorted(self.signature.items()), sorted(self.constexprs.items()),
                     sorted(self.attrs.items()), sorted(self.options.items())))

    def describe(self) -> str:
        names = [p.name for p in self.kernel.params]
        consts = ', '.join(f'{names[path[0]]}={value}' for path, value in self.constexprs.items() if len(path) == 1)
        types = sorted({t for t in self.signature.values() if t.startswith('*')})
        return f"{self.name}[{consts}; {', '.join(types)}; num_warps={self.options.get('num_warps')}]"


@functools.lru_cache(maxsize=None)
def _binder(kernel, arch: int):
    """Triton's backend for ``sm_<arch>`` and ``kernel``'s argument binder, as ``JITFunction`` builds them once."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature
    backend = make_backend(GPUTarget('cuda', arch, 32))
    return backend, create_function_from_signature(kernel.signature, kernel.params, backend)


def _launch(kernel, args: tuple, kwargs: dict, arch: int = ARCH) -> Launch:
    """The launch ``kernel[grid](*args, **kwargs)`` specialized for ``sm_<arch>`` by Triton's own binder (as
    ``JITFunction.run`` does on a GPU)."""
    backend, binder = _binder(kernel, arch)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return Launch(kernel, dict(signature), dict(constexprs), dict(attrs), dict(options.__dict__))


@contextlib.contextmanager
def recording(arch: int = ARCH):
    """Within: CPU tensors take the Triton paths of the scan, the LayerNorm and the state fusion (their ``supports``
    read ``launch.RECORDING``), and every kernel launch is appended to the yielded list instead of running."""
    from triton.runtime.jit import JITFunction
    if os.environ.get('TRITON_INTERPRET') == '1':
        raise RuntimeError('compile_check needs triton without TRITON_INTERPRET=1: the interpreter compiles nothing')
    from . import launch
    launches: list = []

    def record(self, *args, grid, warmup=False, **kwargs):
        launches.append(_launch(self, args, kwargs, arch))

    saved_run = JITFunction.run
    try:
        launch.RECORDING, JITFunction.run = True, record
        yield launches
    finally:
        launch.RECORDING, JITFunction.run = False, saved_run


def distinct(launches: Iterable[Launch]) -> list:
    seen, out = set(), []
    for launch in launches:
        key = launch.key()
        if key not in seen:
            seen.add(key)
            out.append(launch)
    return out


def compile_launch(launch: Launch, arch: int = ARCH):
    """Compile one launch to a cubin for ``sm_<arch>``; returns Triton's compiled kernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    source = ASTSource(launch.kernel, launch.signature, launch.constexprs, launch.attrs)
    return triton.compile(source, target=GPUTarget('cuda', arch, 32), options=launch.options)


def record_models(names: Sequence[str], dtypes: Sequence[torch.dtype], img_size: Optional[int] = None,
                  arch: int = ARCH) -> list:
    """The launches of each model's training step (forward, backward) and eval forward, in each dtype: fp32 as
    is, bf16 / fp16 under autocast as the benchmarks and trainers run them."""
    import timm
    import visionssm  # noqa: F401  (registers the models)
    launches = []
    with recording(arch) as recorded:
        for name in names:
            model = timm.create_model(name)
            cfg = model.pretrained_cfg
            size = img_size or cfg.get('test_input_size', cfg['input_size'])[-1]
            x = torch.randn(2, 3, size, size)
            for dtype in dtypes:
                cast = (torch.autocast('cpu', dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext())
                with cast:
                    model.train()(x).float().sum().backward()
                    with torch.no_grad():
                        model.eval()(x)
                model.zero_grad(set_to_none=True)
        launches.extend(recorded)
    return launches


def record_long_scans(dtypes: Sequence[torch.dtype], arch: int = ARCH) -> list:
    """The scan at route lengths and state sizes that take its chunked kernels (Vim at 1024², long rasters), its
    sequential kernels also with 64-bit offsets."""
    from visionssm.ops import selective_scan
    from visionssm.kernels import routes as R
    # (routes, height, width in pixels, channels per route, input channels, n_state, merge)
    cases = [(R.bidirectional_routes(192), 1, 4097, 192, 384, 16, 'mean'),
             (R.cross_routes(), 64, 64, 96, 96, 1, 'sum'), (R.cross_routes(), 128, 128, 96, 96, 4, 'sum')]
    with recording(arch) as recorded:
        for routes, height, width_px, width, in_channels, n_state, merge in cases:
            for dtype in dtypes:
                k = len(routes)
                leaf = lambda *shape, dt=dtype: torch.randn(*shape, dtype=dt).requires_grad_(True)
                u = leaf(1, height, width_px, in_channels)
                out = selective_scan(u, leaf(1, height, width_px, k * width), -torch.rand(k * width, n_state),
                                     leaf(1, height, width_px, k, n_state), leaf(1, height, width_px, k, n_state),
                                     leaf(k * width, dt=torch.float32), leaf(k * width, dt=torch.float32),
                                     routes=routes, merge=merge, out_channels=width, backend='triton')
                out.float().sum().backward()
        return (list(recorded) + int64_offset_variants(recorded) + states_only_variants(recorded)
                + dbc_partials_variants(recorded))


def _with_constexpr(launches: Iterable[Launch], name: str, value: bool) -> list:
    """The launches whose kernel takes the constexpr ``name`` and passes ``not value``, again with ``value``."""
    out = []
    for launch in launches:
        names = [p.name for p in launch.kernel.params]
        if name in names:
            path = (names.index(name),)
            if launch.constexprs.get(path) is (not value):
                out.append(launch._replace(constexprs={**launch.constexprs, path: value}))
    return out


def int64_offset_variants(launches: Iterable[Launch]) -> list:
    """The sequential scan kernels' launches again with 64-bit position offsets (``OFF64``, which the host picks for
    maps whose offsets could pass 2^31 elements: too large to record on a CPU)."""
    return _with_constexpr(launches, 'OFF64', True)


def states_only_variants(launches: Iterable[Launch]) -> list:
    """The forward kernels' launches that write an output, again without (``WRITE_OUT``): the backward's
    recomputation of the checkpoints takes whichever forward kernel the plan picks, chunked ones included."""
    return _with_constexpr(launches, 'WRITE_OUT', False)


def dbc_partials_variants(launches: Iterable[Launch]) -> list:
    """The sequential backward's launches again with dB / dC stored per channel block (``DBC_PART``, off by
    default: ``SEQ_DBC_PARTIALS`` / ``VISIONSSM_SCAN_DBC``)."""
    return _with_constexpr(launches, 'DBC_PART', True)


def check(launches: Sequence[Launch], arch: int = ARCH, log=print) -> list:
    """Compile each distinct launch; returns [(launch, error message)] of those that failed."""
    failures = []
    for launch in distinct(launches):
        start = time.perf_counter()
        try:
            compile_launch(launch, arch)
            log(f'ok   {time.perf_counter() - start:5.1f}s  {launch.describe()}')
        except Exception as e:  # every compiler error is a finding: report it with the launch
            message = _message(e)
            failures.append((launch, message))
            log(f'FAIL {time.perf_counter() - start:5.1f}s  {launch.describe()}\n{message}')
    return failures


def _message(e: BaseException) -> str:
    """The error and its causes: Triton's CompilationError points at the call site, its cause says what is wrong."""
    parts = []
    while e is not None:
        parts.append(f'{type(e).__name__}: {e}'.strip())
        e = e.__cause__
    return '\ncaused by '.join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--arch', type=int, default=ARCH,
                   help='compute capability x10 to specialize and compile for (default 90: H100 / H200)')
    p.add_argument('--models', nargs='*', help="models to record (default: every registered 'test_*' model)")
    p.add_argument('--img-size', type=int, help="input size (default: each model's test input size)")
    p.add_argument('--dtypes', nargs='+', default=list(DTYPES), choices=list(DTYPES))
    p.add_argument('--no-long', dest='long', action='store_false', help='skip the long-route scans')
    a = p.parse_args(argv)
    import timm
    import visionssm  # noqa: F401
    names = a.models or [m for m in timm.list_models('test_*') if _is_visionssm(m)]
    dtypes = [DTYPES[d] for d in a.dtypes]
    launches = record_models(names, dtypes, a.img_size, a.arch)
    launches += record_long_scans(dtypes, a.arch) if a.long else []
    unique = distinct(launches)
    print(f'{len(launches)} launches, {len(unique)} distinct, from {len(names)} models'
          f'{" and the long-route scans" if a.long else ""}; compiling for sm_{a.arch}', flush=True)
    failures = check(unique, a.arch, log=lambda s: print(s, flush=True))
    print(f'{len(unique) - len(failures)} of {len(unique)} compiled')
    return 1 if failures else 0


def _is_visionssm(name: str) -> bool:
    import timm
    return timm.models.model_entrypoint(name).__module__.startswith('visionssm.')


if __name__ == '__main__':
    sys.exit(main())
