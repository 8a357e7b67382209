"""The loop-free export form of the scan (kernels/export_scan.py) against the float64 reference, and its tracing."""
import pytest
import torch
from torch.export import Dim

from visionssm.kernels.export_scan import chunked_recurrence, route_index
from visionssm.kernels.reference import linear_recurrence
from visionssm.ops import Route, plan_routes, selective_scan

from test_ops import PATTERNS, make_inputs


def _both(routes, Bt, H, W, Wr, N, cin, dtype=torch.float64, hidden=False, merge='sum', seed=0, **kw):
    u, delta, A, B, C, D, bias = make_inputs(Bt, H, W, len(routes), Wr, N, cin, dtype=dtype, hidden=hidden, seed=seed)
    run = lambda backend: selective_scan(u, delta, A, B, C, D, bias, routes=routes, merge=merge,
                                         return_hidden=hidden, backend=backend, **kw)
    return run('export'), run('reference')


@pytest.mark.parametrize("length", [1, 2, 3, 7, 8, 9, 15, 16, 17, 63, 64, 65, 255, 256, 257, 1000, 20000])
def test_chunked_recurrence_matches_linear_recurrence(length):
    g = torch.Generator().manual_seed(length)
    a = -torch.rand(2, length, 3, generator=g, dtype=torch.float64) * 3
    x = torch.randn(2, length, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(chunked_recurrence(a, x), linear_recurrence(a.exp(), x), rtol=1e-12, atol=1e-12)


def test_chunked_recurrence_has_no_overflow_with_fast_decay():
    a = torch.full((1, 600, 2), -200.0)        # exp(+sum) of these would overflow; only exp(<= 0) is formed
    x = torch.randn(1, 600, 2)
    h = chunked_recurrence(a, x)
    assert torch.isfinite(h).all()
    torch.testing.assert_close(h, x, rtol=1e-6, atol=1e-6)   # decays of exp(-200) leave only the current input


@pytest.mark.parametrize('pattern', sorted(PATTERNS))
@pytest.mark.parametrize('hw,N', [((5, 7), 1), ((6, 4), 4), ((9, 9), 16), ((2, 37), 2), ((17, 20), 3)])
def test_export_form_matches_reference(pattern, hw, N):
    routes, merge, mult = PATTERNS[pattern]
    got, want = _both(routes, 2, *hw, 3, N, 3 * mult, merge=merge, seed=N)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_export_form_hidden_states_and_options():
    got, want = _both((Route('row'), Route('col', reverse=True)), 2, 5, 6, 3, 2, 3, hidden=True, merge='mean')
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # concatenated channel blocks (out_offset), an explicit out_channels, no softplus, no D / bias
    routes = (Route('row'), Route('col', reverse=True, in_offset=1, out_offset=3))
    u, delta, A, B, C, D, bias = make_inputs(1, 4, 5, 2, 3, 2, 4)
    for kw in (dict(delta_softplus=False), dict(out_channels=6, D=D, delta_bias=bias)):
        run = lambda b: selective_scan(u, delta, A, B, C, routes=routes, backend=b, **kw)
        torch.testing.assert_close(run('export'), run('reference'), rtol=1e-10, atol=1e-10)


def test_export_form_custom_order_and_float32():
    zigzag = lambda h, w: torch.arange(h * w).view(h, w).flip(1).flatten()
    got, want = _both((Route(zigzag), Route('row', stride=(1, 2), offset=(0, 1), out_offset=0),
                       Route('row', stride=(1, 2), offset=(0, 0))), 2, 4, 6, 3, 4, 3)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    got, want = _both(PATTERNS['cross'][0], 2, 8, 8, 3, 4, 3, dtype=torch.float32)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_export_form_softplus_threshold():
    u, delta, A, B, C, D, bias = make_inputs(1, 3, 3, 1, 2, 2, 2)
    delta = delta * 60                      # both sides of the threshold (20) and far past exp's fp range
    run = lambda b: selective_scan(u, delta, A, B, C, D, bias, routes=(Route('row'),), backend=b)
    torch.testing.assert_close(run('export'), run('reference'), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('pattern', ['cross', 'lattice', 'grouped'])
def test_export_form_gradients_match_reference(pattern):
    routes, merge, mult = PATTERNS[pattern]
    inputs = make_inputs(2, 5, 6, len(routes), 3, 3, 3 * mult, seed=1)
    grads = {}
    for backend in ('export', 'reference'):
        leaves = [t.clone().requires_grad_() for t in inputs]
        out = selective_scan(*leaves, routes=routes, merge=merge, backend=backend)
        out.mul(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads[backend] = [t.grad for t in leaves]
    for g, r in zip(grads['export'], grads['reference']):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9)


def test_route_index_matches_plan_positions():
    for route in (Route('row'), Route('col', reverse=True), Route('col', stride=2, offset=(1, 0)),
                  Route('row', reverse=True, stride=(2, 3), offset=(1, 2))):
        plan = plan_routes((route,), 7, 8, 1, 1, 1) if route.stride == (1, 1) else None
        u_index, dbc_index = route_index(route, 7, 8, torch.device('cpu'))
        assert torch.equal(u_index, route.positions(7, 8)) and torch.equal(dbc_index, u_index)
        if plan is not None:
            assert torch.equal(u_index, plan.positions[0])


class _Scan(torch.nn.Module):
    def __init__(self, routes, merge):
        super().__init__()
        self.routes, self.merge = routes, merge

    def forward(self, u, delta, A, B, C, D, bias):
        return selective_scan(u, delta, A, B, C, D, bias, routes=self.routes, merge=self.merge)


@pytest.mark.parametrize('pattern', ['cross', 'lattice', 'snake_params_at_step', 'multiscale'])
def test_op_exports_with_dynamic_height_and_width(pattern):
    routes, merge, mult = PATTERNS[pattern]
    inputs = make_inputs(2, 6, 10, len(routes), 3, 2, 3 * mult, dtype=torch.float32)
    h, w = Dim('h', min=2, max=64), Dim('w', min=2, max=64)
    if pattern == 'lattice':   # size-1 sub-lattices would specialize the graph: even sizes from 4
        h, w = 2 * Dim('h2', min=2, max=32), 2 * Dim('w2', min=2, max=32)
    maps = {1: h, 2: w}
    program = torch.export.export(_Scan(routes, merge), inputs,
                                  dynamic_shapes=(maps, maps, None, maps, maps, None, None))
    for size in ((4, 8), (12, 6)) if pattern == 'lattice' else ((4, 8), (13, 7)):
        x = make_inputs(2, *size, len(routes), 3, 2, 3 * mult, dtype=torch.float32, seed=3)
        torch.testing.assert_close(program.module()(*x), _Scan(routes, merge)(*x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('pattern', ['cross', 'snake_params_at_step', 'multiscale'])
def test_op_compiles_fullgraph_on_the_cpu(pattern):
    """torch.compile where Triton does not run: the op's 'auto' backend takes the export form, one graph (the
    reference's route planning would break it), matching eager."""
    routes, merge, mult = PATTERNS[pattern]
    scan = _Scan(routes, merge)
    compiled = torch.compile(scan, fullgraph=True, dynamic=False)
    x = make_inputs(2, 5, 7, len(routes), 3, 2, 3 * mult, dtype=torch.float32, seed=4)
    torch.testing.assert_close(compiled(*x), scan(*x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize('name', ['test_vmamba', 'test_mambavision'])
def test_model_compiles_fullgraph_on_the_cpu(name):
    import timm
    model = timm.create_model(name).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x), rtol=1e-4, atol=1e-5)
