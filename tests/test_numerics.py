"""float16 numerics: the scan and the models under fp16 inputs and fp16 autocast (mmdet's ``AmpOptimWrapper``).

Every case compares with a float64 (scan) or float32 (model) run of the same inputs and asserts finiteness and
closeness with a tolerance that float16 storage meets (half an fp16 ulp is 4.9e-4 of a value) and a computation
in float16, or an overflow, would not. Magnitudes are chosen so that the exact results fit in float16 where the
result is stored in float16; where they do not (activation outliers), the test shows that the float32 output
(``out_dtype``, which the models use) keeps them. Where gradients are small (tiny Δ), the output gradients carry a
loss scale as GradScaler applies one: that is what keeps them above float16's subnormals (below 6.1e-5).

CPU autocast differs from CUDA autocast: it runs LayerNorm, softmax and the reductions in float16 where CUDA runs
them in float32, so the model cases here see more float16 than they would on a GPU.
"""
import copy

import pytest
import timm
import torch
import torch.nn.functional as F

import visionssm  # noqa: F401  (registers the models)
from visionssm.layers import SS2D
from visionssm.models.spatialmamba import StateFusion, StructureAwareSSM
from visionssm.models.vim import BiMambaMixer, RMSNorm
from visionssm.ops import Route, bidirectional_routes, cross_routes, grouped_routes, lattice_routes, selective_scan

FP16_MAX = torch.finfo(torch.float16).max
LOSS_SCALE = 2.0 ** 16          # GradScaler's initial scale
LOSS_SCALED_GRAD = 1024.        # a scan's output gradients under a loss scale (e.g. 2^16 times ~1e-2)
TOL_FP16 = 2e-3                 # of the largest |value|: float16 storage (4.9e-4) with margin
TOL_FP32 = 1e-4                 # results kept in float32: well below one float16 rounding


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30)).item()


def _assert_close(name: str, got: torch.Tensor, want: torch.Tensor, tol: float):
    assert got.isfinite().all(), f'{name}: {int((~got.isfinite()).sum())} non-finite values ({got.dtype})'
    err = _rel_err(got, want)
    assert err <= tol, f'{name}: max error {err:.2e} of the largest |value| ({want.abs().max():.3g}) > {tol:.0e}'


# --- the scan op (reference backend) ----------------------------------------------------------------------------

def _scan_inputs(grid, routes, width, n_state, *, u_scale=1., delta_shift=0., delta_scale=1., B_scale=1.,
                 hidden=False, in_channels=None, seed=0):
    """fp16 maps ``u, delta, B, C`` over ``grid = (batch, H, W)`` and float32 parameters (the models' dtypes)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    K = len(routes)
    return dict(
        u=(r(*grid, in_channels or width) * u_scale).half(),
        delta=(r(*grid, K * width) * delta_scale + delta_shift).half(),
        A=-torch.exp(r(K * width, n_state) * 0.5),
        B=(r(*grid, K, n_state) * B_scale).half(),
        C=None if hidden else r(*grid, K, n_state).half(),
        D=None if hidden else r(K * width),
        delta_bias=r(K * width) * 0.2,
    )


def _run_scan(inputs, routes, grad_out_scale, double, **kw):
    """Output and input gradients of one scan; ``double``: the float64 oracle on the same (fp16-valued) inputs."""
    leaves = {k: (v.double() if double else v).clone().requires_grad_(k in ('u', 'delta', 'B', 'C'))
              if v is not None else None for k, v in inputs.items()}
    if double:
        kw = dict(kw, out_dtype=None)
    out = selective_scan(leaves['u'], leaves['delta'], leaves['A'], leaves['B'], leaves['C'], leaves['D'],
                         leaves['delta_bias'], routes=routes, **kw)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)) * grad_out_scale
    out.backward(grad_out.to(out.dtype))
    return out.detach(), {k: leaves[k].grad for k in ('u', 'delta', 'B', 'C') if leaves[k] is not None}


# name: (routes, grid, width, n_state, input magnitudes, selective_scan kwargs, grad_out scale)
SCAN_CASES = {
    # Δ pre-activations in the hundreds: softplus(z) = z, Δ·A ≈ -300, the state is the last drive only
    'large_delta': (cross_routes(), (1, 6, 7), 4, 1, dict(delta_shift=300., delta_scale=50.), {}, 1.),
    # Δ·B·u beyond float16's range: y stays finite only in float32 (out_dtype, as the models run the scan)
    # (small output gradients: dC = dy * h would not fit either for unit ones)
    'large_delta_u_B': (cross_routes(), (1, 6, 7), 4, 1, dict(delta_shift=100., u_scale=30., B_scale=20.),
                        dict(out_dtype=torch.float32), 0.03),
    # softplus(-16) ≈ 1e-7: dΔ that float16 holds only for loss-scaled output gradients
    'tiny_delta_loss_scaled': (cross_routes(), (1, 6, 7), 4, 1, dict(delta_shift=-16.),
                               dict(out_dtype=torch.float32), LOSS_SCALED_GRAD),
    # Vim: d_state 16, two directions with their own input blocks, mean merge, outliers in u and B
    'vim_mean_state16': (bidirectional_routes(4), (2, 1, 23), 4, 16, dict(u_scale=100., B_scale=10., in_channels=8),
                         dict(merge='mean', out_channels=4, out_dtype=torch.float32), 1.),
    'vim_mean_fp16_out': (bidirectional_routes(4), (2, 1, 23), 4, 16, dict(in_channels=8),
                          dict(merge='mean', out_channels=4), 1.),
    # Spatial-Mamba: one route, the hidden states returned (float32) at d_state 1, large inputs
    'hidden_states': ((Route('row'),), (1, 7, 7), 4, 1, dict(hidden=True, u_scale=300., B_scale=30.),
                      dict(return_hidden=True, out_dtype=torch.float32), 0.1),
    # the 14x14 and 7x7 maps of stages 3-4 (VMamba, EfficientVMamba's lattices, GroupMamba's groups)
    'tail_14x14': (cross_routes(), (1, 14, 14), 4, 1, {}, {}, 1.),
    'tail_7x7_lattice': (lattice_routes(), (2, 7, 7), 4, 16, {}, {}, 1.),
    'tail_7x7_grouped': (grouped_routes(2), (2, 7, 7), 2, 1, dict(in_channels=8), {}, 1.),
}


@pytest.mark.parametrize('case', list(SCAN_CASES))
def test_scan_fp16_against_float64(case):
    routes, grid, width, n_state, mags, kw, grad_scale = SCAN_CASES[case]
    inputs = _scan_inputs(grid, routes, width, n_state, **mags)
    out, grads = _run_scan(inputs, routes, grad_scale, False, **kw)
    want, want_grads = _run_scan(inputs, routes, grad_scale, True, **kw)
    assert out.dtype == kw.get('out_dtype', torch.float16)
    if case == 'large_delta_u_B':   # the case is what it claims: the exact output does not fit in float16
        assert want.abs().max() > FP16_MAX
    _assert_close('out', out, want, TOL_FP32 if out.dtype == torch.float32 else TOL_FP16)
    for name, g in grads.items():
        assert g.dtype == torch.float16
        assert want_grads[name].abs().max() < FP16_MAX / 2, f'd{name} exceeds float16: the case is mis-sized'
        _assert_close(f'd{name}', g, want_grads[name], TOL_FP16)


def test_scan_tiny_delta_gradients_need_the_loss_scale():
    """Without a loss scale (output gradients of ~1e-2, as a mean over many elements gives), dΔ of softplus(-16)
    lies in float16's subnormals and loses its precision: the case above is the meaningful one."""
    routes, grid, width, n_state, mags, kw, _ = SCAN_CASES['tiny_delta_loss_scaled']
    inputs = _scan_inputs(grid, routes, width, n_state, **mags)
    _, grads = _run_scan(inputs, routes, 1e-2, False, **kw)
    _, want_grads = _run_scan(inputs, routes, 1e-2, True, **kw)
    assert want_grads['delta'].abs().max() < torch.finfo(torch.float16).tiny
    assert _rel_err(grads['delta'], want_grads['delta']) > TOL_FP16


def test_scan_detection_length_route():
    """Mask R-CNN at 1333x800: stage 1 is a 200x334 map, routes of 66800 steps. Small Δ (softplus(-7) ≈ 9e-4,
    memory of ~1000 steps) lets the state accumulate; fp16 in and out, gradients included."""
    routes = cross_routes()
    inputs = _scan_inputs((1, 200, 334), routes, 2, 1, delta_shift=-7.)
    out, grads = _run_scan(inputs, routes, 1., False)
    want, want_grads = _run_scan(inputs, routes, 1., True)
    _assert_close('out', out, want, TOL_FP16)
    for name, g in grads.items():
        _assert_close(f'd{name}', g, want_grads[name], TOL_FP16)


# --- the Triton kernels, under the interpreter on the CPU --------------------------------------------------------

# Every case through the sequential kernels; the chunked ones (associative scans, the backward's a*h as h - drive)
# on the cases whose magnitudes stress those.
TRITON_CASES = [(case, 'sequential') for case in ('large_delta', 'large_delta_u_B', 'tiny_delta_loss_scaled',
                                                  'vim_mean_state16', 'vim_mean_fp16_out', 'hidden_states')] + \
               [(case, 'chunked') for case in ('large_delta', 'large_delta_u_B', 'tiny_delta_loss_scaled',
                                               'hidden_states')]


def _triton():
    """The Triton module, or a skip where its kernels cannot run here."""
    pytest.importorskip('triton')
    from visionssm.kernels import triton_scan
    if not torch.cuda.is_available() and not type(triton_scan._scan_fwd_kernel).__name__.startswith('Interpreted'):
        pytest.skip('triton was imported before TRITON_INTERPRET=1 was set (tests/conftest.py sets it)')
    return triton_scan


@pytest.mark.parametrize('case, kernel', TRITON_CASES, ids=[f'{c}-{k}' for c, k in TRITON_CASES])
def test_triton_fp16_against_float64(case, kernel, monkeypatch):
    TS = _triton()
    from visionssm.kernels.routes import plan_routes
    from visionssm.kernels.reference import selective_scan_reference
    monkeypatch.setattr(TS, 'FORCE_KERNEL', kernel)
    routes, (batch, h, w), width, n_state, mags, kw, grad_scale = SCAN_CASES[case]
    h, w = min(h, 4), min(w, 5)                   # the interpreter runs every program in Python: small maps
    inputs = _scan_inputs((batch, h, w), routes, width, n_state, **mags)
    in_ch = inputs['u'].shape[-1]
    plan = plan_routes(routes, h, w, width, in_ch, kw.get('out_channels', width))
    flat = {k: v.flatten(1, 2) if v is not None and v.dim() > 2 else v for k, v in inputs.items()}
    opts = dict(return_hidden=kw.get('return_hidden', False), mean=kw.get('merge') == 'mean')

    def run(fn, double):
        leaves = {k: (v.double() if double else v).clone().requires_grad_(k in ('u', 'delta', 'B', 'C'))
                  if v is not None else None for k, v in flat.items()}
        out = fn(*leaves.values(), plan, out_dtype=None if double else kw.get('out_dtype'), **opts)
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)) * grad_scale
        out.backward(grad_out.to(out.dtype))
        return out.detach(), {k: leaves[k].grad for k in ('u', 'delta', 'B', 'C') if leaves[k] is not None}

    out, grads = run(TS.selective_scan_triton, False)
    want, want_grads = run(selective_scan_reference, True)
    _assert_close('out', out, want, TOL_FP32 if out.dtype == torch.float32 else TOL_FP16)
    for name, g in grads.items():
        assert g.dtype == torch.float16
        _assert_close(f'd{name}', g, want_grads[name], TOL_FP16)


@pytest.mark.parametrize('kernel', ['sequential', 'chunked'])
def test_triton_softplus_keeps_relative_precision_for_small_delta(kernel, monkeypatch):
    """Δ = softplus(z) to fp32's relative precision at every z, small Δ included: ``log(1 + e^z)`` in fp32 loses
    it once e^z approaches fp32's epsilon (5% at z = -14, 0.1% at z = -10). Read through the hidden state of one
    step with u = B = 1 and a decay of 0: h = Δ."""
    TS = _triton()
    from visionssm.kernels.routes import plan_routes
    monkeypatch.setattr(TS, 'FORCE_KERNEL', kernel)
    z = torch.cat([torch.linspace(-20., -2., 55), torch.linspace(-2., 25., 9)])
    width = z.numel()
    plan = plan_routes((Route('row'),), 1, 1, width, width, width)
    ones = torch.ones(1, 1, width)
    h = TS.selective_scan_triton(ones, z.view(1, 1, width), torch.full((width, 1), -1e12), torch.ones(1, 1, 1, 1),
                                 None, None, None, plan, return_hidden=True)
    want = F.softplus(z.double())
    err = ((h.view(-1).double() - want) / want).abs()
    assert err.max() < 1e-5, f'relative error {err.max():.2e} at z = {z[err.argmax()]:.2f}'


# --- the models -----------------------------------------------------------------------------------------------------

FAMILIES = ['test_vmamba', 'test_vim', 'test_efficientvmamba', 'test_groupmamba', 'test_spatialmamba']
# Relative error of all gradients together under CPU fp16 autocast. BatchNorm's backward in float16 costs a few
# percent on the weights before it (timm's resnet10t: 7% in the same setting); EfficientVMamba and Spatial-Mamba
# have BatchNorms, the others measure 0.1-0.5%.
GRAD_TOL = {'test_efficientvmamba': 0.1, 'test_spatialmamba': 0.1}


def _flat_grads(model):
    return torch.cat([p.grad.flatten().double() for p in model.parameters() if p.grad is not None])


def _fp16_step_gradient_error(name: str, seed: int) -> float:
    """Relative error of all gradients of one fp16-autocast training step against float32 (asserting finite
    gradients and close logits on the way)."""
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=10).train()
    ref = copy.deepcopy(model)
    x = torch.randn(2, 3, 64, 64) * 30
    target = torch.randint(0, 10, (2,))
    F.cross_entropy(ref(x), target).backward()
    with torch.autocast('cpu', dtype=torch.float16):
        logits = model(x)
        loss = F.cross_entropy(logits, target)
    # a scale GradScaler reaches: at 2^16 GroupMamba's class-block gradients overflow at init (its LayerNorm of a
    # small product amplifies them; the official layer is the same), and GradScaler halves the scale until they fit
    (loss * 1024).backward()
    got, want = _flat_grads(model) / 1024, _flat_grads(ref)
    assert got.isfinite().all()
    _assert_close('logits', logits, ref(x).detach(), 2e-2)
    return ((got - want).norm() / want.norm()).item()


@pytest.mark.parametrize('name', FAMILIES)
def test_model_fp16_autocast_training_step(name):
    """Forward, loss and backward under fp16 autocast with a loss scale: logits and every gradient finite and close
    to float32 (all gradients together: single parameters whose exact gradient is zero, e.g. a conv bias before a
    BatchNorm, carry only rounding noise). Inputs at 30x the image scale (activation outliers).

    The median over three seeds: with BatchNorm over 8 values (batch 2, a 2x2 map at stage 4) followed by a ReLU,
    one input can sit where a rounding-sized change of an activation flips a unit, and the gradient error of that
    input jumps (EfficientVMamba: 0.05 to 0.19 when the mixers' outputs change by 3e-4 relative noise)."""
    errors = sorted(_fp16_step_gradient_error(name, seed) for seed in range(3))
    assert errors[1] < GRAD_TOL.get(name, 2e-2), f'gradients: relative errors {errors}'


@pytest.mark.parametrize('name', FAMILIES)
def test_model_in_float16(name):
    """The whole model in float16 (``model.half()``): the scans still return float32 and their out-norms run there."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
        got = model.half()(x.half())
    assert got.dtype == torch.float16
    _assert_close('logits', got, want, 1e-2)


# (Δ-bias, A_log, gradient tolerance). With every decay 0 the mixer is a per-pixel function normalized by out_norm,
# whose gradient is a small difference of large terms: fp16 autocast measures 5% there, 0.5% in the other case.
@pytest.mark.parametrize('bias, a_log, grad_tol', [(30., 4., 0.1), (-20., 0., 2e-2)],
                         ids=['softplus_linear_decay_zero', 'tiny_delta'])
def test_ss2d_extreme_delta_under_autocast(bias, a_log, grad_tol):
    """Δ-bias far in softplus' linear range with A = -e^4 (Δ·A ≈ -1600: every decay underflows to 0), or Δ ≈ 2e-9
    (every decay rounds to 1): the mixer's output and gradients stay finite and match float32."""
    torch.manual_seed(0)
    mixer = SS2D(8, d_state=1, ssm_ratio=1.0)
    with torch.no_grad():
        mixer.dt_projs_bias.fill_(bias)
        mixer.A_logs.fill_(a_log)
    ref = copy.deepcopy(mixer)
    x = torch.randn(2, 9, 11, 8) * 10
    want = ref(x)
    want.square().mean().backward()
    with torch.autocast('cpu', dtype=torch.float16):
        got = mixer(x)
    (got.float().square().mean() * LOSS_SCALE).backward()
    _assert_close('out', got, want.detach(), 3e-2)
    got_grads, want_grads = _flat_grads(mixer) / LOSS_SCALE, _flat_grads(ref)
    assert got_grads.isfinite().all()
    err = ((got_grads - want_grads).norm() / want_grads.norm()).item()
    assert err < grad_tol, f'gradients: relative error {err:.3f}'


def test_ss2d_detection_size_map_under_autocast():
    """VMamba's mixer on the stage-1 map of a 1333x800 image (200x334) under fp16 autocast, with gradients."""
    torch.manual_seed(0)
    mixer = SS2D(4, d_state=1, ssm_ratio=1.0)
    ref = copy.deepcopy(mixer)
    x = torch.randn(1, 200, 334, 4)
    want = ref(x)
    want.square().mean().backward()
    with torch.autocast('cpu', dtype=torch.float16):
        got = mixer(x)
    (got.float().square().mean() * LOSS_SCALE).backward()
    _assert_close('out', got, want.detach(), 3e-2)
    got_grads, want_grads = _flat_grads(mixer) / LOSS_SCALE, _flat_grads(ref)
    assert got_grads.isfinite().all()
    assert (got_grads - want_grads).norm() / want_grads.norm() < 2e-2


def test_vim_mixer_outliers_under_autocast():
    """Vim's mixer (both directions, mean merge, d_state 16) on large tokens, and its RMSNorm on values whose
    squares exceed float16 (the norm upcasts)."""
    torch.manual_seed(0)
    norm = RMSNorm(16)
    x = torch.randn(2, 9, 16) * 1000
    _assert_close('rmsnorm', norm(x.half()), norm(x), TOL_FP16)
    mixer = BiMambaMixer(16, d_state=16)
    tokens = torch.randn(2, 9, 16) * 30
    want = mixer(tokens)
    with torch.autocast('cpu', dtype=torch.float16):
        got = mixer(tokens)
    _assert_close('mixer', got, want.detach(), 1e-2)


def test_spatialmamba_hidden_states_beyond_float16():
    """Spatial-Mamba fuses the hidden states with convolutions: under autocast they would run in float16 and
    overflow for states beyond 65504; the fusion runs in float32 instead, and so does the whole mixer."""
    torch.manual_seed(0)
    fusion = StateFusion(4)
    h = torch.randn(1, 6, 6, 4) * 3e4           # 9 taps of weight 1 per branch: sums beyond float16
    want = fusion(h)
    with torch.autocast('cpu', dtype=torch.float16):
        got = fusion(h)
    assert want.abs().max() > FP16_MAX
    _assert_close('fusion', got, want, TOL_FP32)

    mixer = StructureAwareSSM(8)
    with torch.no_grad():
        mixer.x_proj_weight.mul_(30)            # large B and C: hidden states in the thousands
    x = torch.randn(1, 7, 9, 8) * 10
    want = mixer(x)
    with torch.autocast('cpu', dtype=torch.float16):
        got = mixer(x)
    _assert_close('mixer', got, want.detach(), 1e-2)
