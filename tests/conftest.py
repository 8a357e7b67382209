import os

import torch

# Without CUDA the Triton kernels run in Triton's interpreter on CPU tensors. The switch is read when kernels are
# decorated, so it must be set before anything (timm → torch._inductor, visionssm) imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

# One intra-op thread per xdist worker: `make test` runs one worker per core, and oversubscribed torch threads
# slow the CPU tests down several-fold.
if os.environ.get('PYTEST_XDIST_WORKER'):
    torch.set_num_threads(1)


# Under the interpreter every Triton launch's memory accesses are checked against its tensor arguments
# (tests/_memcheck.py): out of bounds, a GPU faults or silently corrupts a neighbour, the interpreter does neither.
# VISIONSSM_MEMCHECK=0 turns the check off (to time the tests without it).
if os.environ.get('TRITON_INTERPRET') == '1' and os.environ.get('VISIONSSM_MEMCHECK', '1') != '0':
    import pytest

    @pytest.fixture(autouse=True)
    def _triton_memory_checked():
        try:
            import triton.runtime.interpreter  # noqa: F401
        except ImportError:   # no triton: nothing runs in the interpreter
            yield
            return
        from _memcheck import memory_checked
        with memory_checked():
            yield
