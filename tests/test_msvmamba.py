"""MSVMamba: the official logits from the parity fixture (master branch), the multi-scale mixer of both branches
against a direct transcription of the official route construction and merge, the half-resolution state option,
odd and non-square maps, checkpoint containers, and ``from_official``'s argument checks."""
import json

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import visionssm
from visionssm.models.msvmamba import MS2D, MSVMamba
from visionssm.ops import Route, selective_scan

from _parity import PARITY, needs_parity

FIXTURE = PARITY / 'msvmamba' / 'msvmamba_small.json'


def _fixture():
    meta = json.loads(FIXTURE.read_text())
    return meta, load_file(PARITY / 'msvmamba' / meta['io_file']), PARITY / 'msvmamba' / meta['weights_file']


def _run(model, x):
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        return model.forward_head(feats), model.forward_head(feats, pre_logits=True), feats.permute(0, 3, 1, 2)


@needs_parity
def test_fixture_reproduces_official_logits():
    meta, io, weights = _fixture()
    model = visionssm.from_official('msvmamba', weights, **meta['official']['kwargs'])
    logits, pre, feats = _run(model.double(), io['input'].double())
    tol64 = meta['recommended_tolerance']['float64_run']
    for got, key in ((logits, 'logits'), (pre, 'pre_logits'), (feats, 'features_nchw')):
        torch.testing.assert_close(got, io[key], atol=tol64['atol'], rtol=tol64['rtol'])
    logits32, _, _ = _run(model.float(), io['input'])
    tol32 = meta['recommended_tolerance']['float32_run']
    torch.testing.assert_close(logits32.double(), io['logits'], atol=tol32['atol'], rtol=tol32['rtol'])


@needs_parity
@pytest.mark.parametrize('container', ['model', 'model_ema', 'raw'])
def test_fixture_through_timm_pretrained_file(container, tmp_path):
    """``create_model(pretrained=True, pretrained_cfg_overlay=dict(file=...))``: the release containers ('model',
    'model_ema', a bare state dict) load through the safe loader and the same conversion."""
    meta, io, weights = _fixture()
    path = weights
    if container != 'model':
        sd = torch.load(weights, map_location='cpu', weights_only=True)['model']
        path = tmp_path / 'ckpt.pth'
        torch.save(sd if container == 'raw' else {'model_ema': sd, 'epoch': 299}, path)
    kw = meta['official']['kwargs']
    model = timm.create_model('msvmamba_nano', pretrained=True, num_classes=kw['num_classes'], depths=kw['depths'],
                              dims=kw['dims'], pretrained_cfg_overlay=dict(file=str(path)))
    logits, _, _ = _run(model.double(), io['input'].double())
    torch.testing.assert_close(logits, io['logits'], atol=1e-7, rtol=1e-7)


@needs_parity
def test_fixture_half_resolution_scan_state_runs_on():
    """The official scan carries its state from one half-resolution order into the next; scanning them
    independently (``carry_state=False``) is another function of the same weights."""
    meta, io, weights = _fixture()
    model = visionssm.from_official('msvmamba', weights, **meta['official']['kwargs']).double()
    independent = MSVMamba(**{**_args(model), 'carry_state': False}).double()
    independent.load_state_dict(model.state_dict())
    logits, _, _ = _run(independent, io['input'].double())
    assert (logits - io['logits']).abs().max() > 1e-3


def _args(model):
    m = model.stages[0].blocks[0].mixer
    return dict(num_classes=model.num_classes, depths=[len(s.blocks) for s in model.stages],
                dims=[s.blocks[0].norm1.normalized_shape[0] for s in model.stages], version=model.version,
                d_state=m.d_state, ssm_ratio=m.d_inner / model.stages[0].blocks[0].norm1.normalized_shape[0],
                gate=m.gate)


# --- the mixer against the official construction, written out -------------------------------------------------

def _scan_1d(x, mixer, k):
    """One selective scan of the sequence ``x (B, L, D)`` in its order, with parameter set ``k``."""
    n, r, d = mixer.d_state, mixer.dt_rank, mixer.d_inner
    dt_low, B, C = F.linear(x, mixer.x_proj_weight[k]).split([r, n, n], -1)
    return selective_scan(x, F.linear(dt_low, mixer.dt_projs_weight[k]), -torch.exp(mixer.A_logs[k * d:(k + 1) * d]),
                          B.unsqueeze(-2), C.unsqueeze(-2), mixer.Ds[k * d:(k + 1) * d], mixer.dt_projs_bias[k],
                          routes=(Route('row'),))


def _official_mixer(mixer, x, carry_state=True):
    """MS2D as the official code builds it: flip / transpose copies, the three half-resolution sequences
    concatenated into one, then un-flipped, un-transposed and summed."""
    x = mixer.in_proj(x)
    if mixer.gate:
        x, z = x.chunk(2, -1)
    b, h, w, d = x.shape
    xc = x.permute(0, 3, 1, 2)
    full = mixer.act(mixer.conv(xc)).permute(0, 2, 3, 1)
    half = mixer.act(mixer.conv_half(xc)).permute(0, 2, 3, 1)
    h1, w1 = half.shape[1:3]
    assert (h1, w1) == (-(-h // 2), -(-w // 2))
    rows, cols = half.flatten(1, 2), half.transpose(1, 2).flatten(1, 2)
    seqs = [rows.flip(1), cols, cols.flip(1)]
    k_half = mixer.half_set
    if carry_state:
        ys = _scan_1d(torch.cat(seqs, 1), mixer, k_half).split(h1 * w1, 1)
    else:
        ys = [_scan_1d(s, mixer, k_half) for s in seqs]
    norm = mixer.out_norm if mixer.norm_each else torch.nn.Identity()
    y_rows = norm(ys[0]).flip(1).view(b, h1, w1, d)
    y_cols = norm(ys[1]).view(b, w1, h1, d).transpose(1, 2)
    y_cols_r = norm(ys[2]).flip(1).view(b, w1, h1, d).transpose(1, 2)
    y_half = (y_rows + y_cols + y_cols_r).permute(0, 3, 1, 2)
    kw = dict(align_corners=False) if mixer.upsample == 'bilinear' else {}
    y_half = F.interpolate(y_half, size=(h, w), mode=mixer.upsample, **kw).permute(0, 2, 3, 1)
    y = norm(_scan_1d(full.flatten(1, 2), mixer, 1 - k_half).view(b, h, w, d)) + y_half
    if not mixer.norm_each:
        y = mixer.out_norm(y)
    y = mixer.se(y)
    if mixer.gate:
        y = y * mixer.act(z)
    return mixer.out_proj(y)


def _mixer(version, gate, carry_state=True):
    torch.manual_seed(0)
    v1 = version == 'v1'
    mixer = MS2D(8, ssm_ratio=2.0 if v1 else 1.0, gate=gate, norm_each=v1, upsample='bilinear' if v1 else 'nearest',
                 half_set=0 if v1 else 1, carry_state=carry_state).double()
    with torch.no_grad():   # every parameter away from its init, so that nothing is left untested
        for p in mixer.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return mixer


@pytest.mark.parametrize('version, gate', [('v1', True), ('v3', False), ('v3', True)])
@pytest.mark.parametrize('hw', [(6, 6), (5, 7), (7, 4), (1, 3), (1, 1)])
def test_mixer_equals_the_official_construction(version, gate, hw):
    # odd and non-square maps: the ceil(h/2) x ceil(w/2) half map, the size-based upsampling with non-integer ratios
    mixer = _mixer(version, gate)
    x = torch.randn(2, *hw, 8, dtype=torch.float64)
    torch.testing.assert_close(mixer(x), _official_mixer(mixer, x), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize('version', ['v1', 'v3'])
def test_independent_half_scans_option(version):
    official = _mixer(version, True)
    independent = _mixer(version, True, carry_state=False)
    independent.load_state_dict(official.state_dict())
    x = torch.randn(1, 5, 6, 8, dtype=torch.float64)
    torch.testing.assert_close(independent(x), _official_mixer(official, x, carry_state=False), atol=1e-12, rtol=1e-12)
    assert (independent(x) - official(x)).abs().max() > 1e-4


def test_gradients_flow_through_the_concatenated_route():
    mixer = _mixer('v1', True)
    x = torch.randn(1, 5, 3, 8, dtype=torch.float64, requires_grad=True)
    (mixer(x) ** 2).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    (_official_mixer(mixer, x2) ** 2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize('name', ['test_msvmamba'])
@pytest.mark.parametrize('size', [(64, 64), (72, 100), (100, 68)])
def test_odd_and_nonsquare_inputs(name, size):
    # 72x100 -> maps 18x25, 9x13, 5x7, 3x4: patch merging zero-pads the odd maps (bottom / right)
    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        feats = model.forward_intermediates(x, intermediates_only=True)
        logits = model(x)
    h, w = size[0] // 4, size[1] // 4
    for i, f in enumerate(feats):
        assert f.shape[-2:] == (h, w), (i, f.shape)
        h, w = -(-h // 2), -(-w // 2)
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


def test_v3_variants_build_their_generation():
    with torch.device('meta'):
        v3 = timm.create_model('msvmamba_v3_tiny')
        v1 = timm.create_model('msvmamba_tiny')
    m3, m1 = v3.stages[0].blocks[0].mixer, v1.stages[0].blocks[0].mixer
    assert (m3.upsample, m3.norm_each, m3.half_set, m3.gate) == ('nearest', False, 1, False)
    assert (m1.upsample, m1.norm_each, m1.half_set, m1.gate) == ('bilinear', True, 0, True)
    assert v3.stages[0].blocks[0].ffn_post_norm and not v1.stages[0].blocks[0].ffn_post_norm
    assert v3.output_fmt == 'NHWC' and v3.pretrained_cfg['url'].startswith('https://huggingface.co/YuhengSSS/MSVMamba/')


@needs_parity
@pytest.mark.parametrize('variant', ['nano', 'micro', 'tiny', 'v3_tiny', 'v3_small', 'v3_base'])
def test_from_official_builds_every_release(variant):
    # the official constructor's kwargs of each release (both branches) give the timm variant's architecture
    manifest = json.loads((PARITY / 'manifests' / f'msvmamba_{variant}.json').read_text())
    with torch.device('meta'):
        model = visionssm.from_official('msvmamba', **manifest['official_builder']['kwargs'])
        ours = timm.create_model(f'msvmamba_{variant}')
    assert repr(model) == repr(ours)
    assert sum(p.numel() for p in model.parameters()) == manifest['num_params']


@pytest.mark.parametrize('kwargs, match', [
    (dict(), r"not an MSVMamba configuration"),
    (dict(sscore_type='multiscale_4scan_12', ms_split=[1, 2]), r'ms_split=\[1, 2\] is not supported'),
    (dict(sscore_type='multiscale_4scan_12', sep_norm=True), r'sep_norm=True is not supported'),
    (dict(sscore_type='multiscale_4scan_12', depths=[1, 1], dims=[8, 16], ms_stage=[1]),
     r'ms_stage=\[1\] is not supported'),
    (dict(forward_type='vms', full_res_index=3), r'full_res_index=3 is not supported'),
    (dict(forward_type='vms_noz', window=7), r"unknown VSSM arguments: \['window'\]"),
])
def test_from_official_rejects_unreleased_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        visionssm.from_official('msvmamba', **kwargs)
