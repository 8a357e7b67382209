"""The Triton depthwise conv1d (``kernels/conv1d.py``, ``visionssm.layers.conv1d``) against PyTorch in float64:
output and the three gradients on seeded random shapes (lengths and widths off the tile sizes, 1 to 9 taps, every
padding, one or two repeats, strided inputs, with and without bias and SiLU) in every input dtype; then Vim's mixer
through it against its PyTorch path.

Without CUDA the kernels run under the Triton interpreter on CPU tensors (small shapes), with the dispatch opened to
CPU tensors.
"""
import os
import random

import pytest
import torch
import torch.nn.functional as F

_CUDA = torch.cuda.is_available()
if not _CUDA:
    os.environ['TRITON_INTERPRET'] = '1'   # before triton's import

pytest.importorskip('triton')

from visionssm.kernels import conv1d as CK  # noqa: E402
from visionssm.layers.conv1d import depthwise_conv1d  # noqa: E402

from _interpreter import fresh_process_test, needs_fresh_process  # noqa: E402

_NEEDS_SUBPROCESS = needs_fresh_process(CK._conv_fwd_kernel)
DEV = 'cuda' if _CUDA else 'cpu'

if _NEEDS_SUBPROCESS:
    test_cpu_cases_in_fresh_process = fresh_process_test(__file__)

pytestmark = pytest.mark.skipif(_NEEDS_SUBPROCESS, reason='runs in a fresh interpreter process')

_TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


@pytest.fixture
def triton_on_cpu(monkeypatch):
    """The dispatch serves CPU tensors too; on a GPU it is left as it is."""
    if not _CUDA:
        monkeypatch.setattr(CK, 'on_gpu', lambda t: True)


def _reference(x, weight, bias, left, repeats, silu):
    """The conv in float64 by its definition (shifted slices of a zero-padded x), with its autograd leaves."""
    x64 = x.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    b64 = None if bias is None else bias.detach().double().requires_grad_()
    taps = w64.shape[-1]
    length = x64.shape[1]
    padded = F.pad(torch.cat([x64] * repeats, dim=-1), (0, 0, left, taps - 1 - left))
    y = sum(padded[:, k:k + length] * w64[:, k] for k in range(taps))
    if b64 is not None:
        y = y + b64
    if silu:
        y = F.silu(y)
    return y, x64, w64, b64


def _rel(a, b):
    return ((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def _case(seed):
    rng = random.Random(seed)
    taps = rng.randint(1, 9)
    long = _CUDA and rng.random() < 0.3   # on a GPU also long sequences and wide maps (several programs per block)
    return dict(batch=rng.randint(1, 3), length=rng.choice([1, 2, 5, 31, 32, 33, 70] + ([197, 1000, 3136] * long)),
                channels=rng.choice([1, 3, 16, 40, 64, 65, 100] + ([384, 1000] * long)), taps=taps,
                left=rng.randrange(taps),
                repeats=rng.choice([1, 2]), bias=rng.random() < 0.7, silu=rng.random() < 0.8,
                strided=rng.random() < 0.5, dtype=rng.choice([torch.float32, torch.bfloat16, torch.float16]))


@pytest.mark.parametrize('seed', range(200 if _CUDA else 24))
def test_matches_float64(seed, triton_on_cpu):
    c = _case(seed)
    g = torch.Generator().manual_seed(seed)
    width = c['repeats'] * c['channels']
    x = torch.randn(c['batch'], c['length'], c['channels'] * (2 if c['strided'] else 1), generator=g)
    x = x.to(DEV, c['dtype'])
    if c['strided']:   # the second half of the channels: a chunk of a wider projection, read in place
        x = x[..., c['channels']:]
        assert not x.is_contiguous() or c['length'] == 1
    x.requires_grad_()
    weight = (torch.randn(width, c['taps'], generator=g) / c['taps'] ** 0.5).to(DEV, c['dtype']).requires_grad_()
    bias = torch.randn(width, generator=g).to(DEV, c['dtype']).requires_grad_() if c['bias'] else None
    y = depthwise_conv1d(x, weight, bias, left=c['left'], repeats=c['repeats'], silu=c['silu'])
    want, x64, w64, b64 = _reference(x, weight, bias, c['left'], c['repeats'], c['silu'])
    tol = _TOL[c['dtype']]
    assert y.dtype == c['dtype'] and y.shape == want.shape and y.is_contiguous()
    assert _rel(y, want) < tol, c
    dy = torch.randn(want.shape, generator=g)
    y.backward(dy.to(DEV, c['dtype']))
    want.backward(dy.double().to(DEV))
    # gradients summed over many products: the low-precision inputs' own rounding bounds them, as in the forward
    assert _rel(x.grad, x64.grad) < 2 * tol, c
    assert _rel(weight.grad, w64.grad) < 2 * tol, c
    if bias is not None:
        assert _rel(bias.grad, b64.grad) < 2 * tol, c
    assert x.grad.dtype == weight.grad.dtype == c['dtype']


@pytest.mark.gpu
@pytest.mark.skipif(not _CUDA, reason='needs CUDA')
@pytest.mark.parametrize('shape', [(8, 197, 768, 7, 3, 2, True), (4, 3136, 80, 3, 1, 1, False)],
                         ids=['vim-s-both-directions', 'mambavision-t-stage3-same'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_gpu_model_sizes(shape, dtype):
    """Vim-S's repeated 7-tap conv over a strided chunk (with bias) and MambaVision's 'same' 3-tap one, at full
    width, against float64: forward and the three gradients (several programs per channel block in the backward)."""
    batch, length, channels, taps, left, repeats, bias = shape
    g = torch.Generator(device='cuda').manual_seed(3)
    xz = torch.randn(batch, length, 2 * channels, device='cuda', generator=g).to(dtype)
    x = xz[..., :channels].requires_grad_()
    w = (torch.randn(repeats * channels, taps, device='cuda', generator=g) / taps).to(dtype).requires_grad_()
    b = torch.randn(repeats * channels, device='cuda', generator=g).to(dtype).requires_grad_() if bias else None
    y = depthwise_conv1d(x, w, b, left=left, repeats=repeats)
    want, x64, w64, b64 = _reference(x, w, b, left, repeats, True)
    assert _rel(y, want) < _TOL[dtype]
    dy = torch.randn(want.shape, device='cuda', generator=g)
    y.backward(dy.to(dtype))
    want.backward(dy.double())
    for got, ref in ((x.grad, x64.grad), (w.grad, w64.grad)) + (((b.grad, b64.grad),) if bias else ()):
        assert _rel(got, ref) < 2 * _TOL[dtype]


def test_kernels_serve_the_call(triton_on_cpu, monkeypatch):
    """The cases above ran the kernels, not the PyTorch form."""
    calls = []
    forward = CK.conv1d_forward
    monkeypatch.setattr(CK, 'conv1d_forward', lambda *a, **k: calls.append(1) or forward(*a, **k))
    depthwise_conv1d(torch.randn(1, 4, 3, device=DEV), torch.randn(3, 2, device=DEV))
    assert calls


@pytest.mark.parametrize('need', ['x', 'weights'])
def test_partial_gradients(need, triton_on_cpu):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 40, 24, generator=g).to(DEV).requires_grad_(need == 'x')
    weight = torch.randn(48, 4, generator=g).to(DEV).requires_grad_(need == 'weights')
    bias = torch.randn(48, generator=g).to(DEV)
    y = depthwise_conv1d(x, weight, bias, left=3, repeats=2)
    want, x64, w64, _ = _reference(x, weight, bias, 3, 2, True)
    dy = torch.randn(want.shape, generator=g)
    y.backward(dy.to(DEV))
    want.backward(dy.double().to(DEV))
    got, ref = (x.grad, x64.grad) if need == 'x' else (weight.grad, w64.grad)
    assert _rel(got, ref) < 1e-5
    assert (weight.grad if need == 'x' else x.grad) is None


def test_conv1d_weight_layout_and_default_padding(triton_on_cpu):
    """A Conv1d's ``(C, 1, K)`` weight is taken as it is, and the default padding is causal (``nn.Conv1d`` with
    ``K - 1`` zeros on both sides, cut to the first L outputs)."""
    conv = torch.nn.Conv1d(6, 6, 4, groups=6, padding=3).to(DEV)
    x = torch.randn(2, 9, 6, device=DEV)
    with torch.no_grad():
        want = F.silu(conv(x.transpose(1, 2))[..., :9]).transpose(1, 2)
        got = depthwise_conv1d(x, conv.weight, conv.bias)
    assert _rel(got, want.double()) < 1e-5


def test_second_derivative_is_refused(triton_on_cpu):
    """The kernels build no graph: differentiating their backward raises instead of returning a partial answer."""
    x = torch.randn(1, 6, 4, device=DEV, requires_grad=True)
    w = torch.randn(4, 3, device=DEV, requires_grad=True)
    (gx,) = torch.autograd.grad(depthwise_conv1d(x, w).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match='not have been used in the graph'):
        torch.autograd.grad(gx.square().sum(), w)
    with pytest.raises(RuntimeError, match='once_differentiable'):
        gx.square().sum().backward()


def test_empty_and_bad_input(triton_on_cpu):
    x = torch.randn(2, 0, 4, device=DEV, requires_grad=True)
    w = torch.randn(4, 3, device=DEV, requires_grad=True)
    y = depthwise_conv1d(x, w)
    assert y.shape == (2, 0, 4)
    y.sum().backward()
    assert w.grad.abs().sum() == 0
    with pytest.raises(ValueError, match='left padding 3'):
        depthwise_conv1d(torch.randn(1, 4, 4, device=DEV), w, left=3)
    with pytest.raises(ValueError, match=r'weight \(2 \* C, K\)'):
        depthwise_conv1d(torch.randn(1, 4, 4, device=DEV), w, repeats=2)
    with pytest.raises(ValueError, match=r'bias must be \(4,\)'):
        depthwise_conv1d(torch.randn(1, 4, 4, device=DEV), w, torch.randn(3, device=DEV))
    with pytest.raises(ValueError, match=r"depthwise Conv1d's \(C, 1, K\)"):
        depthwise_conv1d(torch.randn(1, 4, 4, device=DEV), torch.randn(4, 2, 3, device=DEV))


def test_torch_form_when_switched_off(triton_on_cpu, monkeypatch):
    """``VISIONSSM_CONV1D=torch`` takes the PyTorch form (what the CPU, compile and exports run) where the kernels
    would serve, equal to the definition; so does float64, which the kernels take nowhere."""
    calls = []
    monkeypatch.setattr(CK, 'conv1d_forward', lambda *a, **k: calls.append(1))
    monkeypatch.setenv('VISIONSSM_CONV1D', 'torch')
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        x = torch.randn(2, 7, 5, dtype=dtype, device=DEV)
        w = torch.randn(10, 3, dtype=dtype, device=DEV)
        b = torch.randn(10, dtype=dtype, device=DEV)
        for left in (0, 1, 2):
            want = _reference(x, w, b, left, 2, True)[0]
            assert _rel(depthwise_conv1d(x, w, b, left=left, repeats=2), want) < tol
    assert not calls
    monkeypatch.delenv('VISIONSSM_CONV1D')
    depthwise_conv1d(x.float(), w.float(), b.float(), repeats=2)
    assert calls   # the switch, not the inputs, kept the kernels out above


def _vim_mixer():
    from visionssm.models.vim import BiMambaMixer
    return BiMambaMixer(16, d_state=4), lambda m: (m.conv1d.weight.grad, m.conv1d_b.bias.grad)


def _mambavision_mixer():
    from visionssm.models.mambavision import MambaVisionMixer
    return MambaVisionMixer(16, d_state=4), lambda m: (m.conv1d_x.weight.grad, m.conv1d_z.weight.grad)


@pytest.mark.parametrize('build', [_vim_mixer, _mambavision_mixer], ids=['vim', 'mambavision'])
def test_mixer_through_the_kernel(build, triton_on_cpu, monkeypatch):
    """Vim's mixer (both directions' convs as one repeated conv, with the recomputing backward) and MambaVision's
    (both halves' 'same' convs) with the kernel equal their PyTorch path: output, input and conv gradients."""
    torch.manual_seed(0)
    mixer, conv_grads = build()
    mixer = mixer.to(DEV)
    x = torch.randn(2, 37, 16, device=DEV)

    def run():
        mixer.zero_grad()
        xi = x.clone().requires_grad_()
        y = mixer(xi)
        y.square().sum().backward()
        return (y.detach(), xi.grad) + tuple(g.clone() for g in conv_grads(mixer))

    calls = []
    forward = CK.conv1d_forward
    monkeypatch.setattr(CK, 'conv1d_forward', lambda *a, **k: calls.append(1) or forward(*a, **k))
    got = run()
    assert calls
    calls.clear()
    monkeypatch.setenv('VISIONSSM_CONV1D', 'torch')
    want = run()
    assert not calls
    for a, b in zip(got, want):
        assert _rel(a, b.double()) < 1e-4
