"""Faithfulness to the official implementations, from the fixtures in ../shared/parity (made by running the official
code): every manifest maps key for key and shape for shape, parameter counts are the official ones, and the
numeric fixtures reproduce the official logits through ``from_official`` and through timm's pretrained path."""
import json

import pytest
import timm
import torch
from safetensors.torch import load_file

import visionssm
from visionssm.models import msvmamba, vmamba

from _parity import PARITY, needs_parity
pytestmark = needs_parity

FILTERS = {'vmamba': vmamba.checkpoint_filter_fn, 'msvmamba': msvmamba.checkpoint_filter_fn}


def _manifests(family):
    return sorted(p.stem for p in (PARITY / 'manifests').glob(f'{family}_*.json')) if PARITY.is_dir() else []


def _meta_state(keys: dict) -> dict:
    return {k: torch.empty(shape, device='meta') for k, shape in keys.items()}


def _shapes(state: dict) -> dict:
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.mark.parametrize('variant', _manifests('vmamba') + _manifests('msvmamba'))
def test_manifest_maps_key_for_key(variant):
    manifest = json.loads((PARITY / 'manifests' / f'{variant}.json').read_text())
    with torch.device('meta'):
        model = timm.create_model(variant)
    own = _shapes(model.state_dict())
    official = _meta_state(manifest['keys'])
    assert _shapes(FILTERS[manifest['family']](official, model)) == own
    assert sum(p.numel() for p in model.parameters()) == manifest['num_params']
    assert len(own) == manifest['num_state_dict_tensors']

    if 'legacy_keys' in manifest:  # the pre-refactor names the v0 release files may carry
        legacy = {manifest['legacy_keys'].get(k, k): v for k, v in official.items()}
        assert legacy.keys() != official.keys()
        assert _shapes(FILTERS[manifest['family']](legacy, model)) == own
    # Linear2d-era files may store 1x1-conv-shaped linear weights.
    conv_shaped = {k: (v[..., None, None] if v.dim() == 2 and ('proj.weight' in k or 'mlp.fc' in k) else v)
                   for k, v in official.items()}
    assert any(v.dim() == 4 and v.shape[-1] == 1 for v in conv_shaped.values())
    assert _shapes(FILTERS[manifest['family']](conv_shaped, model)) == own


def _fixtures(family):
    if not PARITY.is_dir():
        return []
    return sorted(p.stem for p in (PARITY / family).glob('*.json'))


def _run(model, x):
    model.eval()
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
    return logits, pre, feats.permute(0, 3, 1, 2)


@pytest.mark.parametrize('fixture', _fixtures('vmamba'))
def test_fixture_reproduces_official_logits(fixture):
    meta = json.loads((PARITY / 'vmamba' / f'{fixture}.json').read_text())
    io = load_file(PARITY / 'vmamba' / meta['io_file'])
    model = visionssm.from_official('vmamba', PARITY / 'vmamba' / meta['weights_file'], **meta['official']['kwargs'])

    logits, pre, feats = _run(model.double(), io['input'].double())
    tol64 = meta['recommended_tolerance']['float64_run']
    torch.testing.assert_close(logits, io['logits'], atol=tol64['atol'], rtol=tol64['rtol'])
    torch.testing.assert_close(pre, io['pre_logits'], atol=tol64['atol'], rtol=tol64['rtol'])
    torch.testing.assert_close(feats, io['features_nchw'], atol=tol64['atol'], rtol=tol64['rtol'])

    logits32, _, _ = _run(model.float(), io['input'])
    tol32 = meta['recommended_tolerance']['float32_run']
    torch.testing.assert_close(logits32.double(), io['logits'], atol=tol32['atol'], rtol=tol32['rtol'])


@pytest.mark.parametrize('fixture', _fixtures('vmamba'))
def test_fixture_through_timm_pretrained_file(fixture):
    """``create_model(pretrained=True, pretrained_cfg_overlay=dict(file=...))`` takes the same conversion."""
    meta = json.loads((PARITY / 'vmamba' / f'{fixture}.json').read_text())
    kw = meta['official']['kwargs']
    io = load_file(PARITY / 'vmamba' / meta['io_file'])
    variant = 'vmamba_vanilla_tiny' if kw['forward_type'] == 'v0' else 'vmamba_tiny_s1l8'
    model = timm.create_model(
        variant, pretrained=True, num_classes=kw['num_classes'], depths=kw['depths'], dims=kw['dims'],
        ssm_ratio=kw['ssm_ratio'], pretrained_cfg_overlay=dict(file=str(PARITY / 'vmamba' / meta['weights_file'])))
    logits, _, _ = _run(model.double(), io['input'].double())
    torch.testing.assert_close(logits, io['logits'], atol=1e-7, rtol=1e-7)


def test_fixture_wrong_config_is_refused():
    meta = json.loads((PARITY / 'vmamba' / 'vmamba_small.json').read_text())
    kw = dict(meta['official']['kwargs'], ssm_ratio=2.0)
    with pytest.raises(ValueError, match=r'does not fit VMamba: .*shape mismatches: stages.0.blocks.0.mixer.x_proj_weight: \(4, 4, 24\) in the checkpoint, \(4, 4, 48\) in the model'):
        visionssm.from_official('vmamba', PARITY / 'vmamba' / meta['weights_file'], **kw)


@pytest.mark.parametrize('kwargs,match', [
    (dict(forward_type='v05_onsigmoid'), r"forward_type 'v05_onsigmoid' is not supported"),
    (dict(norm_layer='bn'), r"norm_layer 'bn' is not supported"),
    (dict(gmlp=True), r'gmlp=True is not supported'),
    (dict(window_size=7), r"unknown VSSM arguments: \['window_size'\]"),
    (dict(ssm_act_layer='tanh'), r"ssm_act_layer must be one of"),
])
def test_from_official_rejects_unreleased_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        visionssm.from_official('vmamba', **kwargs)


def test_from_official_unknown_family():
    with pytest.raises(ValueError, match=r"unknown family 'mamba2d'; known: \[.*'vmamba'.*\]"):
        visionssm.from_official('mamba2d')
