"""PlainMamba-Adapter detection: the ViT-Adapter (visionssm/mm/adapter.py) inside VisionSSMBackbone, and the Mask
R-CNN / RetinaNet configs of configs/detection/plainmamba/.

The deformable attention is checked against mmcv's independent module; the adapter's wiring through what its
zero-initialized injectors leave unchanged; the configs through the published parameter counts (full size, meta
device) and one optimizer step of each detector with a tiny backbone on a synthetic batch.
"""
import math
import re
from pathlib import Path

import pytest
import timm
import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

from visionssm.mm.adapter import MSDeformAttn, ViTAdapter, _geometry
from visionssm.mm.backbone import VisionSSMBackbone
from _parity import PARITY, needs_parity

CONFIGS = sorted((Path(__file__).resolve().parents[1] / 'configs' / 'detection' / 'plainmamba').glob('*.py'))
TINY_ADAPTER = dict(interaction_indexes=[[0, 1], [2, 3]], conv_inplane=8, deform_num_heads=4, drop_path=0.1)


def _tiny_backbone(**kwargs):
    return VisionSSMBackbone('test_plainmamba', adapter=dict(TINY_ADAPTER), **kwargs)


# --- deformable attention -------------------------------------------------------------------------------------------

def test_deformable_attention_matches_mmcv_module():
    from mmcv.ops import MultiScaleDeformableAttention
    torch.manual_seed(0)
    ours = MSDeformAttn(d_model=32, n_levels=3, n_heads=4, n_points=2)
    theirs = MultiScaleDeformableAttention(embed_dims=32, num_heads=4, num_levels=3, num_points=2, dropout=0.,
                                           batch_first=True)
    # the same initial sampling pattern (the rest of the init is random or zero)
    assert torch.equal(ours.sampling_offsets.bias, theirs.sampling_offsets.bias)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(std=0.3)
    theirs.load_state_dict(ours.state_dict())
    shapes = [(6, 4), (3, 2), (2, 1)]
    geometry = _geometry([(5, 3)], shapes, torch.device('cpu'))
    query, value = torch.randn(2, 15, 32), torch.randn(2, sum(h * w for h, w in shapes), 32)
    expected = theirs(query, value=value, identity=torch.zeros_like(query), reference_points=geometry[0],
                      spatial_shapes=geometry[1], level_start_index=geometry[2])
    torch.testing.assert_close(ours(query, value, geometry), expected, rtol=1e-5, atol=1e-6)


def test_geometry_puts_reference_points_at_cell_centres():
    points, shapes, starts = _geometry([(2, 3), (1, 1)], [(4, 6), (2, 3), (1, 2)], torch.device('cpu'))
    expected = [[x / 6, y / 4] for y in (1, 3) for x in (1, 3, 5)] + [[0.5, 0.5]]
    assert points.shape == (1, 7, 1, 2)
    torch.testing.assert_close(points[0, :, 0], torch.tensor(expected))
    assert shapes.tolist() == [[4, 6], [2, 3], [1, 2]] and starts.tolist() == [0, 24, 30]


def test_bad_heads_are_refused():
    with pytest.raises(ValueError, match='divisible by the number of heads'):
        MSDeformAttn(d_model=30, n_levels=1, n_heads=4, n_points=1)


# --- the adapter in VisionSSMBackbone -------------------------------------------------------------------------------

def test_levels_at_strides_4_to_32_and_every_parameter_learns():
    backbone = _tiny_backbone()
    assert backbone.channels == [32] * 4
    assert all(isinstance(getattr(backbone, f'norm{i}'), torch.nn.BatchNorm2d) for i in range(4))
    outs = backbone(torch.randn(2, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(2, 32, 16, 24), (2, 32, 8, 12), (2, 32, 4, 6), (2, 32, 2, 3)]
    sum((o * torch.randn_like(o)).sum() for o in outs).backward()
    assert [n for n, p in backbone.named_parameters() if p.grad is None] == []
    assert backbone.body.model.norm.__class__ is torch.nn.Identity  # the official final_norm=False
    assert len(backbone.body.interactions[-1].extra_extractors) == 2
    assert all(b.extra_extractors is None for b in backbone.body.interactions[:-1])


def test_without_level_0_the_stride_4_branch_is_not_built():
    backbone = _tiny_backbone(out_indices=(1, 2, 3))
    assert backbone.body.up is None and backbone.body.spm.fc1 is None and not hasattr(backbone, 'norm0')
    full = _tiny_backbone()
    full.load_state_dict(backbone.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(backbone.eval()(x), full.eval()(x)[1:]):
        torch.testing.assert_close(a, b)


def test_zero_injector_scale_leaves_the_backbone_path_unchanged():
    """gamma starts at 0: the blocks see exactly the plain model's tokens, so the last block's map is the plain
    model's; with gamma set, the spatial prior reaches it."""
    backbone = _tiny_backbone().eval()
    adapter: ViTAdapter = backbone.body
    assert all(torch.count_nonzero(b.injector.gamma) == 0 for b in adapter.interactions)
    seen = []
    adapter.model.blocks[-1].register_forward_hook(lambda m, i, o: seen.append(o))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        backbone(x)
        plain = adapter.model.forward_intermediates(x, indices=1, output_fmt='NHWC', intermediates_only=True)[0]
        torch.testing.assert_close(seen[-1], plain, rtol=0, atol=0)
        for block in adapter.interactions:
            block.injector.gamma.fill_(0.5)
        backbone(x)
    assert (seen[-1] - plain).abs().max() > 1e-3


def test_with_cp_checkpoints_the_blocks_and_computes_the_same():
    torch.manual_seed(0)
    plain = _tiny_backbone()
    checkpointed = _tiny_backbone(with_cp=True)
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpointed.body.model.grad_checkpointing
    x = torch.randn(1, 3, 64, 64)
    for backbone in (plain, checkpointed):
        torch.manual_seed(1)  # the same drop-path draws
        sum((o * o).sum() for o in backbone(x)).backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_adapter_refusals():
    with pytest.raises(ValueError, match='divisible by 32'):
        _tiny_backbone()(torch.randn(1, 3, 48, 64))
    with pytest.raises(ValueError, match='covering the 4 blocks'):
        VisionSSMBackbone('test_plainmamba', adapter=dict(TINY_ADAPTER, interaction_indexes=[[0, 1], [3, 3]]))
    with pytest.raises(ValueError, match='built for PlainMamba'):
        VisionSSMBackbone('test_vmamba', adapter=dict(TINY_ADAPTER))
    with pytest.raises(ValueError, match='frozen_stages must be in -1..0'):
        _tiny_backbone(frozen_stages=1)


def test_frozen_stem_is_the_tokenizer_and_position_embedding():
    backbone = _tiny_backbone(frozen_stages=0).train()
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(('body.model.patch_embed.', 'body.model.pos_embed')) for n in frozen)
    assert not backbone.body.model.patch_embed.training


@needs_parity
def test_init_cfg_loads_the_official_classifier_into_the_model_and_keeps_the_adapter():
    """As the official Pretrained init (prefix 'backbone.'): the blocks, tokenizer and position embedding from the
    classification file (its final norm and head dropped), the adapter and output norms as initialized."""
    path = PARITY / 'plainmamba' / 'plainmamba_small.pth'
    kwargs = dict(img_size=64, embed_dim=64, depth=3)  # the fixture's reduced L1 layout
    torch.manual_seed(0)
    backbone = VisionSSMBackbone('plainmamba_l1', init_cfg=dict(type='Pretrained', checkpoint=str(path)),
                                 adapter=dict(TINY_ADAPTER, interaction_indexes=[[0, 0], [1, 2]]), **kwargs)
    initial = {k: v.clone() for k, v in backbone.state_dict().items() if not k.startswith('body.model.')}
    backbone.init_weights()
    classifier = timm.create_model('plainmamba_l1', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                                   **kwargs).state_dict()
    model = backbone.body.model.state_dict()
    assert set(classifier) - set(model) == {'norm.weight', 'norm.bias', 'head.weight', 'head.bias'}
    assert all(torch.equal(v, classifier[k]) for k, v in model.items())
    assert all(torch.equal(v, initial[k]) for k, v in backbone.state_dict().items() if k in initial)


# --- the configs ----------------------------------------------------------------------------------------------------

def test_a_mask_rcnn_and_a_retinanet_config_per_published_size():
    names = {p.stem for p in CONFIGS}
    assert names == {f'{det}_plainmamba-adapter-{size}_fpn_1x_coco'
                     for det in ('mask-rcnn', 'retinanet') for size in ('l1', 'l2', 'l3')}


def _published_params(path: Path) -> int:
    return int(re.search(r'\((\d+)M params\)', path.read_text().splitlines()[1]).group(1))


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.stem)
def test_full_size_detector_has_the_published_parameter_count(path):
    """The README's counts are whole millions, cut off (e.g. 79.8M is listed as 79)."""
    from mmdet.registry import MODELS
    cfg = Config.fromfile(path)
    with DefaultScope.overwrite_default_scope('mmdet'), torch.device('meta'):
        model = MODELS.build(cfg.model)
    assert math.floor(sum(p.numel() for p in model.parameters()) / 1e6) == _published_params(path)


def test_weight_decay_follows_the_official_names():
    cfg = Config.fromfile(CONFIGS[0])
    backbone = _tiny_backbone()
    optim_wrapper = build_optim_wrapper(backbone, cfg.optim_wrapper)
    decay = {id(p): group['weight_decay'] for group in optim_wrapper.param_groups for p in group['params']}
    params = dict(backbone.named_parameters())
    spared = ['body.level_embed', 'body.model.pos_embed', 'body.model.blocks.0.norm.weight', 'norm0.weight',
              'body.interactions.0.injector.query_norm.weight', 'body.model.blocks.1.mamba.A_log',
              'body.model.blocks.1.mamba.D', 'body.model.blocks.1.mamba.direction_Bs', 'body.up.bias',
              'body.interactions.1.extractor.attn.value_proj.bias']
    decayed = ['body.interactions.0.injector.gamma', 'body.spm.stem.1.weight', 'body.model.patch_embed.stem.1.weight',
               'body.model.blocks.1.mamba.in_proj.weight', 'body.interactions.1.extractor.ffn.dwconv.dwconv.weight']
    assert [decay[id(params[n])] for n in spared] == [0.] * len(spared)
    assert [decay[id(params[n])] for n in decayed] == [0.05] * len(decayed)


def _synthetic_batch(with_masks: bool, size=(64, 64)):
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    generator = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for boxes in ([[4., 6., 40., 50.], [30., 10., 60., 30.]], [[10., 12., 54., 58.]]):
        instances = InstanceData(bboxes=torch.tensor(boxes), labels=torch.arange(len(boxes)) + 3)
        if with_masks:
            masks = torch.zeros(len(boxes), *size, dtype=torch.uint8)
            for mask, (x0, y0, x1, y1) in zip(masks, boxes):
                mask[int(y0):int(y1), int(x0):int(x1)] = 1
            instances.masks = BitmapMasks(masks.numpy(), *size)
        sample = DetDataSample(metainfo=dict(img_shape=size, ori_shape=size, pad_shape=size, scale_factor=(1., 1.)))
        sample.gt_instances = instances
        inputs.append(torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=generator))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.stem)
def test_detector_trains_a_step_with_a_tiny_backbone(path):
    from mmdet.registry import MODELS
    cfg = Config.fromfile(path)
    levels = len(cfg.model.backbone.out_indices)
    cfg.merge_from_dict({
        'model.backbone.model': 'test_plainmamba',
        'model.backbone.adapter': TINY_ADAPTER,
        'model.backbone.init_cfg': None,  # no ImageNet download
        'model.neck.in_channels': [32] * levels,
        'model.neck.out_channels': 32,
    })
    mask_rcnn = 'roi_head' in cfg.model
    if mask_rcnn:
        cfg.merge_from_dict({
            'model.rpn_head.in_channels': 32, 'model.rpn_head.feat_channels': 32,
            'model.roi_head.bbox_roi_extractor.out_channels': 32, 'model.roi_head.bbox_head.in_channels': 32,
            'model.roi_head.bbox_head.conv_out_channels': 32, 'model.roi_head.bbox_head.fc_out_channels': 64,
            'model.roi_head.mask_roi_extractor.out_channels': 32, 'model.roi_head.mask_head.in_channels': 32,
            'model.roi_head.mask_head.conv_out_channels': 32, 'model.train_cfg.rpn_proposal.max_per_img': 100,
            'model.train_cfg.rcnn.sampler.num': 32})
    else:
        cfg.merge_from_dict({'model.bbox_head.in_channels': 32, 'model.bbox_head.feat_channels': 32})
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = revert_sync_batchnorm(MODELS.build(cfg.model))  # as mmengine's runner does on one process
        model.init_weights()
        optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        model.train()
        log = model.train_step(_synthetic_batch(with_masks=mask_rcnn), optim_wrapper)
    expected = {'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox', 'loss_mask'} if mask_rcnn \
        else {'loss_cls', 'loss_bbox'}
    assert expected <= set(log) and all(torch.isfinite(v) for v in log.values())
    unchanged = {n for n, p in model.named_parameters() if n.startswith('backbone.') and torch.equal(p, before[n])}
    # Every backbone parameter moves but what gets no gradient in the first step and does not decay: with gamma = 0
    # the injectors' norms and attention (gamma itself gets a gradient; the value and output projections decay), and
    # the deformable attentions' query norms (the query feeds only the offset and weight projections, zero at first).
    cut_off = {n for n in before if '.query_norm.' in n
               or re.search(r'\.injector\.(feat_norm\.|attn\.(?!(value|output)_proj\.weight))', n)}
    assert unchanged == cut_off
