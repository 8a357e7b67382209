"""The timm contract, for every registered visionssm model (new families are covered by registering them).

Models run at 64 px (the smallest size all stages exist at) with batch 2; large variants are slow only to build.
Hierarchical models (feature maps at several reductions, ``stages``) and plain ones (Vim: every block at the stem
stride, ``blocks``, token features) share the tests; where the contract differs, the test branches on
``_hierarchical``, read from the model's ``feature_info`` reductions.
"""
import re

import pytest
import timm
import torch
from timm.models import group_parameters

import visionssm
from visionssm.models import FAMILIES

from _model_cache import eval_model

# Not run here: MambaVision's L variants (228-740M parameters; the 512-px ones pad a 64-px input's hybrid maps into
# 32x32 windows) take minutes per test on a CPU, and mambavision_b_21k is mambavision_b's architecture with other
# weights. Their code is that of the variants run here; their keys, parameter counts and pretrained cfgs are checked
# on the meta device against the official manifests (tests/test_mambavision.py).
NOT_RUN = set(timm.list_models('mambavision_l*')) | {'mambavision_b_21k'}
MODELS = [m for m in timm.list_models(module=list(FAMILIES)) if m not in NOT_RUN]
RELEASED = [m for m in MODELS if not m.startswith('test_')]
SIZE = 64




def _hierarchical(model) -> bool:
    return len({f['reduction'] for f in model.feature_info}) > 1


def _units(model):
    """The stacked units that intermediates index: stages (hierarchical) or blocks (plain)."""
    return model.stages if _hierarchical(model) else model.blocks


def _input(batch=2, size=(SIZE, SIZE), seed=0):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def test_every_family_is_registered():
    assert set(timm.list_models(module='vmamba')) == {
        'test_vmamba', 'vmamba_tiny_s1l8', 'vmamba_small_s1l20', 'vmamba_base_s1l20', 'vmamba_tiny_s2l5',
        'vmamba_small_s2l15', 'vmamba_base_s2l15', 'vmamba_vanilla_tiny', 'vmamba_vanilla_small',
        'vmamba_vanilla_base'}
    assert set(MODELS) >= set(timm.list_models(module='vmamba'))


@pytest.mark.parametrize('name', MODELS)
def test_forward_features_and_head(name):
    model = eval_model(name)
    x = _input()
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model.forward_head(feats)
        pre = model.forward_head(feats, pre_logits=True)
        full = model(x)
    if _hierarchical(model):
        assert feats.shape == (2, SIZE // 32, SIZE // 32, model.num_features)  # channel-last, like timm's NHWC models
    else:  # tokens, like timm's ViTs
        assert feats.dim() == 3 and feats.shape[0] == 2 and feats.shape[-1] == model.num_features
    assert pre.shape == (2, model.num_features)
    assert logits.shape == (2, model.num_classes) == full.shape
    assert torch.isfinite(full).all()
    torch.testing.assert_close(full, logits)


@pytest.mark.parametrize('name', MODELS)
@pytest.mark.parametrize('size', [(67, 45), (33, 97)])
def test_odd_and_non_square_inputs(name, size):
    model = eval_model(name)
    with torch.no_grad():
        out = model(_input(1, size))
        feats = model.forward_intermediates(_input(1, size), intermediates_only=True)
    assert out.shape == (1, model.num_classes) and torch.isfinite(out).all()
    if not _hierarchical(model):  # every block keeps the stem's grid
        assert all(f.shape == feats[0].shape for f in feats) and feats[0].shape[1] == model.num_features
        return
    # Every stage halves with rounding up (padded stride-2 layers), from a stride-4 stem.
    h, w = feats[0].shape[-2:]
    for f in feats[1:]:
        assert f.shape[-2:] == (-(-h // 2), -(-w // 2))
        h, w = f.shape[-2:]


@pytest.mark.parametrize('name', MODELS)
def test_reset_classifier(name):
    model = timm.create_model(name, num_classes=7).eval()
    x = _input(1)
    with torch.no_grad():
        assert model(x).shape == (1, 7)
        model.reset_classifier(0)
        assert model(x).shape == (1, model.num_features)
        model.reset_classifier(5, 'max')
        assert model(x).shape == (1, 5)
    assert model.get_classifier().out_features == 5


@pytest.mark.parametrize('name', MODELS)
def test_features_only(name):
    model = timm.create_model(name, features_only=True).eval()
    info = model.feature_info
    assert info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = model(_input())
    assert [f.shape[1] for f in feats] == info.channels()
    backbone = eval_model(name)
    if _hierarchical(backbone):
        assert [f.shape[-1] for f in feats] == [SIZE // r for r in info.reduction()]
    else:  # a simple feature pyramid rescaled from the plain map at the stem stride s (up by deconv, down by pool)
        s = backbone.feature_info[0]['reduction']
        with torch.no_grad():
            base = backbone.forward_intermediates(_input(), indices=1, intermediates_only=True)[0].shape[-1]
        assert [f.shape[-1] for f in feats] == [base * s // r if r < s else base // (r // s) for r in info.reduction()]
    assert all(f.is_contiguous() for f in feats)  # NCHW

    subset = timm.create_model(name, features_only=True, out_indices=(1, 3)).eval()
    assert subset.feature_info.reduction() == [8, 32]
    with torch.no_grad():
        assert [f.shape[1] for f in subset(_input())] == [info.channels()[1], info.channels()[3]]


@pytest.mark.parametrize('name', MODELS)
def test_forward_intermediates(name):
    model = eval_model(name)
    x = _input()
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        only = model.forward_intermediates(x, indices=[0, 2], intermediates_only=True, output_fmt='NHWC')
        normed = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
        torch.testing.assert_close(final, model.forward_features(x))
    assert len(inter) == len(model.feature_info) and [t.shape[1] for t in inter] == [
        f['num_chs'] for f in model.feature_info]
    torch.testing.assert_close(only[0], inter[0].permute(0, 2, 3, 1))
    torch.testing.assert_close(only[1], inter[2].permute(0, 2, 3, 1))
    if _hierarchical(model):
        torch.testing.assert_close(normed[0], final.permute(0, 3, 1, 2))  # last stage + final norm
    else:  # last block + final norm: the final tokens without the class token (if the model has one)
        flat = normed[0].flatten(2).transpose(1, 2)
        if getattr(model, 'num_prefix_tokens', 1) == 0:
            torch.testing.assert_close(flat, final, atol=1e-5, rtol=1e-5)
        else:
            assert any(torch.allclose(torch.cat([final[:, :p], final[:, p + 1:]], 1), flat, atol=1e-5, rtol=1e-5)
                       for p in range(final.shape[1]))


@pytest.mark.parametrize('name', MODELS)
def test_prune_intermediate_layers(name):
    model = timm.create_model(name).eval()
    x = _input()
    with torch.no_grad():
        want = model.forward_intermediates(x, indices=[1], intermediates_only=True)
        assert model.prune_intermediate_layers([1]) == [1]
        got = model.forward_intermediates(x, indices=[1], intermediates_only=True)
    assert len(_units(model)) == 2
    torch.testing.assert_close(got[0], want[0])


@pytest.mark.parametrize('name', MODELS)
def test_grad_checkpointing_and_backward(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=3)
    model.train()
    x = _input(1)
    with torch.random.fork_rng():
        plain = model(x)
    model.set_grad_checkpointing(True)
    if _hierarchical(model):
        assert all(stage.grad_checkpointing for stage in model.stages)
    else:
        assert model.grad_checkpointing
    with torch.random.fork_rng():
        ckpt = model(x)
    torch.testing.assert_close(ckpt, plain)
    ckpt.square().sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f'parameters without a finite gradient: {no_grad[:5]}'


@pytest.mark.parametrize('name', [m for m in MODELS if m.startswith('test_')])
def test_input_gradient_in_evaluation_mode(name):
    """A backward through an evaluation-mode forward (saliency maps, adversarial examples, feature inversion): the
    layers' evaluation paths keep what their backward needs."""
    model = timm.create_model(name).eval()
    x = _input(2).requires_grad_()
    model(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().max() > 0


@pytest.mark.parametrize('name', [m for m in MODELS if m.startswith('test_')])
def test_training_step_on_the_meta_device(name):
    """A training forward and backward with no data (the meta device: shape checks and the graph of a training
    step before any weight exists), where autocast does not exist."""
    with torch.device('meta'):
        model = timm.create_model(name).train()
        x = torch.empty(2, 3, SIZE, SIZE, requires_grad=True)
    model(x).sum().backward()
    assert x.grad.shape == x.shape
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize('name', [m for m in MODELS if m.startswith('test_')])
def test_trains_after_inference_mode(name):
    """A training step after a forward under ``torch.inference_mode()`` at the same input size: nothing the first
    forward cached (gather indices, codes) is an inference tensor that the backward would need to save. The size is
    used by no other test, so this forward is the one that builds the caches."""
    model = timm.create_model(name, num_classes=3)
    x = _input(2, (57, 43))
    with torch.inference_mode():
        model.eval()(x)
    model.train()(x).square().sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize('name', MODELS)
def test_group_matcher_and_no_weight_decay(name):
    with torch.device('meta'):
        model = timm.create_model(name)
    names = {n for n, _ in model.named_parameters()}
    for coarse in (True, False):
        groups = group_parameters(model, model.group_matcher(coarse=coarse))
        assert set().union(*map(set, groups.values())) == names
    assert len(group_parameters(model, model.group_matcher(coarse=True))) == 1 + len(_units(model)) + 1
    nwd = model.no_weight_decay()
    a_logs = {n for n in names if n.endswith(('A_logs', 'A_log', 'A_b_log'))}
    assert a_logs and a_logs <= nwd <= names


@pytest.mark.parametrize('name', RELEASED)
def test_pretrained_cfg_points_at_official_weights(name):
    cfg = timm.create_model(name, pretrained=False).pretrained_cfg
    assert (cfg.get('url') or cfg.get('hf_hub_id')), f'{name} has no weight location'
    assert cfg['origin_url'].startswith('https://github.com/') and cfg['license']
    assert len(cfg['mean']) == len(cfg['std']) == 3 and 0 < cfg['crop_pct'] <= 1
    assert cfg['input_size'][0] == 3 and cfg['num_classes'] > 0
    with torch.device('meta'):
        model = timm.create_model(name)
    assert cfg['first_conv'] + '.weight' in model.state_dict()
    assert cfg['classifier'] + '.weight' in model.state_dict()


@pytest.mark.parametrize('name', timm.list_models(module='vmamba', exclude_filters=['test_*']))
def test_vmamba_weights_are_the_official_releases(name):
    cfg = timm.create_model(name, pretrained=False).pretrained_cfg
    assert cfg['url'].startswith('https://github.com/MzeroMiko/VMamba/releases/download/%23v')
    assert cfg['mean'] == (0.485, 0.456, 0.406) and cfg['std'] == (0.229, 0.224, 0.225)
    assert cfg['crop_pct'] == 0.875 and cfg['input_size'] == (3, 224, 224) and cfg['license'] == 'mit'


@pytest.mark.parametrize('name', [m for m in MODELS if m.startswith('test_')])
def test_bfloat16_autocast(name):
    model = eval_model(name)
    x = _input()
    with torch.no_grad():
        want = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            got = model(x)
    assert got.shape == want.shape and torch.isfinite(got).all()
    assert (got.float() - want).abs().max() <= 0.1 * want.abs().max() + 0.05


def test_in_chans_and_drop_path():
    model = timm.create_model('test_vmamba', in_chans=1, drop_path_rate=0.3, num_classes=4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 64)).shape == (1, 4)
    rates = [b.drop_path.drop_prob for s in model.stages for b in s.blocks if hasattr(b.drop_path, 'drop_prob')]
    assert rates == pytest.approx(sorted(rates)) and rates[-1] == pytest.approx(0.3)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"stem must be 'v1' or 'v2', got 'v9'"):
        timm.create_model('test_vmamba', stem='v9')
    with pytest.raises(ValueError, match=r"downsample must be 'v1', 'v2' or 'v3', got 'v7'"):
        timm.create_model('test_vmamba', downsample='v7')
    with pytest.raises(ValueError, match=r'dims has 3 entries but depths has 4'):
        timm.create_model('test_vmamba', dims=(8, 16, 32))


@pytest.mark.parametrize('name', [m for m in MODELS if m.startswith('test_')])
def test_every_block_reads_a_contiguous_map(name):
    """The residual stream reaches each block as a contiguous map: a stem whose NCHW output is only viewed as NHWC
    makes every block run on NCHW memory behind the view (a copy before each norm, adds of mixed layouts)."""
    model = eval_model(name)
    seen = []

    def check(module, args):
        x = args[0]
        seen.append((module.__class__.__name__, x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last),
                     tuple(x.shape), x.stride()))

    blocks = [m for n, m in model.named_modules() if re.search(r'(^|\.)blocks\.\d+$', n)]
    handles = [b.register_forward_pre_hook(check) for b in blocks]
    try:
        with torch.no_grad():
            model(_input())
    finally:
        for h in handles:
            h.remove()
    assert len(seen) == len(blocks) > 0
    assert all(ok for _, ok, _, _ in seen), [s for s in seen if not s[1]]
