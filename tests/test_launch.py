"""kernels/launch.run_kernel: the launch through the compiled kernel that Triton returned for the same
specialization, skipping Triton's per-launch binding.

Its key must tell apart every specialization Triton compiles separately, or a launch would run a kernel compiled
for other arguments (say, for 16-byte aligned pointers with a misaligned one). The first test checks that on every
launch the models make, against Triton's own binder (through compile_check, which needs no GPU); the fake-kernel
tests check the launch itself; the GPU test checks that the outputs equal Triton's own launches'."""
import inspect
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from visionssm.kernels import launch as L

from _interpreter import nvidia_backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not nvidia_backend(), reason="triton without its NVIDIA backend")
def test_the_key_tells_apart_every_specialization_of_the_models_launches():
    """Each launch of every test model (training step and eval; fp32 and bf16 autocast) and of the scan at long
    routes, bound by Triton's binder for sm_90 and keyed by run_kernel: one key, one specialization."""
    script = textwrap.dedent('''
        import torch, timm
        import visionssm
        from visionssm.kernels import compile_check as CC, launch as L
        pairs, record = [], CC._launch
        def spy(kernel, args, kwargs, arch=CC.ARCH):
            launch = record(kernel, args, kwargs, arch)
            pairs.append((launch.name, L._DirectLauncher.for_kernel(kernel).bind(args, kwargs)[1], launch.key()))
            return launch
        CC._launch = spy
        CC.record_models([m for m in timm.list_models('test_*') if CC._is_visionssm(m)],
                         [torch.float32, torch.bfloat16])
        CC.record_long_scans([torch.float32, torch.bfloat16])
        assert all(key is not None for _, key, _ in pairs), [name for name, key, _ in pairs if key is None]
        specializations = {}
        for name, key, triton_key in pairs:
            specializations.setdefault((name, key), set()).add(triton_key)
        ambiguous = [k for k, v in specializations.items() if len(v) > 1]
        print(len(pairs), len(specializations), len({t for _, _, t in pairs}), len(ambiguous))
    ''')
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    r = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    launches, keys, specializations, ambiguous = map(int, r.stdout.split()[-4:])
    assert ambiguous == 0 and keys == specializations > 100 and launches > keys, r.stdout


class _Param:
    def __init__(self, name, constexpr=False, default=inspect.Parameter.empty):
        self.name, self.is_constexpr, self.default = name, constexpr, default
        self.has_default = default is not inspect.Parameter.empty


class _Compiled:
    """What the launcher reads of Triton's CompiledKernel; records the launches."""
    function, packed_metadata = 'function', 'metadata'

    def __init__(self):
        self.launches = []

    def run(self, *args):
        self.launches.append(args)


class _Kernel:
    """A JITFunction's launch interface: ``kernel[grid](*args, **kwargs)`` launches through Triton (recorded) and
    returns the compiled kernel."""

    params = [_Param('x_ptr'), _Param('n'), _Param('eps'), _Param('FLAG', True), _Param('BLOCK', True, 64)]

    def __init__(self):
        self.triton_launches = []
        self.compiled = _Compiled()

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.triton_launches.append((grid, args, kwargs))
            return self.compiled
        return launch


def test_launches_after_the_first_go_through_the_compiled_kernel():
    kernel = _Kernel()
    launcher = L._DirectLauncher(kernel)
    x = torch.zeros(64)
    launcher((4,), (x, 17, 1e-5), dict(FLAG=True, num_warps=4), 0, 'stream')
    assert len(kernel.triton_launches) == 1 and not kernel.compiled.launches
    y = torch.ones(32)
    launcher((8, 2), (y, 33, 1e-6), dict(FLAG=True, num_warps=4), 0, 'stream')
    assert len(kernel.triton_launches) == 1
    # every parameter in order, the default constexpr included, as Triton hands them to its launcher
    assert kernel.compiled.launches == [(8, 2, 1, 'stream', 'function', 'metadata', None, None, None,
                                         y, 33, 1e-6, True, 64)]


@pytest.mark.parametrize('change', ['misaligned', 'dtype', 'one', 'divisible', 'wide', 'constexpr', 'default',
                                    'option', 'device'])
def test_another_specialization_goes_through_triton(change):
    kernel = _Kernel()
    launcher = L._DirectLauncher(kernel)
    x = torch.zeros(64)
    args, kwargs, device = [x, 17, 1e-5], dict(FLAG=True, num_warps=4), 0
    launcher((4,), tuple(args), dict(kwargs), device, 'stream')
    if change == 'misaligned':
        args[0] = x[1:]            # 4 bytes past a 16-byte boundary
    elif change == 'dtype':
        args[0] = x.half()
    elif change == 'one':
        args[1] = 1                # Triton makes an integer equal to 1 a constexpr
    elif change == 'divisible':
        args[1] = 32               # ... and marks multiples of 16
    elif change == 'wide':
        args[1] = 2 ** 40          # ... and widens integers past int32
    elif change == 'constexpr':
        kwargs['FLAG'] = False
    elif change == 'default':
        kwargs['BLOCK'] = 128
    elif change == 'option':
        kwargs['num_warps'] = 8
    else:
        device = 1
    launcher((4,), tuple(args), kwargs, device, 'stream')
    assert len(kernel.triton_launches) == 2 and not kernel.compiled.launches


def test_arguments_the_key_does_not_cover_always_go_through_triton():
    kernel = _Kernel()
    launcher = L._DirectLauncher(kernel)
    for _ in range(2):   # a tuple argument, and a missing one (Triton raises its own error for that)
        launcher((4,), (torch.zeros(4), (1, 2), 1.0), dict(FLAG=True), 0, 'stream')
        launcher((4,), (torch.zeros(4),), dict(FLAG=True), 0, 'stream')
    assert len(kernel.triton_launches) == 4 and not kernel.compiled.launches


def _registered(monkeypatch):
    """A fake kernel whose launches run_kernel may take directly, on a fake current device and stream."""
    kernel = _Kernel()
    monkeypatch.setitem(L._launchers, kernel, L._DirectLauncher(kernel))
    monkeypatch.setattr(L, '_current_stream', lambda: (0, 'stream'))
    return kernel


def test_run_kernel_launches_directly_when_asked(monkeypatch):
    pytest.importorskip('triton')
    kernel = _registered(monkeypatch)
    for _ in range(3):
        L.run_kernel(kernel, (1,), torch.zeros(4), 3, 1.0, FLAG=True)
    assert len(kernel.triton_launches) == 3 and not kernel.compiled.launches   # Triton's launches by default
    monkeypatch.setenv('VISIONSSM_TRITON_LAUNCH', 'direct')
    for _ in range(3):   # Triton 3.5+'s empty launch-hook chains are no hooks
        L.run_kernel(kernel, (1,), torch.zeros(4), 3, 1.0, FLAG=True)
    assert len(kernel.triton_launches) == 4 and len(kernel.compiled.launches) == 2


def test_run_kernel_leaves_launches_to_triton_under_hooks_and_recording(monkeypatch):
    triton = pytest.importorskip('triton')
    if not hasattr(triton, 'knobs'):
        pytest.skip('a Triton before 3.3')
    kernel = _registered(monkeypatch)
    monkeypatch.setenv('VISIONSSM_TRITON_LAUNCH', 'direct')
    L.run_kernel(kernel, (1,), torch.zeros(4), 3, 1.0, FLAG=True)   # compiled: the later ones could go directly
    runtime = triton.knobs.runtime
    hook = lambda metadata: None  # noqa: E731
    chain = type(runtime.launch_enter_hook)() if hasattr(runtime.launch_enter_hook, 'add') else None
    if chain is not None:   # a profiler adds its hook to Triton 3.5+'s chain
        chain.add(hook)
    monkeypatch.setattr(runtime, 'launch_enter_hook', chain if chain is not None else hook)
    L.run_kernel(kernel, (1,), torch.zeros(4), 3, 1.0, FLAG=True)
    assert len(kernel.triton_launches) == 2 and not kernel.compiled.launches
    monkeypatch.undo()
    kernel = _registered(monkeypatch)
    monkeypatch.setenv('VISIONSSM_TRITON_LAUNCH', 'direct')
    monkeypatch.setattr(L, 'RECORDING', True)   # compile_check records launches through Triton's binder
    L.run_kernel(kernel, (1,), torch.zeros(4), 3, 1.0, FLAG=True)
    L.run_kernel(kernel, (1,), torch.zeros(4), 3, 1.0, FLAG=True)
    assert len(kernel.triton_launches) == 2 and not kernel.compiled.launches


def test_interpreted_kernels_launch_through_triton():
    """Under the interpreter (the CPU tests) every launch takes Triton's path; the kernel tests run them so."""
    pytest.importorskip('triton')
    if os.environ.get('TRITON_INTERPRET') != '1':
        pytest.skip('the interpreter is off')
    from visionssm.kernels import conv1d, layer_norm, state_fusion, triton_scan
    kernels = [layer_norm._ln_fwd_kernel, state_fusion._fuse_fwd_kernel, conv1d._conv_fwd_kernel,
               triton_scan._scan_fwd_kernel]
    assert [L._DirectLauncher.for_kernel(k) for k in kernels] == [None] * 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_direct_launches_equal_tritons_on_the_gpu(monkeypatch):
    """The LayerNorm, scan, token-conv and state-fusion kernels of three models' training steps: logits and
    gradients through the direct launches (the second and third passes) equal those through Triton's launches up to
    the order of the kernels' float32 atomic sums."""
    import timm
    import visionssm  # noqa: F401
    torch.manual_seed(0)
    for name in ('test_vmamba', 'test_spatialmamba', 'test_vim'):
        model = timm.create_model(name).cuda()
        x = torch.randn(3, 3, 64, 64, device='cuda')
        runs = []
        for direct in (False, True, True):
            monkeypatch.setenv('VISIONSSM_TRITON_LAUNCH', 'direct' if direct else 'triton')
            model.zero_grad(set_to_none=True)
            out = model(x)
            out.square().sum().backward()
            runs.append([out.detach().clone()] + [p.grad.clone() for p in model.parameters() if p.grad is not None])
        for run in runs[1:]:
            assert len(run) == len(runs[0]) > 10, name
            for got, want in zip(run, runs[0]):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)
    cached = sum(len(launcher.compiled) for launcher in L._launchers.values() if launcher is not None)
    assert cached > 5, 'the direct launches were never taken'
