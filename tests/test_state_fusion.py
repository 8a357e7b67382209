"""Spatial-Mamba's state fusion in Triton (``kernels/state_fusion.py``) against the PyTorch form (replicate padding
and three dilated depthwise convolutions, in float64): output, input gradient and kernel gradient, on random shapes
including maps smaller than the widest dilation, single rows / columns and channel counts off the block size.

Without CUDA the kernels run under the Triton interpreter on CPU tensors (small shapes).
"""
import os
import sys

import pytest
import torch

_CUDA = torch.cuda.is_available()
if not _CUDA:
    os.environ['TRITON_INTERPRET'] = '1'   # before triton's import

pytest.importorskip('triton')

try:
    from visionssm.kernels import state_fusion as SF
except ImportError:  # pragma: no cover - a machine without the package's other dependencies
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from kernels import state_fusion as SF

from visionssm.models.spatialmamba import StateFusion, _fuse, _replicate_index  # noqa: E402

from _interpreter import fresh_process_test, needs_fresh_process  # noqa: E402

_NEEDS_SUBPROCESS = needs_fresh_process(SF._fuse_fwd_kernel)
DEV = 'cuda' if _CUDA else 'cpu'
DILATIONS = (1, 3, 5)


if _NEEDS_SUBPROCESS:
    test_cpu_cases_in_fresh_process = fresh_process_test(__file__)


def _reference(h, weight):
    """The model's PyTorch form in float64: output and, through autograd, the gradients."""
    h64 = h.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    out = _fuse(h64, w64, _replicate_index(h.shape[1], h.shape[2], max(DILATIONS), h.device), DILATIONS)
    return out, h64, w64


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


CASES = [  # (batch, height, width, channels)
    (2, 6, 7, 5),      # non-square, channels off the block size
    (1, 1, 1, 3),      # one position: every tap is the centre
    (1, 2, 9, 4),      # two rows, narrower than the widest dilation
    (1, 9, 1, 4),      # one column
    (1, 11, 9, 66),    # two channel blocks, interior positions
]


@pytest.mark.skipif(_NEEDS_SUBPROCESS, reason='runs in a fresh interpreter process')
@pytest.mark.parametrize('shape', CASES, ids=lambda s: 'x'.join(map(str, s)))
def test_forward_and_gradients_match_the_pytorch_form(shape):
    g = torch.Generator().manual_seed(sum(shape))
    h = torch.randn(*shape, generator=g).to(DEV)
    weight = torch.randn(3, shape[-1], 1, 3, 3, generator=g).to(DEV)
    grad = torch.randn(*shape, generator=g).to(DEV)
    want, h64, w64 = _reference(h, weight)
    want.backward(grad.double())

    hh, ww = h.clone().requires_grad_(), weight.clone().requires_grad_()
    out = SF.fuse_states_triton(hh, ww, DILATIONS)
    out.backward(grad)
    assert out.dtype == h.dtype and out.shape == h.shape
    assert _rel(out, want) < 2e-6
    assert _rel(hh.grad, h64.grad) < 2e-6
    assert _rel(ww.grad, w64.grad) < 2e-6


@pytest.mark.skipif(_NEEDS_SUBPROCESS, reason='runs in a fresh interpreter process')
def test_several_column_blocks_and_rows_per_partial(monkeypatch):
    # small tiles: the first, middle and last column blocks differ (border columns), and each kernel-gradient
    # program sums several rows, the last program fewer
    for name in ('_FWD', '_BWD_H', '_BWD_W'):
        monkeypatch.setattr(SF, name, (64, 64, 1))
    monkeypatch.setattr(SF, '_PARTIALS', 3)
    shape = (2, 5, 19, 6)
    assert SF._blocks(19, 6, SF._FWD) == (8, 8, 1)
    test_forward_and_gradients_match_the_pytorch_form(shape)


@pytest.mark.skipif(_NEEDS_SUBPROCESS, reason='runs in a fresh interpreter process')
def test_bf16_accumulates_in_fp32():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 7, 6, 8, generator=g).to(DEV, torch.bfloat16)
    weight = torch.randn(3, 8, 1, 3, 3, generator=g).to(DEV)
    want, _, _ = _reference(h, weight)
    out = SF.fuse_states_triton(h, weight, DILATIONS)
    assert out.dtype == torch.bfloat16
    assert _rel(out, want) < 8e-3   # one bf16 rounding of the result


@pytest.mark.skipif(_NEEDS_SUBPROCESS, reason='runs in a fresh interpreter process')
def test_bad_input_is_named():
    h = torch.randn(1, 4, 4, 3, device=DEV)
    with pytest.raises(ValueError, match='contiguous'):
        SF.fuse_states_triton(h.permute(0, 2, 1, 3), torch.randn(3, 3, 1, 3, 3, device=DEV), DILATIONS)
    with pytest.raises(ValueError, match=r'weight must be \(3, 3, 1, 3, 3\)'):
        SF.fuse_states_triton(h, torch.randn(3, 4, 1, 3, 3, device=DEV), DILATIONS)


def test_dispatch_is_cuda_only_and_can_be_switched_off(monkeypatch):
    h = torch.zeros(1, 2, 2, 3)
    assert not SF.supports(h, DILATIONS)   # CPU tensors take the PyTorch form
    if _CUDA:
        assert SF.supports(h.cuda(), DILATIONS)
        monkeypatch.setenv('VISIONSSM_STATE_FUSION', 'torch')
        assert not SF.supports(h.cuda(), DILATIONS)


@pytest.mark.skipif(not _CUDA, reason='needs CUDA')
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_module_paths_agree_on_the_gpu(dtype, monkeypatch):
    torch.manual_seed(0)
    fusion = StateFusion(96).cuda()
    with torch.no_grad():
        for p in fusion.parameters():
            p.copy_(torch.randn_like(p))
    h = torch.randn(4, 28, 28, 96, device='cuda', dtype=dtype, requires_grad=True)
    grad = torch.randn_like(h)
    results = []
    for backend in ('triton', 'torch'):
        monkeypatch.setenv('VISIONSSM_STATE_FUSION', backend)
        fusion.zero_grad()
        h.grad = None
        out = fusion(h)
        out.backward(grad)
        results.append((out.float(), h.grad.float(), fusion.kernel_3_1.grad.clone(), fusion.alpha.grad.clone()))
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for a, b in zip(*results):
        assert _rel(a, b) < tol
