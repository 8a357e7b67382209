"""The mmdet / mmseg backbone adapter: outputs, freezing, BatchNorm eval, and every kind of checkpoint it loads.

Tiny ``test_*`` variants throughout; official-layout checkpoints come from the parity fixtures (../shared/parity),
which hold reduced models in the official key names and containers.
"""
import json

import numpy as np
import pytest
import timm
import torch
from mmengine.config import ConfigDict
from mmengine.registry import DefaultScope
from torch.nn.modules.batchnorm import _BatchNorm

from visionssm.mm.backbone import VisionSSMBackbone
from visionssm.models import FAMILIES
from _parity import PARITY, needs_parity

TEST_MODELS = [f'test_{family}' for family in FAMILIES]  # every family has a tiny variant

# parity fixture -> (timm model, kwargs giving the fixture's reduced architecture)
FIXTURES = {
    'vmamba/vmamba_small': ('vmamba_tiny_s1l8', dict(depths=(1, 1, 2, 1), dims=(24, 48, 96, 192), ssm_ratio=1.0)),
    'vmamba/vmamba_v0_small': ('vmamba_vanilla_tiny', dict(depths=(1, 1, 2, 1), dims=(24, 48, 96, 192))),
    'efficientvmamba/efficientvmamba_small': ('efficientvmamba_tiny', dict(depths=(1, 2, 2, 1),
                                                                           dims=(24, 48, 96, 192))),
    'groupmamba/groupmamba_small': ('groupmamba_tiny', dict(stem_hidden_dim=16, embed_dims=(32, 64, 96, 128),
                                                            depths=(1, 2, 1, 1))),
    'spatialmamba/spatialmamba_small': ('spatialmamba_tiny', dict(dims=(24, 48, 96, 192), depths=(1, 2, 1, 1))),
    'vim/vim_small': ('vim_tiny', dict(img_size=64, embed_dim=64, depth=4)),
    'plainmamba/plainmamba_small': ('plainmamba_l1', dict(img_size=64, embed_dim=64, depth=3)),
    'mambavision/mambavision_small': ('mambavision_t', dict(depths=(1, 2, 3, 2), dim=24, in_dim=16,
                                                            window_size=(8, 8, 4, 2))),
}


def _randomize(module, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    return module


def _loaded(name, checkpoint, **kwargs):
    backbone = VisionSSMBackbone(name, init_cfg=dict(type='Pretrained', checkpoint=str(checkpoint)), **kwargs)
    backbone.init_weights()
    return backbone


def _assert_same_state(module, expected: dict):
    state = module.state_dict()
    assert set(state) <= set(expected)
    differ = [k for k, v in state.items() if not torch.equal(v, expected[k])]
    assert not differ, f'{len(differ)} tensors differ, e.g. {differ[:3]}'


# --- outputs -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', TEST_MODELS)
def test_one_nchw_map_per_level_at_any_multiple_of_32(name):
    backbone = VisionSSMBackbone(name).eval()
    height, width = 96, 160  # non-square; the stride-32 map is 3x5, odd both ways
    with torch.no_grad():
        outs = backbone(torch.randn(1, 3, height, width))
    assert isinstance(outs, tuple) and len(outs) == 4
    for level, (out, channels) in enumerate(zip(outs, backbone.channels)):
        stride = 4 * 2 ** level
        assert out.shape == (1, channels, height // stride, width // stride)
        assert out.is_contiguous()
    assert [type(getattr(backbone, f'norm{i}')).__name__ for i in range(4)] == ['LayerNorm2d'] * 4
    assert backbone.norm0.eps == (1e-6 if name == 'test_mambavision' else 1e-5)  # as the official outnorm{i}

    with torch.no_grad():  # other sizes work too: each map covers the image to within one cell (plain models: a patch)
        outs = backbone(torch.randn(1, 3, 100, 150))
    for level, out in enumerate(outs):
        stride = 4 * 2 ** level
        cell = max(stride, 16) if name in ('test_vim', 'test_plainmamba') else stride
        assert abs(out.shape[2] * stride - 100) <= cell and abs(out.shape[3] * stride - 150) <= cell


@pytest.mark.parametrize('name', ['test_vmamba', 'test_vim'])
def test_out_indices_select_levels_and_their_norms(name):
    backbone = VisionSSMBackbone(name, out_indices=(1, 3)).eval()
    with torch.no_grad():
        outs = backbone(torch.randn(1, 3, 64, 96))
    assert [o.shape[-2:] for o in outs] == [(8, 12), (2, 3)]
    assert hasattr(backbone, 'norm1') and hasattr(backbone, 'norm3') and not hasattr(backbone, 'norm0')


def test_with_cp_checkpoints_the_stages_and_computes_the_same():
    plain = VisionSSMBackbone('test_vmamba').eval()
    checkpointed = VisionSSMBackbone('test_vmamba', with_cp=True).eval()
    checkpointed.load_state_dict(plain.state_dict())
    assert all(stage.grad_checkpointing for stage in checkpointed.body.model.stages)
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(plain(x), checkpointed(x)):
        torch.testing.assert_close(a, b)
    sum(o.sum() for o in checkpointed(x)).backward()
    assert checkpointed.body.model.stem.conv1.weight.grad is not None


def test_compiled_backbone_computes_the_same_at_changing_sizes_and_keeps_its_checkpoint_keys():
    import copy
    torch.manual_seed(0)
    plain = VisionSSMBackbone('test_vmamba').train()
    # Dynamo without code generation (CI's cost); small maps: the CPU's scan traces a step per chunk of a route
    compiled = VisionSSMBackbone('test_vmamba', compile=dict(backend='eager')).train()
    compiled.load_state_dict(plain.state_dict())
    assert compiled.state_dict().keys() == plain.state_dict().keys()
    for size in ((32, 32), (64, 32)):   # detection's padded sizes change from batch to batch
        x = torch.randn(2, 3, *size)
        for a, b in zip(plain(x), compiled(x)):
            torch.testing.assert_close(a, b)
    sum(o.sum() for o in compiled(x)).backward()
    assert compiled.body.model.stem.conv1.weight.grad is not None
    copied = copy.deepcopy(compiled)   # compiles its own body: runs its own weights
    with torch.no_grad():
        for p in copied.parameters():
            p.mul_(0.5)
        torch.testing.assert_close(copied(x)[0], copied.norm0(copied.body(x)[0]))
    with pytest.raises(TypeError, match='compile must be a bool or a dict'):
        VisionSSMBackbone('test_vmamba', compile='default')


def test_cuda_graph_option_of_the_backbone():
    with pytest.raises(ValueError, match='cuda_graph cannot be combined with compile'):
        VisionSSMBackbone('test_vmamba', cuda_graph=True, compile=True)
    with pytest.raises(ValueError, match='cuda_graph cannot be combined with with_cp'):
        VisionSSMBackbone('test_vmamba', cuda_graph=True, with_cp=True)
    with pytest.raises(TypeError, match='cuda_graph must be True or False'):
        VisionSSMBackbone('test_vmamba', cuda_graph=1)
    torch.manual_seed(0)
    plain = VisionSSMBackbone('test_vmamba').train()
    graphed = VisionSSMBackbone('test_vmamba', cuda_graph=True).train()
    graphed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with pytest.warns(UserWarning, match='cuda_graph: the inputs are on cpu'):   # eager on the CPU
        for a, b in zip(plain(x), graphed(x)):
            torch.testing.assert_close(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_graphed_backbone_trains_as_the_eager_one(monkeypatch):
    """Segmentation's case: a fixed crop, the feature maps of every level through the graphs, two SGD steps; and a
    frozen stem, whose level-0 map then needs no gradient."""
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
    torch.manual_seed(0)
    models = [VisionSSMBackbone('test_vmamba', cuda_graph=graph).cuda().train() for graph in (True, False)]
    models[1].load_state_dict(models[0].state_dict())
    for step in range(2):
        x = torch.randn(2, 3, 64, 64, device='cuda', generator=torch.Generator('cuda').manual_seed(step))
        features = []
        for model in models:
            out = model(x)
            sum((f.float() * (i + 1)).square().mean() for i, f in enumerate(out)).backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.1 * p.grad
            model.zero_grad(set_to_none=True)
            features.append([f.detach().clone() for f in out])
        for a, b in zip(*features):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert len(models[0].graphed('body').graphs) == 1   # the steps did go through the graphs
    frozen = VisionSSMBackbone('test_vmamba', cuda_graph=True, frozen_stages=1).cuda().train()
    sum(f.float().mean() for f in frozen(x)).backward()
    assert all(p.grad is None for p in frozen.body.model.stages[0].parameters())
    assert frozen.body.model.stages[1].blocks[0].norm1.weight.grad is not None
    assert len(frozen.graphed('body').graphs) == 1


@pytest.mark.parametrize('out_indices', [(0, 4), (2, 1), (), (-1,)])
def test_bad_out_indices_are_refused(out_indices):
    with pytest.raises(ValueError, match='out_indices must be increasing levels in 0..3'):
        VisionSSMBackbone('test_vmamba', out_indices=out_indices)


def test_unknown_model_is_named_with_close_matches():
    with pytest.raises(ValueError, match=r"unknown visionssm model 'vmamba_tiny'; did you mean .*'vmamba_tiny_s"):
        VisionSSMBackbone('vmamba_tiny')
    with pytest.raises(ValueError, match="unknown visionssm model 'resnet50'"):  # a timm model, not ours
        VisionSSMBackbone('resnet50')


def test_reachable_from_mmdet_and_mmseg_configs():
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmseg.registry import MODELS as MMSEG_MODELS

    for scope, registry in (('mmdet', MMDET_MODELS), ('mmseg', MMSEG_MODELS)):
        with DefaultScope.overwrite_default_scope(scope):
            backbone = registry.build(dict(type='visionssm.VisionSSMBackbone', model='test_vmamba', out_indices=(2,)))
        assert isinstance(backbone, VisionSSMBackbone) and backbone.channels == [64]


# --- freezing and BatchNorm ----------------------------------------------------------------------------------------

def test_frozen_stages_freeze_the_stem_and_first_stages():
    backbone = VisionSSMBackbone('test_vmamba', frozen_stages=2).train()
    net = backbone.body.model
    frozen = [net.stem, net.stages[0], net.stages[1], backbone.norm0, backbone.norm1]
    trained = [net.stages[2], net.stages[3], backbone.norm2, backbone.norm3]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for m in trained for p in m.parameters())
    assert not any(m.training for f in frozen for m in f.modules())
    assert all(m.training for t in trained for m in t.modules())

    sum(o.sum() for o in backbone(torch.randn(1, 3, 64, 64))).backward()
    assert all(p.grad is None for m in frozen for p in m.parameters())
    assert all(p.grad is not None for p in net.stages[3].parameters())


def test_frozen_stages_of_vim_follow_its_pyramid_levels():
    backbone = VisionSSMBackbone('test_vim', frozen_stages=2).train()  # 4 blocks: level i reads block i
    net = backbone.body.model
    assert not net.pos_embed.requires_grad and not net.cls_token.requires_grad
    assert [all(not p.requires_grad for p in b.parameters()) for b in net.blocks] == [True, True, False, False]
    assert not backbone.body.fpn[0].training and backbone.body.fpn[2].training


def test_frozen_stages_minus_one_freezes_nothing_and_too_many_is_refused():
    backbone = VisionSSMBackbone('test_vmamba', frozen_stages=-1)
    assert all(p.requires_grad for p in backbone.parameters())
    with pytest.raises(ValueError, match='frozen_stages must be in -1..4'):
        VisionSSMBackbone('test_vmamba', frozen_stages=5)


def test_norm_eval_keeps_batchnorm_statistics():
    backbone = VisionSSMBackbone('test_spatialmamba', norm_eval=True).train()
    norms = [m for m in backbone.modules() if isinstance(m, _BatchNorm)]
    assert norms and not any(m.training for m in norms)
    assert backbone.body.model.stages[0].training
    before = [m.running_mean.clone() for m in norms]
    backbone(torch.randn(2, 3, 64, 64))
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, norms))
    assert all(m.training for m in VisionSSMBackbone('test_spatialmamba').train().modules()
               if isinstance(m, _BatchNorm))


# --- checkpoints -----------------------------------------------------------------------------------------------

@needs_parity
@pytest.mark.parametrize('fixture', sorted(FIXTURES))
def test_init_cfg_loads_official_classification_checkpoint(fixture):
    """The wrapped model ends up equal to timm's classifier loaded from the same official file."""
    name, kwargs = FIXTURES[fixture]
    path = PARITY / f'{fixture}.pth'
    backbone = _loaded(name, path, **kwargs)
    classifier = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                                   num_classes=100, **kwargs)
    _assert_same_state(backbone.body.model, classifier.state_dict())
    assert backbone.is_init


@needs_parity
def test_vim_position_embedding_is_resampled_to_the_backbone_size():
    """Segmentation builds Vim at 512 px (as the official); the 224-px checkpoint's embedding is resampled."""
    name, kwargs = FIXTURES['vim/vim_small']
    backbone = _loaded(name, PARITY / 'vim/vim_small.pth', **dict(kwargs, img_size=128))
    official = torch.load(PARITY / 'vim/vim_small.pth', weights_only=True)['model']
    assert official['pos_embed'].shape == (1, 17, 64) and backbone.body.model.pos_embed.shape == (1, 65, 64)
    torch.testing.assert_close(backbone.body.model.pos_embed[0, 32], official['pos_embed'][0, 8])  # class slot


@needs_parity
def test_init_cfg_loads_official_detector_checkpoint_with_its_output_norms(tmp_path):
    """The official mm backbones save the classifier layout under ``backbone.`` plus ``outnorm{i}``."""
    name, kwargs = FIXTURES['vmamba/vmamba_small']
    official = torch.load(PARITY / 'vmamba/vmamba_small.pth', weights_only=True)['model']
    official = {k: v for k, v in official.items() if not k.startswith('classifier.')}
    dims = json.loads((PARITY / 'vmamba/vmamba_small.json').read_text())['official']['kwargs']['dims']
    norms = {f'outnorm{i}.{p}': torch.randn(d) for i, d in enumerate(dims) for p in ('weight', 'bias')}
    state = {f'backbone.{k}': v for k, v in {**official, **norms}.items()}
    state['neck.lateral_convs.0.conv.weight'] = torch.randn(4, 4, 1, 1)  # detector parts are ignored
    torch.save({'state_dict': state, 'meta': dict(epoch=12)}, tmp_path / 'mask_rcnn.pth')

    backbone = _loaded(name, tmp_path / 'mask_rcnn.pth', **kwargs)
    assert torch.equal(backbone.norm2.weight, norms['outnorm2.weight'])
    assert torch.equal(backbone.norm3.bias, norms['outnorm3.bias'])
    reference = _loaded(name, PARITY / 'vmamba/vmamba_small.pth', **kwargs)
    _assert_same_state(backbone.body.model, reference.body.model.state_dict())


@needs_parity
def test_init_cfg_loads_official_mambavision_detector_checkpoint(tmp_path):
    """MambaVision's official mm backbone: the classifier layout without norm/head, plus ``outnorm{i}`` (eps 1e-6)."""
    name, kwargs = FIXTURES['mambavision/mambavision_small']
    official = torch.load(PARITY / 'mambavision/mambavision_small.pth', weights_only=True)['state_dict']
    official = {k: v for k, v in official.items() if not k.startswith(('norm.', 'head.'))}
    norms = {f'outnorm{i}.{p}': torch.randn(24 * 2 ** i) for i in range(4) for p in ('weight', 'bias')}
    state = {f'backbone.{k}': v for k, v in {**official, **norms}.items()}
    torch.save({'state_dict': state, 'meta': dict(epoch=36)}, tmp_path / 'cascade_mask_rcnn.pth')

    with pytest.warns(UserWarning, match='CC-BY-NC-SA-4.0'):
        backbone = _loaded(name, tmp_path / 'cascade_mask_rcnn.pth', **kwargs)
        reference = _loaded(name, PARITY / 'mambavision/mambavision_small.pth', **kwargs)
    assert torch.equal(backbone.norm1.weight, norms['outnorm1.weight']) and backbone.norm1.eps == 1e-6
    _assert_same_state(backbone.body.model, reference.body.model.state_dict())


def test_init_cfg_loads_own_detector_checkpoint_with_numpy_in_meta(tmp_path):
    """An mmengine checkpoint of a visionssm detector: weights under ``backbone.``, numpy objects in ``meta``."""
    trained = _randomize(VisionSSMBackbone('test_groupmamba', out_indices=(1, 2, 3)))
    state = {f'backbone.{k}': v for k, v in trained.state_dict().items()}
    state['rpn_head.rpn_conv.weight'] = torch.randn(2, 2, 3, 3)
    meta = dict(epoch=np.int64(3), seed=np.array([1, 2]), dataset_meta=dict(classes=('a', 'b')))
    torch.save(dict(meta=meta, state_dict=state, optimizer=dict(state={})), tmp_path / 'epoch_3.pth')

    backbone = _loaded('test_groupmamba', tmp_path / 'epoch_3.pth', out_indices=(1, 2, 3))
    _assert_same_state(backbone, trained.state_dict())


@pytest.mark.parametrize('layout', ['timm', 'classifier'])
def test_pretrained_kwarg_loads_a_classifier(layout, tmp_path):
    """mmseg's EncoderDecoder passes ``pretrained=``. A timm state dict, or a visionssm classifier checkpoint (the
    timm model under ``backbone.``), loads into the body, its head and final norm left out."""
    classifier = _randomize(timm.create_model('test_efficientvmamba'))
    state = classifier.state_dict()
    if layout == 'classifier':
        state = dict(state_dict={f'backbone.{k}': v for k, v in state.items()}, meta=dict(epoch=np.int64(1)))
    torch.save(state, tmp_path / 'timm.pth')
    backbone = VisionSSMBackbone('test_efficientvmamba', pretrained=str(tmp_path / 'timm.pth'))
    assert backbone.init_cfg == dict(type='Pretrained', checkpoint=str(tmp_path / 'timm.pth'))
    backbone.init_weights()
    _assert_same_state(backbone.body.model, classifier.state_dict())
    with pytest.raises(ValueError, match='give the checkpoint as pretrained or as init_cfg, not both'):
        VisionSSMBackbone('test_vmamba', pretrained='a.pth', init_cfg=dict(type='Pretrained', checkpoint='b.pth'))


def test_segmentor_pretrained_reaches_the_backbone_and_survives_init_weights(tmp_path):
    """mmseg's EncoderDecoder(pretrained=...) hands the path to the backbone; the segmentor's own init_weights then
    initializes its heads and must leave the loaded backbone alone."""
    from mmseg.registry import MODELS as MMSEG_MODELS

    classifier = _randomize(timm.create_model('test_vmamba'))
    torch.save(classifier.state_dict(), tmp_path / 'timm.pth')
    head = dict(type='FCNHead', in_channels=128, channels=8, num_convs=1, num_classes=3, in_index=0)
    with DefaultScope.overwrite_default_scope('mmseg'):
        segmentor = MMSEG_MODELS.build(ConfigDict(  # as from a config file: mmseg sets attributes on it
            type='EncoderDecoder', pretrained=str(tmp_path / 'timm.pth'), decode_head=head,
            backbone=dict(type='visionssm.VisionSSMBackbone', model='test_vmamba', out_indices=(3,))))
    segmentor.init_weights()
    _assert_same_state(segmentor.backbone.body.model, classifier.state_dict())


def test_init_weights_runs_once():
    """A detector's init_weights after the backbone loaded must not re-initialize it."""
    backbone = VisionSSMBackbone('test_vmamba')
    backbone.init_weights()
    assert backbone.is_init
    with torch.no_grad():
        backbone.norm0.weight.fill_(3.)
    backbone.init_weights()
    assert torch.all(backbone.norm0.weight == 3.)


def test_checkpoint_of_another_size_names_the_mismatched_keys(tmp_path):
    torch.save(timm.create_model('test_vmamba').state_dict(), tmp_path / 'small.pth')
    with pytest.raises(ValueError, match=r'small.pth does not fit VMamba: \d+ shape mismatches: stem.conv1.weight: '
                                         r'\(8, 3, 3, 3\) in the checkpoint, \(12, 3, 3, 3\) in the model'):
        _loaded('test_vmamba', tmp_path / 'small.pth', dims=24)


@needs_parity
def test_checkpoint_of_another_family_names_missing_and_unexpected_keys():
    with pytest.raises(ValueError, match=r'vim_small.pth does not fit VMamba: .*missing keys: .*unexpected keys: '):
        _loaded('test_vmamba', PARITY / 'vim/vim_small.pth')


def test_bad_pretrained_cfg_is_refused():
    backbone = VisionSSMBackbone('test_vmamba', init_cfg=dict(type='Pretrained', checkpont='typo.pth'))
    with pytest.raises(ValueError, match='init_cfg Pretrained takes checkpoint'):
        backbone.init_weights()


def test_urls_download_once_into_distinct_cache_files(monkeypatch):
    """Google Drive links differ only in their query string: each must get a cache file of its own."""
    import timm.models._hub as hub
    from visionssm.mm.backbone import _local_file

    seen = []
    monkeypatch.setattr(hub, 'download_cached_file', lambda url, **kw: seen.append(url) or f'/cache/{url[1]}')
    assert _local_file('https://drive.google.com/uc?export=download&id=ABC') == '/cache/uc_ABC.pth'
    assert _local_file('https://host/x/vssm_tiny.pth') == '/cache/vssm_tiny.pth'
    assert _local_file('~/weights.pth').endswith('/weights.pth') and len(seen) == 2
