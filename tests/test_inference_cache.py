"""Weights derived from parameters are kept between inference calls (visionssm/layers/cache.py) and never stale."""
import io

import pytest
import timm
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import visionssm  # noqa: F401
from visionssm.layers import SS2D
from visionssm.layers.cache import CastCachedConv2d, CastCachedLinear, cached_while_inferring
from visionssm.models.vim import BiMambaMixer


def _model(seed=0):
    torch.manual_seed(seed)
    return timm.create_model('test_vmamba').eval()


def _grad_forward(model, x):
    with torch.enable_grad():   # the cache is off while autograd records: the weights are recomposed each call
        return model(x).detach()


def test_cached_inference_equals_the_uncached_forward():
    model, x = _model(), torch.randn(2, 3, 32, 40)
    with torch.no_grad():
        first, second = model(x), model(x)
    assert any('_inference_cache' in m.__dict__ for m in model.modules() if isinstance(m, SS2D))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(first, _grad_forward(model, x), rtol=1e-6, atol=1e-6)


def test_parameter_changes_refresh_the_cache():
    model, other, x = _model(0), _model(1), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model(x)
        # in place (an optimizer step, copy_): the version counter moves
        for m in model.modules():
            if isinstance(m, SS2D):
                m.x_proj_weight.mul_(1.5)
                m.A_logs.add_(0.3)
        torch.testing.assert_close(model(x), _grad_forward(model, x), rtol=1e-6, atol=1e-6)
        model.load_state_dict(other.state_dict())
        torch.testing.assert_close(model(x), other(x), rtol=1e-6, atol=1e-6)
        model.double()                                                   # replaced parameters, another dtype
        torch.testing.assert_close(model(x.double()), _grad_forward(model, x.double()), rtol=1e-12, atol=1e-12)


def test_the_cache_is_off_while_autograd_records_and_on_meta():
    module, calls = torch.nn.Linear(2, 2), []
    build = lambda: calls.append(1) or module.weight * 2
    cached_while_inferring(module, [module.weight], torch.float32, build)
    cached_while_inferring(module, [module.weight], torch.float32, build)
    assert len(calls) == 2                      # grad enabled: built every time
    with torch.no_grad():
        for _ in range(3):
            cached_while_inferring(module, [module.weight], torch.float32, build)
        assert len(calls) == 3                  # built once
        cached_while_inferring(module, [module.weight], torch.float16, build)
        assert len(calls) == 4                  # another dtype
        meta = torch.nn.Linear(2, 2, device='meta')
        cached_while_inferring(meta, [meta.weight], torch.float32, lambda: calls.append(1))
        cached_while_inferring(meta, [meta.weight], torch.float32, lambda: calls.append(1))
        assert len(calls) == 6 and '_inference_cache' not in meta.__dict__
    assert '_inference_cache' not in dict(module.state_dict())


# --- autocast's weight casts kept while inferring (CastCachedLinear / CastCachedConv2d) ---------------------------

class _CastCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.casts = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default:
            self.casts.append(tuple(args[0].shape))
        return func(*args, **(kwargs or {}))


def _cast_layers(seed=0):
    torch.manual_seed(seed)
    pairs = [(CastCachedLinear(6, 5), torch.nn.Linear(6, 5), (3, 4, 6)),
             (CastCachedLinear(6, 5, bias=False), torch.nn.Linear(6, 5, bias=False), (3, 6)),
             (CastCachedConv2d(4, 4, 3, padding=1, groups=4), torch.nn.Conv2d(4, 4, 3, padding=1, groups=4),
              (2, 4, 5, 5))]
    for cached, plain, shape in pairs:
        plain.load_state_dict(cached.state_dict())
        yield cached, plain, torch.randn(shape)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_cast_cached_layers_equal_autocast_and_cast_their_weights_once(dtype):
    for cached, plain, x in _cast_layers():
        with torch.no_grad(), torch.autocast('cpu', dtype=dtype):
            want = plain(x)
            cached(x)
            with _CastCounter() as counter:
                got = cached(x)
        assert got.dtype == want.dtype == dtype
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        assert counter.casts == [tuple(x.shape)]          # only the input's cast: the weights' are kept
        kept = cached.__dict__['_inference_cache'][1]
        assert kept[0].dtype == dtype and (kept[1] is None) == (cached.bias is None)
        assert '_inference_cache' not in dict(cached.state_dict())


def test_cast_cached_layers_follow_parameter_changes():
    for cached, plain, x in _cast_layers():
        for step in range(4):
            with torch.no_grad():
                if step == 1:      # in place, as an optimizer or load_state_dict
                    cached.weight.mul_(-2)
                if step == 2:      # replaced
                    cached.weight = torch.nn.Parameter(torch.randn_like(cached.weight))
                plain.load_state_dict(cached.state_dict())
                dtype = torch.float16 if step == 3 else torch.bfloat16     # step 3: another autocast dtype
                with torch.autocast('cpu', dtype=dtype):
                    cached(x)
                    torch.testing.assert_close(cached(x), plain(x), rtol=0, atol=0)


def test_cast_cached_layers_keep_nothing_outside_inference_autocast():
    for cached, plain, x in _cast_layers():
        with torch.autocast('cpu', dtype=torch.bfloat16):       # autograd records: autocast casts, gradients flow
            out = cached(x)
            out.float().sum().backward()
            torch.testing.assert_close(out, plain(x), rtol=0, atol=0)
        assert cached.weight.grad is not None
        traced = torch.fx.symbolic_trace(cached)                # torch.fx: the plain layer in the graph
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
            torch.testing.assert_close(traced(x), plain(x), rtol=0, atol=0)
        with torch.no_grad():
            torch.testing.assert_close(cached(x), plain(x), rtol=0, atol=0)             # no autocast: float32
            cached.double(), plain.double()
            with torch.autocast('cpu', dtype=torch.bfloat16):   # autocast leaves float64 as it is
                got = cached(x.double())
                assert got.dtype == torch.float64
                torch.testing.assert_close(got, plain(x.double()), rtol=0, atol=0)
        assert '_inference_cache' not in cached.__dict__


@pytest.mark.parametrize('name', ['test_vmamba', 'test_vim'])
def test_models_under_autocast_equal_their_uncached_forward(name):
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        want = _grad_forward(model, x)          # nothing kept: autocast casts every weight
        with torch.no_grad():
            model(x)
            got = model(x)
    assert any('_inference_cache' in m.__dict__ for m in model.modules() if isinstance(m, CastCachedLinear))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_vim_cache_key_lists_every_inner_parameter():
    for conv_bias in (True, False):
        mixer = BiMambaMixer(16, d_state=4, conv_bias=conv_bias)
        inner = (mixer.conv1d, mixer.conv1d_b, mixer.x_proj, mixer.x_proj_b, mixer.dt_proj, mixer.dt_proj_b)
        want = {id(p) for m in inner for p in m.parameters()} | {
            id(p) for p in (mixer.A_log, mixer.A_b_log, mixer.D, mixer.D_b)}
        got = [id(p) for p in mixer._inner_parameters()]
        assert len(got) == len(set(got)) and set(got) == want


def test_cast_cached_layers_run_on_the_meta_device():
    # shape-only passes (FLOP counting, timm's default-cfg checks) build models on meta, where autocast has no state
    layer = CastCachedLinear(4, 3, device='meta')
    with torch.no_grad():
        out = layer(torch.empty(2, 4, device='meta'))
    assert out.shape == (2, 3) and out.device.type == 'meta' and '_inference_cache' not in layer.__dict__


class _Flags(torch.nn.Module):
    """Records visionssm's tracing / ONNX flags beside torch's own public ones, each time it runs."""

    seen = []   # a class attribute: torch.export runs the forward on a copy of the module

    def forward(self, x):
        import torch.fx._symbolic_trace as fx_trace
        from visionssm.layers.cache import onnx_exporting, tracing
        self.seen.append((tracing(), onnx_exporting(), fx_trace.is_fx_symbolic_tracing() or torch.jit.is_tracing()
                          or torch.compiler.is_exporting(), torch.onnx.is_in_onnx_export()))
        return x + 1


def test_tracing_and_onnx_flags_agree_with_torchs_own():
    # tracing() and onnx_exporting() read torch's flags directly (cheaper): they must follow the public functions
    # outside any tracer, under torch.fx, under TorchScript tracing, under torch.export and in an ONNX export
    module, x = _Flags().eval(), torch.randn(2, 3)
    module(x)
    assert module.seen == [(False, False, False, False)]
    for trace in (torch.fx.symbolic_trace, lambda m: torch.jit.trace(m, x), lambda m: torch.export.export(m, (x,))):
        module.seen.clear()
        trace(module)
        assert any(seen[0] for seen in module.seen), (trace, module.seen)
        assert all(seen[:2] == seen[2:] for seen in module.seen), module.seen
    pytest.importorskip('onnx')
    for dynamo in (False, True):
        module.seen.clear()
        torch.onnx.export(module, (x,), None if dynamo else io.BytesIO(), dynamo=dynamo)
        assert any(seen[1] for seen in module.seen), (dynamo, module.seen)
        assert all(seen[1] == seen[3] for seen in module.seen), (dynamo, module.seen)
