"""EfficientVMamba's memory-lean training path against the straightforward formulation it replaces: the sub-lattices
laid side by side, their projections, the out_norm + gate and the channel attention's pooled norm (values and
float64 gradients), and what a block keeps for the backward under bfloat16 autocast."""
import copy
import importlib

import pytest
import torch
import torch.nn.functional as F

from _scripts import load_benchmark
from visionssm.layers import SS2D, pad_to_even
from timm.models._efficientnet_blocks import InvertedResidual, SqueezeExcite

from visionssm.models.efficientvmamba import (
    AtrousSS2D, BiAttn, EVSSBlock, MBConv, bn_act_conv, from_lattices, lattice_projections, lattice_weight,
    mixer_output, norm_mean, scale_conv, to_lattices,
)


def _saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of ``fn()`` (parameters included)."""
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(saved.values())


def _plain_mixer(m: AtrousSS2D, x: torch.Tensor) -> torch.Tensor:
    """The mixer as plain autograd ops: every route's projections computed on the whole (padded) map and read by the
    strided routes, the conv output, the normed map and the gate kept by autograd."""
    x, z = m.in_proj(x).chunk(2, dim=-1)
    x = F.silu(m.conv(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
    height, width = x.shape[1:3]
    y = SS2D.scan(m, pad_to_even(x))[:, :height, :width]
    return m.out_proj(m.out_norm(y).to(x.dtype) * F.silu(z))


def _plain_biattn(se: BiAttn, x: torch.Tensor) -> torch.Tensor:
    s = se.norm(x).mean((1, 2), keepdim=True)
    return x * se.gate(se.fc2(se.act(se.fc1(s))))


def _grads(module, x, fn):
    module.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    out = fn(x)
    out.backward(torch.randn_like(out, generator=torch.Generator().manual_seed(1)))
    return out.detach(), x.grad, {n: p.grad for n, p in module.named_parameters()}


def _assert_same(a, b, tol):
    out_a, gx_a, gp_a = a
    out_b, gx_b, gp_b = b
    torch.testing.assert_close(out_a, out_b, atol=tol, rtol=tol)
    torch.testing.assert_close(gx_a, gx_b, atol=tol, rtol=tol)
    assert gp_a.keys() == gp_b.keys()
    for name in gp_a:
        assert gp_a[name] is not None, name
        torch.testing.assert_close(gp_a[name], gp_b[name], atol=tol, rtol=tol, msg=name)


@pytest.mark.parametrize('size', [(4, 6), (5, 3)])
def test_lattices_side_by_side(size):
    x = torch.randn(2, *size, 3, dtype=torch.float64)
    xs = to_lattices(x)
    xp = pad_to_even(x)
    assert xs.shape == (2, xp.shape[1] // 2, xp.shape[2] // 2, 12) and xs.is_contiguous()
    for a in range(2):
        for b in range(2):   # block a + 2b is the sub-lattice [a::2, b::2], the order of lattice_routes()
            torch.testing.assert_close(xs[..., 3 * (a + 2 * b):3 * (a + 2 * b + 1)], xp[:, a::2, b::2], atol=0, rtol=0)
    back = from_lattices(xs, *size)
    torch.testing.assert_close(back, x, atol=0, rtol=0)
    assert back.is_contiguous()


def test_lattice_projections_are_each_routes_own():
    torch.manual_seed(0)
    k, d, rank, n = 4, 5, 2, 3
    xs = torch.randn(2, 3, 4, k * d, dtype=torch.float64)
    x_proj = torch.randn(k, rank + 2 * n, d, dtype=torch.float64)
    dt_proj = torch.randn(k, d, rank, dtype=torch.float64)
    dts, B, C = lattice_projections(xs, x_proj, dt_proj, n)
    for r in range(k):
        dbl = xs[..., r * d:(r + 1) * d] @ x_proj[r].T
        torch.testing.assert_close(dts[..., r * d:(r + 1) * d], dbl[..., :rank] @ dt_proj[r].T, atol=1e-12, rtol=0)
        torch.testing.assert_close(B[..., r, :], dbl[..., rank:rank + n], atol=1e-12, rtol=0)
        torch.testing.assert_close(C[..., r, :], dbl[..., rank + n:], atol=1e-12, rtol=0)
    kept = lattice_projections(xs, x_proj, dt_proj, n, lattice_weight(x_proj, dt_proj))
    for got, want in zip(kept, (dts, B, C)):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize('size', [(6, 4), (5, 7)])
def test_mixer_matches_the_plain_formulation_float64(size):
    torch.manual_seed(0)
    m = AtrousSS2D(8, d_state=3, ssm_ratio=2.0, gate=True).double().train()
    with torch.no_grad():
        m.dt_projs_bias.uniform_(-2., 0.5)
        m.out_norm.weight.uniform_(0.5, 1.5)
        m.out_norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, *size, 8, dtype=torch.float64)
    _assert_same(_grads(m, x, m), _grads(m, x, lambda t: _plain_mixer(m, t)), 1e-10)
    with torch.no_grad():   # inference (the kept projection) gives the same values
        torch.testing.assert_close(m(x), _plain_mixer(m, x), atol=1e-12, rtol=1e-12)


def test_biattn_matches_the_plain_formulation_float64():
    torch.manual_seed(0)
    se = BiAttn(16).double()
    with torch.no_grad():
        se.norm.weight.uniform_(0.5, 1.5)
        se.norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 5, 3, 16, dtype=torch.float64)
    _assert_same(_grads(se, x, se), _grads(se, x, lambda t: _plain_biattn(se, t)), 1e-12)


def test_block_matches_the_plain_formulation_float64():
    torch.manual_seed(0)
    block = EVSSBlock(8, d_state=3).double().train()
    x = torch.randn(2, 6, 5, 8, dtype=torch.float64)

    def plain(t):
        y = block.norm1(t)
        conv = block.conv_branch(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return t + _plain_biattn(block.se, _plain_mixer(block.mixer, y)) + _plain_biattn(block.se, conv)

    _assert_same(_grads(block, x, block), _grads(block, x, plain), 1e-10)


def test_mbconv_matches_timms_inverted_residual_float64():
    """The recomputing MBConv against timm's InvertedResidual forward on the same modules: values, gradients and
    the BatchNorms' running statistics."""
    torch.manual_seed(0)
    block = MBConv(8, 8, dw_kernel_size=3, exp_ratio=4.0, act_layer=torch.nn.ReLU,
                   se_layer=lambda chs, **kw: SqueezeExcite(chs, rd_channels=4, **kw)).double().train()
    for m in block.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    plain = copy.deepcopy(block)
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    _assert_same(_grads(block, x, block), _grads(plain, x, lambda t: InvertedResidual.forward(plain, t)), 1e-10)
    for (name, a), b in zip(block.named_buffers(), plain.buffers()):
        torch.testing.assert_close(a, b, atol=1e-14, rtol=0, msg=name)


@pytest.mark.parametrize('act', [torch.nn.ReLU(), torch.nn.GELU(), torch.nn.SiLU()])
@pytest.mark.parametrize('momentum', [0.1, None])
def test_bn_act_conv_matches_the_modules_float64(act, momentum):
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(6, momentum=momentum).double().train()
    conv = torch.nn.Conv2d(6, 6, 3, padding=1, groups=3).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    bn_plain, conv_plain = copy.deepcopy(bn), copy.deepcopy(conv)
    x = torch.randn(3, 6, 4, 5, dtype=torch.float64)
    for _ in range(2):   # running statistics over two steps (the cumulative average when momentum is None)
        got = _grads(torch.nn.ModuleList([bn, conv]), x, lambda t: bn_act_conv(t, bn, act, conv))
        want = _grads(torch.nn.ModuleList([bn_plain, conv_plain]), x, lambda t: conv_plain(act(bn_plain(t))))
        _assert_same(got, want, 1e-11)
    for a, b in zip(bn.buffers(), bn_plain.buffers()):
        torch.testing.assert_close(a, b, atol=1e-14, rtol=0)
    x = x.requires_grad_()
    scale = torch.rand(3, 6, 1, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, s: scale_conv(x, s, conv), (x, scale))


def test_mixer_output_and_norm_mean_gradcheck():
    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(6).double()
    proj = torch.nn.Linear(6, 5, bias=False).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    y = torch.randn(2, 3, 4, 6, dtype=torch.float64, requires_grad=True)
    z = torch.randn(2, 3, 4, 6, dtype=torch.float64, requires_grad=True)

    def output(y, z, w, b, pw):
        return mixer_output(y, z, _layer_norm(w, b), _linear(pw))

    assert torch.autograd.gradcheck(output, (y, z, norm.weight, norm.bias, proj.weight))
    assert torch.autograd.gradcheck(lambda y, w, b: norm_mean(y, _layer_norm(w, b)), (y, norm.weight, norm.bias))


def _layer_norm(weight, bias):
    """A LayerNorm whose affine are the given tensors (so gradcheck can vary them)."""
    out = torch.nn.LayerNorm(weight.shape[0])
    del out.weight, out.bias
    out.weight, out.bias = weight, bias
    return out


def _linear(weight):
    out = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    del out.weight
    out.weight = weight
    return out


class _ScanKeepsInputs(torch.autograd.Function):
    """A scan that keeps what the Triton scan keeps (its inputs) and returns zeros: the reference scan's own
    intermediates would swamp the comparison."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, shape, dtype):
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias)
        return u.new_zeros(shape, dtype=dtype)

    @staticmethod
    def backward(ctx, grad):
        return (None,) * 9


def _scan_keeps_inputs(u, delta, A, B, C, D, delta_bias, plan, out_dtype=None, **kwargs):
    return _ScanKeepsInputs.apply(u, delta, A, B, C, D, delta_bias, (*u.shape[:-1], plan.out_channels),
                                  out_dtype or u.dtype)


def test_block_keeps_less_under_bf16_autocast(monkeypatch):
    """One EVSS block's training step under bfloat16 autocast keeps well under what the plain formulation keeps
    (the whole-map Δ of all four routes, the conv output, the normed and gated maps)."""
    ops = importlib.import_module('visionssm.ops.selective_scan')   # the module (the package exports the function)
    monkeypatch.setitem(ops.BACKENDS, 'reference', (_scan_keeps_inputs, lambda u: True))
    torch.manual_seed(0)
    block = EVSSBlock(16, d_state=4).train()
    x = torch.randn(2, 16, 16, 16, requires_grad=True)

    def plain():
        y = block.norm1(x)
        conv = block.conv_branch(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + _plain_biattn(block.se, _plain_mixer(block.mixer, y)) + _plain_biattn(block.se, conv)

    with torch.autocast('cpu', dtype=torch.bfloat16):
        lean, full = _saved_bytes(lambda: block(x)), _saved_bytes(plain)
    assert lean < 0.7 * full, (lean, full)


def _step_proxy(monkeypatch):
    """benchmarks/cpu_step_proxy.py, imported, with its scan stub in place of the reference."""
    proxy = load_benchmark('cpu_step_proxy')
    ops = importlib.import_module('visionssm.ops.selective_scan')
    monkeypatch.setitem(ops.BACKENDS, 'reference', (proxy._scan_stub, lambda u: True))
    return proxy


def test_cpu_step_proxy_splits_saved_bytes_by_module(monkeypatch):
    """benchmarks/cpu_step_proxy.py: the by-module split adds up to the total, and with the lean path nothing is
    kept by the channel attention's norm or the mixer's out_norm modules (their functions keep it, once)."""
    proxy = _step_proxy(monkeypatch)
    r = proxy.measure('test_efficientvmamba', 2, 64, torch.bfloat16, 'cuda')
    assert abs(sum(r['by_module'].values()) - r['saved_mib']) < 1e-9
    assert r['by_module']['stages.*.blocks.*.mixer'] > 0
    assert not any(name.endswith(('se.norm', 'out_norm')) for name in r['by_module'])
    assert r['fwd_launches'] > 0 and r['bwd_launches'] > 0


def test_cpu_step_proxy_counts_the_kept_state_checkpoints(monkeypatch):
    """benchmarks/cpu_step_proxy.py saves what the Triton backend saves: at d_state 16 the fp32 state checkpoints
    only with VISIONSSM_SCAN_STATES=keep (the backward recomputes them by default), exactly their bytes."""
    proxy = _step_proxy(monkeypatch)
    checkpoints = []
    states = proxy._checkpoints

    def recorded(u, plan, n_state):
        t = states(u, plan, n_state)
        checkpoints.append(t.numel() * 4 / 2 ** 20)
        return t
    monkeypatch.setattr(proxy, '_checkpoints', recorded)
    saved, kept = {}, {}
    for choice in ('keep', 'auto'):
        monkeypatch.setenv('VISIONSSM_SCAN_STATES', choice)
        checkpoints.clear()
        saved[choice] = proxy.measure('test_efficientvmamba', 2, 64, torch.bfloat16, 'cuda')['by_dtype']['float32']
        kept[choice] = sum(checkpoints[len(checkpoints) // 2:])   # the counted step's scans (after the warm-up's)
    assert kept['auto'] == 0 and kept['keep'] > 0
    assert saved['keep'] - saved['auto'] == pytest.approx(kept['keep'], rel=1e-9)
