"""GroupMamba's fused and memory-lean pieces against the plain ops they replace: the block-diagonal projections, the
out_norm + gate and the ConvMlp autograd functions (values, gradients, what they keep for the backward), and the
dtype helpers used under autocast."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from visionssm.models.groupmamba import (
    ConvMlp, autocast_dtype, block_diagonal, conv_mlp, group_projections, grouped_linear, layer_norm_in_dtype,
    norm_gate,
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
