"""benchmarks/infer_host_proxy.py: the op count sees the scan's real host path (one launch per scan) and CUDA's
norms, and the timed forward runs."""
import os
from unittest import mock

import pytest
import timm
import torch

import visionssm.kernels.triton_scan as triton_scan
from _scripts import load_benchmark
from visionssm.layers import SS2D
from visionssm.models.vim import BiMambaMixer, RMSNorm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def tool():
    module = load_benchmark('infer_host_proxy')
    stubs = module._stub_launches()
    yield module
    stubs.close()
    # every later test gets the real kernels and dispatch back
    from visionssm.kernels import conv1d, layer_norm
    for kernel in (conv1d._conv_fwd_kernel, layer_norm._ln_fwd_kernel, triton_scan._scan_fwd_kernel):
        assert not isinstance(kernel, module.NoLaunch)
    assert not conv1d.on_gpu(torch.zeros(1)) and not layer_norm.on_gpu(torch.zeros(1))


@pytest.mark.parametrize('name', ['test_vmamba', 'test_vim'])
def test_op_count(tool, name):
    """One launch per scan, token conv1d and LayerNorm / RMSNorm through the kernels; nothing of the scan's
    reference or of a decomposed norm."""
    counter = tool.count_ops(name, 2, 64)
    total = sum(counter.counts.values())
    model = timm.create_model(name)
    count = lambda *types: sum(isinstance(m, types) for m in model.modules())
    kernels = counter.kernels
    assert counter.counts['triton_launch'] == sum(kernels.values())
    if name == 'test_vmamba':
        assert kernels['_scan_fwd_kernel'] + kernels['_scan_fwd_chunked_kernel'] == count(SS2D)
        assert kernels['_ln_fwd_kernel'] > 0 and not kernels['_scan_bwd_kernel']
        assert 'aten.cumsum' not in counter.counts and 'aten.exp' not in counter.counts
    else:
        assert kernels['_ln_fwd_kernel'] == count(RMSNorm)
        assert kernels['_conv_fwd_kernel'] == kernels['_scan_fwd_kernel'] == count(BiMambaMixer)
        assert counter.counts['aten.convolution'] == 1   # the patch stem's
        assert 'aten.rsqrt' not in counter.counts and 'aten._fused_rms_norm' not in counter.counts
    assert 0 < counter.launches < total
    assert tool.count_ops(name, 2, 64).counts == counter.counts   # deterministic


def test_op_count_ignores_launches_cached_before():
    """A scan launch cached before the stubs went in (another test's, with the real kernel) is not reused."""
    module = load_benchmark('infer_host_proxy')
    with module._stub_launches():
        with mock.patch.object(triton_scan, '_scan_fwd_kernel', module.NoLaunch('stale')):
            assert module.count_ops('test_vmamba', 2, 64).kernels['stale'] > 0   # cached with this kernel
        with module._stub_launches():   # entered while those launches are still cached
            kernels = module.count_ops('test_vmamba', 2, 64).kernels
    assert 'stale' not in kernels and kernels['_scan_fwd_kernel'] > 0


def test_timed_forward(tool):
    assert tool.forward_us('test_vmamba', 32, 3) > 0

