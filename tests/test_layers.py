"""Shared layers: the MLP with a recomputed activation equals timm's Mlp in values and gradients, saves less."""
import pytest
import timm.layers
import torch
import torch.nn as nn

from visionssm.layers import Mlp


def _run(mlp, x, autocast):
    mlp.zero_grad()
    x = x.detach().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t), \
            torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        y = mlp(x)
    (y.float() ** 2).sum().backward()
    grads = [x.grad] + [p.grad for p in mlp.parameters()]
    return y, grads, sum(saved)


@pytest.mark.parametrize('act', [nn.GELU, nn.SiLU, nn.ReLU, nn.Tanh])
@pytest.mark.parametrize('autocast', [False, True])
def test_mlp_equals_timm_and_saves_less(act, autocast):
    torch.manual_seed(0)
    ref, ours = timm.layers.Mlp(16, 64, act_layer=act), Mlp(16, 64, act_layer=act)
    loaded = ours.load_state_dict(ref.state_dict())                 # same parameter names
    assert not loaded.missing_keys and not loaded.unexpected_keys
    x = torch.randn(2, 5, 16)
    y_ref, g_ref, saved_ref = _run(ref, x, autocast)
    y, g, saved = _run(ours, x, autocast)
    assert y.dtype == y_ref.dtype
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    if act is nn.Tanh:      # not recomputed: runs as timm's
        assert saved == saved_ref
    else:                   # the activation's output (2 x 5 x 64) is not saved
        assert saved == saved_ref - 2 * 5 * 64


def test_mlp_dropout_and_no_grad_paths():
    torch.manual_seed(0)
    ref, ours = timm.layers.Mlp(8, 32, drop=0.5), Mlp(8, 32, drop=0.5)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 8)
    ref.eval(), ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)
    ours.train()
    assert ours(x).shape == (3, 8)


def test_mlp_compiles_without_graph_breaks():
    torch.manual_seed(0)
    mlp = Mlp(16, 64)
    x = torch.randn(2, 16, requires_grad=True)
    y = torch.compile(mlp, backend='aot_eager', fullgraph=True)(x)
    y.sum().backward()
    x2 = x.detach().requires_grad_()
    mlp(x2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


def test_kernel_launch_enters_a_device_context_only_for_another_gpu(monkeypatch):
    import contextlib
    from visionssm.kernels import launch
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 0)
    assert isinstance(launch.on_device(torch.device('cpu')), contextlib.nullcontext)
    assert isinstance(launch.on_device(torch.device('cuda', 0)), contextlib.nullcontext)   # current already
    assert isinstance(launch.on_device(torch.device('cuda', 1)), torch.cuda.device)


def test_route_projection_weight_is_composed_in_float32_under_autocast():
    """SS2D's composed Δ / B / C projection stays float32 under autocast, equal to its float32 composition: the one
    GEMM that reads it casts it once (casting the factors, the product and the cat's result instead cost eight
    launches per layer and step, forward and backward)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from visionssm.layers.ss2d import projection_weight

    class Casts(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += func is torch.ops.aten._to_copy.default
            return func(*args, **(kwargs or {}))

    x_proj = torch.randn(4, 6 + 2 * 16, 24, requires_grad=True)
    dt_proj = torch.randn(4, 24, 6, requires_grad=True)
    want = projection_weight(x_proj, dt_proj)
    with torch.autocast('cpu', dtype=torch.bfloat16), Casts() as casts:
        got = projection_weight(x_proj, dt_proj)
    assert got.dtype == torch.float32 and casts.count == 0
    assert torch.equal(got, want) and want.shape == (4 * 24 + 4 * 2 * 16, 24)
    got.sum().backward()
    assert x_proj.grad.dtype == dt_proj.grad.dtype == torch.float32


def test_autocast_checks_stay_traceable_on_cpu_and_cuda(monkeypatch):
    """``autocast_enabled`` answers for CPU and CUDA tensors without ``torch.amp.is_autocast_available``, a builtin
    that Dynamo cannot trace in torch 2.11 (each call broke a compiled VMamba-T into one more graph on a GPU)."""
    from visionssm.layers.fused import autocast_dtype, autocast_enabled

    def untraceable(device):
        raise AssertionError(f'is_autocast_available({device!r}) called')
    monkeypatch.setattr(torch.amp, 'is_autocast_available', untraceable)
    x = torch.ones(2)
    assert not autocast_enabled(x) and autocast_dtype(x) == torch.float32
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert autocast_enabled(x) and autocast_dtype(x) == torch.bfloat16
    monkeypatch.undo()
    assert not autocast_enabled(torch.ones(2, device='meta'))   # other devices: asked whether autocast exists


def test_cached_constants_are_held_by_a_capture_under_way():
    """What a bounded cache hands out while a CUDA graph is captured is also kept by the capture
    (``visionssm.kernels.launch.capture_holds``), so that the cache may drop it while the graph still reads it."""
    from visionssm.kernels.launch import capture_holds
    from visionssm.layers.cache import cached_constants

    @cached_constants(maxsize=1)
    def arange(n):
        return torch.arange(n)

    outside = arange(3)
    with capture_holds() as holds:
        inside = arange(4)
        assert arange(4) is inside
    assert len(holds) == 2 and all(h is inside for h in holds) and not any(h is outside for h in holds)
    arange(5)                       # evicts 4 from the cache: the capture's list still holds it
    assert holds[0] is inside and arange.cache_info().currsize == 1
    arange.cache_clear()
