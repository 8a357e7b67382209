"""Weights derived from parameters are kept between inference calls (visionssm/layers/cache.py) and never stale."""
import timm
import torch

import visionssm  # noqa: F401
from visionssm.layers import SS2D
from visionssm.layers.cache import cached_while_inferring


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
