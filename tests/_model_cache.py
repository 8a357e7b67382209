"""Built models shared by the test modules that run every registered model, within a memory budget.

An unbounded cache kept every model a worker had built: 5.6 GiB of float32 parameters for the registry, per test
module that kept one, per xdist worker, which brought ``make test`` within a gigabyte of a 24 GiB machine's memory.
The cache evicts the least recently used models beyond ``BUDGET`` bytes of parameters; tests run model by model
within a test function, so a model leaves the cache once the next function's models have come through.
"""
from collections import OrderedDict

import timm
import torch

import visionssm  # noqa: F401  (registers the models)

BUDGET = 1 << 30   # bytes of parameters kept per process
_cache: 'OrderedDict[str, tuple[torch.nn.Module, int]]' = OrderedDict()


def eval_model(name: str) -> torch.nn.Module:
    """``timm.create_model(name).eval()`` with seed 0, built once while it stays in the cache. Tests must not change
    it (build their own for that)."""
    if name in _cache:
        _cache.move_to_end(name)
        return _cache[name][0]
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    _cache[name] = model, sum(p.numel() * p.element_size() for p in model.parameters())
    while len(_cache) > 1 and sum(size for _, size in _cache.values()) > BUDGET:
        _cache.popitem(last=False)
    return model
