"""SS2D: the selective-scan token mixer over routes of a 2-D map (VMamba, and the families built from it).

Channel-last in and out, ``(B, H, W, C)``. The per-route projections (Δ, B, C) are pointwise, so they are computed
on the map itself and the scan op reads them at each route's positions: no cross-scan copy exists anywhere.

Also the pieces every layer that calls the scan op shares: ``ScanLayer`` (their base), ``full_precision``,
``scan_out_dtype`` and ``init_dt_bias``. The dtype- and device-dependent Python among them (and ``route_projections``)
is registered with timm as torch.fx leaves, so the layers trace; leaves keep public names, since torch.fx's
autowrap passes over module globals that start with an underscore.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import is_scriptable
from timm.models import register_notrace_function

from visionssm.ops import Route, cross_routes, selective_scan
from visionssm.ops.selective_scan import TORCHSCRIPT_UNSUPPORTED

from .cache import CastCachedConv2d, CastCachedLinear, cached_while_inferring, tracing
from .fused import autocast_off
from .norm import gated_layer_norm, norm_to

__all__ = ['SS2D', 'ScanLayer', 'InputDtypeLayerNorm', 'init_dt_bias', 'full_precision', 'scan_out_dtype']

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def init_dt_bias(shape, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4) -> torch.Tensor:
    """Δ-bias whose softplus is log-uniform in [dt_min, dt_max] (Mamba's initialization)."""
    dt = torch.exp(torch.rand(shape) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_floor)
    return dt + torch.log(-torch.expm1(-dt))  # inverse softplus


@register_notrace_function
def full_precision(t: torch.Tensor) -> torch.Tensor:
    """Scan parameters in at least float32 (float64 stays float64 for exact reference runs)."""
    return t.float() if t.dtype in _LOW_PRECISION else t


@register_notrace_function
def scan_out_dtype(x: torch.Tensor) -> Optional[torch.dtype]:
    """The scan's ``out_dtype`` for an input like ``x``: float32 for low-precision inputs (the state and the merge
    stay in full precision up to the next norm), else None (the input's dtype)."""
    return torch.float32 if x.dtype in _LOW_PRECISION else None


class ScanLayer(nn.Module):
    """Base of the layers that call the selective-scan op.

    TorchScript cannot compile the op (``TORCHSCRIPT_UNSUPPORTED`` says why), so these layers refuse up front with
    that reason: when built under timm's ``set_scriptable(True)`` and when ``torch.jit.script`` prepares them,
    before any compiler error could come from elsewhere in the model.
    """

    def __init__(self):
        super().__init__()
        if is_scriptable():
            raise RuntimeError(TORCHSCRIPT_UNSUPPORTED)

    def __prepare_scriptable__(self):
        raise RuntimeError(TORCHSCRIPT_UNSUPPORTED)


def projection_weight(x_proj_weight: torch.Tensor, dt_projs_weight: torch.Tensor) -> torch.Tensor:
    """Every route's Δ, B and C projection as one ``(K*D + K*2N, D)`` matrix: dt_proj composed with the first
    dt_rank rows of x_proj into a ``(D x D)`` matrix per route, then the B / C rows. Same parameters and values; no
    per-route batched matmul with permute copies, and no dt_rank-wide GEMMs (at dt_rank 6 their weight gradients
    ran as unaligned kernels that took ~19% of a VMamba-T training step on an H100, tools/profile_model.py)."""
    rank = dt_projs_weight.shape[-1]
    # split, not slices: one cat in the backward, where two slices' backward each zero-fill and copy, then add
    w_dt, w_bc = x_proj_weight.split([rank, x_proj_weight.shape[1] - rank], dim=1)
    # Composed in the parameters' dtype also under autocast: its casts of both factors, of the product back for the
    # cat with the float32 B / C rows, and again for the GEMM (each with a cast back in the backward) would be eight
    # launches per layer and step, where the GEMM's one cast of the result remains (and one rounding, not two)
    with autocast_off(x_proj_weight):
        w_dt = torch.matmul(dt_projs_weight, w_dt)          # (K, D, D)
        return torch.cat([w_dt.flatten(0, 1), w_bc.flatten(0, 1)])


@register_notrace_function
def route_projections(
        x: torch.Tensor,
        x_proj_weight: torch.Tensor,
        dt_projs_weight: torch.Tensor,
        d_state: int,
        weight: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Δ ``(B, H, W, K*D)``, B and C ``(B, H, W, K, N)`` of every route from the inner map ``x (B, H, W, D)``, with
    ``x_proj_weight (K, R+2N, D)`` and ``dt_projs_weight (K, D, R)``; ``weight``: their ``projection_weight``,
    when already composed."""
    rank, n, k = dt_projs_weight.shape[-1], d_state, x_proj_weight.shape[0]
    if x.device.type == 'meta':
        # FLOP counting runs on the meta device: count the architecture's two-step low-rank Δ projection, as
        # the papers do (the composed form below computes the same values with more, better-shaped FLOPs)
        x_dbl = torch.einsum('bhwd,kcd->bhwkc', x, x_proj_weight)
        dts, B, C = torch.split(x_dbl, [rank, n, n], dim=-1)
        return torch.einsum('bhwkr,kdr->bhwkd', dts, dt_projs_weight).flatten(-2), B, C
    # One GEMM for every route's Δ, B and C (see projection_weight). Δ, B and C are strided views of the one
    # output, read in place by the scan.
    if weight is None:
        weight = projection_weight(x_proj_weight, dt_projs_weight)
    dts, BC = F.linear(x, weight).split([k * x.shape[-1], k * 2 * n], dim=-1)
    B, C = BC.unflatten(-1, (k, 2 * n)).split(n, dim=-1)   # split, not slices: one cat in the backward, where two
    return dts, B, C                                          # slices' backward zero-fill, copy and add


class InputDtypeLayerNorm(nn.LayerNorm):
    """LayerNorm computed in its input's dtype, its parameters cast to it: the scan's float32 output is normed in
    float32 also in a float16 / bfloat16 model (``model.half()``), where ``nn.LayerNorm`` raises on the mixed dtypes
    and casting the input down first could overflow. With matching dtypes it is ``nn.LayerNorm``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if weight is not None:
            weight = weight.to(x.dtype)
        if bias is not None:
            bias = bias.to(x.dtype)
        return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)


class SS2D(ScanLayer):
    """in_proj → depthwise conv → act → selective scan over ``routes`` → out_norm (→ gate) → out_proj.

    Parameter names follow the official VMamba so the stacked per-route tensors need no conversion:
    ``x_proj_weight (K, R+2N, D)``, ``dt_projs_weight (K, D, R)``, ``dt_projs_bias (K, D)``,
    ``A_logs (K*D, N)``, ``Ds (K*D,)``.

    Args:
        dim: model width C.
        d_state: N, states per channel.
        ssm_ratio: inner width D = int(ssm_ratio * C).
        dt_rank: rank R of the Δ projection; 'auto' = ceil(C / 16).
        d_conv: depthwise kernel size; < 2 for none.
        conv_bias: bias in the depthwise conv.
        gate: multiply by act(z) from a second in_proj half (VMamba v0); v2 models have none.
        routes: scan routes; default the four cross routes.
        act_layer: activation after the conv, and of the gate.
        proj_drop: dropout after out_proj.
    """

    def __init__(
            self,
            dim: int,
            d_state: int = 1,
            ssm_ratio: float = 2.0,
            dt_rank: Union[int, str] = 'auto',
            d_conv: int = 3,
            conv_bias: bool = True,
            gate: bool = False,
            routes: Sequence[Route] = cross_routes(),
            act_layer: Type[nn.Module] = nn.SiLU,
            proj_drop: float = 0.,
    ):
        super().__init__()
        self.routes = tuple(routes)
        num_routes = len(self.routes)
        self.d_inner = d_inner = int(ssm_ratio * dim)
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16) if dt_rank == 'auto' else int(dt_rank)
        self.gate = gate

        # Linear / conv layers that keep autocast's cast of their weights while inferring (layers/cache.py)
        self.in_proj = CastCachedLinear(dim, d_inner * (2 if gate else 1), bias=False)
        self.conv = CastCachedConv2d(
            d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=conv_bias,
        ) if d_conv > 1 else nn.Identity()
        self.act = act_layer()

        # Per-route projections, stacked. x_proj keeps nn.Linear's default (kaiming-uniform) init, like the
        # original, where the temporary Linear layers are stacked before the model-wide trunc-normal init.
        bound = 1 / math.sqrt(d_inner)
        self.x_proj_weight = nn.Parameter(
            torch.empty(num_routes, self.dt_rank + 2 * d_state, d_inner).uniform_(-bound, bound))
        dt_std = self.dt_rank ** -0.5
        self.dt_projs_weight = nn.Parameter(torch.empty(num_routes, d_inner, self.dt_rank).uniform_(-dt_std, dt_std))
        self.dt_projs_bias = nn.Parameter(init_dt_bias((num_routes, d_inner)))
        # S4D-real: A = -(1..N) for every channel; for N = 1 this is A = -1.
        self.A_logs = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(
            num_routes * d_inner, 1))
        self.Ds = nn.Parameter(torch.ones(num_routes * d_inner))

        self.out_norm = InputDtypeLayerNorm(d_inner)
        self.out_proj = CastCachedLinear(d_inner, dim, bias=False)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_proj(x)
        if self.gate:
            x, z = x.chunk(2, dim=-1)
        # NHWC viewed as NCHW with channels-last strides: the depthwise conv needs no copy of its input.
        x = self.act(self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        y = self.scan(x)
        if self.gate and isinstance(self.act, nn.SiLU) and isinstance(self.out_norm, nn.LayerNorm):
            # norm and gate in one pass, in out_proj's dtype (one kernel each way on CUDA; keeps only y and z)
            y = gated_layer_norm(y, z, self.out_norm.weight, self.out_norm.bias, self.out_norm.eps)
        else:
            y = norm_to(self.out_norm, y, x.dtype)   # written in out_proj's dtype
            if self.gate:
                y = y * self.act(z)
        return self.proj_drop(self.out_proj(y))

    def scan(self, x: torch.Tensor) -> torch.Tensor:
        """The selective scan of the inner map ``x (B, H, W, D)``, routes merged: ``(B, H, W, D)``.

        Low-precision inputs return float32 (the state and the merge stay in full precision up to out_norm).
        """
        if torch.is_grad_enabled() or tracing():
            weight, (A, D, delta_bias) = None, self.scan_parameters()
        else:  # inference: the composed projection (cast once to x's dtype) and A, D, Δ-bias kept between calls
            weight, A, D, delta_bias = cached_while_inferring(
                self, (self.x_proj_weight, self.dt_projs_weight, self.A_logs, self.Ds, self.dt_projs_bias), x.dtype,
                lambda: (projection_weight(self.x_proj_weight, self.dt_projs_weight).to(x.dtype),
                         *self.scan_parameters()))
        dts, B, C = route_projections(x, self.x_proj_weight, self.dt_projs_weight, self.d_state, weight)
        # Autocast may leave the projections in another dtype than x (CPU autocast keeps some matmuls in fp32).
        dts, B, C = (t.to(x.dtype) for t in (dts, B, C))
        return selective_scan(x, dts, A, B, C, D, delta_bias, routes=self.routes, merge='sum', delta_softplus=True,
                              out_dtype=scan_out_dtype(x))

    def scan_parameters(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``A = -exp(A_logs)``, D and the Δ-bias in full precision, as the scan takes them."""
        return (-torch.exp(full_precision(self.A_logs)), full_precision(self.Ds),
                full_precision(self.dt_projs_bias).flatten())
