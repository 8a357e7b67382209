"""GroupMamba's fused and memory-lean pieces against the plain ops they replace: the block-diagonal projections and
weights, the out_norm + gate and the ConvMlp autograd functions (values, gradients, what they keep for the
backward), the CAM gate, the drop-path residual, and the dtype helpers used under autocast."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from timm.layers import DropPath

from visionssm.models.groupmamba import (
    ConvMlp, add_residual, autocast_dtype, block_diagonal, cast_weights, channel_affinity, conv_mlp,
    group_projections, group_weights, grouped_linear, layer_norm_in_dtype, norm_gate,
)


def _saved_storages(fn):
    """Run ``fn`` and return ``{storage data_ptr: (dtype, numel)}`` of what autograd saved, parameters included."""
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = (t.dtype, t.untyped_storage().nbytes() // t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, saved


# --- block-diagonal projections --------------------------------------------------------------------------------

def test_block_diagonal_layout():
    w = torch.arange(1., 1 + 3 * 2 * 4).view(3, 2, 4)             # G=3 blocks of 2x4
    dense = block_diagonal(w)
    assert dense.shape == (6, 12)
    for g in range(3):
        torch.testing.assert_close(dense[2 * g:2 * g + 2, 4 * g:4 * g + 4], w[g])
    assert dense.count_nonzero() == w.numel()
    # under autograd it is one node (zeros + a diagonal copy), with the same values and the exact gradient
    w2 = torch.randn(2, 3, 2, 4, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(block_diagonal(w2), block_diagonal(w2.detach()), atol=0, rtol=0)
    assert torch.autograd.gradcheck(block_diagonal, (w2,))


def test_grouped_linear_equals_per_group_products():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 4 * 7, dtype=torch.float64)          # odd group width, as GroupMamba-T's 87
    w = torch.randn(2, 4, 6, 7, dtype=torch.float64)              # two projections (P) of every group
    want = torch.cat([torch.cat([x[..., 7 * g:7 * g + 7] @ w[p, g].T for g in range(4)], -1) for p in range(2)], -1)
    torch.testing.assert_close(grouped_linear(x, w), want, atol=1e-13, rtol=0)
    assert grouped_linear(x.to('meta'), w.to('meta')).shape == want.shape


def test_group_projections_equal_the_two_step_form():
    """The composed Δ projection and the block-diagonal GEMM give the original's x_proj → dt_proj values."""
    torch.manual_seed(0)
    groups, d, rank, n = 4, 5, 2, 3
    x = torch.randn(2, 3, 4, groups * d, dtype=torch.float64)
    x_proj = torch.randn(groups, rank + 2 * n, d, dtype=torch.float64)
    dt_proj = torch.randn(groups, d, rank, dtype=torch.float64)
    dts, B, C = group_projections(x, x_proj, dt_proj, n)
    for g in range(groups):
        dbl = x[..., g * d:(g + 1) * d] @ x_proj[g].T
        torch.testing.assert_close(dts[..., g * d:(g + 1) * d], dbl[..., :rank] @ dt_proj[g].T, atol=1e-12, rtol=0)
        torch.testing.assert_close(B[..., g, :], dbl[..., rank:rank + n], atol=1e-12, rtol=0)
        torch.testing.assert_close(C[..., g, :], dbl[..., rank + n:], atol=1e-12, rtol=0)
    meta = group_projections(x.to('meta'), x_proj.to('meta'), dt_proj.to('meta'), n)
    assert [t.shape for t in meta] == [dts.shape, B.shape, C.shape]


def _plain_group_weights(in_w, x_proj_w, dt_w, out_w):
    """The three dense weights from the per-group products, written out block by block."""
    groups, two_d, group_dim = in_w.shape
    d, rank = two_d // 2, dt_w.shape[-1]
    n2 = x_proj_w.shape[1] - rank
    w_in = in_w.new_zeros(2, groups * d, groups * group_dim)
    w_dt = in_w.new_zeros(groups * d, groups * d)
    w_bc = in_w.new_zeros(groups * n2, groups * d)
    w_out = in_w.new_zeros(groups * group_dim, groups * d)
    for g in range(groups):
        for p in range(2):
            w_in[p, g * d:(g + 1) * d, g * group_dim:(g + 1) * group_dim] = in_w[g, p * d:(p + 1) * d]
        w_dt[g * d:(g + 1) * d, g * d:(g + 1) * d] = dt_w[g] @ x_proj_w[g, :rank]
        w_bc[g * n2:(g + 1) * n2, g * d:(g + 1) * d] = x_proj_w[g, rank:]
        w_out[g * group_dim:(g + 1) * group_dim, g * d:(g + 1) * d] = out_w[g]
    return w_in.flatten(0, 1), torch.cat([w_dt, w_bc]), w_out


def _group_params(dtype=torch.float64, groups=4, group_dim=3, d=5, rank=2, n=2):
    shapes = [(groups, 2 * d, group_dim), (groups, rank + 2 * n, d), (groups, d, rank), (groups, group_dim, d)]
    return [torch.randn(s, dtype=dtype, requires_grad=True) for s in shapes]


def test_group_weights_match_the_per_group_blocks_float64():
    """One autograd node: the values and gradients of the block-by-block construction (float64, gradcheck)."""
    torch.manual_seed(0)
    params = _group_params()
    got = group_weights(*params, torch.float64)
    want = _plain_group_weights(*params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-13, rtol=0)
    grads = [torch.randn_like(t) for t in want]
    loss = lambda outs: sum((o * g).sum() for o, g in zip(outs, grads))
    for a, b in zip(torch.autograd.grad(loss(got), params), torch.autograd.grad(loss(want), params)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    assert torch.autograd.gradcheck(lambda *p: group_weights(*p, torch.float64), _group_params(groups=2, d=3))


def test_group_weights_in_the_compute_dtype():
    """Under autocast the weights come out in bf16 (cast on the copies); the gradients go back in float32 and equal
    the float32 construction's, cast."""
    torch.manual_seed(0)
    params = _group_params(torch.float32)
    got = group_weights(*params, torch.bfloat16)
    want = _plain_group_weights(*params)
    assert [t.dtype for t in got] == [torch.bfloat16] * 3
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b.bfloat16(), atol=0, rtol=0)   # the Δ block: composed in float32, cast once
    grads = [torch.randn(t.shape).bfloat16() for t in want]
    got_g = torch.autograd.grad(sum((o.float() * g.float()).sum() for o, g in zip(got, grads)), params)
    want_g = torch.autograd.grad(sum((o * g.float()).sum() for o, g in zip(want, grads)), params)
    for a, b in zip(got_g, want_g):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# --- norm_gate -------------------------------------------------------------------------------------------------

def _plain_norm_gate(y, z, weight, bias, eps):
    groups, d = weight.shape
    y = F.layer_norm(y.unflatten(-1, (groups, d)), (d,), eps=eps) * weight + bias
    return y.flatten(-2).to(z.dtype) * F.silu(z)


def test_norm_gate_matches_plain_ops_float64():
    torch.manual_seed(0)
    y, z = (torch.randn(2, 3, 5, 24, dtype=torch.float64, requires_grad=True) for _ in range(2))
    weight, bias = (torch.randn(4, 6, dtype=torch.float64, requires_grad=True) for _ in range(2))
    out = norm_gate(y, z, weight, bias, 1e-5, nn.SiLU())
    want = _plain_norm_gate(y, z, weight, bias, 1e-5)
    torch.testing.assert_close(out, want, atol=1e-13, rtol=0)
    g = torch.randn_like(out)
    for got, ref in zip(torch.autograd.grad((out * g).sum(), (y, z, weight, bias)),
                        torch.autograd.grad((want * g).sum(), (y, z, weight, bias))):
        torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-12)
    small = [torch.randn(1, 2, 3, 8, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    small += [torch.randn(4, 2, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    assert torch.autograd.gradcheck(lambda *a: norm_gate(*a, 1e-5, nn.SiLU()), small)


def test_norm_gate_keeps_only_its_inputs():
    """Low precision (scan output float32, z bfloat16): no map between the norm and the gate is kept."""
    y = torch.randn(2, 4, 4, 24, requires_grad=True)
    z = torch.randn(2, 4, 4, 24, dtype=torch.bfloat16, requires_grad=True)
    weight, bias = torch.ones(4, 6, requires_grad=True), torch.zeros(4, 6, requires_grad=True)
    out, saved = _saved_storages(lambda: norm_gate(y, z, weight, bias, 1e-5, nn.SiLU()))
    assert out.dtype == torch.bfloat16
    maps = sorted(str(dtype) for dtype, numel in saved.values() if numel == y.numel())
    assert maps == ['torch.bfloat16', 'torch.float32']                 # z and y, nothing else map-sized


# --- conv_mlp ----------------------------------------------------------------------------------------------------

def _plain_mlp(m, x):
    return m.fc2(m.act(m.dwconv(m.fc1(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)))


def test_conv_mlp_matches_plain_ops_float64():
    torch.manual_seed(0)
    m = ConvMlp(6, 12).double()
    x = torch.randn(2, 5, 3, 6, dtype=torch.float64, requires_grad=True)
    out, want = m(x), _plain_mlp(m, x)
    torch.testing.assert_close(out, want, atol=0, rtol=0)
    g = torch.randn_like(out)
    params = [x] + list(m.parameters())
    for got, ref in zip(torch.autograd.grad((out * g).sum(), params), torch.autograd.grad((want * g).sum(), params)):
        torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-12)


def test_conv_mlp_under_autocast_saves_only_its_input():
    torch.manual_seed(0)
    m = ConvMlp(8, 32)
    x = torch.randn(2, 7, 7, 8, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out, saved = _saved_storages(lambda: m(x))
        want = _plain_mlp(m, x)
    assert out.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(out, want, atol=0, rtol=0)              # the same bf16 computation
    hidden = [numel for _, numel in saved.values() if numel >= x.numel() * 4]
    assert hidden == []                                                 # no hidden-width map kept
    params = [x] + list(m.parameters())
    for got, ref in zip(torch.autograd.grad(out.float().sum(), params, retain_graph=True),
                        torch.autograd.grad(want.float().sum(), params)):
        torch.testing.assert_close(got, ref, atol=0, rtol=0)
    assert conv_mlp(x, m.fc1, m.dwconv, nn.Tanh(), m.fc2).shape == x.shape  # other activations: the plain form


def test_conv_mlp_with_given_weights():
    torch.manual_seed(0)
    m = ConvMlp(6, 12).double()
    x = torch.randn(2, 5, 3, 6, dtype=torch.float64, requires_grad=True)
    weights = [p * 2 for p in m.params()]
    want = F.linear(F.gelu(F.conv2d(F.linear(x, weights[0], weights[1]).permute(0, 3, 1, 2), weights[2], weights[3],
                                    padding=1, groups=12).permute(0, 2, 3, 1)), weights[4], weights[5])
    got = conv_mlp(x, m.fc1, m.dwconv, m.act, m.fc2, weights)
    torch.testing.assert_close(got, want, atol=1e-13, rtol=0)
    g = torch.randn_like(got)
    for a, b in zip(torch.autograd.grad((got * g).sum(), list(m.parameters()) + [x], retain_graph=True),
                    torch.autograd.grad((want * g).sum(), list(m.parameters()) + [x])):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


# --- CAM gate and drop-path residual ---------------------------------------------------------------------------

def test_channel_affinity_matches_plain_ops_float64():
    torch.manual_seed(0)
    fc1, fc2 = nn.Linear(16, 4).double(), nn.Linear(4, 16).double()
    skip = torch.tensor([1.5], dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, 5, 16, dtype=torch.float64, requires_grad=True)
    got = channel_affinity(x, fc1, fc2, skip)
    want = skip * torch.sigmoid(fc2(F.relu(fc1(x.mean(dim=(1, 2))))))[:, None, None]
    torch.testing.assert_close(got, want, atol=1e-15, rtol=0)
    params = [x, skip] + list(fc1.parameters()) + list(fc2.parameters())
    g = torch.randn_like(got)
    for a, b in zip(torch.autograd.grad((got * g).sum(), params), torch.autograd.grad((want * g).sum(), params)):
        torch.testing.assert_close(a, b, atol=1e-14, rtol=1e-12)


def test_channel_affinity_under_autocast_runs_in_float32():
    """Under autocast the two small layers run in float32 (no casts of their weights) and the gate comes out in
    the map's dtype; float32 gradients reach the weights."""
    torch.manual_seed(0)
    fc1, fc2, skip = nn.Linear(16, 4), nn.Linear(4, 16), nn.Parameter(torch.ones(1))
    x = torch.randn(2, 3, 5, 16).bfloat16()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got = channel_affinity(x, fc1, fc2, skip)
    want = torch.sigmoid(fc2(F.relu(fc1(x.float().mean(dim=(1, 2))))))[:, None, None]
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, want.bfloat16(), atol=0, rtol=0)
    got.float().sum().backward()
    assert fc1.weight.grad.dtype == torch.float32 and skip.grad is not None


@pytest.mark.parametrize('drop_prob, training', [(0.5, True), (0.5, False), (0., True), (1., True)])
def test_add_residual_equals_drop_path(drop_prob, training):
    """The same random mask as timm's DropPath (same numbers drawn), the same values and gradients."""
    drop = DropPath(drop_prob).train(training)
    x = torch.randn(8, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randn(8, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(1)
    got = add_residual(x, y, drop)
    torch.manual_seed(1)
    want = x + drop(y)
    torch.testing.assert_close(got, want, atol=1e-15, rtol=0)
    g = torch.randn_like(got)
    for a, b in zip(torch.autograd.grad((got * g).sum(), (x, y)), torch.autograd.grad((want * g).sum(), (x, y))):
        torch.testing.assert_close(a, b, atol=1e-15, rtol=0)
    assert add_residual(x, y, nn.Identity()).equal(x + y)


# --- dtype helpers ---------------------------------------------------------------------------------------------

def test_autocast_dtype_and_layer_norm_in_dtype():
    norm = nn.LayerNorm(16)
    x = torch.randn(2, 3, 16, dtype=torch.bfloat16)
    assert autocast_dtype(x.float()) == torch.float32
    torch.testing.assert_close(layer_norm_in_dtype(norm, x.float()), norm(x.float()))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert autocast_dtype(x.float()) == torch.bfloat16
        out = layer_norm_in_dtype(norm, x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), norm(x.float()), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize('device', ['meta'])
def test_autocast_dtype_on_a_device_without_autocast(device):
    assert autocast_dtype(torch.empty(1, device=device, dtype=torch.float16)) == torch.float16


def test_cast_weights():
    """One cast for all: the values and gradients of per-tensor casts; unchanged tensors where no cast is needed."""
    lin, norm = nn.Linear(6, 4), nn.LayerNorm(4)
    params = (lin.weight, lin.bias, None, norm.weight)
    assert cast_weights(lin, params, torch.float32) == list(params)
    got = cast_weights(lin, params, torch.bfloat16)
    assert got[2] is None
    for a, p in zip(got, params):
        if p is not None:
            assert a.dtype == torch.bfloat16 and a.shape == p.shape
            torch.testing.assert_close(a, p.bfloat16(), atol=0, rtol=0)
    sum((a.float() * (i + 1)).sum() for i, a in enumerate(got) if a is not None).backward()
    for i, p in enumerate(params):
        if p is not None:
            torch.testing.assert_close(p.grad, torch.full_like(p, i + 1.))
    with torch.no_grad():   # kept while inferring, rebuilt after the parameters change
        first = cast_weights(lin, params, torch.bfloat16)
        assert cast_weights(lin, params, torch.bfloat16)[0] is first[0]
        lin.weight.add_(1)
        assert cast_weights(lin, params, torch.bfloat16)[0] is not first[0]



def test_model_inference_cache_under_autocast():
    """While inferring the cast and block-diagonal weights are kept: the same logits as a forward that builds them
    (bf16 autocast), and rebuilt after a parameter changes in place (as by an optimizer step). (Each phase in its own
    autocast region: autocast's own cast cache, which lives as long as the region, would keep stale casts.)"""
    import timm
    torch.manual_seed(0)
    model = timm.create_model('test_groupmamba', num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)

    def forward(grad: bool):
        with torch.autocast('cpu', dtype=torch.bfloat16), torch.set_grad_enabled(grad):
            return model(x).detach()

    want = forward(True)                        # autograd on: nothing kept
    forward(False)
    torch.testing.assert_close(forward(False), want, rtol=0, atol=0)
    assert '_inference_cache' in model.stages[0].blocks[0].mixer.ssm.__dict__
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    got = forward(False)
    torch.testing.assert_close(got, forward(True), rtol=0, atol=0)
    assert not torch.allclose(got, want)
