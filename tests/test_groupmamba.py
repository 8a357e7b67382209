"""GroupMamba: faithfulness to the official code (manifests, the numeric fixture) and correct gradients on
non-square maps (the official CrossScan_2/_4 backward is wrong there).

The fixtures live in ../shared/parity (made by running the official code); located as in test_parity.py."""
import json

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import visionssm
from visionssm.models.groupmamba import GroupedSS2D, checkpoint_filter_fn

from _parity import PARITY, needs_parity


def _manifests():
    return sorted(p.stem for p in (PARITY / 'manifests').glob('groupmamba_*.json')) if PARITY.is_dir() else []


def _fixtures():
    return sorted(p.stem for p in (PARITY / 'groupmamba').glob('*.json')) if PARITY.is_dir() else []


def _shapes(state: dict) -> dict:
    return {k: tuple(v.shape) for k, v in state.items()}


# --- checkpoints: every released variant maps key for key ---------------------------------------------------------

@needs_parity
@pytest.mark.parametrize('variant', _manifests())
def test_manifest_maps_key_for_key(variant):
    manifest = json.loads((PARITY / 'manifests' / f'{variant}.json').read_text())
    official = {k: torch.empty(shape, device='meta') for k, shape in manifest['keys'].items()}
    with torch.device('meta'):
        model = timm.create_model(variant)
        lean = timm.create_model(variant, distillation=False)
    assert _shapes(checkpoint_filter_fn(official, model)) == _shapes(model.state_dict())
    assert sum(p.numel() for p in model.parameters()) == manifest['num_params']
    # Without the distillation head the official dist_head folds into head.
    assert _shapes(checkpoint_filter_fn(official, lean)) == _shapes(lean.state_dict())
    assert sum(p.numel() for p in lean.parameters()) == manifest['num_params_without_dist_head']


def test_missing_group_is_named():
    with torch.device('meta'):
        model = timm.create_model('test_groupmamba')
    official = {f'block1.0.attn.mamba_g{k}.Ds': torch.empty(4, device='meta') for k in (1, 2, 4)}
    with pytest.raises(ValueError, match=r'lacks mamba_g3 for stages\.0\.blocks\.0\.mixer\.ssm\.Ds'):
        checkpoint_filter_fn(official, model)


# --- the numeric fixture -----------------------------------------------------------------------------------------

def _run(model, x):
    model.eval()
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
    return logits, pre, feats.permute(0, 3, 1, 2)


def _fixture(fixture):
    meta = json.loads((PARITY / 'groupmamba' / f'{fixture}.json').read_text())
    return meta, load_file(PARITY / 'groupmamba' / meta['io_file']), PARITY / 'groupmamba' / meta['weights_file']


@needs_parity
@pytest.mark.parametrize('fixture', _fixtures())
def test_fixture_reproduces_official_logits(fixture):
    meta, io, weights = _fixture(fixture)
    model = visionssm.from_official('groupmamba', weights, **meta['official']['kwargs'])
    assert sum(p.numel() for p in model.parameters()) == meta['num_params']

    logits, pre, feats = _run(model.double(), io['input'].double())
    tol64 = meta['recommended_tolerance']['float64_run']
    torch.testing.assert_close(logits, io['logits'], atol=tol64['atol'], rtol=tol64['rtol'])
    torch.testing.assert_close(pre, io['pre_logits'], atol=tol64['atol'], rtol=tol64['rtol'])
    torch.testing.assert_close(feats, io['features_nchw'], atol=tol64['atol'], rtol=tol64['rtol'])

    logits32, _, _ = _run(model.float(), io['input'])
    tol32 = meta['recommended_tolerance']['float32_run']
    torch.testing.assert_close(logits32.double(), io['logits'], atol=tol32['atol'], rtol=tol32['rtol'])


@needs_parity
@pytest.mark.parametrize('fixture', _fixtures())
def test_fixture_through_timm_pretrained_file_and_without_dist_head(fixture):
    """``pretrained=True`` with a file overlay takes the same conversion; ``distillation=False`` folds the two
    official heads into one and gives the same eval logits."""
    meta, io, weights = _fixture(fixture)
    kw = meta['official']['kwargs']
    arch = dict(num_classes=kw['num_classes'], depths=kw['depths'], embed_dims=kw['embed_dims'],
                mlp_ratios=kw['mlp_ratios'], stem_hidden_dim=kw['stem_hidden_dim'])
    for distillation in (True, False):
        model = timm.create_model('groupmamba_tiny', pretrained=True, distillation=distillation,
                                  pretrained_cfg_overlay=dict(file=str(weights)), **arch)
        assert (model.head_dist is not None) == distillation
        logits, _, _ = _run(model.double(), io['input'].double())
        torch.testing.assert_close(logits, io['logits'], atol=1e-7, rtol=1e-7)


def test_distilled_training_returns_both_heads():
    model = timm.create_model('test_groupmamba', num_classes=3).train()
    x = torch.randn(1, 3, 64, 64)
    assert model(x).shape == (1, 3)
    model.set_distilled_training(True)
    out, out_dist = model(x)
    assert out.shape == out_dist.shape == (1, 3)
    model.eval()
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(model(x), (model.head(pre) + model.head_dist(pre)) / 2)


@pytest.mark.parametrize('kwargs,match', [
    (dict(window_size=7), r"unknown GroupMamba arguments: \['window_size'\]"),
    (dict(norm_layer='BatchNorm2d'), r'norm_layer must be a LayerNorm'),
    (dict(num_stages=3), r'num_stages \(3\) must equal len\(depths\) \(4\)'),
    (dict(embed_dims=[64, 128, 350, 448]), r'divisible by 4 .* got 350'),
])
def test_from_official_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        visionssm.from_official('groupmamba', **kwargs)


# --- gradients on non-square maps ----------------------------------------------------------------------------------

def _official_group_ss2d(m: GroupedSS2D, x: torch.Tensor) -> torch.Tensor:
    """The official four SS2D modules written out with plain torch ops: the official CrossScan_k / CrossMerge_k
    forwards (flatten, transpose, flip) and a step-by-step scan. Autograd through it is the true gradient."""
    batch, height, width, _ = x.shape
    e, d, r, n = m.group_dim, m.d_inner, m.dt_rank, m.d_state
    outs = []
    for k in range(4):
        xz = x[..., k * e:(k + 1) * e] @ m.in_proj_weight[k].T
        u, z = xz[..., :d], xz[..., d:]
        u = F.silu(F.conv2d(u.permute(0, 3, 1, 2), m.conv.weight[k * d:(k + 1) * d],
                            m.conv.bias[k * d:(k + 1) * d], padding=1, groups=d))
        seq = (u if k in (0, 2) else u.transpose(2, 3)).flatten(2)
        seq = seq.flip(-1) if k >= 2 else seq                          # (B, D, L) in scan order
        dbl = torch.einsum('bdl,cd->bcl', seq, m.x_proj_weight[k])
        dt, bm, cm = dbl.split([r, n, n], dim=1)
        dt = F.softplus(torch.einsum('brl,dr->bdl', dt, m.dt_projs_weight[k]) + m.dt_projs_bias[k][:, None])
        a = -torch.exp(m.A_logs[k * d:(k + 1) * d])                    # (D, N)
        h = seq.new_zeros(batch, d, n)
        ys = []
        for t in range(seq.shape[-1]):
            h = torch.exp(dt[..., t, None] * a) * h + dt[..., t, None] * bm[:, None, :, t] * seq[..., t, None]
            ys.append((h * cm[:, None, :, t]).sum(-1) + m.Ds[k * d:(k + 1) * d] * seq[..., t])
        y = torch.stack(ys, dim=-1)
        y = y.flip(-1) if k >= 2 else y
        y = y.view(batch, d, height, width) if k in (0, 2) else y.view(batch, d, width, height).transpose(2, 3)
        y = F.layer_norm(y.permute(0, 2, 3, 1), (d,), m.out_norm_weight[k], m.out_norm_bias[k], eps=1e-5)
        outs.append((y * F.silu(z)) @ m.out_proj_weight[k].T)
    return torch.cat(outs, dim=-1)


def _randomized_mixer(dim=16, d_state=1, seed=0):
    torch.manual_seed(seed)
    m = GroupedSS2D(dim, d_state=d_state).double()
    with torch.no_grad():  # away from the init, so that every parameter matters
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


@pytest.mark.parametrize('size,d_state', [((3, 5), 1), ((5, 2), 2)])
def test_grouped_scan_gradients_on_non_square_maps(size, d_state):
    m = _randomized_mixer(d_state=d_state)
    x = torch.randn(2, *size, 16, dtype=torch.float64, requires_grad=True)
    y = m(x)
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = _official_group_ss2d(m, x_ref)
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)

    w = torch.randn_like(y)
    grads = torch.autograd.grad((y * w).sum(), [x] + list(m.parameters()))
    grads_ref = torch.autograd.grad((y_ref * w).sum(), [x_ref] + list(m.parameters()))
    names = ['input'] + [n for n, _ in m.named_parameters()]
    for name, g, g_ref in zip(names, grads, grads_ref):
        torch.testing.assert_close(g, g_ref, atol=1e-10, rtol=1e-10, msg=lambda s: f'{name}: {s}')


def test_grouped_scan_gradcheck_non_square():
    """Finite differences, float64, on a 2x3 map: the gradient of the input and of the scan parameters."""
    m = _randomized_mixer(dim=8)
    x = torch.randn(1, 2, 3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-6)
    names = ('x_proj_weight', 'dt_projs_weight', 'dt_projs_bias', 'A_logs', 'Ds')
    params = tuple(getattr(m, n).detach().clone().requires_grad_(True) for n in names)
    fn = lambda *ps: torch.func.functional_call(m, dict(zip(names, ps)), (x.detach(),))
    assert torch.autograd.gradcheck(fn, params, eps=1e-6, atol=1e-6)


def test_official_column_scan_backward_would_be_caught():
    """The official CrossScan_2.backward views the (W, H)-ordered gradient as (H, W); for H != W that is not the
    adjoint of its forward, which the reference comparison above would flag."""
    height, width = 3, 5
    g = torch.randn(1, 1, height * width, dtype=torch.float64)               # gradient in column-scan order
    x = torch.zeros(1, 1, height, width, dtype=torch.float64, requires_grad=True)
    true_grad, = torch.autograd.grad((x.transpose(2, 3).flatten(2) * g).sum(), x)
    official = g.view(1, -1, height, width).transpose(2, 3).contiguous().view(1, -1, height * width)
    assert not torch.allclose(official.view(1, 1, height, width), true_grad)
