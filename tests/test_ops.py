"""The selective-scan op: the reference against an independent naive loop, gradients, dtypes, and every error."""
import math

import pytest
import torch

from visionssm.ops import (
    Route, bidirectional_routes, count_scan_flops, cross_routes, grouped_routes, lattice_routes, multiscale_routes,
    plan_routes, selective_scan, snake_routes,
)
from visionssm.kernels.reference import linear_recurrence, selective_scan_reference


# --- an independent oracle: positions listed by hand, one scalar recurrence per (batch, channel, state) --------

def naive_positions(route: Route, H: int, W: int) -> list:
    rows = list(range(route.offset[0], H, route.stride[0]))
    cols = list(range(route.offset[1], W, route.stride[1]))
    if callable(route.order):
        grid = [r * W + c for r in rows for c in cols]
        pos = [grid[i] for i in route.order(len(rows), len(cols)).tolist()]
    elif route.order == 'row':
        pos = [r * W + c for r in rows for c in cols]
    elif route.order == 'col':
        pos = [r * W + c for c in cols for r in rows]
    elif route.order == 'row_snake':
        pos = [r * W + c for i, r in enumerate(rows) for c in (cols if i % 2 == 0 else cols[::-1])]
    else:
        pos = [r * W + c for i, c in enumerate(cols) for r in (rows if i % 2 == 0 else rows[::-1])]
    return pos[::-1] if route.reverse else pos


def naive_param_positions(route: Route, H: int, W: int) -> list:
    """Where each step reads delta, B and C: its position, or (params_at='step') the visited set in raster order."""
    pos = naive_positions(route, H, W)
    return sorted(pos) if route.params_at == 'step' else pos


def naive_scan(u, delta, A, B, C, D, bias, routes, merge='sum', softplus=True, hidden=False, out_channels=None):
    """Float64 loops over everything; u (Bt, H, W, Cin), delta (Bt, H, W, K*Wr), B/C (Bt, H, W, K, N)."""
    Bt, H, W, _ = u.shape
    K = len(routes)
    Wr, N = A.shape[0] // K, A.shape[1]
    Cout = out_channels or max(s.out_offset for r in routes for s in r.parts) + Wr
    out = torch.zeros((Bt, H * W, Cout) + ((N,) if hidden else ()), dtype=torch.float64)
    count = torch.zeros(H * W, Cout)
    uf, df = u.double().reshape(Bt, H * W, -1), delta.double().reshape(Bt, H * W, -1)
    Bf = B.double().reshape(Bt, H * W, K, N)
    Cf = C.double().reshape(Bt, H * W, K, N) if C is not None else None
    for k, route in enumerate(routes):
        # (position, output channel offset, Δ / B / C position) per step; a concatenated route walks its segments
        # with one state
        steps = [(p, s.out_offset, q) for s in route.parts
                 for p, q in zip(naive_positions(s, H, W), naive_param_positions(s, H, W))]
        for d in range(Wr):
            ch = k * Wr + d
            for p, o, _ in steps:
                count[p, o + d] += 1
            for b in range(Bt):
                h = [0.0] * N
                for p, o, q in steps:
                    x = uf[b, p, route.in_offset + d].item()
                    dt = df[b, q, ch].item() + (bias[ch].item() if bias is not None else 0.0)
                    if softplus:
                        dt = dt if dt > 20 else math.log1p(math.exp(dt))
                    for n in range(N):
                        h[n] = math.exp(dt * A[ch, n].item()) * h[n] + dt * Bf[b, q, k, n].item() * x
                    if hidden:
                        for n in range(N):
                            out[b, p, o + d, n] += h[n]
                    else:
                        y = sum(Cf[b, q, k, n].item() * h[n] for n in range(N))
                        if D is not None:
                            y += D[ch].item() * x
                        out[b, p, o + d] += y
    if merge == 'mean':
        out = out / (count[..., None] if hidden else count)
    return out.reshape((Bt, H, W, Cout) + ((N,) if hidden else ()))


def make_inputs(Bt, H, W, K, Wr, N, in_channels, dtype=torch.float64, hidden=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    u = r(Bt, H, W, in_channels)
    delta = r(Bt, H, W, K * Wr) * 0.5
    A = -torch.exp(r(K * Wr, N) * 0.5)
    B = r(Bt, H, W, K, N)
    C = None if hidden else r(Bt, H, W, K, N)
    D = r(K * Wr)
    bias = r(K * Wr) * 0.5
    cast = lambda t: t.to(dtype) if t is not None else None
    return cast(u), cast(delta), A, cast(B), cast(C), D, bias


PATTERNS = {
    'cross': (cross_routes(), 'sum', 1),
    'lattice': (lattice_routes(), 'sum', 1),
    'grouped': (grouped_routes(3), 'sum', 4),
    'custom_snake': ((Route(lambda h, w: torch.tensor([r * w + (c if r % 2 == 0 else w - 1 - c)
                                                         for r in range(h) for c in range(w)])),), 'sum', 1),
    'bidirectional_mean': (bidirectional_routes(3), 'mean', 2),
    # MSVMamba: one route through three orders, each writing its own channel block (out 3*Wr channels)
    'multiscale': (multiscale_routes(3), 'sum', 1),
    # segments sharing their output channels, summed there; beside a plain route, averaged
    'concat_shared_mean': ((Route.concat(Route('row'), Route('col', reverse=True)), Route('col')), 'mean', 1),
    'snake': (snake_routes(), 'sum', 1),
    'snake_params_at_step': (snake_routes('step'), 'sum', 1),
    # sub-lattices zig-zagged, Δ / B / C read in each sub-lattice's raster order
    'lattice_snake_step': (tuple(Route(o, stride=2, offset=off, reverse=rev, params_at='step') for o, off, rev in (
        ('row_snake', (0, 0), False), ('col_snake', (1, 0), True), ('col_snake', (0, 1), False),
        ('row_snake', (1, 1), True))), 'sum', 1),
    # both route features in one plan: a route reading Δ / B / C in raster order beside a concatenated route
    'concat_beside_step': ((Route('row_snake', params_at='step'),
                            Route.concat(Route('col_snake'), Route('row', reverse=True))), 'mean', 1),
}


@pytest.mark.parametrize('pattern', list(PATTERNS))
@pytest.mark.parametrize('hw', [(3, 5), (4, 4), (1, 7), (5, 1), (1, 1)])
def test_reference_matches_naive_loop(pattern, hw):
    routes, merge, in_mult = PATTERNS[pattern]
    H, W = hw
    if pattern == 'bidirectional_mean':
        H, W = 1, H * W
    K, N = len(routes), 2
    Wr = 3
    in_channels = Wr * in_mult if pattern != 'grouped' else 12
    args = make_inputs(2, H, W, K, Wr, N, in_channels)
    if pattern.startswith('lattice') and (H < 2 or W < 2):  # a sub-lattice with offset 1 is empty on a 1-wide grid
        with pytest.raises(ValueError, match=r'route \d visits no position of a'):
            selective_scan(*args, routes=routes, merge=merge)
        return
    got = selective_scan(*args, routes=routes, merge=merge)
    want = naive_scan(*args, routes, merge=merge)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def test_reference_hidden_states_match_naive_loop():
    args = make_inputs(2, 3, 4, 1, 5, 3, 5, hidden=True)
    got = selective_scan(*args, routes=(Route('row'),), return_hidden=True)
    want = naive_scan(*args, (Route('row'),), hidden=True)
    assert got.shape == (2, 3, 4, 5, 3)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def test_sequence_form_equals_single_row_map():
    u, delta, A, B, C, D, bias = make_inputs(2, 1, 9, 2, 4, 2, 8)
    routes = bidirectional_routes(4)
    as_map = selective_scan(u, delta, A, B, C, D, bias, routes=routes, merge='mean')
    as_seq = selective_scan(u[:, 0], delta[:, 0], A, B[:, 0], C[:, 0], D, bias, routes=routes, merge='mean')
    assert as_seq.shape == (2, 9, 4)
    torch.testing.assert_close(as_seq, as_map[:, 0], atol=0, rtol=0)


def test_checks_run_once_per_signature_and_still_catch_every_new_one(monkeypatch):
    import importlib
    ss = importlib.import_module('visionssm.ops.selective_scan')
    calls = []
    check = ss._check
    monkeypatch.setattr(ss, '_check', lambda *a, **k: calls.append(1) or check(*a, **k))
    monkeypatch.setattr(ss, '_CHECKED', {})
    u, delta, A, B, C, D, bias = make_inputs(2, 3, 4, 4, 4, 2, 4)
    routes = cross_routes()
    first = selective_scan(u, delta, A, B, C, D, bias, routes=routes)
    with count_scan_flops() as flops:
        again = selective_scan(u, delta, A, B, C, D, bias, routes=list(routes))   # equal routes, another list
    assert len(calls) == 1 and flops == [2 * (4 * 12) * 4 * (9 * 2 + 1)]       # checked once, still counted
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    with pytest.raises(ValueError, match='delta must have trailing shape'):
        selective_scan(u, delta[..., :-1], A, B, C, D, bias, routes=routes)
    with pytest.raises(TypeError, match='B must have the dtype of u'):
        selective_scan(u, delta, A, B.float(), C, D, bias, routes=routes)
    with pytest.raises(ValueError, match='C is required'):
        selective_scan(u, delta, A, B, None, D, bias, routes=routes)
    with pytest.raises(TypeError, match='D must be a torch.Tensor'):
        selective_scan(u, delta, A, B, C, D.tolist(), bias, routes=routes)
    assert len(calls) == 5 and len(ss._CHECKED) == 1                           # failed calls are not kept


def test_sequence_form_reaches_the_backend_as_it_is(monkeypatch):
    # a (B, L, C) sequence is already the backends' flattened form: no view ops on the way in or out
    import importlib
    seen = {}

    def capture(u, delta, A, B, C, D, delta_bias, plan, **kwargs):
        seen.update(u=u, delta=delta, B=B, C=C, plan=plan)
        return selective_scan_reference(u, delta, A, B, C, D, delta_bias, plan, **kwargs)

    monkeypatch.setitem(importlib.import_module('visionssm.ops.selective_scan').BACKENDS, 'capture',
                        (capture, lambda u: True))
    u, delta, A, B, C, D, bias = (t[:, 0] if t.dim() > 2 else t for t in make_inputs(2, 1, 9, 2, 4, 2, 8))
    out = selective_scan(u, delta, A, B, C, D, bias, routes=bidirectional_routes(4), merge='mean', backend='capture')
    assert all(seen[k] is t for k, t in (('u', u), ('delta', delta), ('B', B), ('C', C)))
    assert (seen['plan'].height, seen['plan'].width_px) == (1, 9) and out.shape == (2, 9, 4)


def test_no_softplus_and_optional_terms():
    u, delta, A, B, C, D, bias = make_inputs(1, 2, 3, 4, 2, 2, 2)
    got = selective_scan(u, delta.abs(), A, B, C, routes=cross_routes(), delta_softplus=False)
    want = naive_scan(u, delta.abs(), A, B, C, None, None, cross_routes(), softplus=False)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize('length,chunk', [(1, None), (7, 3), (64, 8), (65, 8), (100, None)])
def test_linear_recurrence_matches_loop(length, chunk):
    g = torch.Generator().manual_seed(length)
    a = torch.rand(3, length, 5, generator=g, dtype=torch.float64)
    b = torch.randn(3, length, 5, generator=g, dtype=torch.float64)
    h, want = torch.zeros(3, 5, dtype=torch.float64), []
    for t in range(length):
        h = a[:, t] * h + b[:, t]
        want.append(h)
    torch.testing.assert_close(linear_recurrence(a, b, chunk), torch.stack(want, 1), atol=1e-13, rtol=1e-13)


def test_linear_recurrence_has_no_overflow_with_fast_decay():
    # Decays of exp(-700) per step: a cumulative-product/division formulation would overflow; ours multiplies only.
    a = torch.full((1, 50, 1), math.exp(-700.0), dtype=torch.float64)
    b = torch.ones(1, 50, 1, dtype=torch.float64)
    h = linear_recurrence(a, b, chunk=7)
    assert torch.isfinite(h).all()
    torch.testing.assert_close(h, torch.ones_like(h), atol=1e-300, rtol=1e-12)


@pytest.mark.parametrize('pattern', ['cross', 'lattice', 'grouped', 'bidirectional_mean', 'multiscale',
                                     'concat_shared_mean', 'snake_params_at_step', 'lattice_snake_step',
                                     'concat_beside_step'])
def test_gradcheck(pattern):
    routes, merge, in_mult = PATTERNS[pattern]
    H, W = {'bidirectional_mean': (1, 5), 'lattice_snake_step': (3, 4)}.get(pattern, (2, 3))
    Wr, N = 3, 2
    in_channels = 12 if pattern == 'grouped' else Wr * in_mult
    args = [t.requires_grad_() for t in make_inputs(1, H, W, len(routes), Wr, N, in_channels)]
    fn = lambda *a: selective_scan(*a, routes=routes, merge=merge)
    assert torch.autograd.gradcheck(fn, args, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize('backend', ['reference', 'export'])
@pytest.mark.parametrize('pattern', ['cross', 'snake_params_at_step', 'multiscale', 'bidirectional_mean'])
def test_one_delta_shared_by_the_routes(pattern, backend):
    """A Δ shared by every route, passed expanded as (B, H, W, K, W) with route stride 0, is the same scan as the
    Δ repeated into K blocks, with the same gradient."""
    routes, merge, in_mult = PATTERNS[pattern]
    K, Wr = len(routes), 3
    u, _, A, B, C, D, bias = make_inputs(2, 3, 4, K, Wr, 2, in_mult * Wr)
    shared = (torch.randn(2, 3, 4, Wr, dtype=torch.float64) * 0.5).requires_grad_(True)
    results = []
    for delta in (shared.repeat(1, 1, 1, K), shared.unsqueeze(-2).expand(2, 3, 4, K, Wr)):
        out = selective_scan(u, delta, A, B, C, D, bias, routes=routes, merge=merge, backend=backend)
        grad, = torch.autograd.grad(out.square().sum(), shared)
        results.append((out, grad))
    torch.testing.assert_close(results[1], results[0], rtol=1e-12, atol=1e-12)


def test_gradcheck_hidden():
    args = [t.requires_grad_() if t is not None else None for t in make_inputs(1, 2, 3, 1, 2, 2, 2, hidden=True)]
    inputs = [t for t in args if t is not None]
    u, delta, A, B, _, D, bias = args
    fn = lambda u, delta, A, B, D, bias: selective_scan(u, delta, A, B, None, D, bias, routes=(Route('col'),),
                                                        return_hidden=True)
    assert torch.autograd.gradcheck(fn, (u, delta, A, B, D, bias), atol=1e-8, rtol=1e-6)
    assert len(inputs) == 6


@pytest.mark.parametrize('dtype,tol', [(torch.float32, 1e-5), (torch.bfloat16, 3e-2), (torch.float16, 5e-3)])
def test_low_precision_inputs_keep_fp32_state(dtype, tol):
    u, delta, A, B, C, D, bias = make_inputs(2, 5, 6, 4, 8, 2, 8)
    want = selective_scan(u, delta, A, B, C, D, bias, routes=cross_routes())
    cast = lambda t: t.to(dtype)
    A32, D32, b32 = A.float(), D.float(), bias.float()
    got = selective_scan(cast(u), cast(delta), A32, cast(B), cast(C), D32, b32, routes=cross_routes())
    assert got.dtype == dtype
    scale = want.abs().max()
    assert (got.double() - want).abs().max() / scale < tol
    got32 = selective_scan(cast(u), cast(delta), A32, cast(B), cast(C), D32, b32, routes=cross_routes(),
                           out_dtype=torch.float32)
    assert got32.dtype == torch.float32
    # fp32 output from low-precision inputs: only the inputs' rounding remains, not the output's.
    assert (got32.double() - want).abs().max() <= (got.double() - want).abs().max() + 1e-6


def test_plan_is_cached_and_positions_are_right():
    routes = cross_routes()
    plan = plan_routes(routes, 2, 3, 4, 4, 4)
    assert plan is plan_routes(routes, 2, 3, 4, 4, 4)
    assert [p.tolist() for p in plan.positions] == [
        [0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5], [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]]
    assert plan.multiplicity == 4
    lattice = plan_routes(lattice_routes(), 3, 3, 1, 1, 1)
    assert [p.tolist() for p in lattice.positions] == [[0, 2, 6, 8], [3, 5], [1, 7], [4]]
    assert lattice.multiplicity == 1


def test_snake_orders_and_params_at_step():
    # PlainMamba's four continuous zig-zags on a 3x4 grid (the official get_permute_order's sequences)
    plan = plan_routes(snake_routes(), 3, 4, 1, 1, 1)
    assert [p.tolist() for p in plan.positions] == [
        [0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11], [11, 10, 9, 8, 4, 5, 6, 7, 3, 2, 1, 0],
        [0, 4, 8, 9, 5, 1, 2, 6, 10, 11, 7, 3], [3, 7, 11, 10, 6, 2, 1, 5, 9, 8, 4, 0]]
    assert all(q is p for p, q in zip(plan.positions, plan.param_positions)) and not plan.split_params
    step = plan_routes(snake_routes('step'), 3, 4, 1, 1, 1)
    assert [p.tolist() for p in step.positions] == [p.tolist() for p in plan.positions]
    assert all(q.tolist() == list(range(12)) for q in step.param_positions) and step.split_params
    # a route whose raster order is its own order needs no second list
    assert not plan_routes((Route('row', params_at='step'),), 3, 4, 1, 1, 1).split_params
    sub = Route('col_snake', stride=2, offset=(1, 0), params_at='step')
    assert sub.positions(5, 3).tolist() == [3, 9, 11, 5] and sub.param_positions(5, 3).tolist() == [3, 5, 9, 11]


# --- errors: each names the problem ----------------------------------------------------------------------------

def _ok():
    return dict(zip(('u', 'delta', 'A', 'B', 'C', 'D', 'delta_bias'), make_inputs(1, 2, 3, 4, 2, 2, 2)))


def _call(routes=None, **overrides):
    kw = _ok()
    kw.update(overrides)
    return selective_scan(**kw, routes=routes if routes is not None else cross_routes())


@pytest.mark.parametrize('overrides,match', [
    (dict(u=torch.zeros(2, 3)), r'u must be .*rank 3 or 4.*got rank 2'),
    (dict(u=[1.0]), r'u must be a torch.Tensor'),
    (dict(u=torch.zeros(1, 2, 3, 2, dtype=torch.int32)), r'u must be float16, bfloat16, float32 or float64'),
    (dict(A=torch.zeros(8)), r'A must be \(K\*W, N\).*got rank 1'),
    (dict(A=torch.zeros(7, 2, dtype=torch.float64)), r'A has 7 rows, not a multiple of the 4 routes'),
    (dict(delta=torch.zeros(1, 2, 3, 7, dtype=torch.float64)), r'delta must have trailing shape \(8,\)'),
    (dict(delta=torch.zeros(1, 3, 3, 8, dtype=torch.float64)), r'delta must match u in \(B, H, W\)'),
    (dict(delta=torch.zeros(1, 2, 3, 4, 3, dtype=torch.float64)), r'delta must have trailing shape \(4, 2\) for '
                                                                   r'\(B, H, W, K, W\)'),
    (dict(B=torch.zeros(1, 2, 3, 4, 3, dtype=torch.float64)), r'B must have trailing shape \(4, 2\)'),
    (dict(C=torch.zeros(1, 2, 3, 8, dtype=torch.float64)), r'C must be \(B, H, W, K, N\).*got rank 4'),
    (dict(C=None), r'C is required unless return_hidden=True'),
    (dict(D=torch.zeros(5, dtype=torch.float64)), r'D must have shape \(8,\)'),
    (dict(delta_bias=torch.zeros(8, 1, dtype=torch.float64)), r'delta_bias must be \(K\*W,\)'),
    (dict(delta=torch.zeros(1, 2, 3, 8, dtype=torch.float32)), r'delta must have the dtype of u'),
    (dict(A=torch.zeros(8, 2, dtype=torch.float16)), r'A must be float32 or float64'),
    (dict(D=torch.zeros(8, dtype=torch.float64, device='meta')), r'D is on meta but u is on cpu'),
])
def test_argument_errors(overrides, match):
    with pytest.raises((ValueError, TypeError), match=match):
        _call(**overrides)


@pytest.mark.parametrize('routes,match', [
    ([], r'routes must be a non-empty list of Route'),
    (('row', 'col', 'row', 'col'), r'routes must be a non-empty list of Route'),
    ((Route('row', stride=2),) * 4, r'routes do not cover the map: 4 of 6 positions'),
    ((Route('row'), Route('row', reverse=True), Route('col'), Route('row', stride=2)),
     r'routes overlap unevenly: output elements are written by between 3 and 4 routes'),
    ((Route(lambda h, w: torch.tensor([0, 1, 1, 2, 3, 4, 5])),) + cross_routes()[1:],
     r'route 0 visits some positions of a 2x3 grid more than once'),
    ((Route(lambda h, w: torch.tensor([0, 9])),) + cross_routes()[1:], r'positions outside a 2x3 grid'),
    ((Route('row', in_offset=1),) + cross_routes()[1:], r'route 0 reads input channels \[1, 3\) but the input has 2'),
    # a concatenated route revisits on purpose, but each of its segments must not
    ((Route.concat(Route('row'), Route(lambda h, w: torch.tensor([0, 1, 2, 3, 4, 4]))),) + cross_routes()[1:],
     r'route 0 segment 1 visits some positions of a 2x3 grid more than once'),
])
def test_route_errors(routes, match):
    with pytest.raises(ValueError, match=match):
        _call(routes=routes)


def test_route_definition_errors():
    with pytest.raises(ValueError, match=r"route order must be one of \('row', 'col', 'row_snake', 'col_snake'\)"):
        Route('diagonal')
    with pytest.raises(ValueError, match=r'route offset must satisfy 0 <= offset < stride'):
        Route('row', stride=2, offset=(2, 0))
    with pytest.raises(ValueError, match=r'route stride must be two integers >= 1'):
        Route('row', stride=0)
    with pytest.raises(ValueError, match=r'Route.concat takes two or more plain'):
        Route.concat(Route('row'))
    with pytest.raises(ValueError, match=r'Route.concat takes two or more plain'):
        Route.concat(Route('row'), Route.concat(Route('col'), Route('row')))
    with pytest.raises(ValueError, match=r'must read the same input channels, got in_offset \[0, 2\]'):
        Route.concat(Route('row'), Route('col', in_offset=2))
    with pytest.raises(ValueError, match=r'build a concatenated route with Route.concat'):
        Route('col', segments=(Route('row'), Route('col')))
    with pytest.raises(ValueError, match=r"route params_at must be one of \('route', 'step'\), got 'raster'"):
        Route('row_snake', params_at='raster')
    # the segments of a concatenated route read Δ, B and C at their own positions: 'step' is refused there
    with pytest.raises(ValueError, match=r"params_at='step' is not supported in Route.concat"):
        Route.concat(Route('row_snake', params_at='step'), Route('col'))
    with pytest.raises(ValueError, match=r'build a concatenated route with Route.concat'):
        Route(segments=(Route('row'), Route('col')), params_at='step')


def test_concatenated_route_plan():
    plan = plan_routes(multiscale_routes(4), 2, 3, 4, 4, 12)
    assert plan.revisits and plan.multiplicity == 1 and plan.positions[0].tolist() == [
        5, 4, 3, 2, 1, 0, 0, 3, 1, 4, 2, 5, 5, 2, 4, 1, 3, 0]
    assert plan.out_steps[0].tolist() == [0] * 6 + [4] * 6 + [8] * 6
    assert not plan.split_params and plan.param_positions[0] is plan.positions[0]
    assert not plan_routes(cross_routes(), 2, 3, 4, 4, 4).revisits


def test_plan_with_both_route_features():
    routes = PATTERNS['concat_beside_step'][0]
    plan = plan_routes(routes, 2, 3, 4, 4, 4)
    assert plan.revisits and plan.split_params and plan.multiplicity == 3
    assert plan.positions[0].tolist() == [0, 1, 2, 5, 4, 3] and plan.param_positions[0].tolist() == list(range(6))
    assert plan.param_positions[1] is plan.positions[1]
    assert plan.out_steps[0] is None and plan.out_steps[1].tolist() == [0] * 12


def test_option_errors():
    kw = _ok()
    with pytest.raises(ValueError, match=r"merge must be one of \('sum', 'mean'\), got 'max'"):
        selective_scan(**kw, routes=cross_routes(), merge='max')
    with pytest.raises(ValueError, match=r"unknown backend 'cuda'"):
        selective_scan(**kw, routes=cross_routes(), backend='cuda')
    with pytest.raises(ValueError, match=r'C must be None with return_hidden=True'):
        selective_scan(**kw, routes=cross_routes(), return_hidden=True)
    with pytest.raises(TypeError, match=r'out_dtype must be a floating dtype'):
        selective_scan(**kw, routes=cross_routes(), out_dtype=torch.int64)
    with pytest.raises(ValueError, match=r'route 0 writes output channels \[0, 2\) but the output has 1'):
        selective_scan(**kw, routes=cross_routes(), out_channels=1)
    with pytest.raises(ValueError, match=r'route 0 segment 1 writes output channels \[1, 3\) but the output has 2'):
        selective_scan(**kw, routes=(Route.concat(Route('row'), Route('col', out_offset=1)),) + cross_routes()[1:],
                       out_channels=2)
