"""Every family's test model through the Triton kernels, the path that CUDA tensors take, run by Triton's interpreter
on the CPU: the kernels at the shapes and settings that the models give them, against the PyTorch path.

The kernels are switched on for CPU tensors (each kernel module's ``on_gpu``), and their multi-program reductions
get the program counts of a 132-SM GPU instead of the interpreter's few. The logits and the input's gradient must
agree with the PyTorch path's, and every kernel's loads and stores must stay inside its tensors (tests/_memcheck.py,
applied to every test under the interpreter by tests/conftest.py).
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ['TRITON_INTERPRET'] = '1'   # before triton's import

pytest.importorskip('triton')

import timm  # noqa: E402

import visionssm  # noqa: E402,F401  (registers the models)
from visionssm.kernels import conv1d, layer_norm, state_fusion, triton_scan  # noqa: E402
from visionssm.kernels.launch import sm_count  # noqa: E402
from visionssm.models import FAMILIES  # noqa: E402

from _interpreter import fresh_process_test, needs_fresh_process  # noqa: E402
from _memcheck import launched_kernels  # noqa: E402

TEST_MODELS = sorted(m for m in timm.list_models(module=list(FAMILIES)) if m.startswith('test_'))
# the kernels each family's model must launch (a family whose layers stopped reaching a kernel fails here)
EXPECTED = {
    'test_vmamba': {'_scan_fwd_kernel', '_scan_bwd_kernel', '_ln_fwd_kernel', '_ln_bwd_kernel'},
    'test_efficientvmamba': {'_scan_fwd_kernel', '_scan_bwd_kernel', '_ln_fwd_kernel', '_ln_bwd_kernel'},
    'test_groupmamba': {'_scan_fwd_kernel', '_scan_bwd_kernel', '_ln_fwd_kernel', '_ln_bwd_kernel'},
    'test_spatialmamba': {'_scan_fwd_kernel', '_scan_bwd_kernel', '_fuse_fwd_kernel', '_fuse_bwd_h_kernel',
                          '_fuse_bwd_w_kernel'},
    'test_vim': {'_scan_fwd_kernel', '_scan_bwd_kernel', '_conv_fwd_kernel'},
    'test_plainmamba': {'_scan_fwd_kernel', '_scan_bwd_kernel'},
    'test_msvmamba': {'_scan_fwd_kernel', '_scan_bwd_kernel'},
    'test_mambavision': {'_scan_fwd_kernel', '_scan_bwd_kernel'},
}
GPU_SMS = 132   # an H100's / H200's

_CPU = not torch.cuda.is_available()

if _CPU and needs_fresh_process(triton_scan._scan_fwd_kernel):
    test_cpu_cases_in_fresh_process = fresh_process_test(__file__)
    _RUN_HERE = False
else:
    _RUN_HERE = _CPU

here = pytest.mark.skipif(not _RUN_HERE, reason='the interpreter runs CPU tensors (on a GPU the kernels run there)')


def test_every_family_has_a_test_model_here():
    assert set(TEST_MODELS) == set(EXPECTED), 'name the kernels of the new family\'s test model in EXPECTED'


def _run(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_()
    logits = model(x)
    logits.square().sum().backward()
    return logits.detach(), x.grad


@here
@pytest.mark.parametrize('name', TEST_MODELS)
def test_the_triton_path_matches_the_pytorch_path(name, monkeypatch):
    torch.manual_seed(0)
    model = timm.create_model(name).eval()    # eval: no drop path, the same computation on both paths
    x = torch.randn(2, *model.pretrained_cfg['input_size'])
    want = _run(model, x)
    model.zero_grad(set_to_none=True)

    for module in (triton_scan, state_fusion, conv1d, layer_norm):
        monkeypatch.setattr(module, 'on_gpu', lambda t: True)
    # the weight-gradient reductions' programs as on a GPU, where each program loops over fewer tiles
    monkeypatch.setattr(conv1d, '_programs', lambda t, others: max(1, conv1d._DW_WAVES * GPU_SMS // others))
    monkeypatch.setattr(layer_norm, '_programs', lambda t: layer_norm._BWD_WAVES * GPU_SMS)
    assert sm_count(x.device) == GPU_SMS   # what the scan's kernel choice reads for CPU tensors
    with launched_kernels() as kernels:
        got = _run(model, x)

    assert EXPECTED[name] <= set(kernels), f'{name} launched {sorted(set(kernels))}'
    for what, g, w in zip(('logits', 'input gradient'), got, want):
        scale = w.abs().max().item()
        err = (g - w).abs().max().item() / scale
        assert err < 1e-4, f'{name}: {what} differ by {err:.2e} of their largest magnitude {scale:.3g}'
