"""benchmarks/infer_host_proxy.py: the op count sees the scan's real host path (one launch per scan) and CUDA's
norms, and the timed forward runs."""
import importlib.util
import os

import pytest
import timm
import torch

import visionssm.kernels.triton_scan as triton_scan
from visionssm.layers import SS2D
from visionssm.models.vim import RMSNorm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def tool():
    path = os.path.join(ROOT, 'benchmarks/infer_host_proxy.py')
    spec = importlib.util.spec_from_file_location('infer_host_proxy', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ss = importlib.import_module('visionssm.ops.selective_scan')
    names = ('_scan_fwd_kernel', '_scan_bwd_kernel', '_scan_fwd_chunked_kernel', '_scan_bwd_chunked_kernel')
    kernels, backends = {n: getattr(triton_scan, n) for n in names}, dict(ss.BACKENDS)
    module._stub_launches()
    yield module
    for n, k in kernels.items():
        setattr(triton_scan, n, k)
    ss.BACKENDS.clear()
    ss.BACKENDS.update(backends)
    triton_scan._forward_launch.cache_clear()   # the cached launches hold the stubbed kernels
    triton_scan._backward_launch.cache_clear()


@pytest.mark.parametrize('name,layer', [('test_vmamba', SS2D), ('test_vim', RMSNorm)])
def test_op_count(tool, name, layer):
    counter = tool.count_ops(name, 2, 64)
    total = sum(counter.counts.values())
    modules = sum(isinstance(m, layer) for m in timm.create_model(name).modules())
    if layer is SS2D:
        assert counter.counts['triton_launch'] == modules          # one launch per scan, nothing of the reference
        assert 'aten.cumsum' not in counter.counts and 'aten.exp' not in counter.counts
    else:
        assert counter.counts['aten._fused_rms_norm'] == modules   # CUDA's one fused op per RMSNorm
        assert 'aten.rsqrt' not in counter.counts
    assert 0 < counter.launches < total
    assert tool.count_ops(name, 2, 64).counts == counter.counts   # deterministic


def test_timed_forward(tool):
    assert tool.forward_us('test_vmamba', 32, 3) > 0
