"""The Triton LayerNorm (``kernels/layer_norm.py``, ``visionssm.layers.norm``) against PyTorch in float64: outputs,
statistics and the three gradients, on random widths (1 to 1000 channels, off the power-of-2 blocks), row counts off
the block size, per-group affines and every input dtype; then GroupMamba's norms through it against its PyTorch path.

Without CUDA the kernels run under the Triton interpreter on CPU tensors (small shapes), with the dispatch opened to
CPU tensors.
"""
import os

import pytest
import torch
import torch.nn.functional as F

_CUDA = torch.cuda.is_available()
if not _CUDA:
    os.environ['TRITON_INTERPRET'] = '1'   # before triton's import

pytest.importorskip('triton')

from visionssm.kernels import layer_norm as LN  # noqa: E402
from visionssm.layers.norm import gated_layer_norm, layer_norm, layer_norm_gate_backward  # noqa: E402

from _interpreter import fresh_process_test, needs_fresh_process  # noqa: E402

_NEEDS_SUBPROCESS = needs_fresh_process(LN._ln_fwd_kernel)
DEV = 'cuda' if _CUDA else 'cpu'

if _NEEDS_SUBPROCESS:
    test_cpu_cases_in_fresh_process = fresh_process_test(__file__)

pytestmark = pytest.mark.skipif(_NEEDS_SUBPROCESS, reason='runs in a fresh interpreter process')


def triton_on_cpu_dispatch(monkeypatch):
    """The dispatch serves CPU tensors too (the interpreter runs the kernels)."""
    monkeypatch.setattr(LN, 'on_gpu', lambda t: True)


@pytest.fixture
def triton_on_cpu(monkeypatch):
    """The dispatch serves CPU tensors too; on a GPU it is left as it is."""
    if not _CUDA:
        triton_on_cpu_dispatch(monkeypatch)


def _reference(x, width, weight, bias, eps):
    """float64 LayerNorm over segments of ``width`` with per-segment affines, and its autograd leaves."""
    groups = x.shape[-1] // width
    x64 = x.detach().double().requires_grad_()
    w64 = None if weight is None else weight.detach().double().requires_grad_()
    b64 = None if bias is None else bias.detach().double().requires_grad_()
    y = F.layer_norm(x64.unflatten(-1, (groups, width)), (width,), None, None, eps)
    if w64 is not None:
        y = y * w64.view(groups, width)
    if b64 is not None:
        y = y + b64.view(groups, width)
    return y.flatten(-2), x64, w64, b64


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


def _same_to_ulps(got, want, ulps=4):
    """Equal up to a few float32 ulps of the largest value: the kernel's variants (with or without statistics) are
    compiled separately, and a GPU's compiler may contract and order their arithmetic differently."""
    assert got.dtype == want.dtype and got.shape == want.shape
    assert (got - want).abs().max() <= ulps * torch.finfo(torch.float32).eps * want.abs().max()


CASES = [  # (leading shape, width, groups, affine)
    ((3, 5), 64, 1, True),
    ((7,), 1, 1, True),            # one channel: x_hat = 0
    ((2, 3, 5), 20, 1, False),     # no affine, width off the block
    ((1,), 1000, 1, True),         # one row, wide
    ((2, 9), 16, 4, True),         # GroupMamba's per-group norm at stage 1
    ((5, 3), 24, 2, True),
    ((301,), 96, 1, True),         # rows off the block size (BLOCK_M 32 for 96 channels)
    ((33,), 3, 1, True),
]


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize('lead, width, groups, affine', CASES, ids=lambda c: str(c))
def test_kernels_match_float64(lead, width, groups, affine, dtype):
    g = torch.Generator().manual_seed(width * 7 + groups)
    channels = width * groups
    x = (torch.randn(*lead, channels, generator=g) * 3 + 1).to(dtype).to(DEV)
    weight = torch.randn(channels, generator=g).to(DEV) if affine else None
    bias = torch.randn(channels, generator=g).to(DEV) if affine else None
    grad = torch.randn(*lead, channels, generator=g).to(DEV)
    want, x64, w64, b64 = _reference(x, width, weight, bias, 1e-5)
    want.backward(grad.double())

    shaped = lambda t: None if t is None else t.view(groups, width)
    y, mean, rstd = LN.layer_norm_forward(x, width, shaped(weight), shaped(bias), 1e-5, torch.float32)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert _rel(y, want) < 1e-5
    rows = x.double().view(-1, width)
    torch.testing.assert_close(mean.double(), rows.mean(-1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rstd.double(), (rows.var(-1, unbiased=False) + 1e-5).rsqrt(), rtol=1e-5, atol=0)

    dx, dw, db = LN.layer_norm_backward(grad, x, width, shaped(weight), mean, rstd, groups)
    assert dx.dtype == dtype and dx.shape == x.shape
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    if width > 1:   # one channel: the input gradient is exactly 0
        assert _rel(dx, x64.grad) < tol
    else:   # to rounding: a GPU contracts products into FMAs, leaving an ulp of g·w, times rstd (1/sqrt(eps))
        gw = grad.float().abs() * (1 if weight is None else weight.abs())
        assert dx.float().abs().max() <= 4 * torch.finfo(torch.float32).eps * rstd.max() * gw.max()
    if affine:
        assert _rel(dw.flatten(), w64.grad) < 1e-5 and _rel(db.flatten(), b64.grad) < 1e-5
    y16 = LN.layer_norm_forward(x, width, shaped(weight), shaped(bias), 1e-5, torch.bfloat16)[0]
    y_only, no_mean, no_rstd = LN.layer_norm_forward(x, width, shaped(weight), shaped(bias), 1e-5, torch.float32,
                                                     stats=False)   # inference: no statistics written
    assert no_mean is None and no_rstd is None
    _same_to_ulps(y_only, y)
    # stored straight in bf16: within one bf16 step of the float32 result (the interpreter truncates, a GPU rounds)
    torch.testing.assert_close(y16.float(), y, rtol=2 ** -7, atol=1e-6)


def _gated_reference(x, z, width, weight, bias, eps):
    """float64 ``LayerNorm(x) * SiLU(z)`` and its autograd leaves."""
    y, x64, w64, b64 = _reference(x, width, weight, bias, eps)
    z64 = z.detach().double().requires_grad_()
    return y * F.silu(z64), x64, z64, w64, b64


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize('lead, width, groups, affine', CASES, ids=lambda c: str(c))
def test_gated_kernels_match_float64(lead, width, groups, affine, dtype):
    """``LayerNorm(y) * SiLU(z)`` (the gate in the low-precision dtype, y in float32 as the scans write it): forward,
    then the backward from y and z alone (statistics recomputed) with dz and the forward's output again."""
    g = torch.Generator().manual_seed(width * 5 + groups)
    channels = width * groups
    x = (torch.randn(*lead, channels, generator=g) * 3 + 1).to(DEV)
    # the gate as a chunk of a wider map (in_proj's output), read in place, in every other case
    z = (torch.randn(*lead, 2 * channels, generator=g) * 2).to(dtype).to(DEV)
    z = z[..., channels:] if (width + groups) % 2 else z[..., :channels].contiguous()
    weight = torch.randn(channels, generator=g).to(DEV) if affine else None
    bias = torch.randn(channels, generator=g).to(DEV) if affine else None
    grad = torch.randn(*lead, channels, generator=g).to(dtype).to(DEV)
    want, x64, z64, w64, b64 = _gated_reference(x, z, width, weight, bias, 1e-5)
    want.backward(grad.double())

    shaped = lambda t: None if t is None else t.view(groups, width)
    out = LN.layer_norm_forward(x, width, shaped(weight), shaped(bias), 1e-5, dtype, stats=False, gate=z)[0]
    assert out.dtype == dtype and out.shape == x.shape
    tol = 1e-5 if dtype == torch.float32 else 1e-2   # one rounding to the low-precision dtype
    assert _rel(out, want) < tol
    dx, dw, db, dz, again = LN.gated_layer_norm_backward(grad, x, z, width, shaped(weight), shaped(bias), 1e-5,
                                                         out_dtype=dtype)
    assert dx.dtype == torch.float32 and dz.dtype == dtype and again.dtype == dtype
    # the same function recompiled: equal to a few float32 ulps, or one step of the low-precision dtype where those
    # ulps flip a rounding
    step = torch.finfo(dtype).eps / torch.finfo(torch.float32).eps
    _same_to_ulps(again.float(), out.float(), ulps=4 if dtype == torch.float32 else step)
    assert _rel(dz, z64.grad) < tol
    if width > 1:
        assert _rel(dx, x64.grad) < 1e-4
    if affine:
        assert _rel(dw.flatten(), w64.grad) < 1e-4 and _rel(db.flatten(), b64.grad) < 1e-4
    assert LN.gated_layer_norm_backward(grad, x, z, width, shaped(weight), shaped(bias), 1e-5, False)[4] is None


@pytest.mark.parametrize('width, groups', [(48, 1), (12, 4)])
def test_gated_layer_norm_autograd_and_pytorch_form(triton_on_cpu, monkeypatch, width, groups):
    """``gated_layer_norm`` through the kernels and through its PyTorch form: both the float64 function and its
    gradients; the split pair (``layer_norm_gate_backward``) gives the same gradients."""
    g = torch.Generator().manual_seed(11)
    channels = width * groups
    x = torch.randn(2, 5, 3, channels, generator=g).to(DEV).requires_grad_()
    xz = torch.randn(2, 5, 3, 2 * channels, generator=g).to(DEV).requires_grad_()
    z = xz[..., channels:]   # a chunk of in_proj's output, as the mixers pass it
    weight = torch.randn(channels, generator=g).to(DEV).requires_grad_()
    bias = torch.randn(channels, generator=g).to(DEV).requires_grad_()
    grad = torch.randn(2, 5, 3, channels, generator=g).to(DEV)
    want, x64, z64, w64, b64 = _gated_reference(x, z, width, weight, bias, 1e-6)
    want.backward(grad.double())
    for form in ('triton', 'torch'):
        monkeypatch.setenv('VISIONSSM_LAYER_NORM', form)
        calls = []
        forward = LN.layer_norm_forward
        monkeypatch.setattr(LN, 'layer_norm_forward', lambda *a, **k: calls.append(1) or forward(*a, **k))
        for t in (x, xz, weight, bias):
            t.grad = None
        out = gated_layer_norm(x, z, weight, bias, 1e-6, width=width)
        out.backward(grad)
        assert not xz.grad[..., :channels].any()
        z_grad = xz.grad[..., channels:]
        assert bool(calls) == (form == 'triton'), form
        assert out.dtype == torch.float32 and 'GatedLayerNorm' in type(out.grad_fn).__name__
        for got, ref in ((out, want), (x.grad, x64.grad), (z_grad, z64.grad), (weight.grad, w64.grad),
                         (bias.grad, b64.grad)):
            assert _rel(got, ref) < 1e-5, form
        dy, dz, dw, db, again = layer_norm_gate_backward(grad, x.detach(), z.detach(), weight, bias, 1e-6, width,
                                                         out_dtype=torch.float32)
        for got, ref in ((dy, x.grad), (dz, z_grad), (dw, weight.grad), (db, bias.grad), (again, out)):
            assert _rel(got, ref) < 1e-6, form
        with torch.no_grad():
            assert _rel(gated_layer_norm(x, z, weight, bias, 1e-6, width=width), want) < 1e-5


def test_gated_layer_norm_refuses_bad_input():
    y = torch.randn(2, 32)
    with pytest.raises(ValueError, match='differ in shape'):
        gated_layer_norm(y, torch.randn(2, 16))
    with pytest.raises(ValueError, match='not a multiple of width 5'):
        gated_layer_norm(y, y, width=5)
    with pytest.raises(ValueError, match='bias has 16 elements'):
        gated_layer_norm(y, y, None, torch.ones(16))
    with pytest.raises(ValueError, match="the gate must be a fp32/bf16/fp16 tensor of x's shape"):
        LN.layer_norm_forward(y, 32, None, None, 1e-5, gate=torch.randn(2, 32, dtype=torch.float64))


@pytest.mark.parametrize('width, groups', [(48, 1), (12, 4)])
def test_layer_norm_autograd_matches_pytorch(triton_on_cpu, width, groups):
    g = torch.Generator().manual_seed(3)
    channels = width * groups
    x = torch.randn(2, 5, 3, channels, generator=g).to(DEV).requires_grad_()
    weight = torch.randn(channels, generator=g).to(DEV).requires_grad_()
    bias = torch.randn(channels, generator=g).to(DEV).requires_grad_()
    grad = torch.randn(2, 5, 3, channels, generator=g).to(DEV)
    out = layer_norm(x, weight, bias, 1e-6, width=width)
    out.backward(grad)
    want, x64, w64, b64 = _reference(x, width, weight, bias, 1e-6)
    want.backward(grad.double())
    assert out.dtype == torch.float32 and out.grad_fn is not None and 'LayerNormTriton' in type(out.grad_fn).__name__
    for got, ref in ((out, want), (x.grad, x64.grad), (weight.grad, w64.grad), (bias.grad, b64.grad)):
        assert _rel(got, ref) < 1e-5
    with torch.no_grad():   # inference: the forward kernel alone
        _same_to_ulps(layer_norm(x, weight, bias, 1e-6, width=width), out.detach())


def test_strided_weights_are_read_as_their_values(triton_on_cpu):
    """A weight that is a strided view (every other element of a buffer) is read by value, not by its storage."""
    x = torch.randn(5, 24, device=DEV, requires_grad=True)
    storage = torch.randn(48, device=DEV)
    weight, bias = storage[::2].requires_grad_(), storage[1::2]
    out = layer_norm(x, weight, bias, width=12)
    out.sum().backward()
    want, x64, w64, _ = _reference(x, 12, weight, bias, 1e-5)
    want.sum().backward()
    assert _rel(out, want) < 1e-5 and _rel(x.grad, x64.grad) < 1e-5 and _rel(weight.grad, w64.grad) < 1e-5


def test_layer_norm_output_dtype_follows_autocast_and_request(triton_on_cpu):
    x = torch.randn(4, 32, device=DEV)
    weight, bias = torch.randn(32, device=DEV), torch.randn(32, device=DEV)
    want = F.layer_norm(x, (32,), weight, bias)
    with torch.autocast(DEV, dtype=torch.bfloat16):
        assert layer_norm(x, weight, bias).dtype == torch.float32          # autocast's LayerNorm policy
        low = layer_norm(x, weight, bias, out_dtype=torch.bfloat16)        # handed to a GEMM
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low, want.to(torch.bfloat16), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize('lead, width, affine', [((3, 5), 64, True), ((301,), 96, True), ((2, 7), 20, False),
                                                 ((1,), 1000, True)], ids=str)
def test_rms_kernels_match_float64(lead, width, affine, dtype):
    """RMSNorm (``rms=True``): output (in float32 and straight in bf16), rstd and the two gradients."""
    g = torch.Generator().manual_seed(width)
    x = (torch.randn(*lead, width, generator=g) * 3 + 1).to(dtype).to(DEV)
    weight = torch.randn(width, generator=g).to(DEV) if affine else None
    grad = torch.randn(*lead, width, generator=g).to(DEV)
    x64 = x.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_() if affine else None
    want = F.rms_norm(x64, (width,), w64, 1e-5)
    want.backward(grad.double())
    shaped = lambda t: None if t is None else t.view(1, width)
    y, mean, rstd = LN.layer_norm_forward(x, width, shaped(weight), None, 1e-5, torch.float32, rms=True)
    assert mean is None and _rel(y, want) < 1e-5
    rows = x.double().view(-1, width)
    torch.testing.assert_close(rstd.double(), (rows.square().mean(-1) + 1e-5).rsqrt(), rtol=1e-5, atol=0)
    dx, dw, db = LN.layer_norm_backward(grad, x, width, shaped(weight), None, rstd, rms=True)
    assert dx.dtype == dtype and db is None
    assert _rel(dx, x64.grad) < (1e-5 if dtype == torch.float32 else 1e-2)
    if affine:
        assert _rel(dw.flatten(), w64.grad) < 1e-5
    y16 = LN.layer_norm_forward(x, width, shaped(weight), None, 1e-5, torch.bfloat16, stats=False, rms=True)[0]
    torch.testing.assert_close(y16.float(), y, rtol=2 ** -7, atol=1e-6)
    with pytest.raises(ValueError, match='no bias'):
        LN.layer_norm_forward(x, width, shaped(weight), torch.ones(1, width, device=DEV), 1e-5, rms=True)


def test_rms_norm_autograd_and_output_dtype(triton_on_cpu, monkeypatch):
    """``rms_norm`` through the kernels equals its PyTorch form (output in the requested dtype, both gradients), and
    ``norm_to`` hands an ``RMSNorm``'s output to a GEMM in autocast's dtype, else in the weight's."""
    from visionssm.layers.norm import RMSNorm, norm_to, rms_norm
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 9, 40, generator=g).to(DEV).requires_grad_()
    weight = torch.randn(40, generator=g).to(DEV).requires_grad_()
    dy = torch.randn(2, 9, 40, generator=g).to(DEV)
    outs, calls = [], []
    forward = LN.layer_norm_forward
    monkeypatch.setattr(LN, 'layer_norm_forward', lambda *a, **k: calls.append(1) or forward(*a, **k))
    for path in ('triton', 'torch'):
        monkeypatch.setenv('VISIONSSM_LAYER_NORM', path)
        calls.clear()
        y = rms_norm(x, weight, 1e-5, torch.bfloat16)
        gx, gw = torch.autograd.grad(y.float(), (x, weight), dy)
        outs.append((y, gx, gw))
        assert bool(calls) == (path == 'triton'), path
    (y, gx, gw), (y_t, gx_t, gw_t) = outs
    assert y.dtype == y_t.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_t.float(), rtol=2 ** -7, atol=1e-6)
    assert _rel(gx, gx_t) < 1e-5 and _rel(gw, gw_t) < 1e-5
    norm = RMSNorm(40).to(DEV)
    assert norm(x).dtype == norm_to(norm, x).dtype == torch.float32
    with torch.autocast(DEV, dtype=torch.bfloat16):
        assert norm_to(norm, x).dtype == torch.bfloat16 and norm(x).dtype == torch.float32
    assert norm_to(norm.half(), x).dtype == torch.float16   # a .half() model without autocast: the weight's dtype


def test_pytorch_form_equals_the_kernels_without_dispatch(monkeypatch):
    """The CPU / tracing form computes the same function as the kernels (per-group affines included)."""
    monkeypatch.setenv('VISIONSSM_LAYER_NORM', 'torch')
    x = torch.randn(3, 4, 32, dtype=torch.float64)
    weight, bias = torch.randn(32, dtype=torch.float64), torch.randn(32, dtype=torch.float64)
    want = _reference(x, 8, weight, bias, 1e-5)[0]
    torch.testing.assert_close(layer_norm(x, weight, bias, width=8), want)
    torch.testing.assert_close(layer_norm(x, weight, bias), F.layer_norm(x, (32,), weight, bias))


def test_bad_input_is_refused_with_the_reason():
    x = torch.randn(2, 30)
    with pytest.raises(ValueError, match='not a multiple of width 8'):
        layer_norm(x, width=8)
    with pytest.raises(ValueError, match='weight has 20 elements'):
        layer_norm(x, torch.ones(20))
    with pytest.raises(ValueError, match='must be contiguous'):
        LN.layer_norm_forward(torch.randn(30, 4).t(), 30, None, None, 1e-5)


def test_dispatch_is_cuda_only_and_can_be_switched_off(monkeypatch):
    x = torch.randn(2, 16)
    assert not LN.supports(x, 16)
    assert not LN.supports(x.double(), 16)
    if _CUDA:
        assert LN.supports(x.cuda(), 16, 4)
        assert not LN.supports(x.cuda(), 16, 3)                 # affine groups: powers of 2
        assert not LN.supports(x.cuda(), LN.MAX_WIDTH * 2)      # wide rows: PyTorch's kernel
        monkeypatch.setenv('VISIONSSM_LAYER_NORM', 'torch')
        assert not LN.supports(x.cuda(), 16)


def _step(model, x, autocast):
    model.zero_grad()
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        out = model(x)
    out.float().square().mean().backward()
    return out.detach().float(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _run_both_ways(monkeypatch, name, autocast):
    """(outputs, gradients) of one training step of ``name`` through PyTorch's LayerNorm and through the kernels."""
    # float32 convolutions and GEMMs in float32: under TF32 (cuDNN's default) an ulp of difference in a norm's
    # output can flip an input's rounding to 10 bits, a 1e-4 difference that is not the norm's
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return _steps_both_ways(monkeypatch, name, autocast)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


def _steps_both_ways(monkeypatch, name, autocast):
    import timm
    import visionssm  # noqa: F401  (registers the models)
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).to(DEV)
    x = torch.randn(2, 3, 64, 48, device=DEV)
    monkeypatch.setenv('VISIONSSM_LAYER_NORM', 'torch')
    want = _step(model, x, autocast)
    reference = _step(model, x, False) if autocast else want
    monkeypatch.delenv('VISIONSSM_LAYER_NORM')
    calls = []
    forward = LN.layer_norm_forward
    monkeypatch.setattr(LN, 'layer_norm_forward', lambda *a, **k: calls.append(a[1]) or forward(*a, **k))
    if not _CUDA:
        triton_on_cpu_dispatch(monkeypatch)
    got = _step(model, x, autocast)
    assert calls, 'the kernels did not run'
    return got, want, reference


MODELS = ['test_groupmamba', 'test_vmamba', 'test_efficientvmamba', 'test_spatialmamba', 'test_msvmamba',
          'test_plainmamba', 'test_vim']


@pytest.mark.parametrize('name', MODELS)
def test_models_through_the_kernels_equal_their_pytorch_path(monkeypatch, name):
    """The blocks' norms (``norm_to``; GroupMamba's per-group out_norm with its gate too) through the kernels: the
    same float32 outputs and gradients as through PyTorch, to rounding."""
    (got, got_grads), (want, want_grads), _ = _run_both_ways(monkeypatch, name, autocast=False)
    assert _rel(got, want) < 1e-5
    assert got_grads.keys() == want_grads.keys()
    scale = max(g.abs().max() for g in want_grads.values())   # some gradients are sums that nearly cancel
    for n in want_grads:
        assert (got_grads[n] - want_grads[n]).abs().max() < 1e-5 * scale, n


# Triton's interpreter truncates float32 -> bf16 stores (half the values one bf16 step toward zero); a GPU rounds to
# nearest. Vim's norms hand every block's GEMM its input straight in bf16, so on the CPU that bias compounds past the
# bound below (relative output error 1.1e-2 against PyTorch's 6.0e-3): its case runs on a GPU only.
_BF16_MODELS = [pytest.param(m, marks=pytest.mark.skipif(
    not _CUDA, reason='the interpreter truncates bf16 stores (see above)')) if m == 'test_vim' else m for m in MODELS]


@pytest.mark.parametrize('name', _BF16_MODELS)
def test_models_through_the_kernels_under_bf16_autocast(monkeypatch, name):
    """Under bf16 autocast (the norms hand bf16 maps to the GEMMs) the step through the kernels is as close to the
    float32 step as the step through PyTorch (rounding differs, and the interpreter truncates where a GPU rounds)."""
    (got, got_grads), (want, want_grads), (ref, ref_grads) = _run_both_ways(monkeypatch, name, autocast=True)
    scale = max(g.abs().max() for g in ref_grads.values())
    worst = lambda grads: max(((grads[n] - ref_grads[n]).abs().max() / scale).item() for n in ref_grads)
    assert got_grads.keys() == want_grads.keys() == ref_grads.keys()
    assert _rel(got, ref) < 1.5 * _rel(want, ref) + 1e-3
    assert worst(got_grads) < 1.5 * worst(want_grads) + 1e-3
