"""tests/_memcheck.py, the interpreter's out-of-bounds check that tests/conftest.py applies to every test: it must
fail a kernel that reads or writes past its tensors, name where, and pass one that stays inside."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ['TRITON_INTERPRET'] = '1'   # before triton's import

triton = pytest.importorskip('triton')
import triton.language as tl  # noqa: E402

from _interpreter import fresh_process_test, needs_fresh_process  # noqa: E402
from _memcheck import memory_checked  # noqa: E402


@triton.jit
def _copy_kernel(x_ptr, out_ptr, n, extra, BLOCK: tl.constexpr):
    # copies n elements, plus ``extra`` more past the end where the mask's bound is off
    i = tl.arange(0, BLOCK)
    m = i < n + extra
    tl.store(out_ptr + i, tl.load(x_ptr + i, mask=i < n, other=0.0), mask=m)


@triton.jit
def _int_mask_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    # a mask made of 0 / 1 integers, all 0: nothing is accessed
    i = tl.arange(0, BLOCK)
    m = (i > BLOCK).to(tl.int8) != 0
    tl.store(out_ptr + i + 1000, tl.load(x_ptr + i + 1000, mask=m, other=0.0), mask=m)


if needs_fresh_process(_copy_kernel):
    test_cpu_cases_in_fresh_process = fresh_process_test(__file__)
else:
    cpu = pytest.mark.skipif(torch.cuda.is_available(), reason='the check is the interpreter\'s (CPU tensors)')

    @cpu
    def test_inside_passes():
        x, out = torch.arange(8.), torch.zeros(8)
        with memory_checked():
            _copy_kernel[(1,)](x, out, 8, 0, BLOCK=8)
        assert torch.equal(out, x)

    @cpu
    def test_a_store_past_the_end_fails_and_says_where():
        x, out = torch.arange(16.), torch.zeros(16)
        with memory_checked(), pytest.raises(Exception, match=r'_copy_kernel program \(0, 0, 0\): a store of 2 '
                                             r'element\(s\) of 4 bytes outside every tensor argument; the first 0 '
                                             r'bytes past the end of out_ptr \(shape \(6,\)'):
            _copy_kernel[(1,)](x, out[:6].clone(), 6, 2, BLOCK=8)

    @cpu
    def test_a_masked_out_access_is_not_checked():
        x, out = torch.arange(8.), torch.zeros(8)
        with memory_checked():
            _int_mask_kernel[(1,)](x, out, BLOCK=8)
        assert not out.any()

    @cpu
    def test_the_conftest_fixture_checks_every_test():
        # the autouse fixture is active here: the same launch fails without an explicit memory_checked()
        x, out = torch.arange(16.), torch.zeros(16)
        with pytest.raises(Exception, match='past the end of out_ptr'):
            _copy_kernel[(1,)](x, out[:6].clone(), 6, 2, BLOCK=8)
