"""Kernel tests without CUDA: the Triton kernels run in Triton's interpreter on CPU tensors, which must be switched
on (``TRITON_INTERPRET=1``, tests/conftest.py) before triton is first imported. Where something imported triton
earlier in the process (timm → torch._inductor), a kernel test file instead runs once more in a fresh pytest
process with the interpreter on."""
import os
import subprocess
import sys

import torch


def nvidia_backend() -> bool:
    """Whether triton has its NVIDIA backend (compiler, ptxas): what compiling for a GPU without one needs."""
    try:
        from triton.backends import backends
    except ImportError:   # pragma: no cover - no triton, or an older one
        return False
    return 'nvidia' in backends


def needs_fresh_process(kernel) -> bool:
    """True without CUDA when ``kernel`` (a ``triton.jit`` function) was not built for the interpreter."""
    return not torch.cuda.is_available() and not type(kernel).__name__.startswith('Interpreted')


def fresh_process_test(path: str):
    """A test that runs the test file ``path`` in a fresh pytest process with the interpreter on, and passes when
    every test there passes."""
    def test_cpu_cases_in_fresh_process():
        root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
        env = dict(os.environ, TRITON_INTERPRET='1')
        r = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-p', 'no:xdist',
                            os.path.abspath(path)], env=env, cwd=root, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    return test_cpu_cases_in_fresh_process
