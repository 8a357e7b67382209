"""Randomized shapes for the Triton selective scan against the float64 reference, every route kind and dtype.

Each case draws, from its seed, a route kind's map (odd, non-square, 1 x 1, routes of up to 4000 steps), channel
width, d_state 1..16, batch 1..3, input dtype (fp32 / bf16 / fp16) and options (mean merge, softplus, Δ-bias, D,
Δ's range, contiguous or padded maps or Δ / B / C as views of one projection, the kernel kind and the merge that the
backend otherwise picks itself), runs the Triton backend (``kernels/triton_scan.py``: what
``visionssm.ops.selective_scan`` runs for CUDA tensors) forward and backward, and compares the output and the
gradients of u, Δ, A, B, C, D and Δ-bias with ``selective_scan_reference`` run in float64 on the same
(dtype-rounded) inputs and output gradient. The error of a tensor is its largest absolute error over the largest
magnitude of the reference's (``_TOL`` says why the bounds are what they are).

Route kinds: ``cross`` (VMamba), ``bidirectional`` (Vim: a sequence, mostly the mean merge), ``lattice``
(EfficientVMamba), ``grouped`` (GroupMamba), ``hidden`` (Spatial-Mamba's ``return_hidden``, one route of any
order), ``snake`` (PlainMamba's zig-zags with ``params_at='step'``), ``multiscale`` (MSVMamba's concatenated
route, its orders writing their own or one summed channel block).

Two modes:

* CPU (CI): three tiny cases per kind (one per dtype) and a few corners under the Triton interpreter
  (``TRITON_INTERPRET=1``, CPU tensors), well under a minute.
* CUDA: ``VISIONSSM_FUZZ_CASES`` cases per route kind (default 500, an eighth of them routes of 512..4000 steps),
  plus a scan whose Δ and merge buffers have more than 2**31 elements (int32 offsets), both kernel kinds. Triton
  compiles a kernel per specialization, the bulk of the time: the cases share them through profiles (see "the
  cases") and run in ``VISIONSSM_FUZZ_WORKERS`` processes on the one GPU (default up to 12). The counts of cases and
  the worst errors per route kind and dtype are printed as a table and written as JSON to ``VISIONSSM_FUZZ_REPORT``
  (if set). On one H200, from the repository root::

      VISIONSSM_FUZZ_REPORT=fuzz_report.json python -m pytest -p no:cacheprovider -q tests/test_kernel_fuzz.py

A failing case is reported with its seed and every drawn parameter; ``VISIONSSM_FUZZ_ONLY=kind:seed`` reruns that
one case, ``VISIONSSM_FUZZ_SEED=n`` draws a fresh sample.
"""
from __future__ import annotations

import concurrent.futures
import json
import math
import multiprocessing
import os
import random
import sys
from dataclasses import asdict, dataclass
from typing import Optional

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

# triton imported before TRITON_INTERPRET could be set (another test module imported it first): the CPU cases then
# run once in a fresh interpreter process (as tests/test_triton_scan.py does)
from _interpreter import fresh_process_test, needs_fresh_process  # noqa: E402

_NEEDS_SUBPROCESS = needs_fresh_process(TS._scan_fwd_kernel)

KINDS = ('cross', 'bidirectional', 'lattice', 'grouped', 'hidden', 'snake', 'multiscale')
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
GRADS = ('u', 'delta', 'A', 'B', 'C', 'D', 'delta_bias')

# Largest error of a tensor, relative to the largest |value| of the reference's. bf16 / fp16: the kernels compute in
# fp32 but store the output, du, dΔ, dB and dC in the input dtype, and where several routes write one element each
# route's part is stored before they are summed (MERGE='routes'): up to five roundings of half an ulp (bf16 2**-9,
# fp16 2**-12 of a value), more where parts larger than their sum cancel; the bounds are ~6 ulps. fp32: the state
# and every sum are fp32 (on the GPU with the hardware exp2 / log approximations), ~1e-6 measured; the bound leaves
# two orders of magnitude for long sums. The same bounds as tests/test_triton_scan.py.
_TOL = {torch.float32: 2e-4, torch.bfloat16: 2.5e-2, torch.float16: 4e-3}
_SCALE_FLOOR = 1e-3     # below this largest |value|, errors count against 1e-3 (gradients that are all ~0)

# The Triton interpreter warns where the softplus's series branch overflows for large Δ: it is computed for every
# lane and discarded there (tl.where), as on the GPU.
pytestmark = pytest.mark.filterwarnings('ignore:overflow encountered in multiply:RuntimeWarning')


# --------------------------------------------------------------------------------------------------- the cases
# Triton compiles a kernel per specialization: its constexpr flags and tiles, the dtypes, and, for every integer
# argument (strides, sizes), whether it is 1 or a multiple of 16. Drawn independently per case, these made nearly
# every case a compilation of its own (seconds each on the GPU, against milliseconds of scan). So each case takes
# what decides the specialization from one of a few *profiles* per route kind (dtype, channel width, d_state,
# options, tensor layout, kernel and merge choice, route-length class), and draws the rest freely: the map (and so
# the routes' geometry and lengths), the batch, the merge mode, Δ's range, a hidden route's order.

LAYOUTS = ('contiguous', 'padded', 'projection')


@dataclass(frozen=True)
class Case:
    kind: str
    seed: int
    profile: int
    dtype: str              # 'float32' | 'bfloat16' | 'float16'
    width: int              # channels per route
    n_state: int
    softplus: bool
    bias: bool
    skip: bool              # D
    layout: str             # LAYOUTS: contiguous, padded rows, Δ / B / C as views of one projection (the models')
    out_fp32: bool          # out_dtype=float32 (Spatial-Mamba keeps h in fp32)
    kernel: Optional[str]   # TS.FORCE_KERNEL: None (the backend's choice), 'sequential' or 'chunked'
    merge: Optional[str]    # TS.MERGE: None ('routes') or 'atomic'
    summed: bool            # multiscale: the three orders write one channel block
    batch: int
    height: int
    width_px: int
    mean: bool
    delta_scale: float
    delta_shift: float
    order: str = 'row'      # hidden: the route's order
    reverse: bool = False   # hidden: reversed

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def routes(self) -> tuple:
        W = self.width
        if self.kind == 'cross':
            return R.cross_routes()
        if self.kind == 'bidirectional':
            return R.bidirectional_routes(W)
        if self.kind == 'lattice':
            return R.lattice_routes()
        if self.kind == 'grouped':
            return R.grouped_routes(W)
        if self.kind == 'hidden':
            return (R.Route(self.order, reverse=self.reverse),)
        if self.kind == 'snake':
            return R.snake_routes('step')
        return R.multiscale_routes(W, summed=self.summed)

    def channels(self) -> tuple[int, int]:
        """(input channels, output channels)."""
        W = self.width
        return {'bidirectional': (2 * W, W), 'grouped': (4 * W, 4 * W),
                'multiscale': (W, W if self.summed else 3 * W)}.get(self.kind, (W, W))

    def plan(self):
        return R.plan_routes(self.routes(), self.height, self.width_px, self.width, *self.channels())

    def __str__(self):
        return ', '.join(f'{k}={v}' for k, v in asdict(self).items())


def _balanced(kind: str, name: str, index: int, values: tuple):
    """Profile ``index``'s value of an option: every value of ``values`` in turn, in a shuffled order of the kind's."""
    order = list(values) * -(-16 // len(values))
    random.Random(f'{kind}:{name}').shuffle(order)
    return order[index % len(order)]


def draw_profile(kind: str, index: int, tiny: bool = False) -> tuple[dict, str, Optional[int]]:
    """What decides a case's kernel specializations: the options, the route-length class ('short', 'mid' (512..2047
    steps: longer forward chunks; at d_state 1 the backend takes the chunked kernels) or 'far' (2048..4000: also the
    sequential forward's prefetch and longer backward chunks)), and the factors 2 of the position count."""
    rng = random.Random(f'profile:{kind}:{index}:{tiny}')
    pick = lambda name, values: _balanced(kind, name, index, values)
    if tiny:
        width, n_state = rng.randint(1, 6), rng.choice((1, 1, 2, 3, 4, 16))
    else:
        x = rng.random()
        width = (rng.randint(1, 24) if x < 0.6 else rng.choice((16, 32, 48, 64, 96)) if x < 0.85
                 else rng.randint(25, 130))
        # d_state 1 (VMamba) and 16 (Vim, EfficientVMamba) in 7 of 16 profiles, the others in turn over the kinds
        n_state = pick('n_state', (1,) * 4 + (16,) * 3 + (0,) * 9) or 2 + (index * 5 + len(kind)) % 14
    # two of every 16 profiles long: their cases are slower (and as many as the others)
    length = 'short' if tiny else {3: 'mid', 14: 'far'}.get(index % 16, 'short')
    twos = None if tiny else pick('twos', (0, 1, 2, 3, 4))
    hidden = kind == 'hidden'
    return dict(
        profile=index, dtype=str(DTYPES[index % len(DTYPES)]).split('.')[-1],
        width=width if length == 'short' else min(width, 48), n_state=n_state,
        softplus=pick('softplus', (True, True, True, False)), bias=pick('bias', (True, True, True, False)),
        skip=pick('skip', (True, False, False) if hidden else (True, True, True, False)),
        layout=pick('layout', LAYOUTS), out_fp32=hidden and pick('out_fp32', (True, False)),
        kernel=pick('kernel', (None, None, 'sequential', 'chunked')), merge=pick('merge', (None, None, 'atomic')),
        summed=kind == 'multiscale' and pick('summed', (True, False, False))), length, twos


def _side(rng: random.Random, tiny: bool) -> int:
    if tiny:
        return rng.randint(1, 4)
    x = rng.random()
    return rng.randint(1, 3) if x < 0.25 else rng.randint(4, 19) if x < 0.85 else rng.randint(20, 33)


_PROFILE_FIELDS = ('dtype', 'width', 'n_state', 'softplus', 'bias', 'skip', 'layout', 'out_fp32', 'kernel', 'merge',
                   'summed')


def _twos(n: int) -> int:
    """How often 2 divides ``n``, at most 4: with the channel counts it decides which of a map's strides (the batch
    strides, multiples of the position count) Triton sees as multiples of 16."""
    return min((n & -n).bit_length() - 1, 4)


def _route_len(kind: str, height: int, width_px: int) -> int:
    """Steps of the longest route: a lattice's visits a quarter of the map, MSVMamba's concatenated route it thrice."""
    return {'lattice': -(-height // 2) * -(-width_px // 2), 'multiscale': 3 * height * width_px}.get(
        kind, height * width_px)


def _geometry(kind: str, rng: random.Random, length: str, twos: Optional[int], tiny: bool) -> tuple[int, int]:
    """(height, width_px) whose longest route is of the length class and whose position count has ``twos`` factors
    2 (None: any)."""
    lo, hi = {'short': (1, 511), 'mid': (512, 2047), 'far': (2048, 4000)}[length]
    per_pos = _route_len(kind, 64, 64) / 4096
    for _ in range(10_000):
        if kind != 'lattice' and length == 'short' and rng.random() < 0.05:   # one position: L = 1
            height, width_px = 1, 1
        elif kind == 'bidirectional':
            height, width_px = 1, rng.randint(1, 6) if tiny else rng.randint(lo, 300 if length == 'short' else hi)
        elif length != 'short':
            height = rng.randint(16, 64)
            width_px = max(1, rng.randint(int(lo / per_pos / height), int(hi / per_pos / height) + 1))
        else:
            height, width_px = _side(rng, tiny), _side(rng, tiny)
            if kind == 'lattice':   # every stride-2 sub-lattice must hold a position
                height, width_px = max(height, 2), max(width_px, 2)
        if lo <= _route_len(kind, height, width_px) <= hi and (twos is None or _twos(height * width_px) == twos):
            return height, width_px
    raise AssertionError(f'no {length} map of {kind} with {twos} factors 2')


def draw_case(kind: str, seed: int, profiles: int, tiny: bool = False) -> Case:
    """Case ``seed`` of ``kind`` with ``profiles`` profiles: always the same case for the same arguments."""
    profile, length, twos = draw_profile(kind, seed % profiles, tiny)
    rng = random.Random(f'case:{kind}:{seed}:{tiny}')
    height, width_px = _geometry(kind, rng, length, twos, tiny)
    return Case(
        kind=kind, seed=seed, **profile, batch=rng.randint(1, 2 if tiny else 3), height=height, width_px=width_px,
        mean=rng.random() < (0.8 if kind == 'bidirectional' else 0.3),
        # Δ up to ~30 (softplus's linear branch past 20), but not in fp16: dt * B * u summed over the route and the
        # channels would pass fp16's range in dB / dC, which the backend stores in B's dtype
        delta_scale=rng.choice((0.5, 0.5, 0.5, 2.0) + ((10.0,) if profile['dtype'] != 'float16' else ())),
        delta_shift=round(rng.uniform(-3.0, 0.5), 3),
        order=rng.choice(('row', 'col', 'row_snake', 'col_snake')) if kind == 'hidden' else 'row',
        reverse=kind == 'hidden' and rng.random() < 0.5)


def _padded(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a view into a zero buffer whose last dim is padded to a multiple of 16 elements (and beyond)."""
    buf = t.new_zeros(*t.shape[:-1], 16 * (t.shape[-1] // 16 + 1))
    buf[..., :t.shape[-1]] = t
    return buf[..., :t.shape[-1]]


def _inputs(case: Case, plan, device) -> tuple[dict, torch.Tensor]:
    """Random inputs (maps in the case's dtype, A / D / Δ-bias fp32) and an output gradient, from the case's seed."""
    g = torch.Generator().manual_seed(case.seed)
    r = lambda *s: torch.randn(*s, generator=g)
    K, W, N, P = plan.num_routes, plan.width, case.n_state, case.height * case.width_px
    hidden = case.kind == 'hidden'
    delta = r(case.batch, P, K * W) * case.delta_scale + case.delta_shift
    bias = r(K * W) * 0.2
    if not case.softplus:   # Δ used as it is: keep it positive (a stable scan)
        delta, bias = delta.abs() * 0.5, bias.abs()
    t = dict(u=r(case.batch, P, plan.in_channels), delta=delta, A=-torch.exp(r(K * W, N) * 0.5),
             B=r(case.batch, P, K, N), C=None if hidden else r(case.batch, P, K, N),
             D=r(K * W) if case.skip else None, delta_bias=bias if case.bias else None)
    low = case.torch_dtype
    t = {k: v if v is None else v.to(low if k in ('u', 'delta', 'B', 'C') else torch.float32).to(device)
         for k, v in t.items()}
    if case.layout == 'padded':
        t.update({k: _padded(t[k]) for k in ('u', 'delta', 'B', 'C') if t[k] is not None})
    elif case.layout == 'projection':   # (batch, P, K*W + K*2N): [delta | (B_k, C_k) per route], read in place
        C = t['C'] if t['C'] is not None else t['B']
        proj = torch.cat([t['delta'], torch.cat([t['B'], C], -1).flatten(-2)], -1)
        BC = proj[..., K * W:].unflatten(-1, (K, 2 * N))
        t.update(delta=proj[..., :K * W], B=BC[..., :N], C=BC[..., N:] if t['C'] is not None else None)
    grad = r(case.batch, P, plan.out_channels, *((N,) if hidden else ()))
    return t, grad.to(torch.float32 if case.out_fp32 else low).to(device)


def _forward_backward(fn, inputs: dict, grad_out, plan, upcast: bool, **options):
    leaf = {k: None if v is None else (v.detach().double() if upcast else v.detach()).requires_grad_(True)
            for k, v in inputs.items()}
    out = fn(*(leaf[k] for k in GRADS), plan, **options)
    out.backward(grad_out.to(out.dtype))
    return out.detach(), {k: None if v is None else v.grad for k, v in leaf.items()}


def run_case(case: Case, device) -> dict:
    """Errors of one case: ``{tensor: relative error}`` for the output and every gradient that exists, ``_tol`` the
    bound; raises AssertionError for a wrong dtype, shape or a missing gradient."""
    plan = case.plan()
    inputs, grad_out = _inputs(case, plan, device)
    options = dict(delta_softplus=case.softplus, return_hidden=case.kind == 'hidden', mean=case.mean,
                   out_dtype=torch.float32 if case.out_fp32 else None)
    want, want_g = _forward_backward(selective_scan_reference, inputs, grad_out, plan, upcast=True, **options)
    saved = TS.FORCE_KERNEL, TS.MERGE
    TS.FORCE_KERNEL, TS.MERGE = case.kernel, case.merge
    try:
        got, got_g = _forward_backward(TS.selective_scan_triton, inputs, grad_out, plan, upcast=False, **options)
    finally:
        TS.FORCE_KERNEL, TS.MERGE = saved
    expected_dtype = torch.float32 if case.out_fp32 else case.torch_dtype
    assert got.dtype == expected_dtype, f'output dtype {got.dtype}, expected {expected_dtype}'
    errors = {'out': _rel_err(got, want)}
    for k in GRADS:
        if inputs[k] is None:
            continue
        if want_g[k] is None:   # an input the scan does not use (D with return_hidden): no gradient, or zeros
            assert got_g[k] is None or not got_g[k].abs().any(), f'grad {k}: nonzero for an unused input'
            continue
        assert got_g[k] is not None, f'no gradient for {k}'
        assert got_g[k].dtype == inputs[k].dtype, f'grad {k}: dtype {got_g[k].dtype}, expected {inputs[k].dtype}'
        errors[k] = _rel_err(got_g[k], want_g[k])
    return errors


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.shape == want.shape, f'shape {tuple(got.shape)}, expected {tuple(want.shape)}'
    if not want.numel():
        return 0.0
    got, want = got.double(), want.double()
    err = (got - want).abs().max().item()
    return err / max(want.abs().max().item(), _SCALE_FLOOR) if math.isfinite(err) else math.inf


def check_cases(cases: list[Case], device) -> list[tuple[Case, dict, Optional[str]]]:
    """Run every case: ``(case, errors, failure)``, failure None or what went wrong."""
    results = []
    for case in cases:
        try:
            errors = run_case(case, device)
        except Exception as e:   # a kernel error or a wrong shape / dtype: a failed case, the others still run
            results.append((case, {}, f'{type(e).__name__}: {e}'.splitlines()[0][:300]))
            continue
        tol = _TOL[case.torch_dtype]
        bad = {k: v for k, v in errors.items() if not v <= tol}
        results.append((case, errors, f'errors above {tol:g}: ' + ', '.join(f'{k} {v:.3g}' for k, v in bad.items())
                        if bad else None))
    return results


def _assert_no_failures(results):
    failed = [(c, f) for c, _, f in results if f is not None]
    if failed:
        lines = [f'{len(failed)} of {len(results)} cases failed; rerun one with VISIONSSM_FUZZ_ONLY=kind:seed']
        lines += [f'  [{c.kind}:{c.seed}] {f}\n      {c}' for c, f in failed[:20]]
        pytest.fail('\n'.join(lines), pytrace=False)


def _seed0() -> int:
    return int(os.environ.get('VISIONSSM_FUZZ_SEED', '0'))


def _only() -> Optional[tuple[str, int]]:
    only = os.environ.get('VISIONSSM_FUZZ_ONLY')
    if not only:
        return None
    kind, seed = only.split(':')
    return kind, int(seed)


def _profiles(count: int, tiny: bool) -> int:
    """Profiles per route kind: on the GPU ``VISIONSSM_FUZZ_PROFILES`` (default 16: each compiles a few
    specializations); under the interpreter, where nothing compiles, one per case."""
    return count if tiny else int(os.environ.get('VISIONSSM_FUZZ_PROFILES', '16'))


def _cases(kind: str, count: int, tiny: bool) -> list[Case]:
    profiles = _profiles(count, tiny)
    only = _only()
    if only is not None:
        return [draw_case(kind, only[1], profiles, tiny)] if only[0] == kind else []
    base = _seed0() * 1_000_003
    return [draw_case(kind, base + i, profiles, tiny) for i in range(count)]


# ----------------------------------------------------------------------------------------------------- CPU mode

if _NEEDS_SUBPROCESS and not _CUDA:
    test_cpu_cases_in_fresh_process = fresh_process_test(__file__)

_CPU_CASES = 3      # per route kind: one per dtype

cpu = pytest.mark.skipif(_CUDA or _NEEDS_SUBPROCESS, reason='CPU mode (Triton interpreter); CUDA runs the full fuzz')


@cpu
@pytest.mark.parametrize('kind', KINDS)
def test_fuzz_interpreter(kind):
    _assert_no_failures(check_cases(_cases(kind, _CPU_CASES, tiny=True), 'cpu'))


@cpu
def test_fuzz_interpreter_edge_cases():
    """Corners a tiny draw may miss: 1 x 1 maps and a one-step sequence (L = 1), d_state 16, every layout."""
    base = dict(seed=7, profile=0, width=3, softplus=True, bias=True, skip=True, layout='contiguous', out_fp32=False,
                kernel=None, merge=None, summed=False, batch=2, height=1, width_px=1, mean=False, delta_scale=0.5,
                delta_shift=-0.5)
    cases = [Case('cross', **dict(base, n_state=16, dtype='float32', layout='padded')),
             Case('hidden', **dict(base, n_state=1, dtype='bfloat16', out_fp32=True)),
             Case('multiscale', **dict(base, n_state=2, dtype='float16', layout='projection')),
             Case('bidirectional', **dict(base, n_state=16, dtype='float32', mean=True)),
             Case('snake', **dict(base, n_state=3, dtype='bfloat16', kernel='chunked'))]
    _assert_no_failures(check_cases(cases, 'cpu'))


def test_draws_are_reproducible_and_valid():
    # the same seed gives the same case, every drawn case plans (no route set the op would reject), and the GPU
    # draws reach the corners the fuzz is for
    cases = [draw_case(kind, seed, 16) for kind in KINDS for seed in range(160)]
    assert cases[:50] == [draw_case(c.kind, c.seed, 16) for c in cases[:50]]
    for case in cases:
        case.plan()
    profiles = {}
    for c in cases:   # a profile's cases share what decides their specializations
        keep = {k: v for k, v in asdict(c).items() if k in _PROFILE_FIELDS}
        profiles.setdefault((c.kind, c.profile), set()).add((tuple(keep.items()), _twos(c.height * c.width_px)))
    assert all(len(v) == 1 for v in profiles.values())
    assert {c.n_state for c in cases} == set(range(1, 17))
    assert {c.batch for c in cases} == {1, 2, 3}
    assert {c.dtype for c in cases} == {'float32', 'bfloat16', 'float16'}
    assert all(any(c.height == c.width_px == 1 for c in cases if c.kind == k) for k in KINDS if k != 'lattice')
    assert any(c.height % 2 and c.width_px % 2 and c.height != c.width_px for c in cases)
    for kind in KINDS:   # every kind: long routes of both classes, and the options both ways
        these = [c for c in cases if c.kind == kind]
        steps = [c.plan().max_len for c in these]
        assert any(512 <= s < 2048 for s in steps) and any(s >= 2048 for s in steps), kind
        assert {c.kernel for c in these} == {None, 'sequential', 'chunked'}, kind
        assert {c.merge for c in these} == {None, 'atomic'} and {c.layout for c in these} == set(LAYOUTS), kind
        assert {c.mean for c in these} == {c.softplus for c in these} == {c.bias for c in these} == {True, False}


# ---------------------------------------------------------------------------------------------------- CUDA mode

gpu = pytest.mark.skipif(not _CUDA, reason='needs CUDA')
_RESULTS: dict[str, list] = {}      # route kind -> [(case, errors, failure)], as the tests finish
_EXTRA: dict[str, dict] = {}        # the int32-offset scans: worst errors per tensor
_PENDING: dict[str, list] = {}      # route kind -> its shards' futures, for a report of the finished ones if stopped


def _workers() -> int:
    return max(1, int(os.environ.get('VISIONSSM_FUZZ_WORKERS', min(12, os.cpu_count() or 1))))


def _gpu_count() -> int:
    return int(os.environ.get('VISIONSSM_FUZZ_CASES', '500'))


def _gpu_shard(cases: list[Case]) -> list:
    # in a worker process: the cases of one profile, on the GPU; its cached memory is handed back afterwards (a dozen
    # workers share the GPU with the int32-offset scans)
    try:
        return check_cases(cases, 'cuda')
    finally:
        torch.cuda.empty_cache()


@pytest.fixture(scope='module')
def gpu_fuzz():
    """Every kind's cases, submitted at once to worker processes on the one GPU, a shard per profile (its cases
    share most kernel specializations: compiled once in its worker); long-route shards first. Compiling is the
    bulk of the time (a small scan runs in milliseconds), and the workers compile side by side. Spawned: CUDA
    cannot fork. Returns ``kind -> [futures]`` (or, with one worker, ``kind -> [results]`` computed here)."""
    shards = {}
    for kind in KINDS:
        for c in _cases(kind, _gpu_count(), tiny=False):
            shards.setdefault((kind, c.profile), []).append(c)
    order = sorted(shards, key=lambda s: -sum(c.plan().max_len for c in shards[s]))
    if _workers() == 1:
        yield {kind: [check_cases(shards[s], 'cuda') for s in order if s[0] == kind] for kind in KINDS}
        return
    with concurrent.futures.ProcessPoolExecutor(_workers(), mp_context=multiprocessing.get_context('spawn')) as ex:
        futures = {s: ex.submit(_gpu_shard, shards[s]) for s in order}
        _PENDING.update({kind: [f for s, f in futures.items() if s[0] == kind] for kind in KINDS})
        yield dict(_PENDING)
        for f in futures.values():
            f.cancel()


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize('kind', KINDS)
def test_fuzz_gpu(kind, gpu_fuzz):
    shards = gpu_fuzz[kind]
    if not shards:
        pytest.skip('VISIONSSM_FUZZ_ONLY names another kind')
    results = [r for shard in shards for r in (shard.result() if hasattr(shard, 'result') else shard)]
    _RESULTS[kind] = results
    _PENDING.pop(kind, None)
    _assert_no_failures(results)


def check_channel_slice(height: int, width_px: int, width: int, checked: list[int], kernel: Optional[str],
                        device) -> dict:
    """VMamba's four routes over a map of ``width`` channels (bf16, d_state 1), checked on a few channels against
    the float64 reference at every position; returns the errors (as ``run_case``).

    Channels are independent, so the reference runs on the ``checked`` channels alone, and the output gradient is
    zero on every other channel: their adjoints are then exactly zero, the gradients of the shared B and C hold only
    the checked channels' terms (and compare in full), and every other channel's du, Δ, A, D and Δ-bias gradient
    must be exactly zero (a write through a wrong offset lands there, or is missing where it belongs)."""
    H, W_px, W, K = height, width_px, width, 4
    P, bf16, fp32 = H * W_px, torch.bfloat16, torch.float32
    routes = R.cross_routes()
    plan = R.plan_routes(routes, H, W_px, W, W, W)
    g = torch.Generator(device).manual_seed(0)
    r = lambda *s, dtype=bf16: torch.randn(*s, generator=g, device=device, dtype=dtype)
    x = dict(u=r(1, P, W), delta=r(1, P, K * W).mul_(0.5).sub_(0.5), A=-torch.exp(r(K * W, 1, dtype=fp32) * 0.5),
             B=r(1, P, K, 1), C=r(1, P, K, 1), D=r(K * W, dtype=fp32), delta_bias=r(K * W, dtype=fp32) * 0.2)
    x = {k: v.requires_grad_() for k, v in x.items()}
    S = torch.tensor(checked, device=device)                                # the checked channels of every route
    SK = (torch.arange(K, device=device)[:, None] * W + S).flatten()       # ... in the K*W of Δ, A, D, Δ-bias
    grad = torch.zeros(1, P, W, device=device, dtype=bf16)
    grad[..., S] = r(1, P, len(checked))

    saved = TS.FORCE_KERNEL
    TS.FORCE_KERNEL = kernel
    try:
        out = TS.selective_scan_triton(*x.values(), plan)
        out.backward(grad)
    finally:
        TS.FORCE_KERNEL = saved
    got = dict(out=out.detach()[..., S], u=x['u'].grad[..., S], delta=x['delta'].grad[..., SK],
               A=x['A'].grad[SK], B=x['B'].grad, C=x['C'].grad, D=x['D'].grad[SK], delta_bias=x['delta_bias'].grad[SK])
    unchecked = torch.ones(K * W, dtype=torch.bool, device=device)
    unchecked[SK] = False
    stray = dict(u=x['u'].grad.abs().amax((0, 1))[unchecked[:W]], delta=x['delta'].grad.abs().amax((0, 1))[unchecked],
                 A=x['A'].grad.abs()[unchecked], D=x['D'].grad.abs()[unchecked],
                 delta_bias=x['delta_bias'].grad.abs()[unchecked])
    nonzero = [k for k, v in stray.items() if v.any()]
    assert not nonzero, f'gradients of {nonzero} nonzero on channels whose output gradient is zero'
    del out
    for v in x.values():
        v.grad = None

    small = dict(u=x['u'][..., S], delta=x['delta'][..., SK], A=x['A'][SK], B=x['B'], C=x['C'], D=x['D'][SK],
                 delta_bias=x['delta_bias'][SK])
    small_plan = R.plan_routes(routes, H, W_px, len(checked), len(checked), len(checked))
    want, want_g = _forward_backward(selective_scan_reference, small, grad[..., S], small_plan, upcast=True)
    return {'out': _rel_err(got['out'], want), **{k: _rel_err(got[k], want_g[k]) for k in GRADS}}


@cpu
def test_channel_slice_check_interpreter():
    # the int32-offset scan's check, at a size the interpreter runs
    errors = check_channel_slice(5, 3, 8, [0, 3, 7], 'sequential', 'cpu')
    assert all(v <= _TOL[torch.bfloat16] for v in errors.values()), errors


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize('kernel', ['sequential', 'chunked'])
def test_gpu_offsets_past_int32(kernel):
    """A 513 x 512 map of 2048 channels: Δ, the per-route output buffer and du's have 4 * 2048 * 262656 > 2**31
    elements, and the offsets of the map's later positions pass int32 (the sequential kernels then switch to 64-bit
    offsets, the chunked ones always use them). The float64 reference of the whole would need ~100 GB: it runs on
    the first, a middle and the last channels of every route (``check_channel_slice``)."""
    H, W_px, W = 513, 512, 2048
    assert H * W_px * 4 * W > 2 ** 31 and TS._off64(H * W_px, 4 * W)
    errors = check_channel_slice(H, W_px, W, [0, 1, 1000, W - 2, W - 1], kernel, torch.device('cuda'))
    _EXTRA[f'int32 offsets, {kernel} kernels'] = errors
    tol = _TOL[torch.bfloat16]
    assert all(v <= tol for v in errors.values()), f'errors above {tol:g}: {errors}'


# ------------------------------------------------------------------------------------------------------ the report

@pytest.fixture(scope='module', autouse=True)
def fuzz_report(pytestconfig):
    """After the module: the table of cases and worst errors per route kind and dtype, and the JSON report."""
    yield
    # stopped early (e.g. a time limit's SIGINT): the shards that finished still count, marked partial
    partial = sorted(_PENDING)
    _RESULTS.update(_finished(_PENDING))
    if not (any(_RESULTS.values()) or _EXTRA):
        return
    report = dict(_summarize(), partial_kinds=partial)
    path = os.environ.get('VISIONSSM_FUZZ_REPORT')
    if path:
        with open(path, 'w') as f:
            json.dump(report, f, indent=1)
    capture = pytestconfig.pluginmanager.getplugin('capturemanager')
    writer = pytestconfig.pluginmanager.getplugin('terminalreporter')
    with capture.global_and_fixture_disabled():
        for line in _table(report):
            writer.write_line(line) if writer else print(line)


def _finished(pending: dict) -> dict:
    """kind -> the results of its shards that finished (not cancelled, not failed)."""
    return {kind: [r for f in futures if f.done() and not f.cancelled() and f.exception() is None
                   for r in f.result()] for kind, futures in pending.items()}


def test_a_stopped_run_reports_its_finished_shards():
    done, failed, running = (concurrent.futures.Future() for _ in range(3))
    done.set_result(['case 1', 'case 2'])
    failed.set_exception(RuntimeError('worker died'))
    assert _finished({'cross': [done, failed, running], 'lattice': [running]}) == {
        'cross': ['case 1', 'case 2'], 'lattice': []}


def _summarize() -> dict:
    rows = []
    for kind, results in _RESULTS.items():
        for dtype in DTYPES:
            name = str(dtype).split('.')[-1]
            these = [(c, e, f) for c, e, f in results if c.dtype == name]
            if not these:
                continue
            worst = {}
            for _, errors, _ in these:
                for k, v in errors.items():
                    worst[k] = max(worst.get(k, 0.0), v)
            top = max(these, key=lambda r: max(r[1].values(), default=math.inf))[0]
            rows.append(dict(kind=kind, dtype=name, cases=len(these), failed=sum(f is not None for *_, f in these),
                             long_routes=sum(c.plan().max_len >= 512 for c, *_ in these), tolerance=_TOL[dtype],
                             worst=worst, worst_case=str(top)))
    return dict(device=torch.cuda.get_device_name() if _CUDA else 'cpu', torch=torch.__version__,
                triton=__import__('triton').__version__, cases_per_kind=_gpu_count(),
                profiles_per_kind=_profiles(0, False), seed=_seed0(), rows=rows, int32_offsets=_EXTRA,
                failures=[f'{f} [{c}]' for results in _RESULTS.values() for c, _, f in results if f is not None])


def _table(report: dict) -> list[str]:
    cols = ('out',) + GRADS
    head = f'{"kind":<14}{"dtype":<10}{"cases":>6}{"long":>5}{"fail":>5}{"tol":>9}' + ''.join(f'{c:>11}' for c in cols)
    lines = ['', f'selective-scan fuzz on {report["device"]}: max error / max |float64 reference|', head,
             '-' * len(head)]
    fmt = lambda worst: ''.join(f'{worst[c]:>11.2e}' if c in worst else f'{"-":>11}' for c in cols)
    for r in report['rows']:
        lines.append(f'{r["kind"]:<14}{r["dtype"]:<10}{r["cases"]:>6}{r["long_routes"]:>5}{r["failed"]:>5}'
                     f'{r["tolerance"]:>9.1e}' + fmt(r['worst']))
    for name, errors in report['int32_offsets'].items():
        lines.append(f'{name:<44}' + fmt(errors))
    if report.get('partial_kinds'):
        lines.append(f'stopped early: {", ".join(report["partial_kinds"])} counted from their finished shards only')
    return lines
