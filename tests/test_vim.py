"""Vim: faithfulness to hustvl/Vim (manifests, the reduced fixture), the middle class token, both scan directions,
and position-embedding interpolation for other input sizes."""
import json

import pytest
import timm
import torch
import torch.nn.functional as F

import visionssm
from visionssm.models import vim
from visionssm.ops import Route, selective_scan

from _parity import PARITY, needs_parity
VARIANTS = ['vim_tiny', 'vim_small', 'vim_base', 'vim_tiny_stride8', 'vim_small_stride8']


def _fixture():
    from safetensors.torch import load_file
    meta = json.loads((PARITY / 'vim' / 'vim_small.json').read_text())
    io = load_file(PARITY / 'vim' / meta['io_file'])
    model = visionssm.from_official('vim', PARITY / 'vim' / meta['weights_file'], **meta['official']['kwargs'])
    return meta, io, model.eval()


def test_variants_are_registered():
    assert set(timm.list_models(module='vim')) == set(VARIANTS) | {'test_vim'}


@needs_parity
@pytest.mark.parametrize('variant', VARIANTS)
def test_manifest_maps_key_for_key(variant):
    manifest = json.loads((PARITY / 'manifests' / f'{variant}.json').read_text())
    with torch.device('meta'):
        model = timm.create_model(variant)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = {k: torch.empty(shape, device='meta') for k, shape in manifest['keys'].items()}
    assert {k: tuple(v.shape) for k, v in vim.checkpoint_filter_fn(official, model).items()} == own
    assert sum(p.numel() for p in model.parameters()) == manifest['num_params']
    assert len(own) == manifest['num_state_dict_tensors']
    stride = 8 if 'stride8' in variant else 16
    assert model.patch_embed.stride == stride and model.pos_embed.shape[1] == ((224 - 16) // stride + 1) ** 2 + 1


@needs_parity
def test_fixture_reproduces_official_logits():
    meta, io, model = _fixture()
    tol64, tol32 = meta['recommended_tolerance']['float64_run'], meta['recommended_tolerance']['float32_run']
    with torch.no_grad():
        model.double()
        x = io['input'].double()
        torch.testing.assert_close(model(x), io['logits'], atol=tol64['atol'], rtol=tol64['rtol'])
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(pre, io['pre_logits'], atol=tol64['atol'], rtol=tol64['rtol'])
        logits32 = model.float()(io['input'])
    torch.testing.assert_close(logits32.double(), io['logits'], atol=tol32['atol'], rtol=tol32['rtol'])


@needs_parity
def test_fixture_through_timm_pretrained_file():
    meta = json.loads((PARITY / 'vim' / 'vim_small.json').read_text())
    from safetensors.torch import load_file
    io = load_file(PARITY / 'vim' / meta['io_file'])
    kw = meta['official']['kwargs']
    model = timm.create_model('vim_tiny', pretrained=True, img_size=kw['img_size'], embed_dim=kw['embed_dim'],
                              depth=kw['depth'], num_classes=kw['num_classes'],
                              pretrained_cfg_overlay=dict(file=str(PARITY / 'vim' / meta['weights_file']))).eval()
    with torch.no_grad():
        torch.testing.assert_close(model.double()(io['input'].double()), io['logits'], atol=1e-7, rtol=1e-7)


def _forward_only_mixer(mixer, x):
    """The official slow path (``use_fast_path=False``): the forward direction only, ``*_b`` unused."""
    x, z = mixer.in_proj(x).chunk(2, dim=-1)
    k = mixer.d_conv
    u = F.silu(F.conv1d(F.pad(x.transpose(1, 2), (k - 1, 0)), mixer.conv1d.weight, mixer.conv1d.bias,
                        groups=mixer.d_inner)).transpose(1, 2)
    r, n = mixer.dt_rank, mixer.d_state
    dt, B, C = F.linear(u, mixer.x_proj.weight).split([r, n, n], dim=-1)
    y = selective_scan(u.contiguous(), F.linear(dt, mixer.dt_proj.weight).contiguous(), -torch.exp(mixer.A_log),
                       B[..., None, :].contiguous(), C[..., None, :].contiguous(), mixer.D, mixer.dt_proj.bias,
                       routes=(Route('row'),))
    return mixer.out_proj(y * F.silu(z))


def _reference_mixer(mixer, x):
    """Both directions the official way: the backward one on the flipped sequence, gated, flipped back, /2."""
    def direction(xz, conv, x_proj, dt_proj, a_log, d):
        x, z = xz.chunk(2, dim=-1)
        k = mixer.d_conv
        u = F.silu(F.conv1d(F.pad(x.transpose(1, 2), (k - 1, 0)), conv.weight, conv.bias,
                            groups=mixer.d_inner)).transpose(1, 2)
        r, n = mixer.dt_rank, mixer.d_state
        dt, B, C = F.linear(u, x_proj.weight).split([r, n, n], dim=-1)
        y = selective_scan(u.contiguous(), F.linear(dt, dt_proj.weight).contiguous(), -torch.exp(a_log),
                           B[..., None, :].contiguous(), C[..., None, :].contiguous(), d, dt_proj.bias,
                           routes=(Route('row'),))
        return y * F.silu(z)
    xz = mixer.in_proj(x)
    y_f = direction(xz, mixer.conv1d, mixer.x_proj, mixer.dt_proj, mixer.A_log, mixer.D)
    y_b = direction(xz.flip(1), mixer.conv1d_b, mixer.x_proj_b, mixer.dt_proj_b, mixer.A_b_log, mixer.D_b)
    return mixer.out_proj((y_f + y_b.flip(1)) / 2)


@needs_parity
def test_both_directions_run_not_the_official_slow_path():
    meta, io, model = _fixture()
    model.double()
    mixer = model.blocks[1].mixer
    x = torch.randn(2, 17, model.embed_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = mixer(x)
        torch.testing.assert_close(ours, _reference_mixer(mixer, x), atol=1e-12, rtol=1e-12)
        assert (ours - _forward_only_mixer(mixer, x)).abs().max() > 1e-2
        # The whole model with forward-only mixers is far from the official logits; ours matches them.
        full = model(io['input'].double())
        originals = [b.mixer.forward for b in model.blocks]
        try:
            for b in model.blocks:
                b.mixer.forward = (lambda m: (lambda t: _forward_only_mixer(m, t)))(b.mixer)
            slow = model(io['input'].double())
        finally:
            for b, f in zip(model.blocks, originals):
                b.mixer.forward = f
    torch.testing.assert_close(full, io['logits'], atol=1e-7, rtol=1e-7)
    assert (slow - io['logits']).abs().max() > 0.1
    # Every backward-direction parameter gets a gradient.
    model.float().zero_grad()
    model(io['input']).sum().backward()
    for name, p in model.named_parameters():
        if name.endswith(('_b.weight', '_b.bias', 'A_b_log', 'D_b')):
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def _mixer(recompute=True, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    mixer = vim.BiMambaMixer(16, d_state=4, dt_rank=3, recompute=recompute).to(dtype)
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(torch.randn_like(p) * 0.1)   # no parameter left at a symmetric initial value
    return mixer


def test_mixer_matches_the_official_directions_with_gradients():
    mixer = _mixer()
    x = torch.randn(2, 9, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 9, 16, dtype=torch.float64)
    inputs = [x] + list(mixer.parameters())
    ours = torch.autograd.grad((mixer(x) * weight).sum(), inputs)
    want = torch.autograd.grad((_reference_mixer(mixer, x) * weight).sum(), inputs)
    names = ['x'] + [n for n, _ in mixer.named_parameters()]
    for name, g, w in zip(names, ours, want):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-10, msg=name)


@pytest.mark.parametrize('dtype', [torch.float64, torch.bfloat16])
@pytest.mark.parametrize('conv_bias', [True, False])
def test_fused_weights_backward_equals_autograds(dtype, conv_bias):
    """The fused weights' one-node backward gives every parameter the gradient autograd gives through the cats,
    pads, flip and block-diagonals, in the parameter's dtype; a frozen parameter gets none."""
    torch.manual_seed(0)
    mixer = vim.BiMambaMixer(16, d_state=4, dt_rank=3, conv_bias=conv_bias).double()
    mixer.D_b.requires_grad_(False)
    params = mixer._named_inner_parameters()
    live = [p for p in params if p is not None and p.requires_grad]
    upstream = [torch.randn_like(w) if w is not None else None
                for w in vim.fuse_bidirectional_weights(dtype, 4, *params)]

    def grads(fused):
        outs = [(w.double() * g.double()).sum() for w, g in zip(fused, upstream) if w is not None]
        return torch.autograd.grad(sum(outs), live)
    ours = grads(vim._FusedWeights.apply(dtype, 4, *params))
    want = grads(vim.fuse_bidirectional_weights(dtype, 4, *params))
    for g, w, p in zip(ours, want, live):
        assert g.dtype == p.dtype and g.shape == p.shape
        torch.testing.assert_close(g, w, atol=0, rtol=0)
    assert mixer.D_b.grad is None


@pytest.mark.parametrize('conv_bias', [True, False])
def test_per_direction_forms_equal_the_fused_ones(conv_bias):
    """The meta device's forms (FLOP counting without the fused weights' zeros) compute what the mixer's fused
    conv and block-diagonal GEMMs compute."""
    torch.manual_seed(0)
    mixer = vim.BiMambaMixer(16, d_state=4, dt_rank=3, conv_bias=conv_bias).double()
    conv_w, conv_b, x_proj, dt_proj = mixer._fused_weights(torch.float64)[:4]
    x = torch.randn(2, 9, mixer.d_inner, dtype=torch.float64)
    u = vim.depthwise_conv1d(x, conv_w, conv_b, left=mixer.d_conv - 1, repeats=2)
    torch.testing.assert_close(vim.per_direction_conv(x, conv_w, conv_b, mixer.d_conv), u, atol=1e-12, rtol=0)
    x_dbl = F.linear(u, x_proj)
    for got, want in zip(vim.per_direction_projections(u, x_proj, dt_proj, mixer.dt_rank),
                         (x_dbl, F.linear(x_dbl, dt_proj))):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize('conv_bias', [True, False])
def test_fused_weights_equal_the_plain_ops_in_a_few_kernels(conv_bias):
    """The fused weights' node returns exactly what ``fuse_bidirectional_weights`` computes (the traced and exported
    path), in 7 kernels forward and 4 backward per block (the plain ops: 18 and 10): a training step of Vim-T makes
    some 400 launches fewer."""
    from torch.utils._python_dispatch import TorchDispatchMode

    no_kernel = {torch.ops.aten.view.default, torch.ops.aten.slice.Tensor, torch.ops.aten.split.Tensor,
                 torch.ops.aten.split_with_sizes.default, torch.ops.aten._unsafe_view.default,
                 torch.ops.aten.detach.default, torch.ops.aten.reshape.default, torch.ops.aten.alias.default}

    class Kernels(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += func not in no_kernel
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    mixer = vim.BiMambaMixer(16, d_state=4, dt_rank=3, conv_bias=conv_bias)
    params = mixer._named_inner_parameters()
    want = vim.fuse_bidirectional_weights(torch.bfloat16, 4, *params)
    vim._FusedWeights.apply(torch.bfloat16, 4, *params)   # the layout is built once per shape
    with Kernels() as forward:
        ours = vim._FusedWeights.apply(torch.bfloat16, 4, *params)
    for o, w in zip(ours, want):
        assert (o is None and w is None) or (o.dtype == w.dtype and torch.equal(o, w))
    outputs = [o for o in ours if o is not None]
    upstream = [torch.ones_like(o) for o in outputs]
    with Kernels() as backward:
        torch.autograd.backward(outputs, upstream)
    assert forward.count <= 7 and backward.count <= 4, (forward.count, backward.count)


def test_mixer_recompute_keeps_only_the_projections_inputs_and_outputs():
    """With ``recompute`` the mixer keeps in_proj's input and output and out_proj's input for the backward
    (and the parameters, and their fused form: weight-sized, whatever the batch); without, every intermediate of
    the conv, projections and scan as well."""
    x = torch.randn(2, 9, 16, dtype=torch.float64, requires_grad=True)
    saved = {}
    for recompute in (True, False):
        mixer = _mixer(recompute)
        params = {p.untyped_storage().data_ptr() for p in mixer.parameters()}
        storages = {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            mixer(x)
        saved[recompute] = sum(storages.values())
        fused = sum(w.nelement() for w in mixer._fused_weights(torch.float64) if w is not None) * 8
    e = 2 * 16
    assert saved[True] == 2 * 9 * (16 + 2 * e + e) * 8 + fused   # x, xz = in_proj(x), the gated scan output
    assert saved[False] > 3 * saved[True]


def test_mixer_recompute_under_autocast_matches_keeping_everything():
    x = torch.randn(2, 9, 16)
    grads = []
    for recompute in (True, False):
        mixer = _mixer(recompute, dtype=torch.float32)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            y = mixer(x)
        assert y.dtype == torch.bfloat16
        y.float().square().sum().backward()
        grads.append([p.grad for p in mixer.parameters()])
    for g_re, g_keep in zip(*grads):   # the same bf16 computation, recomputed in the backward
        torch.testing.assert_close(g_re, g_keep, atol=0, rtol=0)


def test_mixer_recompute_with_a_frozen_input_projection():
    # only the inner parameters train: xz needs no gradient, the recomputation still keeps only it
    grads = []
    for recompute in (True, False):
        mixer = _mixer(recompute)
        mixer.in_proj.weight.requires_grad_(False)
        (mixer(torch.randn(2, 9, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))) ** 2).sum().backward()
        grads.append(dict((n, p.grad) for n, p in mixer.named_parameters()))
    assert grads[0].pop('in_proj.weight') is None and grads[1].pop('in_proj.weight') is None
    for name, g in grads[1].items():
        torch.testing.assert_close(grads[0][name], g, atol=1e-12, rtol=1e-10, msg=name)


def test_fused_weights_are_cached_for_inference_until_a_parameter_changes():
    mixer = _mixer()
    x = torch.randn(1, 5, 16, dtype=torch.float64)
    with torch.no_grad():
        y = mixer(x)
        first = mixer._fused_weights(torch.float64)
        assert mixer._fused_weights(torch.float64) is first
        mixer.D_b.add_(1.0)                            # an in-place update (an optimizer step, load_state_dict)
        assert mixer._fused_weights(torch.float64) is not first
        changed = mixer(x)
        assert (changed - y).abs().max() > 1e-3
        torch.testing.assert_close(changed, _reference_mixer(mixer, x), atol=1e-12, rtol=1e-12)
    assert mixer._fused_weights(torch.float64) is not mixer._fused_weights(torch.float64)   # not with autograd


def test_middle_class_token():
    model = timm.create_model('test_vim').eval()
    x = torch.randn(2, 3, 64, 64)
    seen = {}
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.setdefault('tokens', args[0]))
    with torch.no_grad():
        feats = model.forward_features(x)
        pooled = model.forward_head(feats, pre_logits=True)
    num_patches = 16  # 4 x 4 at 64 px
    mid = num_patches // 2
    assert feats.shape == (2, num_patches + 1, model.embed_dim)
    torch.testing.assert_close(pooled, feats[:, mid])
    want = model.cls_token[0, 0] + model.pos_embed[0, mid]
    torch.testing.assert_close(seen['tokens'][0, mid], want.detach())


@pytest.mark.parametrize('size', [(96, 64), (128, 128), (33, 97)])
def test_other_input_sizes_interpolate_pos_embed(size):
    model = timm.create_model('test_vim').eval()
    x = torch.randn(1, 3, *size)
    grid = model.patch_embed.dynamic_grid(*size)
    with torch.no_grad():
        out = model(x)
        feats = model.forward_features(x)
        maps = model.forward_intermediates(x, indices=1, intermediates_only=True)
    assert out.shape == (1, model.num_classes) and torch.isfinite(out).all()
    assert feats.shape[1] == grid[0] * grid[1] + 1
    assert maps[0].shape == (1, model.embed_dim, *grid)


def test_resample_pos_embed_keeps_the_class_slot():
    grid = (4, 4)
    patches = torch.arange(16.).view(1, 16, 1).expand(1, 16, 3)
    cls = torch.full((1, 1, 3), -7.)
    pos = torch.cat([patches[:, :8], cls, patches[:, 8:]], 1)
    assert vim.resample_pos_embed(pos, grid) is pos
    out = vim.resample_pos_embed(pos, (6, 2), grid)
    assert out.shape == (1, 13, 3)
    torch.testing.assert_close(out[:, 6], cls[:, 0])  # at the new M // 2
    assert (torch.cat([out[:, :6], out[:, 7:]], 1) >= -0.5).all()  # the class slot was not interpolated in


def test_stride8_checkpoint_from_patch16_resamples():
    src = timm.create_model('test_vim')
    dst = timm.create_model('test_vim', stride=8)
    converted = vim.checkpoint_filter_fn(src.state_dict(), dst)
    assert converted['pos_embed'].shape == dst.pos_embed.shape
    dst.load_state_dict(converted)


def test_feature_pyramid():
    model = timm.create_model('test_vim', features_only=True).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.block_indices == [0, 1, 2, 3]
    with torch.no_grad():
        feats = model(torch.randn(2, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(2, 32, 16, 16), (2, 32, 8, 8), (2, 32, 4, 4), (2, 32, 2, 2)]
    s8 = timm.create_model('test_vim', stride=8, features_only=True, out_indices=(0, 3)).eval()
    with torch.no_grad():
        feats = s8(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[-2:]) for f in feats] == [(14, 14), (1, 1)]  # from the 7 x 7 stride-8 grid


def test_no_weight_decay_and_pretrained_cfgs():
    with torch.device('meta'):
        model = timm.create_model('vim_tiny')
    nwd = model.no_weight_decay()
    assert {'pos_embed', 'cls_token', 'blocks.0.mixer.A_log', 'blocks.0.mixer.A_b_log', 'blocks.23.mixer.D_b'} <= nwd
    for name in VARIANTS:
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.url.startswith('https://huggingface.co/hustvl/Vim-')
        assert cfg.license == 'apache-2.0' and cfg.crop_pct == 0.875 and cfg.interpolation == 'bicubic'


@pytest.mark.parametrize('kwargs,match', [
    (dict(if_rope=True), r'if_rope=True is not supported'),
    (dict(bimamba_type='v1'), r"bimamba_type='v1' is not supported"),
    (dict(use_middle_cls_token=False), r'use_middle_cls_token=False is not supported'),
    (dict(flip_img_sequences_ratio=0.5), r'flip_img_sequences_ratio > 0 is not supported'),
    (dict(window=3), r"unknown VisionMamba arguments: \['window'\]"),
])
def test_from_official_rejects_unreleased_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        visionssm.from_official('vim', embed_dim=32, depth=1, img_size=64, **kwargs)
