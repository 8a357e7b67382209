"""PlainMamba: faithfulness to ChenhongyiYang/PlainMamba (manifests, the reduced fixture, both official quirks and the
flags that give the paper's behaviour), the zig-zag routes and direction codes, and other input sizes."""
import json

import pytest
import timm
import torch
import torch.nn.functional as F

import visionssm
from visionssm.models import plainmamba
from visionssm.ops import Route, selective_scan

from _parity import PARITY, needs_parity

VARIANTS = ['plainmamba_l1', 'plainmamba_l2', 'plainmamba_l3']
FIXTURE = PARITY / 'plainmamba'


def _fixture():
    from safetensors.torch import load_file
    meta = json.loads((FIXTURE / 'plainmamba_small.json').read_text())
    return meta, load_file(FIXTURE / meta['io_file'])


def _from_file(path, **flags):
    """The fixture's model through timm's pretrained path (an official file given as the weight location)."""
    return timm.create_model('plainmamba_l1', pretrained=True, img_size=64, embed_dim=64, depth=3, num_classes=100,
                             pretrained_cfg_overlay=dict(file=str(path)), **flags).eval()


def test_variants_are_registered():
    assert set(timm.list_models(module='plainmamba')) == set(VARIANTS) | {'test_plainmamba'}


@needs_parity
@pytest.mark.parametrize('variant', VARIANTS)
def test_manifest_maps_key_for_key(variant):
    manifest = json.loads((PARITY / 'manifests' / f'{variant}.json').read_text())
    with torch.device('meta'):
        model = timm.create_model(variant)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = {k: torch.empty(shape, device='meta') for k, shape in manifest['keys'].items()}
    # the EMA hook's copies (L2 / L3 configs) may be in the release files: they are dropped
    official.update({'ema_' + k.replace('.', '_'): v for k, v in list(official.items())[:3]})
    converted = plainmamba.checkpoint_filter_fn(official, model)
    assert {k: tuple(v.shape) for k, v in converted.items()} == own
    assert sum(p.numel() for p in model.parameters()) == manifest['num_params']
    assert sum(p.numel() for n, p in model.named_parameters() if not n.startswith('head.')) == \
        manifest['num_params_backbone_only']
    assert len(own) == manifest['num_state_dict_tensors']


@needs_parity
def test_from_official_builds_the_released_configs():
    for variant in VARIANTS:
        kwargs = json.loads((PARITY / 'manifests' / f'{variant}.json').read_text())['official_builder']['kwargs']
        with torch.device('meta'):
            ours, official = timm.create_model(variant), visionssm.from_official('plainmamba', **kwargs)
        shapes = lambda m: {k: v.shape for k, v in m.state_dict().items()}
        assert shapes(official) == shapes(ours)
        assert official.blocks[-1].drop_path.drop_prob == pytest.approx(ours.blocks[-1].drop_path.drop_prob)


@needs_parity
def test_fixture_reproduces_official_logits():
    meta, io = _fixture()
    model = visionssm.from_official('plainmamba', FIXTURE / meta['weights_file'], **meta['official']['kwargs']).eval()
    tol64, tol32 = meta['recommended_tolerance']['float64_run'], meta['recommended_tolerance']['float32_run']
    with torch.no_grad():
        model.double()
        x = io['input'].double()
        torch.testing.assert_close(model(x), io['logits'], atol=tol64['atol'], rtol=tol64['rtol'])
        feats = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(feats, pre_logits=True), io['pre_logits'],
                                   atol=tol64['atol'], rtol=tol64['rtol'])
        nchw = feats.unflatten(1, io['features_nchw'].shape[-2:]).permute(0, 3, 1, 2)
        torch.testing.assert_close(nchw, io['features_nchw'], atol=tol64['atol'], rtol=tol64['rtol'])
        logits32 = model.float()(io['input'])
    torch.testing.assert_close(logits32.double(), io['logits'], atol=tol32['atol'], rtol=tol32['rtol'])


@needs_parity
def test_fixture_through_timm_pretrained_file_and_other_containers(tmp_path):
    meta, io = _fixture()
    path = FIXTURE / meta['weights_file']
    with torch.no_grad():
        torch.testing.assert_close(_from_file(path).double()(io['input'].double()), io['logits'], atol=1e-7, rtol=1e-7)
    # a raw state dict, a DDP 'module.' prefix and EMA buffers load the same
    sd = torch.load(path, weights_only=True, map_location='cpu')['state_dict']
    variants = {'raw.pth': sd, 'ddp.pth': {'state_dict': {'module.' + k: v for k, v in sd.items()}},
                'ema.pth': {'state_dict': dict(sd, ema_backbone_pos_embed=sd['backbone.pos_embed'] * 0)}}
    for name, contents in variants.items():
        torch.save(contents, tmp_path / name)
        model = visionssm.from_official('plainmamba', tmp_path / name, **meta['official']['kwargs']).eval()
        with torch.no_grad():
            torch.testing.assert_close(model.double()(io['input'].double()), io['logits'], atol=1e-7, rtol=1e-7)


@needs_parity
@pytest.mark.parametrize('flags,least', [
    (dict(params_at='route'), 0.3),      # Δ, B, C gathered into scan order as the paper describes (0.53 measured)
    (dict(dt_bias_twice=False), 0.1),    # the Δ bias once (0.19 measured)
])
def test_paper_flags_move_away_from_the_official_logits(flags, least):
    meta, io = _fixture()
    model = _from_file(FIXTURE / meta['weights_file'], **flags).double()
    with torch.no_grad():
        assert (model(io['input'].double()) - io['logits']).abs().max() > least


# --- an independent mixer: the official algorithm written out (gather x, scan in sequence form, scatter back) ----

def _snake(height, width, by_rows):
    """Continuous zig-zag and the arrival direction of each step (0 start, 1 right, 2 left, 3 up, 4 down)."""
    order, codes = [], []
    lines = range(height) if by_rows else range(width)
    for i in lines:
        cells = range(width) if by_rows else range(height)
        cells = cells if i % 2 == 0 else reversed(cells)
        for j in cells:
            r, c = (i, j) if by_rows else (j, i)
            if order:
                pr, pc = divmod(order[-1], width)
                codes.append({(0, 1): 1, (0, -1): 2, (-1, 0): 3, (1, 0): 4}[(r - pr, c - pc)])
            else:
                codes.append(0)
            order.append(r * width + c)
    return order, codes


def _reversed(order, codes):
    flip = {0: 0, 1: 2, 2: 1, 3: 4, 4: 3}
    rev = order[::-1]
    return rev, [0] + [flip[c] for c in codes[::-1][:-1]]


def _official_mixer(mixer, x, params_at, dt_bias_twice):
    """Four single-route scans over x gathered into each order; Δ, B, C raster ('step') or gathered ('route')."""
    batch, height, width, _ = x.shape
    xz = mixer.in_proj(x)
    x, z = xz.chunk(2, dim=-1)
    u = F.silu(mixer.conv2d(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1).flatten(1, 2)
    r, n = mixer.dt_rank, mixer.d_state
    dt, B, C = mixer.x_proj(u).split([r, n, n], dim=-1)
    delta = F.linear(dt, mixer.dt_proj.weight, mixer.dt_proj.bias if dt_bias_twice else None)
    rows, cols = _snake(height, width, True), _snake(height, width, False)
    y = torch.zeros_like(u)
    for order, codes in (rows, _reversed(*rows), cols, _reversed(*cols)):
        o = torch.tensor(order)
        at = o if params_at == 'route' else torch.arange(len(order))
        Bk = B[:, at] + mixer.direction_Bs[torch.tensor(codes)]
        yk = selective_scan(u[:, o].contiguous(), delta[:, at].contiguous(), -torch.exp(mixer.A_log),
                            Bk[:, :, None].contiguous(), C[:, at, None].contiguous(), mixer.D, mixer.dt_proj.bias,
                            routes=(Route('row'),))
        y[:, o] += yk
    return mixer.out_proj(y.unflatten(1, (height, width)) * F.silu(z))


@pytest.mark.parametrize('params_at', ['step', 'route'])
@pytest.mark.parametrize('dt_bias_twice', [True, False])
@pytest.mark.parametrize('hw', [(3, 4), (5, 2), (1, 5)])
def test_mixer_equals_the_written_out_algorithm(params_at, dt_bias_twice, hw):
    torch.manual_seed(0)
    mixer = plainmamba.PlainMamba2D(8, d_state=3, params_at=params_at, dt_bias_twice=dt_bias_twice).double()
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(2, *hw, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(mixer(x), _official_mixer(mixer, x, params_at, dt_bias_twice),
                                   atol=1e-12, rtol=1e-12)


def test_direction_codes_are_the_official_ones():
    # 3x4 grid (research note / official get_permute_order): codes of the row zig-zag and its reverse, by step
    routes = plainmamba.PlainMamba2D(8).routes
    codes = plainmamba.direction_codes(routes, 3, 4, torch.device('cpu')).flatten(0, 1)
    assert codes[:, 0].tolist() == [0, 1, 1, 1, 4, 2, 2, 2, 4, 1, 1, 1]       # 'step': the code of step t at t
    assert codes[:, 1].tolist() == [0, 2, 2, 2, 3, 1, 1, 1, 3, 2, 2, 2]
    for k, (order, want) in enumerate([_snake(3, 4, True), _reversed(*_snake(3, 4, True)), _snake(3, 4, False),
                                       _reversed(*_snake(3, 4, False))]):
        assert codes[:, k].tolist() == want
        paper = plainmamba.direction_codes(plainmamba.PlainMamba2D(8, params_at='route').routes, 3, 4,
                                           torch.device('cpu')).flatten(0, 1)
        assert paper[order, k].tolist() == want                              # 'route': at the step's position


@pytest.mark.parametrize('size', [(67, 45), (33, 97), (128, 96)])
def test_other_input_sizes_resize_the_position_embedding(size):
    model = timm.create_model('test_plainmamba').eval()
    x = torch.randn(1, 3, *size)
    grid = (-(-((size[0] - 1) // 2 + 1) // 8), -(-((size[1] - 1) // 2 + 1) // 8))   # stem, then corner-padded 8x8
    seen = {}
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.setdefault('tokens', args[0]))
    with torch.no_grad():
        out = model(x)
        tokens = model.patch_embed(x)
    assert out.shape == (1, model.num_classes) and torch.isfinite(out).all()
    assert tokens.shape[1:3] == grid
    pos = F.interpolate(model.pos_embed.detach().reshape(1, 4, 4, -1).permute(0, 3, 1, 2), size=grid,
                        mode='bicubic', align_corners=False).permute(0, 2, 3, 1)
    torch.testing.assert_close(seen['tokens'], tokens + pos)


def test_segmentation_features_at_one_stride():
    # the official segmentation backbone: four block outputs at stride 16 (the last block of each quarter)
    model = timm.create_model('test_plainmamba', features_only=True, reductions=(16, 16, 16, 16)).eval()
    assert model.feature_info.reduction() == [16] * 4 and model.block_indices == [0, 1, 2, 3]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(1, 32, 4, 6)] * 4
    with torch.device('meta'):   # the official L3 seg config takes blocks (8, 17, 26, 35)
        assert timm.create_model('plainmamba_l3', features_only=True, reductions=(16,) * 4).block_indices == [
            8, 17, 26, 35]


def test_no_weight_decay_and_pretrained_cfgs():
    with torch.device('meta'):
        model = timm.create_model('plainmamba_l1')
    assert {'pos_embed', 'blocks.0.mamba.A_log', 'blocks.0.mamba.D', 'blocks.23.mamba.direction_Bs'} <= \
        model.no_weight_decay()
    for name in VARIANTS:
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.url == f'https://huggingface.co/ChenhongyiYang/PlainMamba/resolve/main/{name[-2:]}.pth'
        assert cfg.license == 'apache-2.0' and cfg.crop_pct == 0.875 and cfg.interpolation == 'bicubic'


@pytest.mark.parametrize('kwargs,match', [
    (dict(backbone=dict(type='PlainMamba', arch='L4')), r"arch must be one of \['L1', 'L2', 'L3'\] or None"),
    (dict(backbone=dict(type='PlainMamba', arch='L1', out_indices=[3])), r'out_indices other than -1'),
    (dict(backbone=dict(type='PlainMamba', layer_cfgs=dict(use_rms_norm=True))), r'use_rms_norm=True'),
    (dict(backbone=dict(type='PlainMamba', layer_cfgs=dict(mamba_cfg=dict(init_layer_scale=1e-4)))),
     r'init_layer_scale=0.0001 is not supported'),
    (dict(backbone=dict(type='PlainMamba', window=3)), r"unknown PlainMamba backbone arguments: \['window'\]"),
    (dict(neck=dict(type='GlobalAveragePooling')), r'neck must be CustomAveragePooling'),
    (dict(backbone=dict(type='PlainMamba', arch='L1'), head=dict(type='LinearClsHead', in_channels=384)),
     r'head in_channels 384 differ from the width 192'),
    (dict(type='ImageClassifier', mixup=1), r"unknown ImageClassifier arguments: \['mixup'\]"),
])
def test_from_official_rejects_unreleased_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        visionssm.from_official('plainmamba', **kwargs)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"params_at must be 'step' \(official\) or 'route' \(paper\), got 'raster'"):
        timm.create_model('test_plainmamba', params_at='raster')
    with pytest.raises(ValueError, match=r'dwconv_layers must index the 4 blocks, got \[7\]'):
        timm.create_model('test_plainmamba', dwconv_layers=(7,))


def test_fx_trace_at_other_sizes():
    # shape-dependent helpers are FX leaves: one traced graph serves every input size
    from timm.layers import create_feature_extractor, get_graph_node_names
    model = timm.create_model('test_plainmamba').eval()
    last = get_graph_node_names(model)[1][-1]
    traced = create_feature_extractor(model, return_nodes=[last])
    for size in ((64, 64), (67, 45)):
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(traced(x)[last], model(x))


@pytest.mark.slow
def test_compiles_fullgraph_at_several_sizes(monkeypatch):
    # one graph through the Triton op (on CPU: the interpreter, with the backend's CUDA-only predicate lifted); a
    # second input size recompiles with dynamic shapes (the direction codes and the tokenizer's padding trace)
    S = pytest.importorskip('visionssm.ops.selective_scan')
    if 'triton' not in S.BACKENDS:
        pytest.skip('no triton')
    TS = pytest.importorskip('visionssm.kernels.triton_scan')
    if not torch.cuda.is_available() and not type(TS._scan_fwd_kernel).__name__.startswith('Interpreted'):
        pytest.skip('triton was imported before TRITON_INTERPRET could be set')
    monkeypatch.setitem(S.BACKENDS, 'triton', (S.BACKENDS['triton'][0], lambda u: True))
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    torch.manual_seed(0)
    model = timm.create_model('test_plainmamba', depth=2).to(device).eval()
    compiled = torch.compile(model, fullgraph=True, backend='aot_eager')
    for size in ((32, 48), (48, 32)):
        x = torch.randn(1, 3, *size, device=device)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-4)
