"""Triton multi-route selective scan vs the float64 reference: forward and every gradient, every route kind.

Without CUDA the kernels run under the Triton interpreter on CPU tensors (small shapes; the kernel entry is called
directly, ``supports()`` only governs auto-dispatch). With CUDA the same cases run on the GPU, plus larger
``@pytest.mark.gpu`` cases.
"""
import contextlib
import importlib
import os
import sys

import pytest
import torch

_CUDA = torch.cuda.is_available()
if not _CUDA:
    # must precede triton's import (kernels are wrapped for the interpreter when decorated)
    os.environ['TRITON_INTERPRET'] = '1'

pytest.importorskip('triton')

try:
    from visionssm.kernels import routes as R
    from visionssm.kernels import triton_scan as TS
    from visionssm.kernels.reference import selective_scan_reference
except ImportError:  # a machine without the package's other dependencies (e.g. timm on the GPU box)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from kernels import routes as R
    from kernels import triton_scan as TS
    from kernels.reference import selective_scan_reference

# triton may have been imported (e.g. by torch._inductor through timm, when another test module imported visionssm
# first) before TRITON_INTERPRET could be set: then the kernels cannot run on CPU in this process, and the whole
# file runs once in a fresh interpreter process instead (test_cpu_cases_in_fresh_process).
from _interpreter import fresh_process_test, needs_fresh_process  # noqa: E402

_NEEDS_SUBPROCESS = needs_fresh_process(TS._scan_fwd_kernel)

if _NEEDS_SUBPROCESS:
    test_cpu_cases_in_fresh_process = fresh_process_test(__file__)

DEV = 'cuda' if _CUDA else 'cpu'
TOL = {torch.float32: 2e-4, torch.float16: 4e-3, torch.bfloat16: 2.5e-2}


def _make(plan, batch, n_state, dtype, hidden=False, seed=0, device=DEV, bias=True, D=True, strided=False):
    """Random inputs; ``strided``: delta, B and C as strided views of one projection, as the models pass them."""
    g = torch.Generator().manual_seed(seed)
    K, W, P = plan.num_routes, plan.width, plan.height * plan.width_px
    r = lambda *s: torch.randn(*s, generator=g)
    t = dict(
        u=r(batch, P, plan.in_channels),
        delta=r(batch, P, K * W) * 0.5 - 0.5,
        A=-torch.exp(r(K * W, n_state) * 0.5),
        B=r(batch, P, K, n_state),
        C=None if hidden else r(batch, P, K, n_state),
        D=r(K * W) if (D and not hidden) else None,
        delta_bias=r(K * W) * 0.2 if bias else None,
    )
    low = ('u', 'delta', 'B', 'C')
    out = {}
    for k, v in t.items():
        if v is None:
            out[k] = None
        else:
            out[k] = v.to(dtype if k in low else torch.float32).to(device)
    if strided:   # (batch, P, K*W + K*2N): [delta | (B_k, C_k) per route]
        B, C = out['B'], out['C'] if out['C'] is not None else out['B']
        proj = torch.cat([out['delta'], torch.cat([B, C], -1).flatten(-2)], -1)
        BC = proj[..., K * W:].unflatten(-1, (K, 2 * n_state))
        out.update(delta=proj[..., :K * W], B=BC[..., :n_state], C=BC[..., n_state:] if out['C'] is not None else None)
        assert not out['delta'].is_contiguous() and not out['B'].is_contiguous()
    return out


def _run(fn, inputs, plan, grad_out, upcast, **kw):
    leaf = {}
    for k, v in inputs.items():
        if v is None:
            leaf[k] = None
        else:
            v = v.detach()
            if upcast:
                v = v.double()
            leaf[k] = v.requires_grad_(True)
    out = fn(leaf['u'], leaf['delta'], leaf['A'], leaf['B'], leaf['C'], leaf['D'], leaf['delta_bias'], plan, **kw)
    out.backward(grad_out.to(out.dtype))
    grads = {k: (v.grad if v is not None else None) for k, v in leaf.items()}
    return out.detach(), grads


def _close(name, got, want, dtype):
    got, want = got.double().cpu(), want.double().cpu()
    assert got.shape == want.shape, (name, got.shape, want.shape)
    err = (got - want).abs().max().item() if got.numel() else 0.0
    scale = max(want.abs().max().item(), 1e-3) if want.numel() else 1.0
    assert err <= TOL[dtype] * scale, f'{name}: max abs err {err:.3g} vs scale {scale:.3g} ({dtype})'


def _check(routes, height, width_px, width, in_ch, out_ch, batch, n_state, dtype, hidden=False, mean=False,
           softplus=True, bias=True, D=True, seed=0, device=DEV, kernel=None, tile=None, seq_tile=None,
           strided=False):
    """``kernel``: None (the backend's own choice), 'chunked' or 'sequential'; ``tile``: the chunked kernels'
    ((BT, BD, warps) forward, (BT, BD, warps) backward), or one triple for both; ``seq_tile``: the sequential
    kernels' ((BD, BT, warps) forward, (BD, BT, warps) backward)."""
    if _NEEDS_SUBPROCESS:
        pytest.skip('runs in test_cpu_cases_in_fresh_process')
    if tile is not None and not isinstance(tile[0], tuple):
        tile = (tile, tile)
    saved = TS.FORCE_KERNEL, TS._CHUNK_OVERRIDE, TS._SEQ_OVERRIDE
    TS.FORCE_KERNEL = kernel
    TS._CHUNK_OVERRIDE = tile if kernel != 'sequential' else None
    TS._SEQ_OVERRIDE = seq_tile if kernel != 'chunked' else None
    try:
        _check_impl(routes, height, width_px, width, in_ch, out_ch, batch, n_state, dtype, hidden, mean, softplus,
                    bias, D, seed, device, strided)
    finally:
        TS.FORCE_KERNEL, TS._CHUNK_OVERRIDE, TS._SEQ_OVERRIDE = saved


def _check_impl(routes, height, width_px, width, in_ch, out_ch, batch, n_state, dtype, hidden, mean, softplus,
                bias, D, seed, device, strided):
    plan = R.plan_routes(routes, height, width_px, width, in_ch, out_ch)
    inputs = _make(plan, batch, n_state, dtype, hidden=hidden, seed=seed, device=device, bias=bias, D=D,
                   strided=strided)
    kw = dict(delta_softplus=softplus, return_hidden=hidden, mean=mean)
    shape = (batch, height * width_px, out_ch) + ((n_state,) if hidden else ())
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype).to(device)
    want, want_g = _run(selective_scan_reference, inputs, plan, grad_out, upcast=True, **kw)
    got, got_g = _run(TS.selective_scan_triton, inputs, plan, grad_out, upcast=False, **kw)
    assert got.dtype == dtype
    _close('out', got, want, dtype)
    for k in inputs:
        if inputs[k] is None:
            continue
        if want_g[k] is None:
            assert got_g[k] is None or not got_g[k].abs().any(), k
            continue
        assert got_g[k] is not None, f'no gradient for {k}'
        assert got_g[k].dtype == inputs[k].dtype, (k, got_g[k].dtype)
        _close(f'grad {k}', got_g[k], want_g[k], dtype)


DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize('dtype', DTYPES, ids=str)
def test_cross(dtype):
    _check(R.cross_routes(), 3, 4, 5, 5, 5, batch=2, n_state=2, dtype=dtype)


def test_cross_odd_nonsquare_nstate3_mean():
    _check(R.cross_routes(), 3, 5, 6, 6, 6, batch=1, n_state=3, dtype=torch.float32, mean=True, seed=3)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=str)
def test_bidirectional_sequence_mean(dtype):
    _check(R.bidirectional_routes(4), 1, 9, 4, 8, 4, batch=2, n_state=4, dtype=dtype, mean=True, seed=1)


@pytest.mark.parametrize('hw', [(5, 3), (4, 6)])
def test_lattice(hw):
    _check(R.lattice_routes(), *hw, 3, 3, 3, batch=2, n_state=2, dtype=torch.float32, seed=2)


def test_lattice_fp16():
    _check(R.lattice_routes(), 5, 5, 4, 4, 4, batch=1, n_state=1, dtype=torch.float16, seed=4)


def test_grouped():
    _check(R.grouped_routes(3), 3, 4, 3, 12, 12, batch=2, n_state=1, dtype=torch.float32, seed=5)


@pytest.mark.parametrize('dtype', DTYPES, ids=str)
def test_return_hidden_one_route(dtype):
    _check((R.Route('col', reverse=True),), 3, 4, 3, 3, 3, batch=2, n_state=3, dtype=dtype, hidden=True, seed=6)


def test_single_position():
    _check(R.cross_routes(), 1, 1, 3, 3, 3, batch=2, n_state=2, dtype=torch.float32, seed=7)


def test_no_softplus_no_bias_no_D():
    _check(R.cross_routes()[:2], 2, 3, 3, 3, 3, batch=1, n_state=2, dtype=torch.float32, softplus=False,
           bias=False, D=False, seed=8)


def test_channels_wider_than_block_and_offsets():
    # W > BD (several channel blocks: dB / dC reduced across blocks by atomics), routes with channel offsets
    routes = (R.Route('row', in_offset=0), R.Route('col', reverse=True, in_offset=3))
    _check(routes, 2, 3, 20, 23, 20, batch=1, n_state=1, dtype=torch.float32, seed=9)


# Concatenated routes (Route.concat): one scan through several orders, revisiting every position; outputs and the
# input gradients add up at revisited positions.

@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize('prefetch', [True, False])
def test_concat_own_channels_multiscale(dtype, prefetch, monkeypatch):
    # MSVMamba's half-resolution route: three orders, each writing its own channel block; odd, non-square grid
    monkeypatch.setattr(TS, 'SEQ_PREFETCH', prefetch)
    _check(R.multiscale_routes(3), 3, 5, 3, 3, 9, batch=2, n_state=1, dtype=dtype, seed=21)


@pytest.mark.parametrize('merge', ['atomic', 'routes'])
def test_concat_summed_with_plain_route_mean(merge, monkeypatch):
    # segments sharing their output channels (summed there), beside a plain route: multiplicity 3, mean merge
    monkeypatch.setattr(TS, 'MERGE', merge)
    routes = (R.Route.concat(R.Route('row'), R.Route('col', reverse=True)), R.Route('col'))
    _check(routes, 3, 4, 4, 4, 4, batch=1, n_state=2, dtype=torch.float32, mean=True, seed=22)


@pytest.mark.parametrize('merge', ['atomic', 'routes'])
def test_two_concat_routes_own_channels(merge, monkeypatch):
    # two concatenated routes, each segment in its own block, every element written once per route: no route
    # writes an element twice, so the per-route merges apply with per-step output offsets
    monkeypatch.setattr(TS, 'MERGE', merge)
    routes = (R.Route.concat(R.Route('row'), R.Route('col', out_offset=3)),
              R.Route.concat(R.Route('col', reverse=True, in_offset=3),
                             R.Route('row', reverse=True, in_offset=3, out_offset=3)))
    _check(routes, 2, 5, 3, 6, 6, batch=2, n_state=2, dtype=torch.float32, seed=27)


def test_concat_hidden_and_long_multichunk():
    _check((R.Route.concat(R.Route('row'), R.Route('row', reverse=True, out_offset=2)),), 2, 3, 2, 2, 4,
           batch=1, n_state=3, dtype=torch.float32, hidden=True, seed=23)
    _check(R.multiscale_routes(2), 5, 7, 2, 2, 6, batch=1, n_state=1, dtype=torch.float32, seed=24,
           seq_tile=((16, 4, 1), (16, 4, 1)))
    # the v2 layout: the three orders summed into one block (the forward adds in fp32)
    _check(R.multiscale_routes(3, summed=True), 3, 4, 3, 3, 3, batch=2, n_state=1, dtype=torch.bfloat16, seed=26)


def test_concat_always_sequential():
    plan = R.plan_routes(R.multiscale_routes(96), 100, 100, 96, 96, 288)
    assert plan.revisits and not TS._kernel_config(plan, 1, True, 1, torch.device('cpu'))[0]


def test_chunked_backward_long_route():
    # longer than one backward chunk (CHUNK=16 at N=16): checkpoints across chunks
    _check(R.bidirectional_routes(2), 1, 37, 2, 4, 2, batch=1, n_state=16, dtype=torch.float32, seed=10)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=str)
def test_snake_params_at_step(dtype):
    # PlainMamba: zig-zag routes reading delta, B and C in raster order (their gradients scattered there)
    _check(R.snake_routes('step'), 3, 5, 4, 4, 4, batch=2, n_state=4, dtype=dtype, seed=20)


@pytest.mark.parametrize('merge', ['atomic', 'routes'])
@pytest.mark.parametrize('prefetch', [True, False])
def test_concat_beside_params_at_step(merge, prefetch, monkeypatch):
    # both route features in one plan (SPLIT with SEG and DD_ATOMIC): a concatenated route writing two channel
    # blocks beside two zig-zag routes that read delta, B and C in raster order, one per block
    monkeypatch.setattr(TS, 'MERGE', merge)
    monkeypatch.setattr(TS, 'SEQ_PREFETCH', prefetch)
    routes = (R.Route.concat(R.Route('col'), R.Route('row', reverse=True, out_offset=3)),
              R.Route('row_snake', params_at='step'),
              R.Route('col_snake', reverse=True, params_at='step', out_offset=3))
    plan = R.plan_routes(routes, 3, 5, 3, 3, 6)
    assert plan.revisits and plan.split_params and plan.multiplicity == 2
    _check(routes, 3, 5, 3, 3, 6, batch=2, n_state=2, dtype=torch.float32, seed=28)


# Both kernels on every route kind. The chunked ones get small chunks where it matters: several chunks per route
# chain their states (forward) and adjoints (backward) through the PENDING slots, routes of unequal length (odd
# lattices) end in different chunks, several channel blocks share dB / dC.
KERNEL_CASES = {
    'cross_fp32_multichunk': dict(routes=R.cross_routes(), height=5, width_px=6, width=5, in_ch=5, out_ch=5, batch=2,
                                  n_state=1, dtype=torch.float32, tile=(4, 8, 2), seq_tile=((16, 4, 1), (16, 2, 1))),
    # every channel block full (no load masks), the route (15 steps) not a multiple of the unrolled chunk
    'cross_even_channels': dict(routes=R.cross_routes(), height=3, width_px=5, width=16, in_ch=16, out_ch=16,
                                batch=1, n_state=1, dtype=torch.bfloat16, seed=18, tile=(4, 16, 1),
                                seq_tile=((16, 4, 1), (16, 8, 1))),
    'cross_bf16': dict(routes=R.cross_routes(), height=3, width_px=4, width=5, in_ch=5, out_ch=5, batch=2, n_state=2,
                       dtype=torch.bfloat16),
    'cross_nstate3_mean': dict(routes=R.cross_routes(), height=3, width_px=5, width=6, in_ch=6, out_ch=6, batch=1,
                               n_state=3, dtype=torch.float32, mean=True, seed=3, tile=(4, 8, 2)),
    'bidirectional_mean_fp16': dict(routes=R.bidirectional_routes(4), height=1, width_px=9, width=4, in_ch=8,
                                    out_ch=4, batch=2, n_state=4, dtype=torch.float16, mean=True, seed=1),
    'lattice_unequal_lengths': dict(routes=R.lattice_routes(), height=5, width_px=3, width=3, in_ch=3, out_ch=3,
                                    batch=2, n_state=2, dtype=torch.float32, seed=2, tile=(2, 8, 1),
                                    seq_tile=((16, 2, 1), (16, 2, 1))),
    'grouped': dict(routes=R.grouped_routes(3), height=3, width_px=4, width=3, in_ch=12, out_ch=12, batch=2,
                    n_state=1, dtype=torch.float32, seed=5, tile=(4, 8, 2)),
    'hidden_one_route': dict(routes=(R.Route('col', reverse=True),), height=3, width_px=4, width=3, in_ch=3,
                             out_ch=3, batch=2, n_state=3, dtype=torch.float32, hidden=True, seed=6, tile=(4, 8, 2),
                             seq_tile=((16, 2, 1), (16, 4, 2))),
    'single_position': dict(routes=R.cross_routes(), height=1, width_px=1, width=3, in_ch=3, out_ch=3, batch=2,
                            n_state=2, dtype=torch.float32, seed=7),
    'no_softplus_bias_D': dict(routes=R.cross_routes()[:2], height=2, width_px=3, width=3, in_ch=3, out_ch=3,
                               batch=1, n_state=2, dtype=torch.float32, softplus=False, bias=False, D=False, seed=8),
    'blocks_and_offsets': dict(routes=(R.Route('row', in_offset=0), R.Route('col', reverse=True, in_offset=3)),
                               height=2, width_px=3, width=20, in_ch=23, out_ch=20, batch=1, n_state=1,
                               dtype=torch.float32, seed=9, tile=(4, 8, 2)),
    'long_route_nstate16': dict(routes=R.bidirectional_routes(2), height=1, width_px=37, width=2, in_ch=4, out_ch=2,
                                batch=1, n_state=16, dtype=torch.float32, seed=10, tile=(8, 16, 2),
                                seq_tile=((16, 8, 2), (16, 4, 4))),
    # delta, B and C read in place from one projection (the models' layout); their gradients are contiguous
    'strided_views': dict(routes=R.cross_routes(), height=3, width_px=5, width=8, in_ch=8, out_ch=8, batch=2,
                          n_state=2, dtype=torch.bfloat16, seed=19, strided=True, tile=(4, 8, 1),
                          seq_tile=((8, 4, 1), (8, 2, 1))),
    # zig-zag routes with delta / B / C read at the step's raster position; several chunks, unequal sub-lattices
    'snake_params_at_step': dict(routes=R.snake_routes('step'), height=3, width_px=5, width=5, in_ch=5, out_ch=5,
                                 batch=2, n_state=3, dtype=torch.float32, seed=21, tile=(4, 8, 2),
                                 seq_tile=((16, 4, 1), (16, 2, 1))),
    'lattice_snake_step': dict(routes=tuple(R.Route(o, stride=2, offset=off, params_at='step') for o, off in (
        ('row_snake', (0, 0)), ('col_snake', (1, 0)), ('col_snake', (0, 1)), ('row_snake', (1, 1)))),
        height=5, width_px=3, width=3, in_ch=3, out_ch=3, batch=1, n_state=2, dtype=torch.float32, seed=22,
        tile=(2, 8, 1), seq_tile=((16, 2, 1), (16, 2, 1))),
    # forward and backward chunk lengths differ: with gradients the forward chains at the backward's length
    'fwd_bwd_chunks_differ': dict(routes=R.cross_routes(), height=4, width_px=5, width=4, in_ch=4, out_ch=4,
                                  batch=1, n_state=1, dtype=torch.float32, seed=17, tile=((8, 8, 2), (2, 4, 1)),
                                  seq_tile=((16, 2, 1), (16, 8, 1))),
}


@pytest.mark.parametrize('kernel', ['chunked', 'sequential'])
@pytest.mark.parametrize('case', list(KERNEL_CASES), ids=str)
def test_kernels(case, kernel):
    _check(kernel=kernel, **KERNEL_CASES[case])


@pytest.mark.parametrize('kernel', ['chunked', 'sequential'])
@pytest.mark.parametrize('case', ['cross_fp32_multichunk', 'bidirectional_mean_fp16', 'blocks_and_offsets',
                                  'snake_params_at_step'])
@pytest.mark.parametrize('merge', ['atomic', 'routes'])
def test_merge_modes(case, kernel, merge, monkeypatch):
    # both merges with both kernels: in-kernel fp32 atomics, or per-route blocks summed afterwards
    monkeypatch.setattr(TS, 'MERGE', merge)
    _check(kernel=kernel, **KERNEL_CASES[case])


@pytest.mark.parametrize('case', ['cross_fp32_multichunk', 'cross_even_channels', 'hidden_one_route',
                                  'long_route_nstate16', 'fwd_bwd_chunks_differ', 'snake_params_at_step'])
@pytest.mark.parametrize('prefetch', [True, False])
def test_sequential_prefetch_settings(case, prefetch, monkeypatch):
    # both loop structures of both sequential kernels: the next chunk's loads issued ahead, or in its own iteration
    monkeypatch.setattr(TS, 'SEQ_PREFETCH', prefetch)
    _check(kernel='sequential', **KERNEL_CASES[case])


@pytest.mark.parametrize('case', ['long_route_nstate16', 'cross_fp32_multichunk', 'hidden_one_route',
                                  'snake_params_at_step', 'strided_views'])
@pytest.mark.parametrize('keep', [True, False])
def test_sequential_backward_keep_decay_settings(case, keep, monkeypatch):
    # the backward's decays kept in registers from the recomputation, or exponentiated again in the backward walk
    monkeypatch.setattr(TS, 'SEQ_KEEP_DECAY', keep)
    _check(kernel='sequential', **KERNEL_CASES[case])


@pytest.mark.parametrize('case', ['cross_fp32_multichunk', 'bidirectional_mean_fp16', 'lattice_unequal_lengths',
                                  'grouped', 'hidden_one_route', 'blocks_and_offsets', 'long_route_nstate16',
                                  'strided_views', 'snake_params_at_step', 'lattice_snake_step'])
def test_sequential_backward_dbc_partials(case, monkeypatch):
    # dB / dC stored per channel block and summed by torch instead of added with atomics (routes that skip positions
    # included: their unwritten slots are zeros); backward blocks of 2 channels, so that most cases have several
    monkeypatch.setattr(TS, 'SEQ_DBC_PARTIALS', True)
    _check(kernel='sequential', **dict(KERNEL_CASES[case], seq_tile=((4, 8, 1), (2, 4, 1))))


def test_dbc_switch_reads_the_environment(monkeypatch):
    monkeypatch.setenv('VISIONSSM_SCAN_DBC', 'partials')
    assert TS._dbc_partials() and TS._knobs()[-1]
    monkeypatch.setenv('VISIONSSM_SCAN_DBC', 'atomic')
    monkeypatch.setattr(TS, 'SEQ_DBC_PARTIALS', True)
    assert not TS._dbc_partials()
    monkeypatch.setenv('VISIONSSM_SCAN_DBC', 'yes')
    with pytest.raises(ValueError, match="'partials' or 'atomic'"):
        TS._dbc_partials()


def test_no_grad_forward_only():
    if _NEEDS_SUBPROCESS:
        pytest.skip('runs in test_cpu_cases_in_fresh_process')
    plan = R.plan_routes(R.cross_routes(), 2, 3, 3, 3, 3)
    x = _make(plan, 1, 2, torch.float32)
    with torch.no_grad():
        got = TS.selective_scan_triton(*x.values(), plan, out_dtype=torch.float32)
        want = selective_scan_reference(*x.values(), plan, out_dtype=torch.float32)
    _close('out', got, want, torch.float32)


@pytest.mark.parametrize('hw, width, batch, chunked', [
    ((56, 56), 96, 128, False),     # VMamba-T stage 1 at batch 128: the sequential kernels fill the GPU
    ((56, 56), 96, 64, True),       # ... at batch 64 the chunked ones win (H100)
    ((200, 334), 96, 2, True),      # a detection map at batch 2
    ((14, 14), 384, 2, False),      # short routes: always sequential
])
def test_kernel_choice(hw, width, batch, chunked):
    plan = R.plan_routes(R.cross_routes(), *hw, width, width, width)
    for backward in (False, True):
        assert TS._kernel_config(plan, 1, backward, batch, torch.device('cpu'))[0] == chunked
    # the forward saves its states at the backward's chunk length, whichever kernels run
    bwd = TS._kernel_config(plan, 1, True, batch, torch.device('cpu'))
    assert TS.checkpoint_shape(batch, plan, 1, torch.device('cpu'))[2] == bwd[-1] == -(-plan.max_len // bwd[1])


@pytest.mark.parametrize('routes', [R.cross_routes(), R.multiscale_routes(8)], ids=['plain', 'concat'])
def test_route_tables_live_on_the_launch_device(routes):
    """Every table a launch passes is on the kernels' device. The interpreter runs on host tensors and cannot see a
    table left on the host; on a GPU such a table fails every launch ('cannot be accessed from Triton')."""
    out_channels = 8 if len(routes) == 4 else 24   # the concatenated route's three segments write their own blocks
    plan = R.plan_routes(routes, 5, 7, 8, 8, out_channels)
    device = torch.device('meta')
    tables = TS._route_tables(plan, device, 0)
    assert [t.device for t in tables] == [device] * 3


def test_vim_checkpoints_every_four_steps():
    """d_state 16 (Vim): the fp32 checkpoints (B, 2, L / BT, D, 16) dominate training memory; BT = 4 halves them
    against the per-kernel-fastest BT = 2 (Vim-S, H100: 45.6 -> 31.8 GiB at batch 128 for 3% of throughput)."""
    plan = R.plan_routes(R.bidirectional_routes(768), 1, 197, 768, 2 * 768, 768)
    assert TS.checkpoint_shape(128, plan, 16, torch.device('cpu')) == (128, 2, 50, 768, 16)


def _saved_checkpoints(case, choice, monkeypatch):
    """Run ``case`` through the autograd path with VISIONSSM_SCAN_STATES=``choice``: (output, gradients, shapes of
    the fp32 state checkpoints the forward saved for the backward)."""
    monkeypatch.setenv('VISIONSSM_SCAN_STATES', choice)
    c = KERNEL_CASES[case]
    plan = R.plan_routes(c['routes'], c['height'], c['width_px'], c['width'], c['in_ch'], c['out_ch'])
    inputs = _make(plan, c['batch'], c['n_state'], c['dtype'], hidden=c.get('hidden', False), seed=3)
    shape = (c['batch'], plan.height * plan.width_px, plan.out_channels) + ((c['n_state'],) if c.get('hidden') else ())
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(4)).to(DEV, c['dtype'])
    checkpoints = []

    def pack(t):
        if t.dtype == torch.float32 and t.dim() == 5:   # (batch, routes, chunks, width, N)
            checkpoints.append(tuple(t.shape))
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, grads = _run(TS.selective_scan_triton, inputs, plan, grad_out, upcast=False,
                          return_hidden=c.get('hidden', False))
    return out, grads, checkpoints, TS.checkpoint_shape(c['batch'], plan, c['n_state'], torch.device('cpu'))


@pytest.mark.parametrize('kernel', [None, 'chunked'], ids=['own_choice', 'chunked'])
@pytest.mark.parametrize('case', ['long_route_nstate16', 'cross_nstate3_mean', 'snake_params_at_step',
                                  'hidden_one_route', 'lattice_unequal_lengths'])
def test_recomputed_checkpoints_give_the_same_gradients(case, kernel, monkeypatch):
    """Checkpoints kept by the forward, or written in the backward by the forward kernel run again without its
    output (keeps_states, states_only): the same states, so every gradient is bit-equal; only the kept ones are
    saved."""
    if _NEEDS_SUBPROCESS:
        pytest.skip('runs in test_cpu_cases_in_fresh_process')
    monkeypatch.setattr(TS, 'FORCE_KERNEL', kernel)
    out_k, grads_k, saved_k, shape = _saved_checkpoints(case, 'keep', monkeypatch)
    out_r, grads_r, saved_r, _ = _saved_checkpoints(case, 'recompute', monkeypatch)
    assert saved_k == [shape] and saved_r == []
    assert torch.equal(out_k, out_r)
    for name, g in grads_k.items():
        assert (g is None) == (grads_r[name] is None), name
        assert g is None or torch.equal(g, grads_r[name]), name


@pytest.mark.parametrize('kernel', [None, 'chunked'], ids=['own_choice', 'chunked'])
@pytest.mark.parametrize('case', ['cross_nstate3_mean', 'hidden_one_route', 'long_route_nstate16'])
def test_states_only_forward_writes_the_checkpoints_alone(case, kernel, monkeypatch):
    """``triton_forward(states_only=True)``: the checkpoints of the full forward, bit for bit, and no output. (Routes
    of equal lengths: a shorter route leaves its last slots unwritten, and never read, in either buffer; the
    gradient test above covers those.)"""
    if _NEEDS_SUBPROCESS:
        pytest.skip('runs in test_cpu_cases_in_fresh_process')
    monkeypatch.setattr(TS, 'FORCE_KERNEL', kernel)
    c = KERNEL_CASES[case]
    plan = R.plan_routes(c['routes'], c['height'], c['width_px'], c['width'], c['in_ch'], c['out_ch'])
    x = _make(plan, c['batch'], c['n_state'], c['dtype'], hidden=c.get('hidden', False), seed=7)
    args = (x['u'], x['delta'], x['A'], x['B'], x['C'], x['D'], x['delta_bias'], plan, True, c.get('hidden', False),
            c.get('mean', False), None, True)
    out, ckpt = TS.triton_forward(*args)
    none, states = TS.triton_forward(*args, states_only=True)
    assert none is None and out is not None
    assert torch.equal(states, ckpt)
    with pytest.raises(ValueError, match='need_grad'):
        TS.triton_forward(*args[:-1], False, states_only=True)


@pytest.mark.parametrize('kernel', [None, 'chunked'], ids=['own_choice', 'chunked'])
@pytest.mark.parametrize('case', ['cross_nstate3_mean', 'snake_params_at_step', 'long_route_nstate16',
                                  'lattice_unequal_lengths', 'bidirectional_mean_fp16', 'hidden_one_route'])
def test_one_delta_shared_by_the_routes(case, kernel, monkeypatch):
    """Δ passed expanded as (B, P, K, W) with route stride 0 (PlainMamba's and MSVMamba's routes share one Δ): the
    outputs and gradients of Δ repeated into K blocks, bit for bit, and the saved tensors hold one Δ, not K."""
    if _NEEDS_SUBPROCESS:
        pytest.skip('runs in test_cpu_cases_in_fresh_process')
    monkeypatch.setattr(TS, 'FORCE_KERNEL', kernel)
    c = KERNEL_CASES[case]
    plan = R.plan_routes(c['routes'], c['height'], c['width_px'], c['width'], c['in_ch'], c['out_ch'])
    hidden = c.get('hidden', False)
    inputs = _make(plan, c['batch'], c['n_state'], c['dtype'], hidden=hidden, seed=5)
    K, W = plan.num_routes, plan.width
    shared = inputs.pop('delta')[..., :W].contiguous()
    shape = (c['batch'], plan.height * plan.width_px, plan.out_channels) + ((c['n_state'],) if hidden else ())
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(6)).to(DEV, c['dtype'])
    results = []
    for expanded in (False, True):
        base = shared.clone().requires_grad_(True)
        delta = base.unsqueeze(2).expand(*base.shape[:2], K, W) if expanded else base.repeat(1, 1, K)
        leaves = {k: v.clone().requires_grad_(True) if v is not None else None for k, v in inputs.items()}
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = TS.selective_scan_triton(leaves['u'], delta, leaves['A'], leaves['B'], leaves['C'], leaves['D'],
                                           leaves['delta_bias'], plan, return_hidden=hidden, mean=c.get('mean', False))
        out.backward(grad_out)
        grads = [base.grad] + [v.grad for v in leaves.values() if v is not None]
        results.append((out.detach(), grads, sum(storages.values())))
    (out_r, grads_r, saved_r), (out_e, grads_e, saved_e) = results
    assert torch.equal(out_e, out_r)
    for g_e, g_r in zip(grads_e, grads_r):
        assert torch.equal(g_e, g_r)
    assert saved_r - saved_e == (K - 1) * shared.untyped_storage().nbytes()


def test_checkpoints_kept_for_small_states_only(monkeypatch):
    """Kept up to N = 4 (at most one fp32 state per step and channel), recomputed above; the switch overrides."""
    monkeypatch.delenv('VISIONSSM_SCAN_STATES', raising=False)
    assert [TS.keeps_states(n) for n in (1, 2, 4, 5, 8, 16)] == [True, True, True, False, False, False]
    monkeypatch.setenv('VISIONSSM_SCAN_STATES', 'keep')
    assert TS.keeps_states(16)
    monkeypatch.setenv('VISIONSSM_SCAN_STATES', 'recompute')
    assert not TS.keeps_states(1)
    monkeypatch.setenv('VISIONSSM_SCAN_STATES', 'always')
    with pytest.raises(ValueError, match='VISIONSSM_SCAN_STATES'):
        TS.keeps_states(1)


def _recomputed_case(monkeypatch):
    """A bidirectional scan at d_state 16 (checkpoints recomputed by default): its plan and leaf inputs."""
    if _NEEDS_SUBPROCESS:
        pytest.skip('runs in test_cpu_cases_in_fresh_process')
    monkeypatch.delenv('VISIONSSM_SCAN_STATES', raising=False)
    plan = R.plan_routes(R.bidirectional_routes(2), 1, 9, 2, 4, 2)
    return plan, {k: v.requires_grad_(True) if v is not None else None
                  for k, v in _make(plan, 1, 16, torch.float32).items()}


@pytest.mark.parametrize('reentrant', [False, True])
def test_recomputation_inside_a_backward(reentrant, monkeypatch):
    """Under reentrant torch.utils.checkpoint the scan's forward runs again inside the backward, right before its own
    backward: that forward writes its checkpoints (one forward kernel there, not two) whatever the state size. The
    non-reentrant checkpoint runs the first forward's backward on what the recomputation saved: the recomputation
    saves no checkpoint (what it saves must look like the first forward's), and the backward writes them."""
    plan, inputs = _recomputed_case(monkeypatch)
    calls = []
    forward = TS.triton_forward

    def counted(*args, states_only=False):
        # need_grad: whether this forward writes checkpoints; 'states': it writes them alone (no output)
        calls.append('states' if states_only else args[-1])
        return forward(*args, states_only=states_only)
    monkeypatch.setattr(TS, 'triton_forward', counted)
    run = lambda *t: TS.selective_scan_triton(*t, plan)
    out = torch.utils.checkpoint.checkpoint(run, *inputs.values(), use_reentrant=reentrant)
    out.sum().backward()
    assert calls == ([False, True] if reentrant else [False, False, 'states'])
    want = {k: v.grad.clone() for k, v in inputs.items() if v is not None}
    for v in inputs.values():
        if v is not None:
            v.grad = None
    calls.clear()
    run(*inputs.values()).sum().backward()
    assert calls == [False, 'states']    # the backward writes them itself, without an output
    for k, g in want.items():
        assert torch.equal(g, inputs[k].grad), k


def test_recomputed_checkpoints_under_offloading_hooks(monkeypatch):
    """Saved-tensor hooks that copy what is saved (torch.autograd.graph.save_on_cpu, activation offloading) see no
    checkpoint, and the gradients are those of a plain run."""
    plan, inputs = _recomputed_case(monkeypatch)
    grads = []
    for offload in (False, True):
        for v in inputs.values():
            if v is not None:
                v.grad = None
        with torch.autograd.graph.save_on_cpu() if offload else contextlib.nullcontext():
            out = TS.selective_scan_triton(*inputs.values(), plan)
        out.sum().backward()
        grads.append([v.grad.clone() for v in inputs.values() if v is not None])
    for plain, offloaded in zip(*grads):
        assert torch.equal(plain, offloaded)


def test_supports_never_raises():
    assert TS.supports(torch.zeros(1)) is False
    assert TS.supports(None) is False


# ---------------------------------------------------------------------------------------------------- GPU, larger

gpu = pytest.mark.skipif(not _CUDA, reason='needs CUDA')


KERNELS = ['sequential', 'chunked']


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize('kernel', KERNELS)
@pytest.mark.parametrize('dtype', DTYPES, ids=str)
def test_gpu_cross_vmamba_like(dtype, kernel):
    _check(R.cross_routes(), 14, 14, 96, 96, 96, batch=4, n_state=1, dtype=dtype, seed=11, kernel=kernel)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize('summed', [False, True])
@pytest.mark.parametrize('dtype', DTYPES, ids=str)
def test_gpu_multiscale_msvmamba_like(dtype, summed):
    # MSVMamba-T's stage-1 half-resolution route (28x28 map, 192 channels), both generations' output layouts
    out = 192 if summed else 3 * 192
    _check(R.multiscale_routes(192, summed=summed), 28, 28, 192, 192, out, batch=4, n_state=1, dtype=dtype, seed=25)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize('prefetch', [True, False])
def test_gpu_sequential_prefetch(prefetch, monkeypatch):
    # both loop structures of the sequential kernels at full shapes (VMamba-like, Vim-like, lattice at N = 16)
    monkeypatch.setattr(TS, 'SEQ_PREFETCH', prefetch)
    _check(R.cross_routes(), 14, 14, 96, 96, 96, batch=4, n_state=1, dtype=torch.bfloat16, seed=19, kernel='sequential')
    _check(R.bidirectional_routes(192), 1, 197, 192, 384, 192, batch=3, n_state=16, dtype=torch.float32, mean=True,
           seed=20, kernel='sequential')
    _check(R.lattice_routes(), 15, 17, 48, 48, 48, batch=2, n_state=16, dtype=torch.float32, seed=21,
           kernel='sequential')


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize('grad', [True, False])
def test_gpu_long_route_default_choice(grad):
    # L = 2304 at N = 1: the backend's own choice is the chunked kernel (both with and without gradients)
    plan = R.plan_routes(R.cross_routes(), 48, 48, 40, 40, 40)
    assert TS._kernel_config(plan, 1, True, 2, torch.device(DEV))[0]
    _check(R.cross_routes(), 48, 48, 40, 40, 40, batch=2, n_state=1, dtype=torch.bfloat16, seed=16)
    if not grad:
        x = _make(plan, 2, 1, torch.bfloat16)
        with torch.no_grad():
            got = TS.selective_scan_triton(*x.values(), plan)
        want = selective_scan_reference(*x.values(), plan)
        _close('out', got, want, torch.bfloat16)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize('kernel', KERNELS)
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=str)
def test_gpu_vim_like(dtype, kernel):
    _check(R.bidirectional_routes(192), 1, 197, 192, 384, 192, batch=3, n_state=16, dtype=dtype, mean=True,
           seed=12, kernel=kernel)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize('kernel', KERNELS)
def test_gpu_lattice_grouped_hidden(kernel):
    _check(R.lattice_routes(), 15, 17, 48, 48, 48, batch=2, n_state=16, dtype=torch.float32, seed=13, kernel=kernel)
    _check(R.grouped_routes(40), 13, 11, 40, 160, 160, batch=2, n_state=4, dtype=torch.bfloat16, seed=14,
           kernel=kernel)
    _check((R.Route('row'),), 9, 23, 64, 64, 64, batch=2, n_state=8, dtype=torch.float32, hidden=True, seed=15,
           kernel=kernel)


@pytest.mark.gpu
@gpu
def test_gpu_dispatch_through_op():
    try:
        from visionssm.ops.selective_scan import BACKENDS, selective_scan
    except ImportError:
        pytest.skip('visionssm package not importable here')
    assert 'triton' in BACKENDS
    u = torch.randn(2, 8, 8, 16, device='cuda')
    delta = torch.randn(2, 8, 8, 64, device='cuda')
    A = -torch.rand(64, 2, device='cuda')
    B = torch.randn(2, 8, 8, 4, 2, device='cuda')
    C = torch.randn(2, 8, 8, 4, 2, device='cuda')
    y = selective_scan(u, delta, A, B, C, routes=R.cross_routes())
    y_ref = selective_scan(u, delta, A, B, C, routes=R.cross_routes(), backend='reference')
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------- torch.library op

def _op_args(need_grad, n_state=2, shared_delta=False):
    importlib.import_module('visionssm.ops.selective_scan')   # registers the ops
    routes = R.cross_routes()
    plan = R.plan_routes(routes, 2, 3, 3, 3, 3)
    x = _make(plan, 1, n_state, torch.float32)
    if shared_delta:   # one Δ for the four routes, expanded (route stride 0)
        x['delta'] = x['delta'][..., :3].unsqueeze(2).expand(1, 6, 4, 3)
    x = {k: (v.requires_grad_(need_grad) if v is not None else None) for k, v in x.items()}
    return (x['u'], x['delta'], x['A'], x['B'], x['C'], x['D'], x['delta_bias'], '|'.join(r.key for r in routes), 2, 3, 3,
            True, False, False, None, need_grad)


@pytest.mark.parametrize('n_state', [2, 16], ids=['kept', 'recomputed'])   # the backward's checkpoints
@pytest.mark.parametrize('need_grad', [False, True])
def test_op_registration(need_grad, n_state):
    # schema, fake (meta) implementation, autograd registration and dynamic-shape AOT dispatch, all by torch
    if _NEEDS_SUBPROCESS:
        pytest.skip('runs in test_cpu_cases_in_fresh_process')
    torch.library.opcheck(torch.ops.visionssm.selective_scan.default, _op_args(need_grad, n_state))


def test_op_registration_with_a_shared_delta():
    if _NEEDS_SUBPROCESS:
        pytest.skip('runs in test_cpu_cases_in_fresh_process')
    args = _op_args(True, shared_delta=True)
    assert args[1].stride(2) == 0
    torch.library.opcheck(torch.ops.visionssm.selective_scan.default, args)


def test_backward_op_fake_matches_real_strides():
    """The backward op's fake implementation (what torch.compile plans with) gives the real gradients' strides,
    contiguous, also for a Δ that is dense but not contiguous (a permuted (B, P, K, W) block layout)."""
    if _NEEDS_SUBPROCESS:
        pytest.skip('runs in test_cpu_cases_in_fresh_process')
    args = [a.detach() if isinstance(a, torch.Tensor) else a for a in _op_args(True)]
    args[1] = args[1].view(1, 6, 4, 3).transpose(1, 2).contiguous().transpose(1, 2)
    assert not args[1].is_contiguous()
    out, saved = torch.ops.visionssm.selective_scan(*args)
    backward_args = (torch.randn_like(out), *args[:7], saved, *args[7:14])
    torch.library.opcheck(torch.ops.visionssm.selective_scan_backward.default, backward_args)


def test_op_compiles_without_graph_break():
    if _NEEDS_SUBPROCESS:
        pytest.skip('runs in test_cpu_cases_in_fresh_process')
    args = _op_args(True)

    def loss(u, delta, A, B, C, D, bias):
        out, _ = torch.ops.visionssm.selective_scan(u, delta, A, B, C, D, bias, *args[7:])
        return (out * out).sum()

    compiled = torch.compile(loss, fullgraph=True, backend='aot_eager')
    got = torch.autograd.grad(compiled(*args[:7]), args[:7])
    want = torch.autograd.grad(loss(*args[:7]), args[:7])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_op_compiles_with_a_plan_not_yet_built():
    # The fake implementation builds the route plan for the checkpoint's shape. When no eager call has built (and
    # cached) it first, that must not break the graph (it did, and a compiled training run then recompiled per
    # stage with dynamic shapes until Inductor failed an assertion on the H100).
    if _NEEDS_SUBPROCESS:
        pytest.skip('runs in test_cpu_cases_in_fresh_process')
    importlib.import_module('visionssm.ops.selective_scan')
    R._plan_routes.cache_clear()
    routes = R.cross_routes()
    x = _make(R.plan_routes(routes, 5, 7, 3, 3, 3), 1, 1, torch.float32)
    R._plan_routes.cache_clear()
    leaves = [x[k].requires_grad_(True) for k in ('u', 'delta', 'A', 'B', 'C', 'D', 'delta_bias')]

    def loss(u, delta, A, B, C, D, bias):
        out, _ = torch.ops.visionssm.selective_scan(u, delta, A, B, C, D, bias, '|'.join(r.key for r in routes), 5, 7,
                                                    3, True, False, False, None, True)
        return out.square().sum()

    grads = torch.autograd.grad(torch.compile(loss, fullgraph=True, backend='aot_eager')(*leaves), leaves)
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_model_compiles_fullgraph_through_the_op(monkeypatch):
    # a whole model, forward and backward, in one graph through the Triton op (on CPU: the interpreter, with the
    # backend's CUDA-only predicate lifted)
    if _NEEDS_SUBPROCESS:
        pytest.skip('runs in test_cpu_cases_in_fresh_process')
    timm = pytest.importorskip('timm')
    S = importlib.import_module('visionssm.ops.selective_scan')
    monkeypatch.setitem(S.BACKENDS, 'triton', (S.BACKENDS['triton'][0], lambda u: True))
    torch.manual_seed(0)
    model = timm.create_model('test_vmamba').to(DEV)
    x = torch.randn(1, 3, 32, 32, device=DEV)
    compiled = torch.compile(model, fullgraph=True, backend='aot_eager')
    with torch.no_grad():
        torch.testing.assert_close(compiled.eval()(x), model.eval()(x))
    compiled.train()(x).square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
