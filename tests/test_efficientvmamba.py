"""EfficientVMamba: faithfulness to the official code (manifests, the numeric fixture) and the atrous scan on odd
maps (the official pads them, so the zero-padded positions sit inside the scanned sequences).

The fixtures live in ../shared/parity (made by running the official code); located as in test_parity.py."""
import json

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import visionssm
from visionssm.models.efficientvmamba import AtrousSS2D, checkpoint_filter_fn

from _parity import PARITY, needs_parity


def _manifests():
    return sorted(p.stem for p in (PARITY / 'manifests').glob('efficientvmamba_*.json')) if PARITY.is_dir() else []


def _fixtures():
    return sorted(p.stem for p in (PARITY / 'efficientvmamba').glob('*.json')) if PARITY.is_dir() else []


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
    own = _shapes(model.state_dict())
    assert _shapes(checkpoint_filter_fn(official, model)) == own
    # The released training wrapper's prefix (the official loader strips it).
    prefixed = {f'module.module.{k}': v for k, v in official.items()}
    assert _shapes(checkpoint_filter_fn(prefixed, model)) == own
    assert sum(p.numel() for p in model.parameters()) == manifest['num_params']
    assert len(own) == manifest['num_state_dict_tensors']


def test_unknown_official_key_is_named():
    with torch.device('meta'):
        model = timm.create_model('test_efficientvmamba')
    with pytest.raises(ValueError, match=r"key 'layers\.9\.7\.bogus\.weight' has no counterpart"):
        checkpoint_filter_fn({'layers.9.7.bogus.weight': torch.empty(1, device='meta')}, model)


# --- the numeric fixture -----------------------------------------------------------------------------------------

def _fixture(fixture):
    meta = json.loads((PARITY / 'efficientvmamba' / f'{fixture}.json').read_text())
    io = load_file(PARITY / 'efficientvmamba' / meta['io_file'])
    return meta, io, PARITY / 'efficientvmamba' / meta['weights_file']


def _run(model, x):
    model.eval()
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
    return logits, pre, feats.permute(0, 3, 1, 2)


@needs_parity
@pytest.mark.parametrize('fixture', _fixtures())
def test_fixture_reproduces_official_logits(fixture):
    meta, io, weights = _fixture(fixture)
    model = visionssm.from_official('efficientvmamba', weights, **meta['official']['kwargs'])
    assert sum(p.numel() for p in model.parameters()) == meta['num_params']

    logits, pre, feats = _run(model.double(), io['input'].double())
    tol = meta['recommended_tolerance']['float64_run']
    torch.testing.assert_close(feats, io['features_nchw'], atol=tol['atol'], rtol=tol['rtol'])
    torch.testing.assert_close(pre, io['pre_logits'], atol=tol['atol'], rtol=tol['rtol'])
    torch.testing.assert_close(logits, io['logits'], atol=tol['atol'], rtol=tol['rtol'])

    logits32, _, _ = _run(model.float(), io['input'])
    tol = meta['recommended_tolerance']['float32_run']
    assert torch.allclose(logits32.double(), io['logits'], atol=tol['atol'], rtol=tol['rtol'])


@needs_parity
@pytest.mark.parametrize('fixture', _fixtures())
def test_fixture_through_timm_and_prefixed_keys(fixture, tmp_path):
    """The same weights through ``pretrained=True`` (file overlay), with the ``module.module.`` prefix added."""
    meta, io, weights = _fixture(fixture)
    kw = meta['official']['kwargs']
    state = torch.load(weights, weights_only=True, map_location='cpu')['state_dict']
    path = tmp_path / 'prefixed.pth'
    torch.save({'state_dict': {f'module.module.{k}': v for k, v in state.items()}}, path)
    model = timm.create_model(
        'efficientvmamba_small', pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=100),
        num_classes=kw['num_classes'], depths=kw['depths'], dims=kw['dims'])
    logits, _, _ = _run(model.double(), io['input'].double())
    torch.testing.assert_close(logits, io['logits'], atol=1e-7, rtol=1e-7)


def test_from_official_rejects_what_it_cannot_build():
    with pytest.raises(ValueError, match=r'step_size must be 2'):
        visionssm.from_official('efficientvmamba', step_size=3, depths=[1, 1, 1, 1], dims=8)
    with pytest.raises(ValueError, match=r"unknown EfficientVSSM arguments: \['bogus'\]"):
        visionssm.from_official('efficientvmamba', bogus=1)


# --- the atrous scan on odd maps ---------------------------------------------------------------------------------

def _official_atrous_scan(mixer: AtrousSS2D, x: torch.Tensor) -> torch.Tensor:
    """The official ES2D written from its definition: zero-pad to even, gather the four sub-lattices (1 and 3
    through a transpose, i.e. column-major), scan each sequence with a plain loop, scatter back, crop."""
    b, h, w, d = x.shape
    xp = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
    hp, wp = xp.shape[1:3]
    idx = torch.arange(hp * wp).view(hp, wp)
    gathers = [idx[0::2, 0::2].reshape(-1), idx.t()[0::2, 1::2].reshape(-1),
               idx[0::2, 1::2].reshape(-1), idx.t()[1::2, 1::2].reshape(-1)]
    seq = xp.reshape(b, hp * wp, d)
    rank, n = mixer.dt_rank, mixer.d_state
    A = -torch.exp(mixer.A_logs.double()).view(4, d, n)
    out = torch.zeros_like(seq)
    for k, g in enumerate(gathers):
        u = seq[:, g]  # (b, L, d)
        proj = u @ mixer.x_proj_weight[k].t()
        dt, Bk, Ck = proj.split([rank, n, n], dim=-1)
        delta = F.softplus(dt @ mixer.dt_projs_weight[k].t() + mixer.dt_projs_bias[k])
        state = torch.zeros(b, d, n, dtype=x.dtype)
        ys = []
        for t in range(u.shape[1]):
            state = torch.exp(delta[:, t, :, None] * A[k]) * state + (delta[:, t] * u[:, t])[..., None] * Bk[:, t, None]
            ys.append((state * Ck[:, t, None]).sum(-1) + mixer.Ds.view(4, d)[k] * u[:, t])
        out[:, g] = torch.stack(ys, 1)
    return out.view(b, hp, wp, d)[:, :h, :w]


@pytest.mark.parametrize('size', [(5, 3), (4, 7), (6, 4)])
def test_atrous_scan_matches_the_official_gather_on_odd_maps(size):
    torch.manual_seed(0)
    mixer = AtrousSS2D(8, d_state=3, ssm_ratio=1.0, gate=True).double()
    with torch.no_grad():
        mixer.dt_projs_bias.uniform_(-2., 0.5)  # non-negligible Δ, so padded steps visibly decay the state
        x = torch.randn(2, *size, 8, dtype=torch.float64)
        torch.testing.assert_close(mixer.scan(x), _official_atrous_scan(mixer, x), atol=1e-12, rtol=1e-12)
        if size[0] % 2 or size[1] % 2:  # dropping the padded steps would give something else
            no_pad = super(AtrousSS2D, mixer).scan(x)
            assert (no_pad - mixer.scan(x)).abs().max() > 1e-6


@pytest.mark.parametrize('size', [(67, 45), (33, 97), (36, 44)])
def test_odd_input_sizes_run(size):
    model = timm.create_model('test_efficientvmamba').eval()
    with torch.no_grad():
        feats = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    h, w = size[0] // 4, size[1] // 4
    for f in feats:
        assert f.shape[-2:] == (h, w)
        h, w = -(-h // 2), -(-w // 2)
