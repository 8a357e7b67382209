"""The Triton kernels compile for the GPU (sm_90) on a machine without one (kernels/compile_check.py).

The interpreter, which the other kernel tests run, executes the kernels' Python and skips the compiler: a kernel can
pass every interpreter test and fail to compile on the first GPU it meets. These tests compile every launch that
the models make, to a cubin, in a fresh process with triton imported for real."""
import os
import subprocess
import sys
import textwrap

import pytest

from _interpreter import nvidia_backend

triton = pytest.importorskip('triton')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(not nvidia_backend(), reason="triton without its NVIDIA backend (compiler, ptxas)")


def _run(args, timeout=1500):
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _compiled(stdout: str) -> tuple[int, int]:
    """(compiled, distinct launches) from compile_check's last line, 'N of M compiled'."""
    compiled, total = stdout.strip().splitlines()[-1].split(' compiled')[0].split(' of ')
    return int(compiled), int(total)


def test_every_launch_of_the_models_compiles_for_sm90():
    """Every registered test model (training step and eval forward; fp32, and bf16 / fp16 autocast) and the scan at
    long routes (the chunked kernels): each distinct launch compiles to a cubin."""
    r = _run(['-m', 'visionssm.kernels.compile_check'])
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    compiled, total = _compiled(r.stdout)
    assert compiled == total >= 40, r.stdout[-2000:]   # the scan, LayerNorm and state-fusion kernels all seen
    for kernel in ('_scan_fwd_kernel', '_scan_bwd_kernel', '_scan_fwd_chunked_kernel', '_scan_bwd_chunked_kernel',
                   '_ln_fwd_kernel', '_ln_bwd_kernel', '_fuse_fwd_kernel', '_fuse_bwd_h_kernel',
                   '_fuse_bwd_w_kernel'):
        assert f' {kernel}[' in r.stdout, f'{kernel} was never launched'


# The T model of each family at 224² in bf16: the block sizes and layouts of the shapes people train (wider rows for
# the LayerNorm, the state fusion's wider tiles, the chunked scan kernels at Vim's 197 tokens).
T_MODELS = ('vmamba_tiny_s1l8', 'vim_tiny', 'efficientvmamba_tiny', 'groupmamba_tiny', 'spatialmamba_tiny',
            'mambavision_t', 'plainmamba_l1', 'msvmamba_tiny')


@pytest.mark.slow
def test_the_t_models_launches_compile_for_sm90():
    r = _run(['-m', 'visionssm.kernels.compile_check', '--models', *T_MODELS, '--img-size', '224',
              '--dtypes', 'bfloat16', '--no-long'])
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    compiled, total = _compiled(r.stdout)
    assert compiled == total > 50, r.stdout[-2000:]


# A helper whose two returns differ in shape behind a constexpr branch: the interpreter runs it, the compiler
# refuses it (the LayerNorm kernel once shipped this way and failed on every GPU).
_KERNELS = '''
import triton
import triton.language as tl


@triton.jit
def _row_or_tile(ptr, rows, cols, TILE: tl.constexpr):
    if TILE:
        return tl.load(ptr + rows[:, None] * 16 + cols[None, :])
    return tl.load(ptr + cols)[None, :]


@triton.jit
def _row_or_tile_fixed(ptr, rows, cols, TILE: tl.constexpr):
    if TILE:
        w = tl.load(ptr + rows[:, None] * 16 + cols[None, :])
    else:
        w = tl.load(ptr + cols)[None, :]
    return w


@triton.jit
def broken(x_ptr, y_ptr, TILE: tl.constexpr):
    rows, cols = tl.arange(0, 16), tl.arange(0, 16)
    tl.store(y_ptr + rows[:, None] * 16 + cols[None, :], _row_or_tile(x_ptr, rows, cols, TILE) * 2.0)


@triton.jit
def fixed(x_ptr, y_ptr, TILE: tl.constexpr):
    rows, cols = tl.arange(0, 16), tl.arange(0, 16)
    tl.store(y_ptr + rows[:, None] * 16 + cols[None, :], _row_or_tile_fixed(x_ptr, rows, cols, TILE) * 2.0)


# An integer argument is a constexpr on the GPU when it equals 1 (Triton's specialization), where `.to` fails
@triton.jit
def strided(x_ptr, step):
    tl.store(x_ptr + tl.arange(0, 16).to(tl.int64) * step.to(tl.int64), tl.zeros([16], tl.float32))
'''


def test_the_check_catches_what_the_interpreter_lets_through(tmp_path):
    (tmp_path / 'two_returns.py').write_text(_KERNELS)
    script = textwrap.dedent(f'''
        import sys, torch
        sys.path.insert(0, {str(tmp_path)!r})
        import two_returns as K
        from visionssm.kernels import compile_check as CC
        x, y = torch.zeros(256), torch.zeros(256)
        launches = [CC._launch(kernel, (x, y), dict(TILE=True, num_warps=1)) for kernel in (K.broken, K.fixed)]
        assert [launch.constexprs[(2,)] for launch in launches] == [True, True]
        launches += [CC._launch(K.strided, (x, step), dict(num_warps=1)) for step in (3, 1)]
        failures = CC.check(launches, log=lambda s: None)
        assert [launch.name for launch, _ in failures] == ['broken', 'strided'], failures
        assert failures[1][0].constexprs[(1,)] == 1   # the launch with step 1: specialized as on the GPU
        print(failures[0][1])
    ''')
    r = _run(['-c', script], timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert 'return' in r.stdout.lower()


def test_recording_refuses_the_interpreter():
    r = subprocess.run([sys.executable, '-c', 'from visionssm.kernels import compile_check as CC\n'
                        'with CC.recording(): pass'], cwd=ROOT, env=dict(os.environ, TRITON_INTERPRET='1'),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and 'TRITON_INTERPRET' in r.stderr
