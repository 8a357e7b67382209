"""MambaVision: faithfulness to the official implementation (the 11 release manifests and the numeric fixture, found
by tests/_parity.py or VISIONSSM_PARITY_DIR), the mixer against its definition, the official hybrid split, the
official unmasked window padding and the fixed ``mask_padding`` behaviour, the eager-speed paths against the plain
ones (channel-last maps, a copy-free mixer, norms in the autocast dtype, BatchNorms folded in eval, the fused
residual, the attention's qkv gradient), checkpoint containers, the licence notice, and ``from_official``'s checks."""
import copy
import importlib
import json
import warnings
from typing import Tuple

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import visionssm
from visionssm.models import mambavision
from visionssm.models.mambavision import HybridStage, MambaVisionMixer, checkpoint_filter_fn
from visionssm.ops import selective_scan

from _parity import PARITY, needs_parity

FIXTURE = PARITY / 'mambavision'
# The fixture's reduced architecture as timm kwargs (MambaVision-T's layout: no layer scale).
FIXTURE_ARCH = dict(depths=(1, 2, 3, 2), dim=24, in_dim=16, window_size=(8, 8, 4, 2), num_heads=(2, 4, 8, 16),
                    num_classes=100)


def _manifests():
    return sorted(p.stem for p in (PARITY / 'manifests').glob('mambavision_*.json')) if PARITY.is_dir() else []


def _shapes(state: dict) -> dict:
    return {k: tuple(v.shape) for k, v in state.items()}


def _meta():
    return json.loads((FIXTURE / 'mambavision_small.json').read_text())


def _official_state() -> dict:
    return torch.load(FIXTURE / 'mambavision_small.pth', weights_only=True, map_location='cpu')['state_dict']


def _run(model, x):
    model.eval()
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
    return logits, pre, feats.permute(0, 3, 1, 2)


# --- the official release: keys, shapes, parameter counts ----------------------------------------------------------

@needs_parity
@pytest.mark.parametrize('variant', _manifests())
def test_manifest_maps_key_for_key(variant):
    manifest = json.loads((PARITY / 'manifests' / f'{variant}.json').read_text())
    assert manifest['family'] == 'mambavision' and manifest['container'] == 'state_dict'
    with torch.device('meta'):
        model = timm.create_model(variant)
    own = _shapes(model.state_dict())
    official = {k: torch.empty(shape, device='meta') for k, shape in manifest['keys'].items()}
    with pytest.warns(UserWarning, match='CC-BY-NC-SA-4.0'):
        assert _shapes(checkpoint_filter_fn(official, model)) == own
    assert sum(p.numel() for p in model.parameters()) == manifest['num_params']
    assert len(own) == manifest['num_state_dict_tensors']
    cfg, published = model.pretrained_cfg, manifest['pretrained_cfg']
    assert cfg['hf_hub_id'] == manifest['hf_hub_id'] and cfg['hf_hub_filename'] == manifest['hf_hub_file']
    assert cfg['url'] == manifest['checkpoint']
    assert list(cfg['input_size']) == published['input_size'] and cfg['crop_pct'] == published['crop_pct']
    assert cfg['crop_mode'] == published['crop_mode'] and list(cfg['mean']) == published['mean']
    assert cfg['license'] == 'cc-by-nc-sa-4.0' and 'non-commercial' in cfg['notes'][0]


# --- numeric parity ----------------------------------------------------------------------------------------------

@needs_parity
def test_fixture_reproduces_official_logits():
    meta = _meta()
    io = load_file(FIXTURE / meta['io_file'])
    with pytest.warns(UserWarning, match='non-commercial'):
        model = visionssm.from_official('mambavision', FIXTURE / meta['weights_file'], **meta['official']['kwargs'])
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
def test_fixture_through_timm_pretrained_file():
    """``create_model(pretrained=True, pretrained_cfg_overlay=dict(file=...))`` takes the same conversion."""
    io = load_file(FIXTURE / _meta()['io_file'])
    with pytest.warns(UserWarning, match='CC-BY-NC-SA-4.0'):
        model = timm.create_model('mambavision_t', pretrained=True, **FIXTURE_ARCH,
                                  pretrained_cfg_overlay=dict(file=str(FIXTURE / 'mambavision_small.pth')))
    logits, _, _ = _run(model.double(), io['input'].double())
    torch.testing.assert_close(logits, io['logits'], atol=1e-7, rtol=1e-7)


@needs_parity
def test_hub_weights_are_loaded_through_the_conversion(monkeypatch):
    """The default weight source, the Hugging Face Hub file, is converted like any other."""
    requested = []

    def download(repo_id, filename, revision=None, cache_dir=None):
        requested.append((repo_id, filename))
        return str(FIXTURE / 'mambavision_small.pth')

    monkeypatch.setattr(timm.models._hub, 'hf_hub_download', download)
    with pytest.warns(UserWarning, match='non-commercial'):
        model = timm.create_model('mambavision_t', pretrained=True, **FIXTURE_ARCH)
    assert requested == [('nvidia/MambaVision-T-1K', 'mambavision_tiny_1k.pth.tar')]
    io = load_file(FIXTURE / _meta()['io_file'])
    logits, _, _ = _run(model.double(), io['input'].double())
    torch.testing.assert_close(logits, io['logits'], atol=1e-7, rtol=1e-7)


@needs_parity
@pytest.mark.parametrize('container', ['state_dict_ema', 'model', 'raw', 'module.', 'encoder.', 'model.'])
def test_other_containers_and_prefixes_load_the_same(container, tmp_path):
    state = _official_state()
    if container.endswith('.'):
        contents = {'state_dict': {container + k: v for k, v in state.items()}}
    else:
        contents = state if container == 'raw' else {container: state, 'epoch': 3}
    torch.save(contents, tmp_path / 'ckpt.pth.tar')
    reference = timm.create_model('mambavision_t', **FIXTURE_ARCH)
    with pytest.warns(UserWarning):
        reference.load_pretrained(str(FIXTURE / 'mambavision_small.pth'))
        model = timm.create_model('mambavision_t', **FIXTURE_ARCH)
        model.load_pretrained(str(tmp_path / 'ckpt.pth.tar'))
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


@needs_parity
def test_detection_backbone_output_norms_are_not_classifier_weights():
    state = dict(_official_state(), **{f'outnorm{i}.weight': torch.ones(24 * 2 ** i) for i in range(4)})
    with torch.device('meta'):
        model = timm.create_model('mambavision_t', **FIXTURE_ARCH)
    with pytest.warns(UserWarning):
        assert set(checkpoint_filter_fn(state, model)) == set(model.state_dict())


def test_own_state_dict_passes_through_without_licence_warning():
    model = timm.create_model('test_mambavision')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert checkpoint_filter_fn(model.state_dict(), model).keys() == model.state_dict().keys()


# --- the mixer and the hybrid split --------------------------------------------------------------------------------

def _mixer_by_definition(mixer: MambaVisionMixer, x: torch.Tensor, valid=None) -> torch.Tensor:
    """The official mixer written out step by step (float64): both halves SiLU(symmetric depthwise conv1d,
    zero 'same' padding, no bias), Δ = softplus(W_dt·dt + b + b) (dt_proj's bias, then delta_bias again),
    h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t, y_t = C_t·h_t + D u_t, out = out_proj([y, z]) without a gate."""
    half, k = mixer.dim // 2, mixer.conv1d_x.kernel_size[0]
    xz = x @ mixer.in_proj.weight.T
    if valid is not None:
        xz = xz * valid[..., None]
    padded = F.pad(xz, (0, 0, (k - 1) // 2, k // 2))
    weight = torch.cat([mixer.conv1d_x.weight, mixer.conv1d_z.weight])[:, 0]      # (C, k)
    xz = F.silu(sum(padded[:, j:j + xz.shape[1]] * weight[:, j] for j in range(k)))
    u, z = xz[..., :half], xz[..., half:]
    dt, B, C = (u @ mixer.x_proj.weight.T).split([mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1)
    delta = F.softplus(dt @ mixer.dt_proj.weight.T + 2 * mixer.dt_proj.bias)
    A = -torch.exp(mixer.A_log)
    h = torch.zeros(x.shape[0], half, mixer.d_state, dtype=x.dtype)
    ys = []
    for t in range(x.shape[1]):
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1) + mixer.D * u[:, t])
    return torch.cat([torch.stack(ys, 1), z], dim=-1) @ mixer.out_proj.weight.T


def _randomized_mixer(dim=32, seed=0) -> MambaVisionMixer:
    torch.manual_seed(seed)
    mixer = MambaVisionMixer(dim).double()
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return mixer


def test_mixer_matches_its_definition():
    mixer = _randomized_mixer()
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(mixer(x), _mixer_by_definition(mixer, x), atol=1e-12, rtol=1e-12)
        valid = torch.rand(2, 11) > 0.3
        torch.testing.assert_close(mixer(x, valid), _mixer_by_definition(mixer, x, valid.double()),
                                   atol=1e-12, rtol=1e-12)


def test_mixer_conv_is_symmetric_and_scan_is_forward_only():
    """A change at token t reaches token t - 1 only through the symmetric conv (one step back), never further:
    the scan runs forward only."""
    mixer = _randomized_mixer()
    x = torch.randn(1, 12, 32, dtype=torch.float64)
    bumped = x.clone()
    bumped[:, 6] += 1.
    with torch.no_grad():
        diff = (mixer(bumped) - mixer(x)).abs().amax(-1)[0]
    assert diff[5] > 1e-3 and diff[7:].min() > 1e-6
    assert diff[:5].max() == 0


@pytest.mark.parametrize('depth', range(1, 9))
def test_hybrid_split_is_the_official_rule(depth):
    stage = HybridStage(32, 32, depth, window_size=4, num_heads=2)
    official = list(range(depth // 2 + 1, depth)) if depth % 2 else list(range(depth // 2, depth))
    assert [i for i, b in enumerate(stage.blocks) if isinstance(b.mixer, mambavision.Attention)] == official
    assert all(isinstance(b.mixer, MambaVisionMixer) for b in stage.blocks[:(depth + 1) // 2])


# --- windows: the official unmasked padding and the fixed behaviour -----------------------------------------------

def _stage_without_downsample(mask_padding: bool, window: int = 4, seed: int = 0) -> HybridStage:
    torch.manual_seed(seed)
    stage = HybridStage(32, 32, 2, window_size=window, num_heads=2, mask_padding=mask_padding,
                        layer_scale=0.5).double().eval()
    with torch.no_grad():
        for p in stage.parameters():
            p.add_(0.1 * torch.randn_like(p))
    stage.downsample = nn.Identity()
    return stage


def _blocks(stage, tokens):
    for block in stage.blocks:
        tokens = block(tokens)
    return tokens


@pytest.mark.parametrize('size', [(5, 7), (3, 3), (8, 4), (4, 9)])
def test_official_windows_scan_and_attend_the_zero_padding(size):
    """Each window of the zero-padded map runs as full ``window**2`` tokens; the padding is cropped afterwards."""
    stage = _stage_without_downsample(mask_padding=False)
    x = torch.randn(2, *size, 32, dtype=torch.float64)
    ws = 4
    hp, wp = -(-size[0] // ws) * ws, -(-size[1] // ws) * ws
    padded = F.pad(x, (0, 0, 0, wp - size[1], 0, hp - size[0]))
    want = torch.zeros_like(padded)
    with torch.no_grad():
        got = stage(x)
        for i in range(0, hp, ws):
            for j in range(0, wp, ws):
                window = padded[:, i:i + ws, j:j + ws].reshape(2, -1, 32)
                want[:, i:i + ws, j:j + ws] = _blocks(stage, window).reshape(2, ws, ws, 32)
    torch.testing.assert_close(got, want[:, :size[0], :size[1]], atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize('size', [(5, 7), (3, 3), (8, 4), (4, 9), (2, 5)])
def test_masked_windows_compute_each_window_cropped_to_the_image(size):
    stage = _stage_without_downsample(mask_padding=True)
    x = torch.randn(2, *size, 32, dtype=torch.float64)
    ws = 4
    want = torch.zeros_like(x)
    with torch.no_grad():
        got = stage(x)
        for i in range(0, size[0], ws):
            for j in range(0, size[1], ws):
                window = x[:, i:i + ws, j:j + ws]
                want[:, i:i + ws, j:j + ws] = _blocks(stage, window.reshape(2, -1, 32)).reshape(window.shape)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    if size[0] % ws or size[1] % ws:  # the official behaviour differs exactly where there is padding
        official = _stage_without_downsample(mask_padding=False)
        with torch.no_grad():
            assert (official(x) - got).abs().max() > 1e-3


def test_masked_padding_equals_official_where_nothing_is_padded():
    official, masked = _stage_without_downsample(False), _stage_without_downsample(True)
    x = torch.randn(1, 8, 4, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(masked(x), official(x), atol=1e-12, rtol=1e-12)


def _max_parameter_gradient(mask_padding: bool, pretrained_like: bool = False) -> float:
    torch.manual_seed(0)
    model = timm.create_model('test_mambavision', mask_padding=mask_padding, window_size=(8, 8, 8, 8),
                              depths=(1, 1, 8, 2)).train()   # 64 px: the 4x4 stage-3 map padded into an 8x8 window
    if pretrained_like:   # non-zero biases and norm affines, as trained weights have
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith('bias') or 'norm' in name:
                    p.add_(0.1 * torch.randn_like(p))
    F.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([1, 2])).backward()
    return max(p.grad.abs().max().item() for p in model.parameters() if p.grad is not None)


def test_zero_padded_windows_from_random_weights_blow_the_gradients_up():
    """Why fp16 from random weights fails at padded sizes (model card): with the init's zero biases the padded
    tokens stay exactly zero, every LayerNorm backward multiplies their gradient by 1/sqrt(eps), and the real
    tokens' attention feeds them gradient. Masked padding, or weights with non-zero biases, keep it small."""
    official = _max_parameter_gradient(mask_padding=False)
    assert official > 1000
    assert _max_parameter_gradient(mask_padding=True) < 10
    assert _max_parameter_gradient(mask_padding=False, pretrained_like=True) < 10


def test_model_mask_padding_flag_and_gradients():
    """On an input whose hybrid maps are smaller than the windows, masked padding equals windows cut to the map."""
    torch.manual_seed(0)
    masked = timm.create_model('test_mambavision', mask_padding=True).double().eval()  # windows 4 and 2
    cut = timm.create_model('test_mambavision', window_size=(8, 8, 3, 2)).double().eval()
    cut.load_state_dict(masked.state_dict())
    official = timm.create_model('test_mambavision').double().eval()
    official.load_state_dict(masked.state_dict())
    x = torch.randn(1, 3, 48, 48, dtype=torch.float64)  # hybrid maps 3x3 and 2x2
    with torch.no_grad():
        torch.testing.assert_close(masked(x), cut(x), atol=1e-12, rtol=1e-12)
        assert (official(x) - masked(x)).abs().max() > 1e-4
    masked.train()
    masked(torch.randn(1, 3, 45, 67, dtype=torch.float64)).square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in masked.parameters())


@pytest.mark.parametrize('mask_padding', [False, True])
def test_detection_sized_non_square_input(mask_padding):
    """An mmdet-style 800x1216-like aspect (scaled down): every level keeps its stride, windows pad or mask."""
    model = timm.create_model('test_mambavision', features_only=True, mask_padding=mask_padding,
                              window_size=(8, 8, 7, 7)).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 200, 304))
    assert [tuple(f.shape[-2:]) for f in feats] == [(50, 76), (25, 38), (13, 19), (7, 10)]
    assert all(torch.isfinite(f).all() for f in feats)


# --- eager speed: channel-last maps, no copies in the mixer, derived weights kept while inferring ------------------

class _OpLog(TorchDispatchMode):
    """The ATen ops dispatched inside the block, by name (and their outputs' sizes); ``paused`` leaves the ones of a
    call out."""

    def __init__(self):
        super().__init__()
        self.ops, self.sizes, self.paused = [], [], False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self.paused:
            self.ops.append(func.overloadpacket.__name__)
            self.sizes.append(out.numel() if isinstance(out, torch.Tensor) else 0)
        return out


_COPIES = {'clone', 'copy_', '_to_copy', 'contiguous', 'constant_pad_nd'}


def _log_the_mixer(monkeypatch) -> Tuple[_OpLog, list]:
    """A log of the mixer's own ops (the scan's left out) and the list of ``(u, delta, B, C)`` of every scan."""
    log, scanned = _OpLog(), []

    def scan(u, delta, A, B, C, *args, **kwargs):
        scanned.append((u, delta, B, C))
        log.paused = True
        try:
            return selective_scan(u, delta, A, B, C, *args, **kwargs)
        finally:
            log.paused = False

    monkeypatch.setattr(mambavision, 'selective_scan', scan)
    return log, scanned


def test_every_map_is_channel_last_whatever_the_input_layout():
    """The conv stages see channels-last maps and the hybrid blocks contiguous (B, L, C) tokens, for an NCHW image as
    for a channels-last one, and both give the same logits."""
    torch.manual_seed(0)
    model = timm.create_model('test_mambavision').eval()
    seen = []
    for module in model.modules():
        if isinstance(module, (mambavision.ConvBlock, mambavision.HybridBlock)):
            module.register_forward_pre_hook(lambda m, args: seen.append((type(m).__name__, args[0])))
    x = torch.randn(2, 3, 64, 64)
    logits = []
    for layout in (torch.contiguous_format, torch.channels_last):
        seen.clear()
        with torch.no_grad():
            logits.append(model(x.contiguous(memory_format=layout)))
        assert [name for name, _ in seen] == ['ConvBlock'] * 2 + ['HybridBlock'] * 4
        for name, t in seen:
            if name == 'ConvBlock':
                assert t.is_contiguous(memory_format=torch.channels_last), (layout, t.stride())
            else:
                assert t.is_contiguous(), (layout, t.stride())
    torch.testing.assert_close(logits[1], logits[0], atol=1e-6, rtol=1e-6)


def test_window_partition_of_one_window_is_a_view():
    x = torch.randn(2, 7, 7, 8)
    windows = mambavision.window_partition(x, 7)
    assert windows.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    torch.testing.assert_close(windows, x.reshape(2, 49, 8), atol=0, rtol=0)
    torch.testing.assert_close(mambavision.window_reverse(windows, 7, 7, 7), x, atol=0, rtol=0)
    padded = mambavision.window_partition(x[:, :6, :5], 7)   # still zero-padded at the bottom/right
    torch.testing.assert_close(padded, F.pad(x[:, :6, :5], (0, 0, 0, 2, 0, 1)).reshape(2, 49, 8), atol=0, rtol=0)


def test_mixer_makes_no_copies(monkeypatch):
    """in_proj's output is convolved, split, projected and scanned in place: no op of the mixer copies a tensor, and
    the scan reads u, Δ, B and C with unit-strided channels (the kernels' layout), u and B, C as views."""
    mixer = _randomized_mixer().float()
    x = torch.randn(2, 11, 32)
    log, scanned = _log_the_mixer(monkeypatch)
    for grad in (True, False):
        log.ops.clear()
        with torch.set_grad_enabled(grad), log:
            mixer(x)
        assert not _COPIES & set(log.ops), log.ops
    u, delta, B, C = scanned[-1]
    assert all(t.stride(-1) == 1 for t in (u, delta, B, C))
    assert u._base is not None and B._base is C._base is not None


def test_mixer_keeps_its_derived_weights_while_inferring(monkeypatch):
    """Without autograd the conv weight of both halves and A = -exp(A_log) are built once; an in-place update of a
    parameter rebuilds them (the output follows it)."""
    mixer = _randomized_mixer()
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    log, _ = _log_the_mixer(monkeypatch)
    with torch.no_grad():
        mixer(x)
        with log:
            mixer(x)
        assert 'exp' not in log.ops and log.ops.count('cat') == 1, log.ops   # the one cat: [scan, z]
        mixer.conv1d_z.weight.mul_(1.5)
        mixer.A_log.add_(0.1)
        torch.testing.assert_close(mixer(x), _mixer_by_definition(mixer, x), atol=1e-12, rtol=1e-12)
    log.ops.clear()
    with log:
        mixer(x)   # with autograd: built in the graph
    assert 'exp' in log.ops and log.ops.count('cat') == 2, log.ops


def test_mixer_under_bf16_autocast_tracks_its_definition():
    """Under autocast the scan takes and writes bfloat16 (state and arithmetic in float32 inside): the mixer stays
    within bfloat16's error of the float64 definition."""
    mixer = _randomized_mixer()
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    with torch.no_grad():
        want = _mixer_by_definition(mixer, x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            got = mixer.float()(x.float())
    assert got.dtype == torch.bfloat16
    err = ((got.double() - want).norm() / want.norm()).item()
    assert err < 2e-2, err


def test_mixer_on_the_triton_kernels_matches_the_reference(monkeypatch):
    """The mixer's strided views (u a half of the conv output, B and C slices of x_proj's output) through the Triton
    kernels (the interpreter on a CPU): output and gradients equal the reference scan's."""
    pytest.importorskip('triton')
    from visionssm.kernels import triton_scan
    if not torch.cuda.is_available() and not type(triton_scan._scan_fwd_kernel).__name__.startswith('Interpreted'):
        pytest.skip('triton was imported before TRITON_INTERPRET=1 was set (tests/conftest.py sets it)')
    scan_module = importlib.import_module('visionssm.ops.selective_scan')
    mixer = _randomized_mixer(dim=16).float()
    x = torch.randn(2, 9, 16)

    def run():
        xi = x.clone().requires_grad_()
        out = mixer(xi)
        out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
        grads = [xi.grad] + [p.grad for p in mixer.parameters()]
        mixer.zero_grad(set_to_none=True)
        return out.detach(), grads

    want, want_grads = run()
    monkeypatch.setitem(scan_module.BACKENDS, 'reference', (triton_scan.selective_scan_triton, lambda u: True))
    got, got_grads = run()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


def _unfolded(block, x):
    """A conv block or the stem computed module by module (the norms with their running statistics in eval)."""
    y = block.norm2(block.conv2(block.act1(block.norm1(block.conv1(x)))))
    if isinstance(block, mambavision.ConvStem):
        return block.act2(y).permute(0, 2, 3, 1)
    return x + (y * block.gamma.view(1, -1, 1, 1) if block.gamma is not None else y)


def _randomized(module, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for t in list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]:
            t.copy_(t + 0.3 * torch.randn_like(t)).abs_() if t.dim() == 1 else t.add_(0.3 * torch.randn_like(t))
    return module


@pytest.mark.parametrize('make', [lambda: mambavision.ConvBlock(8, layer_scale=0.5), lambda: mambavision.ConvBlock(8),
                                  lambda: mambavision.ConvStem(3, 6, 8)])
def test_conv_norms_fold_into_the_convs_in_eval(make):
    """In eval each BatchNorm (and the layer scale) is folded into its conv: the block's output and gradients equal
    the module-by-module ones; no normalization runs while inferring, and the folded weights follow the running
    statistics when a training step changes them."""
    block = _randomized(make()).eval()
    x = torch.randn(2, 3 if isinstance(block, mambavision.ConvStem) else 8, 10, 12)
    x = x.contiguous(memory_format=torch.channels_last)
    log = _OpLog()
    with torch.no_grad(), log:
        got = block(x)
    assert 'native_batch_norm' not in log.ops and 'convolution' in log.ops
    with torch.no_grad():
        torch.testing.assert_close(got, _unfolded(block, x), atol=1e-5, rtol=1e-5)
    xg = x.clone().requires_grad_()
    block(xg).square().sum().backward()   # eval with autograd: folded in the graph
    grads = [xg.grad] + [p.grad for p in block.parameters()]
    block.zero_grad(set_to_none=True)
    xw = x.clone().requires_grad_()
    _unfolded(block, xw).square().sum().backward()
    for g, w in zip(grads, [xw.grad] + [p.grad for p in block.parameters()]):
        assert (g - w).norm() / w.norm() < 1e-5
    block.train()(torch.randn_like(x))    # new running statistics
    block.eval()
    with torch.no_grad():
        torch.testing.assert_close(block(x), _unfolded(block, x), atol=1e-5, rtol=1e-5)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = block(x)
        want = _unfolded(block, x)
    assert ((low.float() - want).norm() / want.norm()) < 2e-2


def test_folding_a_half_precision_block_computes_in_float32():
    """A float16 block (``model.half()``) folds its norms in float32 and rounds the folded weight and bias once."""
    block = _randomized(mambavision.ConvBlock(8, layer_scale=0.7)).eval().half()
    weight, bias = mambavision.fold_batch_norm(block.conv2, block.norm2, torch.float16, block.gamma)
    n, conv, gamma = block.norm2, block.conv2, block.gamma.float()
    factor = n.weight.float() / torch.sqrt(n.running_var.float() + n.eps)
    want_weight = conv.weight.float() * (factor * gamma).view(-1, 1, 1, 1)
    want_bias = (n.bias.float() + (conv.bias.float() - n.running_mean.float()) * factor) * gamma
    # one rounding to float16 (its unit roundoff 2**-11: within 1e-3 relative); folding in float16 misses by more
    torch.testing.assert_close(weight, want_weight.half(), atol=0, rtol=1e-3)
    torch.testing.assert_close(bias, want_bias.half(), atol=0, rtol=1e-3)
    assert weight.dtype == bias.dtype == torch.float16 and weight.is_contiguous(memory_format=torch.channels_last)


def test_model_in_eval_normalizes_only_at_the_head():
    """MambaVision-T's layout in eval: of its 11 BatchNorms only the head's runs (the others are folded)."""
    model = timm.create_model('test_mambavision').eval()
    log = _OpLog()
    with torch.no_grad(), log:
        model(torch.randn(1, 3, 64, 64))
    assert log.ops.count('native_batch_norm') + log.ops.count('_native_batch_norm_legit_no_training') == 1


@pytest.mark.parametrize('shape,scale_shape', [((16, 6, 8), (8,)), ((16, 8, 5, 6), None), ((16, 6, 8), None)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_residual_with_drop_path_is_one_pass(shape, scale_shape, dtype):
    """``add_residual`` equals ``x + DropPath(y * scale)`` with the same random numbers, in training and eval, with
    one op over the whole map (addcmul) where the original takes two or three; its gradients are the same."""
    from timm.layers import DropPath
    x, y = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)
    scale = torch.rand(scale_shape) + 0.5 if scale_shape else None
    drop = DropPath(0.5)
    for training in (True, False):
        drop.train(training)
        torch.manual_seed(1)
        want = x + drop(y * scale if scale is not None else y)
        torch.manual_seed(1)
        log = _OpLog()
        with log:
            got = mambavision.add_residual(x, y, drop, scale)
        assert got.dtype == want.dtype
        tol = 1e-6 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)
        full = [op for op, n in zip(log.ops, log.sizes) if n == x.numel()]
        assert full == (['addcmul'] if training or scale is not None else ['add']), log.ops
        if training:
            dropped = (got == x).flatten(1).all(1).sum().item()
            assert 0 < dropped < x.shape[0]
    yg = y.clone().requires_grad_()
    drop.train()
    torch.manual_seed(2)
    (x + drop(yg * scale if scale is not None else yg)).sum().backward()
    want_grad, yg.grad = yg.grad, None
    torch.manual_seed(2)
    mambavision.add_residual(x, yg, drop, scale).sum().backward()
    torch.testing.assert_close(yg.grad, want_grad, atol=1e-6, rtol=1e-6)


def test_attention_backward_copies_the_qkv_gradient_once():
    """The attention equals its per-head formulation (qkv permuted to (3, B, heads, L, head_dim)) in output and
    gradients, and its backward assembles the qkv gradient with one stack, without a further clone."""
    torch.manual_seed(0)
    attn = mambavision.Attention(32, num_heads=4)
    x = torch.randn(2, 9, 32, requires_grad=True)
    qkv = attn.qkv(x).reshape(2, 9, 3, 4, 8).permute(2, 0, 3, 1, 4)
    want = attn.proj(F.scaled_dot_product_attention(*qkv.unbind(0)).transpose(1, 2).reshape(2, 9, 32))
    want.square().sum().backward()
    want_grads = [x.grad] + [p.grad for p in attn.parameters()]
    x.grad = None
    attn.zero_grad(set_to_none=True)
    got = attn(x)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    log = _OpLog()
    with log:
        got.square().sum().backward()
    for g, w in zip([x.grad] + [p.grad for p in attn.parameters()], want_grads):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    assert 'clone' not in log.ops and log.ops.count('stack') == 1, log.ops


class _CudaNormPolicy(TorchFunctionMode):
    """CUDA autocast's float32 policy for LayerNorm, on the CPU (whose autocast keeps the input dtype)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (F.layer_norm, torch.layer_norm) and torch.is_autocast_enabled('cpu'):
            up = [a.float() if isinstance(a, torch.Tensor) else a for a in args]
            with torch.autocast('cpu', enabled=False):
                return func(*up, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('attention', [False, True])
def test_block_norms_keep_the_stream_dtype_under_autocast(attention, monkeypatch):
    """Under (CUDA's) autocast the hybrid block's norms hand the mixer and the MLP bfloat16, not a float32 copy of
    the stream, and the block's output equals the float32-norm one's within bfloat16's error."""
    torch.manual_seed(0)
    block = mambavision.HybridBlock(32, attention=attention, num_heads=2)   # T's: no layer scale (its float32 γ
    # would promote the stream to float32, as in the original)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(2, 16, 32).bfloat16()
    dtypes = []
    for module in (block.mixer, block.mlp):
        module.register_forward_pre_hook(lambda m, args: dtypes.append(args[0].dtype))

    def run():
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16), _CudaNormPolicy():
            return block(x).float()

    got = run()
    assert dtypes == [torch.bfloat16] * 2
    monkeypatch.setattr(mambavision, 'norm_in_dtype', lambda norm, t: norm(t))   # autocast's float32 norms
    want = run()
    assert dtypes[2:] == [torch.float32] * 2
    err = ((got - want).norm() / want.norm()).item()
    assert err < 2e-2, err   # bfloat16 rounding of the norm's affine and output (measured 6e-3)


def test_norm_affine_in_the_autocast_dtype_is_kept_while_inferring():
    norm = nn.LayerNorm(8)
    with torch.no_grad():
        norm.weight.normal_(1., 0.5)
        norm.bias.normal_(0., 0.5)
    x = torch.randn(2, 3, 8).bfloat16()

    def want():
        return F.layer_norm(x, (8,), norm.weight.bfloat16(), norm.bias.bfloat16(), norm.eps)

    log = _OpLog()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        mambavision.norm_in_dtype(norm, x)
        with log:
            got = mambavision.norm_in_dtype(norm, x)
        assert log.ops == ['native_layer_norm'], log.ops
        torch.testing.assert_close(got, want(), atol=0, rtol=0)
        norm.weight.mul_(2.)
        torch.testing.assert_close(mambavision.norm_in_dtype(norm, x), want(), atol=0, rtol=0)
    with torch.no_grad():
        assert mambavision.norm_in_dtype(norm, x.float()).dtype == torch.float32   # no autocast: nn.LayerNorm


# --- licence, arguments --------------------------------------------------------------------------------------------

def test_licence_is_stated_everywhere():
    assert 'NON-COMMERCIAL' in mambavision.__doc__ and 'CC-BY-NC-SA-4.0' in mambavision.__doc__
    for name in timm.list_models('mambavision_*'):
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.license == 'cc-by-nc-sa-4.0' and 'NVIDIA Source Code License-NC' in cfg.notes[0]


@pytest.mark.parametrize('kwargs,match', [
    (dict(dim=24), r"requires \['in_dim', 'depths', 'window_size', 'mlp_ratio', 'num_heads'\]"),
    (dict(FIXTURE_ARCH, mlp_ratio=4, qk_scale=True), r'qk_scale .* is not supported'),
    (dict(FIXTURE_ARCH, mlp_ratio=4, norm_layer='ln2d'), r"unknown MambaVision arguments: \['norm_layer'\]"),
])
def test_from_official_rejects_what_it_cannot_build(kwargs, match):
    with pytest.raises(ValueError, match=match):
        visionssm.from_official('mambavision', **kwargs)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r'MambaVision has 4 stages .* depths has 3 entries'):
        timm.create_model('test_mambavision', depths=(1, 1, 2))
    with pytest.raises(ValueError, match=r'window_size must have one entry per stage \(4\), got \(7, 7\)'):
        timm.create_model('test_mambavision', window_size=(7, 7))
    with pytest.raises(ValueError, match=r'attention width 64 is not divisible by num_heads=3'):
        timm.create_model('test_mambavision', num_heads=(1, 1, 3, 8))


@pytest.mark.parametrize('mask_padding', [False, True])
def test_fx_graph_traced_at_one_size_runs_at_others(mask_padding):
    """The shape-dependent code (window padding, masks) sits in leaf functions."""
    from timm.layers import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor

    from visionssm.layers import mlp
    model = timm.create_model('test_mambavision', mask_padding=mask_padding).eval()
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(),  # + the shared MLP's autograd switch, not this family's
                         autowrap_functions=get_notrace_functions() + [mlp.act_linear])
    graph = create_feature_extractor(model, return_nodes={'head.fc': 'logits'}, tracer_kwargs=tracer_kwargs)
    for size in [(64, 64), (67, 45), (33, 97)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(graph(x)['logits'], model(x))
