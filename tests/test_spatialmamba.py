"""Spatial-Mamba: faithfulness to the official implementation (manifests and the numeric fixture in ../shared/parity),
the state fusion's replicate-padding semantics, and no stale fused kernel after a weight change."""
import json

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import visionssm
from visionssm.models import spatialmamba
from visionssm.models.spatialmamba import StateFusion, StructureAwareSSM, checkpoint_filter_fn

from _parity import PARITY, needs_parity


def _manifests():
    return sorted(p.stem for p in (PARITY / 'manifests').glob('spatialmamba_*.json')) if PARITY.is_dir() else []


def _fixtures():
    return sorted(p.stem for p in (PARITY / 'spatialmamba').glob('*.json')) if PARITY.is_dir() else []


def _shapes(state: dict) -> dict:
    return {k: tuple(v.shape) for k, v in state.items()}


def _run(model, x):
    model.eval()
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
    return logits, pre, feats.permute(0, 3, 1, 2)


def _merged_fusion(fusion: StateFusion, h: torch.Tensor) -> torch.Tensor:
    """The official eval form, written from its description: the alpha-weighted dilation-1/3/5 3x3 kernels placed in
    one 11x11 depthwise kernel, applied with replicate padding 5 (clamped indices). NCHW."""
    dim = fusion.dim
    merged = torch.zeros(dim, 1, 11, 11, dtype=h.dtype)
    for alpha, kernel, d in zip(fusion.alpha, (fusion.kernel_3, fusion.kernel_3_1, fusion.kernel_3_2), (1, 3, 5)):
        merged[:, :, 5 - d:5 + d + 1:d, 5 - d:5 + d + 1:d] += alpha.to(h.dtype) * kernel.to(h.dtype)
    return F.conv2d(F.pad(h, (5, 5, 5, 5), mode='replicate'), merged, groups=dim)


@needs_parity
@pytest.mark.parametrize('variant', _manifests())
def test_manifest_maps_key_for_key(variant):
    manifest = json.loads((PARITY / 'manifests' / f'{variant}.json').read_text())
    assert manifest['family'] == 'spatialmamba' and manifest['container'] == 'model'
    with torch.device('meta'):
        model = timm.create_model(variant)
    own = _shapes(model.state_dict())
    official = {k: torch.empty(shape, device='meta') for k, shape in manifest['keys'].items()}
    assert _shapes(checkpoint_filter_fn(official, model)) == own
    assert sum(p.numel() for p in model.parameters()) == manifest['num_params']
    assert len(own) == manifest['num_state_dict_tensors']
    # A file written after an eval forward could carry the cached merged kernel; it is not state.
    stale = dict(official, **{'layers.0.blocks.0.self_attention.state_fusion._merge_weight':
                              torch.empty(128, 1, 11, 11, device='meta')})
    assert _shapes(checkpoint_filter_fn(stale, model)) == own


@needs_parity
@pytest.mark.parametrize('fixture', _fixtures())
def test_fixture_reproduces_official_logits(fixture):
    meta = json.loads((PARITY / 'spatialmamba' / f'{fixture}.json').read_text())
    io = load_file(PARITY / 'spatialmamba' / meta['io_file'])
    model = visionssm.from_official('spatialmamba', PARITY / 'spatialmamba' / meta['weights_file'],
                                    **meta['official']['kwargs'])
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
def test_fixture_through_timm_pretrained_file(fixture):
    """``create_model(pretrained=True, pretrained_cfg_overlay=dict(file=...))`` takes the same conversion."""
    meta = json.loads((PARITY / 'spatialmamba' / f'{fixture}.json').read_text())
    kw = meta['official']['kwargs']
    io = load_file(PARITY / 'spatialmamba' / meta['io_file'])
    model = timm.create_model(
        'spatialmamba_tiny', pretrained=True, num_classes=kw['num_classes'], depths=kw['depths'], dims=kw['dims'],
        pretrained_cfg_overlay=dict(file=str(PARITY / 'spatialmamba' / meta['weights_file'])))
    logits, _, _ = _run(model.double(), io['input'].double())
    torch.testing.assert_close(logits, io['logits'], atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize('size', [(1, 1), (2, 2), (3, 5), (4, 4), (12, 7)])
def test_state_fusion_is_the_merged_replicate_padded_kernel(size):
    torch.manual_seed(0)
    fusion = StateFusion(6).double()
    with torch.no_grad():
        for p in fusion.parameters():
            p.normal_()
    h = torch.randn(2, *size, 6, dtype=torch.float64)
    want = _merged_fusion(fusion, h.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    for train in (True, False):
        fusion.train(train)
        torch.testing.assert_close(fusion(h), want, atol=1e-12, rtol=1e-12)
    if min(size) < 11:  # maps smaller than the kernel: zero padding would be a different function
        zero = StateFusion(6).double()
        zero.load_state_dict(fusion.state_dict())
        merged = torch.zeros(6, 1, 11, 11, dtype=torch.float64)
        for a, k, d in zip(zero.alpha, (zero.kernel_3, zero.kernel_3_1, zero.kernel_3_2), (1, 3, 5)):
            merged[:, :, 5 - d:5 + d + 1:d, 5 - d:5 + d + 1:d] += (a * k).detach()
        zero_padded = F.conv2d(h.permute(0, 3, 1, 2), merged, padding=5, groups=6).permute(0, 2, 3, 1)
        assert (zero_padded - want).abs().max() > 1e-3


def test_state_fusion_gradients_and_saved_memory():
    """Gradients equal the merged kernel's (for h, the three kernels and alpha), and of all map-sized tensors the
    backward keeps only h itself: no padded map, no branch."""
    torch.manual_seed(0)
    fusion = StateFusion(5).double()
    with torch.no_grad():
        for p in fusion.parameters():
            p.normal_()
    h = torch.randn(2, 9, 13, 5, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 9, 13, 5, dtype=torch.float64)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = fusion(h)
    ours = torch.autograd.grad(out, (h, *fusion.parameters()), grad)
    want = torch.autograd.grad(_merged_fusion(fusion, h.permute(0, 3, 1, 2)).permute(0, 2, 3, 1),
                               (h, *fusion.parameters()), grad)
    for got, ref in zip(ours, want):
        torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-12)
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in saved}
    assert h.untyped_storage().data_ptr() in storages
    assert sorted(n for n in storages.values() if n >= h.numel() * 8) == [h.numel() * 8]


def test_state_fusion_computes_in_the_dtype_of_its_input_under_autocast():
    torch.manual_seed(0)
    fusion = StateFusion(4)
    h = torch.randn(2, 5, 6, 4)
    want = fusion(h)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        full = fusion(h)
        low = fusion(h.bfloat16())
    assert full.dtype == torch.float32 and low.dtype == torch.bfloat16
    torch.testing.assert_close(full, want)
    torch.testing.assert_close(low.float(), want, atol=0.1, rtol=0.02)


@pytest.mark.parametrize('autocast_dtype, fused_dtype', [
    (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float32), (None, torch.float32)])
def test_states_fuse_in_bfloat16_and_in_float32_for_float16(autocast_dtype, fused_dtype):
    """bfloat16 keeps float32's range, so the states are fused in it; float16 could overflow (official #27)."""
    torch.manual_seed(0)
    mixer = StructureAwareSSM(8)
    seen = []
    mixer.state_fusion.register_forward_hook(lambda module, args, out: seen.append((args[0].dtype, out.dtype)))
    x = torch.randn(2, 4, 5, 8)
    with torch.autocast('cpu', dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        y = mixer(x)
        y.float().sum().backward()
    assert seen == [(fused_dtype, fused_dtype)]
    assert torch.isfinite(y).all() and all(torch.isfinite(p.grad).all() for p in mixer.parameters())


def _randomize(model):
    """Move every parameter away from its initialization (which leaves the fusion nearly invisible in the output)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, p[0].numel() ** -0.5)
            else:
                p.add_(0.2 * torch.randn_like(p))
    return model


def test_eval_output_follows_weight_changes():
    """The official eval path caches the merged fusion kernel on its first eval forward and never refreshes it.
    Here every weight change after an eval forward shows in the next eval output, as in a freshly built model."""
    torch.manual_seed(0)
    model = _randomize(timm.create_model('test_spatialmamba', num_classes=5)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        for name, p in model.named_parameters():
            if '.state_fusion.' in name:
                p.mul_(torch.rand_like(p) + 0.5)
        after = model(x)
    fresh = timm.create_model('test_spatialmamba', num_classes=5)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert (after - before).abs().max() > 1e-3
        torch.testing.assert_close(after, fresh.eval()(x))

    # Loading a checkpoint after an eval forward (e.g. an EMA teacher, or resuming) also takes effect.
    other = _randomize(timm.create_model('test_spatialmamba', num_classes=5))
    with torch.no_grad():
        model.load_state_dict(other.state_dict())
        loaded = model(x)
        assert (loaded - after).abs().max() > 1e-3
        torch.testing.assert_close(loaded, other.eval()(x))

    # Training steps between eval forwards, as with per-epoch validation.
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x).square().mean().backward()
    opt.step()
    model.eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        stepped = model(x)
        assert (stepped - loaded).abs().max() > 1e-6
        torch.testing.assert_close(stepped, fresh.eval()(x))


def test_no_merged_kernel_in_state_dict():
    model = timm.create_model('test_spatialmamba').eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert not [k for k in model.state_dict() if 'merge' in k]
    assert {k.rsplit('.', 1)[1] for k in model.state_dict() if '.state_fusion.' in k} == {
        'kernel_3', 'kernel_3_1', 'kernel_3_2', 'alpha'}


@pytest.mark.parametrize('name,file_id', [
    ('spatialmamba_tiny', '19kXoqGSTuKKs4AHbdUSrdKZTwTWenLIW'),
    ('spatialmamba_small', '1Wb3sYoWLpgmWrmHMYKwdgDwGPZaqM28O'),
    ('spatialmamba_base', '1k8dHp2QRCOqBSgAi36YkhZp_O8LqOPjM'),
])
def test_weights_are_the_official_releases(name, file_id):
    cfg = timm.create_model(name, pretrained=False).pretrained_cfg
    assert cfg['url'].startswith('https://drive.google.com/') and file_id in cfg['url']
    assert cfg['mean'] == (0.485, 0.456, 0.406) and cfg['std'] == (0.229, 0.224, 0.225)
    assert cfg['crop_pct'] == 0.875 and cfg['interpolation'] == 'bicubic' and cfg['input_size'] == (3, 224, 224)
    assert cfg['license'] == 'apache-2.0' and cfg['origin_url'] == 'https://github.com/EdwardChasel/Spatial-Mamba'


def test_checkpoint_filter_passes_our_own_state_dict():
    model = timm.create_model('test_spatialmamba')
    state = model.state_dict()
    assert checkpoint_filter_fn(state, model).keys() == state.keys()


@pytest.mark.parametrize('kwargs,match', [
    (dict(d_state=2), r'd_state must be 1'),
    (dict(dt_init='simple'), r"dt_init must be 'random'"),
    (dict(window_size=7), r"unknown SpatialMamba arguments: \['window_size'\]"),
    (dict(dims=[24, 40, 96, 192]), r'dims must double at every stage'),
])
def test_from_official_rejects_unreleased_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        visionssm.from_official('spatialmamba', **kwargs)


def test_from_official_defaults_are_the_official_ones():
    with torch.device('meta'):
        model = spatialmamba.from_official(depths=[1, 1, 1, 1], drop_path_rate=0.2, drop_rate=0.1)
    assert [s.blocks[0].mixer.d_inner for s in model.stages] == [192, 384, 768, 1536]
    assert model.pos_drop.p == 0.1 and model.head.drop.p == 0.0
    assert model.stages[3].blocks[0].drop_path.drop_prob == pytest.approx(0.2)


def test_bfloat16_autocast_forward():
    torch.manual_seed(0)
    model = timm.create_model('test_spatialmamba').eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            got = model(x)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), want, atol=5e-2, rtol=5e-2)


def test_mixer_output_gradients_and_saved_memory():
    """The mixer's ``proj(norm(fused * C + x * D) * SiLU(z))``: values and gradients of the plain expression, and of
    map-sized tensors the backward keeps only its inputs (no observation, normed map, SiLU(z) or gated map)."""
    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(6).double()
    proj = torch.nn.Linear(6, 4, bias=False).double()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    fused, x, z = (torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True) for _ in range(3))
    C = torch.randn(2, 3, 5, 1, dtype=torch.float64, requires_grad=True)
    Ds = torch.randn(6, dtype=torch.float64, requires_grad=True)
    leaves = (fused, C, x, Ds, z, norm.weight, norm.bias, proj.weight)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = spatialmamba.mixer_output(fused, C, x, Ds, z, norm, proj)
    want = proj(norm(fused * C + x * Ds) * F.silu(z))
    torch.testing.assert_close(out, want, atol=1e-12, rtol=1e-12)
    grad = torch.randn_like(out)
    for got, ref in zip(torch.autograd.grad(out, leaves, grad), torch.autograd.grad(want, leaves, grad)):
        torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-12)
    maps = {t.untyped_storage().data_ptr() for t in saved if t.numel() >= x.numel()}
    assert maps <= {t.untyped_storage().data_ptr() for t in (fused, x, z)}


@pytest.mark.parametrize("bias", [True, False])
def test_conv_silu_gradients_and_saved_memory(bias):
    """The mixer's ``SiLU(dwconv(x))``: the plain expression's values and gradients, and no saved conv output."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=bias).double()
    x = torch.randn(2, 5, 7, 12, dtype=torch.float64, requires_grad=True)[..., :6].permute(0, 3, 1, 2)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = spatialmamba.conv_silu(x, conv)
    want = F.silu(conv(x))
    torch.testing.assert_close(out, want, atol=1e-12, rtol=1e-12)
    grad = torch.randn_like(out)
    leaves = (x, conv.weight) + ((conv.bias,) if bias else ())
    for got, ref in zip(torch.autograd.grad(out, leaves, grad), torch.autograd.grad(want, leaves, grad)):
        torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-12)
    assert {t.untyped_storage().data_ptr() for t in saved if t.numel() >= out.numel()} == {
        x.untyped_storage().data_ptr()}
