"""GroupMamba's modulation in Triton (``kernels/modulation.py`` and ``groupmamba._Modulation``) against the PyTorch
form in float64: the product, the gate's gradient, and every gradient of ``s * x * channel_affinity(x, ...)``, on
shapes with channels off the block size, one-position maps and images split over several programs.

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
    from visionssm.kernels import modulation as MK
except ImportError:  # pragma: no cover - a machine without the package's other dependencies
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from kernels import modulation as MK

from visionssm.models import groupmamba as GM  # noqa: E402

from _interpreter import fresh_process_test, needs_fresh_process  # noqa: E402

_NEEDS_SUBPROCESS = needs_fresh_process(MK._modulate_fwd_kernel)
DEV = 'cuda' if _CUDA else 'cpu'

if _NEEDS_SUBPROCESS:
    test_cpu_cases_in_fresh_process = fresh_process_test(__file__)

skip_here = pytest.mark.skipif(_NEEDS_SUBPROCESS, reason='runs in a fresh interpreter process')

CASES = [  # (batch, height, width, channels)
    (2, 5, 7, 70),     # two channel blocks, the second partial; positions off the row block
    (3, 1, 1, 16),     # one position per image (GroupMamba's class block)
    (1, 9, 8, 8),      # 72 positions: several splits of the gate's reduction
]


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


def _mixer_parts(channels, generator):
    fc1, fc2 = torch.nn.Linear(channels, max(1, channels // 4)), torch.nn.Linear(max(1, channels // 4), channels)
    with torch.no_grad():
        for p in (*fc1.parameters(), *fc2.parameters()):
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    return fc1.to(DEV), fc2.to(DEV), torch.full((1,), 0.7, device=DEV)


@skip_here
@pytest.mark.parametrize('shape', CASES, ids=lambda s: 'x'.join(map(str, s)))
def test_kernels_match_the_elementwise_form(shape, monkeypatch):
    monkeypatch.setattr(MK, '_SPLITS', 3)
    g = torch.Generator().manual_seed(sum(shape))
    s, x, grad = (torch.randn(*shape, generator=g).to(DEV) for _ in range(3))
    a, dm = (torch.randn(shape[0], shape[-1], generator=g).to(DEV) for _ in range(2))
    view = lambda t: t.double()[:, None, None]   # noqa: E731
    assert _rel(MK.modulate_forward(s, x, a), s.double() * x.double() * view(a)) < 1e-6
    assert _rel(MK.gate_grad(grad, s, x), (grad.double() * s.double() * x.double()).sum((1, 2))) < 1e-6
    ds, dx = MK.modulate_backward(grad, s, x, a, dm)
    assert _rel(ds, grad.double() * x.double() * view(a)) < 1e-6
    assert _rel(dx, grad.double() * s.double() * view(a) + view(dm)) < 1e-6


@skip_here
@pytest.mark.parametrize('shape', CASES, ids=lambda s: 'x'.join(map(str, s)))
def test_function_gradients_match_the_mixers_pytorch_form(shape):
    g = torch.Generator().manual_seed(7 + sum(shape))
    fc1, fc2, skip = _mixer_parts(shape[-1], g)
    s, x, grad = (torch.randn(*shape, generator=g).to(DEV) for _ in range(3))

    leaves64 = [t.detach().double().requires_grad_() for t in (s, x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, skip)]
    s64, x64, w1, b1, w2, b2, k = leaves64
    want = s64 * x64 * GM._gate(x64.mean((1, 2)), w1, b1, w2, b2, k)[:, None, None]
    want.backward(grad.double())

    leaves = [t.detach().clone().requires_grad_() for t in (s, x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, skip)]
    out = GM._Modulation.apply(*leaves)
    out.backward(grad)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert _rel(out, want) < 1e-5
    for got, ref in zip(leaves, leaves64):
        assert _rel(got.grad, ref.grad) < 1e-5


@skip_here
def test_bad_input_is_named():
    x = torch.randn(2, 3, 3, 4, device=DEV)
    with pytest.raises(ValueError, match=r'\(B, C\) = \(2, 4\)'):
        MK.modulate_forward(x, x, torch.randn(2, 5, device=DEV))
    with pytest.raises(ValueError, match='one shape'):
        MK.modulate_forward(x, x[:, :2].contiguous(), torch.randn(2, 4, device=DEV))


@skip_here
def test_mixer_through_the_kernels_matches_its_pytorch_form(monkeypatch):
    # the mixer's dispatch, the class block's 1x1 map and the parameters' gradients, with the kernels served on the
    # CPU by the interpreter
    torch.manual_seed(0)
    mixer = GM.GroupMambaMixer(32).to(DEV)
    results = []
    for use_kernels in (True, False):
        monkeypatch.setattr(MK, 'supports', lambda x, use=use_kernels: use)
        for shape in ((2, 5, 6, 32), (3, 1, 1, 32)):
            x = torch.randn(*shape, generator=torch.Generator().manual_seed(1)).to(DEV).requires_grad_()
            mixer.zero_grad()
            out = mixer(x)
            out.backward(torch.ones_like(out))
            results.append((out, x.grad, mixer.fc1.weight.grad.clone(), mixer.fc2.bias.grad.clone(),
                            mixer.skip_scale.grad.clone(), mixer.norm.weight.grad.clone()))
    for got, want in zip(results[:2], results[2:]):
        for a, b in zip(got, want):
            assert _rel(a, b) < 1e-5


def test_dispatch_is_cuda_only_and_can_be_switched_off(monkeypatch):
    x = torch.zeros(1, 2, 2, 4)
    assert not MK.supports(x)   # CPU tensors take the PyTorch form
    if _CUDA:
        assert MK.supports(x.cuda())
        monkeypatch.setenv('VISIONSSM_MODULATION', 'torch')
        assert not MK.supports(x.cuda())


@pytest.mark.skipif(not _CUDA, reason='needs CUDA')
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_mixer_paths_agree_on_the_gpu(dtype, monkeypatch):
    torch.manual_seed(0)
    mixer = GM.GroupMambaMixer(64).cuda()
    x = torch.randn(4, 14, 14, 64, device='cuda', requires_grad=True)
    grad = torch.randn(4, 14, 14, 64, device='cuda')
    results = []
    for backend in ('triton', 'torch'):
        monkeypatch.setenv('VISIONSSM_MODULATION', backend)
        mixer.zero_grad()
        x.grad = None
        with torch.autocast('cuda', dtype=dtype, enabled=dtype != torch.float32):
            out = mixer(x)
        out.float().backward(grad)
        results.append((out.float(), x.grad.clone(), mixer.fc1.weight.grad.clone(), mixer.skip_scale.grad.clone()))
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for a, b in zip(*results):
        assert _rel(a, b) < tol
