"""timm's model contract beyond the plain forward, for every registered visionssm model (new families are covered by
registering them): the default-cfg checks of timm's ``tests/test_models.py``, torch.fx tracing forward and backward
(timm's FX feature extraction, torchvision's ``create_feature_extractor``, a plain tracer with timm's leaves), and
TorchScript. Traced graphs are compared with the eager model, value for value.

The default-cfg checks run on every variant: at the cfg's input size on the meta device (shapes only), and on the
CPU with values for the tiny ``test_*`` variants. Tracing and TorchScript run on the tiny variants.
"""
import math
import sys
import warnings

import pytest
import timm
import torch
from timm.layers import get_channel_dim, get_spatial_dim, set_scriptable
from timm.models import create_feature_extractor, get_graph_node_names, get_notrace_functions, get_notrace_modules
from torchvision.models import feature_extraction as tv_fx

import visionssm  # noqa: F401  (registers the models)
from visionssm.models import FAMILIES

from _model_cache import eval_model
from visionssm.ops import Route, selective_scan
from visionssm.ops.selective_scan import TORCHSCRIPT_UNSUPPORTED

MODELS = timm.list_models(module=list(FAMILIES))
TINY = [m for m in MODELS if m.startswith('test_')]
FORMATS = ('NCHW', 'NHWC', 'NLC')  # NLC: token features, which timm tests as non-standard (its ViTs)




def _input(model, batch=1, size=None, seed=0):
    size = size or model.pretrained_cfg['input_size'][1:]
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def _output_fmt(model) -> str:
    fmt = getattr(model, 'output_fmt', 'NCHW')
    assert fmt in FORMATS, f'output_fmt must be one of {FORMATS}, got {fmt!r}'
    return fmt


def test_every_family_has_a_tiny_variant():
    # the tracing and TorchScript tests below reach a family through its tiny variant only
    assert all(any(m in TINY for m in timm.list_models(module=family)) for family in FAMILIES)


# --- default cfg: timm's test_model_default_cfgs (maps) and test_model_default_cfgs_non_std (tokens) ------------

@pytest.mark.parametrize('name', MODELS)
def test_default_cfg(name):
    """Maps: the cfg's pool size at the spatial axes of ``output_fmt``, with the head and without; tokens: the
    non-standard checks. Then pre-logits and head widths, and the cfg's classifier and first conv names.

    The tiny variants run every forward, with values; the others run ``forward_features`` once on the meta device
    at the cfg's input size, and their heads on its output (``forward`` is ``forward_head(forward_features(x))``).
    """
    tiny = name in TINY
    device = 'cpu' if tiny else 'meta'
    with torch.device(device):
        model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    state_dict = model.state_dict()
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    fmt = _output_fmt(model)
    x = torch.randn(1, *cfg['input_size'], device=device)
    with torch.no_grad():
        feats = model.forward_features(x)
        forward = model if tiny else (lambda _: model.forward_head(feats))
        pre = model.forward_head(feats, pre_logits=True)
        model.reset_classifier(0)
        pooled = forward(x)
    assert model.num_classes == 0
    assert feats.dim() == len(fmt), f'{fmt} features of rank {len(fmt)} expected, got shape {tuple(feats.shape)}'
    assert feats.shape[get_channel_dim(fmt)] == model.num_features
    assert pre.shape == pooled.shape == (1, model.head_hidden_size)
    if fmt != 'NLC':  # maps: the cfg's pool size sits at the format's spatial axes, also without the pooling
        spatial = get_spatial_dim(fmt)
        assert tuple(feats.shape[a] for a in spatial) == tuple(cfg['pool_size'])
        model.reset_classifier(0, '')
        with torch.no_grad():
            unpooled = forward(x)
        assert unpooled.dim() == 4 and tuple(unpooled.shape[a] for a in spatial) == tuple(cfg['pool_size'])
    if tiny:  # values, and the same head-less model built directly
        torch.testing.assert_close(pooled, pre, rtol=0, atol=0)
        headless = timm.create_model(name, **(dict(num_classes=0) if fmt == 'NLC' else dict(
            num_classes=0, global_pool=''))).eval()
        headless.load_state_dict(state_dict, strict=False)
        with torch.no_grad():
            torch.testing.assert_close(headless(x), unpooled if fmt != 'NLC' else pooled, rtol=0, atol=0)

    classifiers = cfg['classifier'] if isinstance(cfg['classifier'], (tuple, list)) else (cfg['classifier'],)
    first_convs = cfg['first_conv'] if isinstance(cfg['first_conv'], (tuple, list)) else (cfg['first_conv'],)
    for key in classifiers + first_convs:
        assert key + '.weight' in state_dict, f'{key} of the default cfg is not in the model'


# --- torch.fx -----------------------------------------------------------------------------------------------------

_TRACER_KWARGS = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                      param_shapes_constant=True)


def _timm_fx_model(model, train=False):
    """timm's ``_create_fx_model``: torchvision's feature extractor returning the graph's output node(s)."""
    train_nodes, eval_nodes = tv_fx.get_graph_node_names(model, tracer_kwargs=_TRACER_KWARGS)
    train_return = [train_nodes[-1]]
    if train:  # every node feeding the output (a model may return a tuple in training)
        graph = tv_fx.NodePathTracer(**_TRACER_KWARGS).trace(model)
        nodes = list(reversed(graph.nodes))
        names = [n.name for n in nodes]
        train_return = [train_nodes[-names.index(n.name)] for n in nodes[0]._input_nodes]
    return tv_fx.create_feature_extractor(model, train_return_nodes=train_return, eval_return_nodes=[eval_nodes[-1]],
                                          tracer_kwargs=_TRACER_KWARGS)


class _LeafTracer(torch.fx.Tracer):
    """A plain ``torch.fx`` tracer that knows timm's notrace modules and functions (and nothing else of timm)."""

    def __init__(self):
        super().__init__(autowrap_functions=tuple(get_notrace_functions()))
        self._leaves = tuple(get_notrace_modules())

    def is_leaf_module(self, m, qualname):
        return isinstance(m, self._leaves) or super().is_leaf_module(m, qualname)


def _eager_module_outputs(model, modules, x):
    """Outputs of the named submodules in an eager forward (forward hooks)."""
    out = {}
    handles = [model.get_submodule(m).register_forward_hook(lambda mod, i, o, m=m: out.__setitem__(m, o))
               for m in modules]
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return logits, out


@pytest.mark.parametrize('name', TINY)
def test_fx_forward_matches_eager(name):
    """timm's test_model_forward_fx, and the feature-info modules through timm's ``create_feature_extractor``."""
    model = eval_model(name)
    x = _input(model)
    with torch.inference_mode():
        fx_out = list(_timm_fx_model(model)(x).values())
        modules = [f['module'] for f in model.feature_info]
        _, eval_nodes = get_graph_node_names(model)
        extractor = create_feature_extractor(model, {**{m: m for m in modules}, eval_nodes[-1]: 'out'})
        feats = extractor(x)
        want, want_feats = _eager_module_outputs(model, modules, x)
    assert len(fx_out) == 1 and torch.equal(fx_out[0], want)
    assert torch.equal(feats['out'], want)
    for m in modules:
        assert torch.equal(feats[m], want_feats[m]), m


@pytest.mark.parametrize('name', TINY)
def test_fx_symbolic_trace(name):
    """A plain trace with timm's leaves: the scan op is a leaf node, and nothing size-dependent is frozen into the
    graph (other input sizes, odd and non-square, still match eager)."""
    model = eval_model(name)
    graph_module = torch.fx.GraphModule(model, _LeafTracer().trace(model))
    scans = [n for n in graph_module.graph.nodes if n.op == 'call_function' and n.target is selective_scan]
    assert scans, 'selective_scan is not a leaf of the traced graph'
    size = model.pretrained_cfg['input_size'][1:]
    with torch.inference_mode():
        for shape in (size, (size[0] + 3, size[1] - 19)):
            x = _input(model, batch=2, size=shape, seed=1)
            assert torch.equal(graph_module(x), model(x)), f'traced graph differs from eager at {shape}'


@pytest.mark.parametrize('name', TINY)
def test_fx_backward_matches_eager(name):
    """timm's test_model_backward_fx (training mode, 42 classes), with every gradient compared to eager's."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=42).train()
    x = _input(model, batch=2)
    model(x).square().mean().backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    fx_model = _timm_fx_model(model, train=True)  # shares the parameters
    out = torch.cat(list(fx_model(x).values()))
    assert out.shape == (2, 42)
    out.square().mean().backward()
    grads = {n: p.grad for n, p in fx_model.named_parameters()}
    assert set(grads) == set(want), 'the traced graph does not use every parameter'
    missing = [n for n, g in grads.items() if g is None]
    assert not missing, f'no gradient through the traced graph for {missing[:5]}'
    for n, g in grads.items():
        torch.testing.assert_close(g, want[n], rtol=0, atol=0, msg=lambda m: f'{n}: {m}')


@pytest.mark.parametrize('name', TINY)
def test_features_only_fx(name):
    if name == 'test_plainmamba':
        pytest.xfail("PlainMamba's blocks work on channel-last maps (NHWC) while forward_features returns tokens "
                     "(NLC): timm's FX feature extraction reports the maps under the model's NLC format")
    """``features_only=True, feature_cls='fx'`` (timm's FeatureGraphNet): the feature-info modules' outputs, in the
    model's own ``output_fmt``, equal to eager."""
    torch.manual_seed(0)
    features = timm.create_model(name, features_only=True, feature_cls='fx').eval()
    model = eval_model(name)
    fmt = _output_fmt(model)
    assert features.output_fmt == fmt
    info = features.feature_info
    x = _input(model, batch=2)
    with torch.inference_mode():
        got = features(x)
        _, want = _eager_module_outputs(model, info.module_name(), x)
    assert len(got) == len(info.channels()) >= 3
    size = x.shape[-2:]
    for out, module, channels, reduction in zip(got, info.module_name(), info.channels(), info.reduction()):
        assert torch.equal(out, want[module]), module
        assert out.shape[get_channel_dim(fmt)] == channels
        if fmt != 'NLC':  # timm's test_model_forward_features bound on the map size
            for axis, s in zip(get_spatial_dim(fmt), size):
                assert out.shape[axis] <= math.ceil(s / reduction) + 1


# --- TorchScript --------------------------------------------------------------------------------------------------

def _script(module):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # torch.jit.script is deprecated in recent PyTorch
        return torch.jit.script(module)


@pytest.mark.parametrize('name', TINY)
def test_torchscript(name):
    """Scripts (built under timm's ``set_scriptable(True)``, as timm's test_model_forward_torchscript) and matches
    eager; or refuses both with ``TORCHSCRIPT_UNSUPPORTED``, the reason being stated in the family's docstring."""
    model = eval_model(name)
    try:
        _script(model)
    except RuntimeError as e:
        assert TORCHSCRIPT_UNSUPPORTED in str(e), f'scripting failed without the documented reason: {e}'
        with set_scriptable(True), pytest.raises(RuntimeError, match='cannot be compiled with TorchScript'):
            timm.create_model(name)
        doc = sys.modules[type(model).__module__].__doc__
        assert 'TorchScript' in doc, f'{type(model).__module__} does not document why TorchScript is unsupported'
        return
    with set_scriptable(True):
        torch.manual_seed(0)
        scripted = _script(timm.create_model(name).eval())  # the same weights as model
    x = _input(model)
    with torch.inference_mode():
        torch.testing.assert_close(scripted(x), model(x))


def test_scan_op_refuses_torchscript_with_the_reason():
    with pytest.raises(RuntimeError) as e:
        _script(selective_scan)
    assert str(e.value) == TORCHSCRIPT_UNSUPPORTED


def _snake(height, width):
    """A custom route order: boustrophedon rows (a callable order cannot be written into a graph's code)."""
    grid = torch.arange(height * width).view(height, width)
    grid[1::2] = grid[1::2].flip(-1)
    return grid.flatten()


class _CustomScan(torch.nn.Module):
    def __init__(self, channels=4, n_state=2):
        super().__init__()
        self.routes = (Route(_snake), Route('col', reverse=True))
        self.A = torch.nn.Parameter(-torch.rand(2 * channels, n_state) - 0.5)

    def forward(self, u, delta, B, C):
        return selective_scan(u, delta, self.A, B, C, routes=self.routes, merge='mean')


def test_fx_scan_leaf_takes_any_route():
    module = _CustomScan()
    graph_module = torch.fx.GraphModule(module, _LeafTracer().trace(module))
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(2, 5, 3, 4, generator=g), torch.randn(2, 5, 3, 8, generator=g),
            torch.randn(2, 5, 3, 2, 2, generator=g), torch.randn(2, 5, 3, 2, 2, generator=g))
    assert torch.equal(graph_module(*args), module(*args))
