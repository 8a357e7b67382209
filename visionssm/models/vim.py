"""Vim: Vision Mamba, a plain (ViT-like) stack of bidirectional Mamba blocks.

Paper: "Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space Model", Zhu et al.,
ICML 2024 — https://arxiv.org/abs/2401.09417
Official code and weights: https://github.com/hustvl/Vim (Apache-2.0), read at commit dd0358ad
(``vim/models_mamba.py``, ``mamba-1p1p1/mamba_ssm/modules/mamba_simple.py``); weights on the Hugging Face hub
(``hustvl/Vim-{tiny,small,base}-midclstok``).

Patch stem (k16, stride 16, or stride 8 for the "+" fine-tuned models), one class token inserted in the *middle* of
the token sequence (index ``M // 2``), an absolute position embedding added after the insertion, then ``depth``
pre-norm residual blocks ``x + mixer(RMSNorm(x))`` with no MLP, a final RMSNorm and a linear head on the middle
token. The mixer is the official "bimamba v2": one ``in_proj``, a forward and a backward direction with their own
causal conv1d, ``x_proj``, ``dt_proj``, ``A_log`` and ``D``, and ``out_proj((y_f + flip(y_b)) / 2)``. Here both
directions run as one op each: one grouped conv, one GEMM per projection on block-diagonal weights, and one call of
the shared scan op over ``bidirectional_routes``. In training each mixer keeps only ``in_proj``'s output for the
backward and recomputes the rest there (``mixer_recompute``, on by default): the scan's fp32 state checkpoints,
otherwise the largest saved tensor, then exist for one block's backward at a time.

Differences from the official module (none change the released models' outputs):

* The official block is "add → norm → mixer" returning ``(hidden, residual)``; here it is the equivalent
  ``x + drop_path(mixer(norm(x)))``. The official drop-path schedule (block i drops the *previous* block's output
  with rate ``[0] + linspace(0, p, depth)``, plus a final drop before ``norm_f``) is exactly a per-block
  ``linspace(0, p, depth)`` on each block's own output, which is what is used.
* The official forward asserts the training input size; here the position embedding is interpolated (bicubic, the
  class-token slot at ``M // 2`` kept out of the interpolation and re-inserted at the new ``M // 2``).
* The official slow path (``use_fast_path=False``) silently drops the backward direction; both always run here.
* ``features_only`` adds a ViTDet-style simple feature pyramid (``VimFeaturePyramid``) that is not part of the
  classification checkpoint.

``forward_features`` returns the tokens (``output_fmt = 'NLC'``), the class token at ``M // 2``. torch.fx traces the
model (the scan op and a few size- or dtype-dependent helpers are leaves). TorchScript is not supported, because the
shared scan op cannot be scripted: ``torch.jit.script``, or building under timm's ``set_scriptable(True)``, raises
``visionssm.ops.selective_scan.TORCHSCRIPT_UNSUPPORTED``, which says why.
"""
from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from timm.layers import DropPath, resample_abs_pos_embed, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model, \
    register_notrace_function
from timm.models._features import FeatureInfo, feature_take_indices

from visionssm.layers import ScanLayer, full_precision, init_dt_bias
from visionssm.layers.conv1d import depthwise_conv1d
from visionssm.layers.fused import autocast_dtype, autocast_enabled, autocast_off
from visionssm.layers.norm import RMSNorm, norm_to
from visionssm.layers.cache import CastCachedConv2d, CastCachedLinear, cached_while_inferring, tracing
from visionssm.ops import bidirectional_routes, selective_scan
from ._checkpoint import extract_state_dict, load_checkpoint_file, load_converted, load_through_model

__all__ = ['Vim', 'VimBlock', 'BiMambaMixer', 'VimFeaturePyramid', 'RMSNorm', 'checkpoint_filter_fn',
           'resample_pos_embed', 'from_official']


class BiMambaMixer(ScanLayer):
    """Official ``Mamba(bimamba_type='v2', if_divide_out=True)`` on a token sequence ``(B, L, C)``.

    Parameter names are the official ones (``conv1d_b``, ``x_proj_b``, ``dt_proj_b``, ``A_b_log``, ``D_b`` for the
    backward direction), so checkpoints load without reshaping. Both directions run as one op each: one grouped
    conv, one ``x_proj`` and one ``dt_proj`` GEMM on block-diagonal weights, one scan call over
    ``bidirectional_routes`` that reads the projections in place (see ``_fused_weights``).

    Args:
        dim: model width C.
        d_state: N, states per channel.
        expand: inner width E = expand * C.
        dt_rank: rank R of the Δ projection; 'auto' = ceil(C / 16).
        d_conv: causal depthwise conv size.
        conv_bias: bias in the convs.
        divide_out: average the two directions (``if_divide_out``, all releases) instead of summing them.
        recompute: in training, keep only ``in_proj``'s output for the backward and recompute the rest of the
            mixer there (conv, projections, scan, gate); the scan's fp32 state checkpoints then live only during
            the backward of one block, not from the forward on.
    """

    def __init__(
            self,
            dim: int,
            d_state: int = 16,
            expand: int = 2,
            dt_rank: Union[int, str] = 'auto',
            d_conv: int = 4,
            conv_bias: bool = True,
            divide_out: bool = True,
            recompute: bool = True,
    ):
        super().__init__()
        self.d_inner = d_inner = int(expand * dim)
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16) if dt_rank == 'auto' else int(dt_rank)
        self.d_conv = d_conv
        self.merge = 'mean' if divide_out else 'sum'
        self.recompute = recompute
        self.routes = bidirectional_routes(d_inner)

        self.in_proj = CastCachedLinear(dim, 2 * d_inner, bias=False)   # keeps autocast's cast in inference
        dt_std = self.dt_rank ** -0.5
        for suffix in ('', '_b'):
            # The convs are applied functionally (see _fused_weights); padding is only the official attribute.
            self.add_module('conv1d' + suffix, nn.Conv1d(
                d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias))
            self.add_module('x_proj' + suffix, nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False))
            dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
            nn.init.uniform_(dt_proj.weight, -dt_std, dt_std)
            with torch.no_grad():
                dt_proj.bias.copy_(init_dt_bias(d_inner))
            dt_proj.bias._no_reinit = True
            self.add_module('dt_proj' + suffix, dt_proj)
        # S4D-real: A = -(1..N) for every channel, in each direction.
        a_log = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1)
        self.A_log = nn.Parameter(a_log.clone())
        self.A_b_log = nn.Parameter(a_log.clone())
        self.D = nn.Parameter(torch.ones(d_inner))
        self.D_b = nn.Parameter(torch.ones(d_inner))
        self.out_proj = CastCachedLinear(d_inner, dim, bias=False)

    def _inner_parameters(self) -> List[torch.Tensor]:
        """The parameters between ``in_proj`` and ``out_proj`` (what ``_fused_weights`` reads). Read by name, not
        through ``Module.parameters()``, whose generators cost more host time than the rest of a cached call."""
        conv, conv_b, dt_proj, dt_proj_b = self.conv1d, self.conv1d_b, self.dt_proj, self.dt_proj_b
        params = [conv.weight, conv_b.weight, self.x_proj.weight, self.x_proj_b.weight, dt_proj.weight, dt_proj.bias,
                  dt_proj_b.weight, dt_proj_b.bias, self.A_log, self.A_b_log, self.D, self.D_b]
        if conv.bias is not None:
            params += [conv.bias, conv_b.bias]
        return params

    def _fused_weights(self, dtype: torch.dtype) -> Tuple[Optional[torch.Tensor], ...]:
        """Both directions' weights as one op's: ``(conv_weight, conv_bias, x_proj, dt_proj, A, D, delta_bias)``.

        * conv ``(2E, 1, 2k-1)``: the forward direction's causal kernel padded with k-1 zero taps after it, and the
          backward direction's reversed kernel with k-1 zero taps before it. With k-1 zeros of padding on both
          sides of the sequence, one depthwise conv over ``x`` repeated twice gives the causal conv of ``x`` and the
          anti-causal one (the official flip → causal conv → flip, with no activation flipped).
        * ``x_proj`` ``(2(R + 2N), 2E)``, block-diagonal: per direction ``[Δ, B, C]`` from its own channels. B and C
          of both directions are then strided ``(…, 2, N)`` views of its output, read in place by the scan.
        * ``dt_proj`` ``(2E, 2(R + 2N))``, block-diagonal, each direction's weight padded with zero columns for B
          and C: it reads ``x_proj``'s whole output, so Δ needs no copy either.
        * A, D, Δ-bias of both directions concatenated, in full precision.

        Without autograd (inference) they are kept between calls until a parameter changes (in place or
        replaced) or the compute dtype changes. With autograd they are one node (``_FusedWeights``) whose
        backward reads each parameter's gradient out of the fused one; traced or exported, plain ops.
        """
        if tracing():
            return fuse_bidirectional_weights(dtype, self.d_state, *self._named_inner_parameters())
        return cached_while_inferring(
            self, self._inner_parameters(), dtype,
            lambda: _FusedWeights.apply(dtype, self.d_state, *self._named_inner_parameters()))

    def _named_inner_parameters(self) -> Tuple[Optional[torch.Tensor], ...]:
        """The arguments of ``fuse_bidirectional_weights`` after ``dtype`` and ``d_state``, in its order."""
        return (self.conv1d.weight, self.conv1d_b.weight, self.conv1d.bias, self.conv1d_b.bias, self.x_proj.weight,
                self.x_proj_b.weight, self.dt_proj.weight, self.dt_proj_b.weight, self.dt_proj.bias,
                self.dt_proj_b.bias, self.A_log, self.A_b_log, self.D, self.D_b)

    def _gated_scan(self, xz: torch.Tensor, conv_w: torch.Tensor, conv_b: Optional[torch.Tensor],
                    x_proj: torch.Tensor, dt_proj: torch.Tensor, A: torch.Tensor, D: torch.Tensor,
                    delta_bias: torch.Tensor) -> torch.Tensor:
        """``in_proj``'s output ``(B, L, 2E)`` and the fused weights → the merged, gated scan output ``(B, L, E)``
        in ``xz``'s dtype."""
        x, z = xz.chunk(2, dim=-1)
        u = self._conv(x, conv_w, conv_b)
        x_dbl, delta = self._projections(u, x_proj, dt_proj)
        r, n = self.dt_rank, self.d_state
        params = x_dbl.unflatten(-1, (2, r + 2 * n))
        # (B, L, 2, N): per direction, shared by its channels (split, not slices: one cat in the backward)
        B, C = params.split([r, n, n], dim=-1)[1:]
        delta, B, C = delta.to(u.dtype), B.to(u.dtype), C.to(u.dtype)   # no-ops unless autocast left them apart
        # The merged output stays in u's dtype (bf16 under autocast, as the official kernel writes each direction's
        # gated output): the gate and out_proj take it in that dtype anyway. An fp32 merge here measured no more
        # accurate (vim_tiny, 6 blocks, bf16 autocast on the CPU: features 3.40e-3 vs 3.41e-3 relative error
        # against float64) for twice the bytes and one more cast.
        y = selective_scan(u, delta, A, B, C, D, delta_bias, routes=self.routes, merge=self.merge,
                           delta_softplus=True, out_channels=self.d_inner)
        # Officially each direction is gated by SiLU(z) (the backward one by flip(z), flipped back: the same z at
        # every position) before the average; the gate is common to both, so it is applied once after the merge.
        return y * F.silu(z)

    def _conv(self, x: torch.Tensor, conv_w: torch.Tensor, conv_b: Optional[torch.Tensor]) -> torch.Tensor:
        """Both directions' SiLU(conv) of ``x (B, L, E)`` as one conv repeating x's channels: ``(B, L, 2E)``, the
        forward direction's first (on CUDA one Triton kernel reading x in place). On the meta device each
        direction's own conv (``per_direction_conv``)."""
        if not tracing() and x.device.type == 'meta':   # (a torch.fx proxy's device is no value to branch on)
            return per_direction_conv(x, conv_w, conv_b, self.d_conv)
        return depthwise_conv1d(x, conv_w, conv_b, left=self.d_conv - 1, repeats=2)

    def _projections(self, u: torch.Tensor, x_proj: torch.Tensor, dt_proj: torch.Tensor
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``x_dbl`` ``(B, L, 2(R + 2N))``: ``[Δ_f, B_f, C_f, Δ_b, B_b, C_b]``, and Δ ``(B, L, 2E)`` from both
        directions' conv output ``u (B, L, 2E)``: two GEMMs on the block-diagonal weights; on the meta device each
        direction's own two (``per_direction_projections``)."""
        if not tracing() and u.device.type == 'meta':
            return per_direction_projections(u, x_proj, dt_proj, self.dt_rank)
        x_dbl = F.linear(u, x_proj)
        return x_dbl, F.linear(x_dbl, dt_proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xz = self.in_proj(x)
        weights = self._fused_weights(xz.dtype)   # autocast's dtype where it is on (in_proj ran under it)
        if self.recompute and not tracing() and torch.is_grad_enabled() and (
                xz.requires_grad or any(w is not None and w.requires_grad for w in weights)):
            return self.out_proj(_Recomputed.apply(self._gated_scan, xz, *weights))
        return self.out_proj(self._gated_scan(xz, *weights))


# FLOP counting runs on the meta device: there the fused weights' zeros are left out of the products, so the count
# is the architecture's (1.82 GFLOPs for Vim-T, where the fused forms multiply 2.27). Same values as the fused forms.

def per_direction_conv(x: torch.Tensor, conv_w: torch.Tensor, conv_b: Optional[torch.Tensor], taps: int
                       ) -> torch.Tensor:
    """``BiMambaMixer._conv`` as each direction's own ``taps``-tap conv: the fused weight ``(2E, [1,] 2K - 1)``
    holds the forward direction's taps first and the backward one's last (``fuse_bidirectional_weights``)."""
    w = conv_w.flatten(1)
    e = w.shape[0] // 2
    bias = (None, None) if conv_b is None else (conv_b[:e], conv_b[e:])
    return torch.cat([depthwise_conv1d(x, w[:e, :taps], bias[0], left=taps - 1),
                      depthwise_conv1d(x, w[e:, taps - 1:], bias[1], left=0)], dim=-1)


def per_direction_projections(u: torch.Tensor, x_proj: torch.Tensor, dt_proj: torch.Tensor, dt_rank: int
                              ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``BiMambaMixer._projections`` as each direction's own x_proj and dt_proj products: the diagonal blocks of the
    fused ``x_proj (2P, 2E)`` and the Δ columns of ``dt_proj (2E, 2P)``, P = R + 2N."""
    e, p = u.shape[-1] // 2, x_proj.shape[0] // 2
    x_dbl = torch.cat([F.linear(u[..., i * e:(i + 1) * e], x_proj[i * p:(i + 1) * p, i * e:(i + 1) * e])
                       for i in range(2)], dim=-1)
    delta = torch.cat([F.linear(x_dbl[..., i * p:i * p + dt_rank], dt_proj[i * e:(i + 1) * e, i * p:i * p + dt_rank])
                       for i in range(2)], dim=-1)
    return x_dbl, delta


def fuse_bidirectional_weights(dtype: torch.dtype, d_state: int, conv_w, conv_w_b, conv_bias, conv_bias_b, x_proj,
                               x_proj_b, dt_w, dt_w_b, dt_bias, dt_bias_b, A_log, A_b_log, D, D_b):
    """``BiMambaMixer._fused_weights`` from the two directions' parameters (its docstring gives the layout)."""
    k = conv_w.shape[-1]
    conv = torch.cat([F.pad(conv_w, (0, k - 1)), F.pad(conv_w_b.flip(-1), (k - 1, 0))]).to(dtype)
    conv_b = torch.cat([conv_bias, conv_bias_b]).to(dtype) if conv_bias is not None else None
    bc = (0, 2 * d_state)
    x_proj = torch.block_diag(x_proj, x_proj_b).to(dtype)
    dt_proj = torch.block_diag(F.pad(dt_w, bc), F.pad(dt_w_b, bc)).to(dtype)
    A = -torch.exp(full_precision(torch.cat([A_log, A_b_log])))
    D = full_precision(torch.cat([D, D_b]))
    delta_bias = full_precision(torch.cat([dt_bias, dt_bias_b]))
    return conv, conv_b, x_proj, dt_proj, A, D, delta_bias


class _FusionLayout:
    """Where each element of ``fuse_bidirectional_weights``'s four low-precision outputs (conv weight, conv bias,
    x_proj, dt_proj) comes from: an index into the concatenation of the parameters they are made of, flattened,
    with one zero appended for the padding and the off-diagonal blocks; and back, where each parameter element went.
    Built once per shape, device and dtype by running ``fuse_bidirectional_weights`` itself on the elements'
    positions, so the layout cannot drift from the ops that the traced path runs."""

    def __init__(self, shapes: Tuple[Tuple[int, ...], ...], d_state: int, device: torch.device, dtype: torch.dtype):
        self.shapes = shapes   # conv_w, conv_w_b, [conv_bias, conv_bias_b,] x_proj, x_proj_b, dt_w, dt_w_b
        self.sizes = [math.prod(shape) for shape in shapes]
        total = sum(self.sizes)
        # 1-based positions: the zeros that the pads and block-diagonals insert mark the appended zero element
        parts = [p.view(shape) for p, shape in zip(torch.arange(1, total + 1).split(self.sizes), shapes)]
        conv_w, conv_w_b, *rest = parts
        conv_bias, conv_bias_b = rest[:2] if len(parts) == 8 else (None, None)
        x_proj, x_proj_b, dt_w, dt_w_b = rest[-4:]
        e, n = conv_w.shape[0], d_state
        floats = torch.zeros(e), torch.zeros(e), torch.zeros(e, n), torch.zeros(e, n), torch.zeros(e), torch.zeros(e)
        outs = fuse_bidirectional_weights(torch.int64, d_state, conv_w, conv_w_b, conv_bias, conv_bias_b, x_proj,
                                          x_proj_b, dt_w, dt_w_b, *floats)[:4]
        self.out_shapes = [None if o is None else o.shape for o in outs]
        self.out_sizes = [o.numel() for o in outs if o is not None]
        index = torch.cat([o.flatten() for o in outs if o is not None]) - 1
        index[index < 0] = total
        placed = index < total
        if not torch.equal(torch.sort(index[placed]).values, torch.arange(total)):
            raise AssertionError('Vim weight fusion: every parameter element must appear exactly once')
        inverse = torch.empty(total, dtype=torch.long)
        inverse[index[placed]] = placed.nonzero().squeeze(1)
        self.index, self.inverse = index.to(device), inverse.to(device)
        self.zero = torch.zeros(1, device=device, dtype=dtype)


_layouts: Dict[tuple, _FusionLayout] = {}


def _fusion_layout(params: Sequence[torch.Tensor], d_state: int) -> _FusionLayout:
    key = (tuple(p.shape for p in params), d_state, params[0].device, params[0].dtype)
    layout = _layouts.get(key)
    if layout is None:
        with torch.inference_mode(False), torch.no_grad():
            layout = _layouts[key] = _FusionLayout(key[0], d_state, key[2], key[3])
    return layout


class _FusedWeights(torch.autograd.Function):
    """``fuse_bidirectional_weights`` as one autograd node of 7 kernels forward and 4 backward per block, where its
    plain ops (cats, pads, a flip, block-diagonals and a cast per weight) make 18 forward and their gradients' casts
    10 backward: host time that a training step of 24 Vim blocks feels. The four low-precision weights
    are one gather from the cast concatenation of their parameters (``_FusionLayout``), returned as views; the
    backward gathers each parameter's gradient back out of theirs in one pass. A, D and the Δ-bias are in full
    precision."""

    @staticmethod
    def forward(ctx, dtype, d_state, *params):
        slots = [i for i in range(8) if params[i] is not None]   # conv_w ... dt_w_b, without absent conv biases
        low = [params[i] for i in slots]
        layout = _fusion_layout(low, d_state)
        source = torch.cat([p.reshape(-1) for p in low] + [layout.zero]).to(dtype)
        fused = iter(torch.index_select(source, 0, layout.index).split(layout.out_sizes))
        outs = [None if shape is None else next(fused).view(shape) for shape in layout.out_shapes]
        e = params[0].shape[0]
        dt_bias, dt_bias_b, A_log, A_b_log, D, D_b = params[8:]
        # A apart from D and the Δ-bias: as views of one buffer they would keep A_log's copy alive with them
        A = torch.exp(full_precision(torch.cat([A_log, A_b_log]))).neg_()
        D_cat, delta_bias = full_precision(torch.cat([D, D_b, dt_bias, dt_bias_b])).split(2 * e)
        ctx.layout, ctx.slots, ctx.e = layout, slots, e
        ctx.dtypes = [p.dtype if p is not None else None for p in params]
        ctx.save_for_backward(A)   # A = -exp(A_log): dA/dA_log = A
        return (*outs, A, D_cat, delta_bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_conv, g_conv_b, g_x_proj, g_dt_proj, g_A, g_D, g_delta_bias):
        layout, e = ctx.layout, ctx.e
        grads = [None] * 14
        # autograd hands zeros for an output without a gradient (materialized grads), None for an absent one
        low_grads = [g for g in (g_conv, g_conv_b, g_x_proj, g_dt_proj) if g is not None]
        if any(ctx.needs_input_grad[2 + slot] for slot in ctx.slots):
            flat = torch.cat([g.reshape(-1) for g in low_grads])
            flat = torch.index_select(flat, 0, layout.inverse).to(ctx.dtypes[0])   # one cast for all of them
            for slot, piece, shape in zip(ctx.slots, flat.split(layout.sizes), layout.shapes):
                grads[slot] = piece.view(shape)
        if g_delta_bias is not None:
            grads[8:10] = g_delta_bias[:e], g_delta_bias[e:]
        if g_A is not None:
            (A,) = ctx.saved_tensors
            g = g_A * A
            grads[10:12] = g[:e], g[e:]
        if g_D is not None:
            grads[12:14] = g_D[:e], g_D[e:]
        grads = [g.to(dtype) if g is not None and dtype is not None else None for g, dtype in zip(grads, ctx.dtypes)]
        return (None, None, *(g if need else None for g, need in zip(grads, ctx.needs_input_grad[2:])))


class _Recomputed(torch.autograd.Function):
    """``run(xz, *weights)`` computed without autograd; the backward recomputes it from the saved ``xz`` and weights
    (under the forward's autocast state) and backpropagates through it. The weights are inputs, so their gradients
    leave through this node to ``_FusedWeights`` (``torch.autograd.grad`` and DDP's hooks see them as usual)."""

    @staticmethod
    def forward(ctx, run, xz, *weights):
        ctx.run = run
        ctx.autocast_dtype = autocast_dtype(xz) if autocast_enabled(xz) else None
        ctx.save_for_backward(xz, *weights)
        with torch.no_grad():
            return run(xz, *weights)

    @staticmethod
    @once_differentiable   # the recomputed graph is not kept: a second derivative would be silently zero
    def backward(ctx, grad):
        inputs = [t.detach().requires_grad_(need) if t is not None else None
                  for t, need in zip(ctx.saved_tensors, ctx.needs_input_grad[1:])]
        wanted = [t for t, need in zip(inputs, ctx.needs_input_grad[1:]) if need]
        # the forward's autocast state, on or off, whatever the backward's caller has
        x = inputs[0]
        state = autocast_off(x) if ctx.autocast_dtype is None else torch.autocast(x.device.type, ctx.autocast_dtype)
        with torch.enable_grad(), state:
            out = ctx.run(*inputs)
        found = iter(torch.autograd.grad(out, wanted, grad, allow_unused=True))
        return (None,) + tuple(next(found) if need else None for need in ctx.needs_input_grad[1:])


class VimBlock(nn.Module):
    """``x + drop_path(mixer(RMSNorm(x)))`` on the residual stream (kept in at least float32)."""

    def __init__(self, dim: int, drop_path: float = 0., norm_eps: float = 1e-5, **mixer_kwargs):
        super().__init__()
        self.norm = RMSNorm(dim, eps=norm_eps)
        self.mixer = BiMambaMixer(dim, **mixer_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in_proj reads the norm's output in autocast's dtype: written so directly (no float32 map and its cast)
        return x + self.drop_path(self.mixer(norm_to(self.norm, x)))


class PatchEmbed(nn.Module):
    """Conv patch stem (kernel ``patch_size``, stride ``stride``, no padding), tokens out ``(B, H'*W', C)``."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, stride: int = 16, in_chans: int = 3,
                 embed_dim: int = 192):
        super().__init__()
        self.patch_size, self.stride = patch_size, stride
        self.grid_size = self.dynamic_grid(img_size, img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = CastCachedConv2d(in_chans, embed_dim, kernel_size=patch_size, stride=stride)

    def dynamic_grid(self, height: int, width: int) -> Tuple[int, int]:
        return (height - self.patch_size) // self.stride + 1, (width - self.patch_size) // self.stride + 1

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Tokens ``(B, H'*W', C)`` and the grid ``(H', W')``."""
        x = self.proj(check_patchable(x, self.patch_size))
        return x.flatten(2).transpose(1, 2), x.shape[-2:]


@register_notrace_function  # a size check: a torch.fx leaf (public: torch.fx autowraps no _names)
def check_patchable(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``x`` itself, if it holds at least one patch."""
    if x.shape[-2] < patch_size or x.shape[-1] < patch_size:
        raise ValueError(f'input of size {tuple(x.shape[-2:])} is smaller than one {patch_size}px patch')
    return x


@register_notrace_function  # branches on the grids: a torch.fx leaf
def resample_pos_embed(
        pos_embed: torch.Tensor,
        new_grid: Sequence[int],
        old_grid: Optional[Sequence[int]] = None,
        interpolation: str = 'bicubic',
) -> torch.Tensor:
    """Resize a middle-class-token position embedding ``(1, M+1, C)`` (class slot at ``M // 2``) to a new grid.

    The class slot is taken out, the patch slots are interpolated as a 2-D grid, and the class slot is put back at
    the new ``M' // 2``. (The official ``interpolate_pos_embed`` assumes a leading class token, wrong for these.)
    """
    num_patches = pos_embed.shape[1] - 1
    if old_grid is None:
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise ValueError(f'pos_embed has {num_patches} patch slots, not a square grid: pass old_grid')
        old_grid = (side, side)
    new_grid, old_grid = tuple(new_grid), tuple(int(g) for g in old_grid)
    # An exported graph keeps the resize (an identity at the training grid): it must hold for every input size.
    if not torch.compiler.is_exporting() and tuple(int(g) for g in new_grid) == old_grid:
        return pos_embed
    mid = num_patches // 2
    cls_slot = pos_embed[:, mid:mid + 1]
    patches = torch.cat([pos_embed[:, :mid], pos_embed[:, mid + 1:]], dim=1)
    patches = resample_abs_pos_embed(patches, list(new_grid), list(old_grid), num_prefix_tokens=0,
                                     interpolation=interpolation, antialias=False, verbose=False)
    new_mid = (new_grid[0] * new_grid[1]) // 2
    return torch.cat([patches[:, :new_mid], cls_slot, patches[:, new_mid:]], dim=1)


class Vim(nn.Module):
    """Vision Mamba backbone and classifier.

    Args:
        img_size: training input size (sizes the position embedding; other sizes are interpolated).
        patch_size: stem kernel.
        stride: stem stride (16, or 8 for the "+" models).
        in_chans: input image channels.
        num_classes: classifier outputs (0 for none).
        global_pool: 'token' (the middle class token, as released), 'avg' / 'max' over the patch tokens, or ''.
        embed_dim: model width C.
        depth: number of blocks.
        d_state: SSM states per channel.
        expand: mixer inner width over C.
        dt_rank: rank of the Δ projection ('auto' = ceil(C / 16)).
        d_conv: causal conv size.
        conv_bias: bias in the causal convs.
        divide_out: average (True, released) or sum the two scan directions.
        norm_eps: RMSNorm epsilon.
        residual_in_fp32: keep the residual stream in float32 under low-precision inputs / autocast.
        drop_rate: dropout after the position embedding (the official ``drop_rate``).
        drop_path_rate: stochastic depth, linearly increasing over blocks.
        mixer_recompute: in training, each mixer keeps only ``in_proj``'s output for the backward and recomputes
            the rest there (``BiMambaMixer``'s ``recompute``); False keeps every activation from the forward.
    """
    output_fmt = 'NLC'  # forward_features returns tokens, like timm's ViTs

    def __init__(
            self,
            img_size: int = 224,
            patch_size: int = 16,
            stride: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'token',
            embed_dim: int = 192,
            depth: int = 24,
            d_state: int = 16,
            expand: int = 2,
            dt_rank: Union[int, str] = 'auto',
            d_conv: int = 4,
            conv_bias: bool = True,
            divide_out: bool = True,
            norm_eps: float = 1e-5,
            residual_in_fp32: bool = True,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            mixer_recompute: bool = True,
    ):
        super().__init__()
        if global_pool not in ('token', 'avg', 'max', ''):
            raise ValueError(f"global_pool must be 'token', 'avg', 'max' or '', got {global_pool!r}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.residual_in_fp32 = residual_in_fp32
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(img_size, patch_size, stride, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)

        dpr = torch.linspace(0, drop_path_rate, depth, device='cpu').tolist()
        self.blocks = nn.Sequential(*[
            VimBlock(embed_dim, drop_path=dpr[i], norm_eps=norm_eps, d_state=d_state, expand=expand,
                     dt_rank=dt_rank, d_conv=d_conv, conv_bias=conv_bias, divide_out=divide_out,
                     recompute=mixer_recompute)
            for i in range(depth)])
        self.feature_info = [dict(num_chs=embed_dim, reduction=stride, module=f'blocks.{i}') for i in range(depth)]
        self.norm = RMSNorm(embed_dim, eps=norm_eps)
        self.head = CastCachedLinear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights(depth)

    def _init_weights(self, depth: int):
        # As the official: lecun-normal stem, trunc-normal head / tokens, zero Linear biases except Δ's, and the
        # GPT-2 rescale of out_proj by 1/sqrt(depth).
        from timm.layers import lecun_normal_
        lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=.02)
            nn.init.zeros_(self.head.bias)
        trunc_normal_(self.pos_embed, std=.02)
        trunc_normal_(self.cls_token, std=.02)
        for name, m in self.blocks.named_modules():
            if isinstance(m, nn.Linear) and m.bias is not None and not getattr(m.bias, '_no_reinit', False):
                nn.init.zeros_(m.bias)
            if name.endswith('out_proj'):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5))
                with torch.no_grad():
                    m.weight /= math.sqrt(depth)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        # The tokens, and the SSM's A (as log) and D: decay would push A towards -1 and D towards 0.
        return {'pos_embed', 'cls_token'} | {
            n for n, _ in self.named_parameters() if n.endswith(('.A_log', '.A_b_log', '.D', '.D_b'))}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^cls_token|^pos_embed|^patch_embed',
            blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        if global_pool is not None:
            if global_pool not in ('token', 'avg', 'max', ''):
                raise ValueError(f"global_pool must be 'token', 'avg', 'max' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = CastCachedLinear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def load_pretrained(self, checkpoint_path: str):
        """Load an official (or our own) checkpoint file, converting it; used by ``pretrained=True``."""
        # The official files are DeiT-style: weights under 'model' (also 'model_ema', 'optimizer', pickled args).
        state_dict = extract_state_dict(load_checkpoint_file(checkpoint_path), ('model', 'state_dict'),
                                        source=str(checkpoint_path))
        load_converted(self, state_dict, checkpoint_filter_fn, source=str(checkpoint_path), head_prefix='head.',
                       first_conv='patch_embed.proj')

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Patch tokens with the class token at ``M // 2`` and the position embedding added: ``(B, M+1, C)``."""
        x, grid = self.patch_embed(x)
        mid = x.shape[1] // 2
        x = torch.cat([x[:, :mid], self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x[:, mid:]], dim=1)
        x = x + resample_pos_embed(self.pos_embed, grid, self.patch_embed.grid_size).to(x.dtype)
        x = self.pos_drop(x)
        if self.residual_in_fp32:
            x = full_precision(x)
        return x, grid

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Block outputs as maps at the stem stride, without the class token, and the final features.

        Args:
            indices: last n blocks if int, all if None, else the block indices to return.
            norm: apply the final norm to the returned block outputs.
            stop_early: stop after the last requested block.
            output_fmt: 'NCHW' or 'NHWC'.
        """
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        blocks = self.blocks[:max_index + 1] if stop_early and not torch.jit.is_scripting() else self.blocks
        x, (gh, gw) = self._embed(x)
        mid = gh * gw // 2
        intermediates = []
        for i, block in enumerate(blocks):
            x = block(x)
            if i in take_indices:
                y = self.norm(x) if norm else x
                y = torch.cat([y[:, :mid], y[:, mid + 1:]], dim=1).unflatten(1, (gh, gw))
                intermediates.append(y.permute(0, 3, 1, 2).contiguous() if output_fmt == 'NCHW' else y)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the blocks (and norm / head) that the requested intermediates do not need."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        self.feature_info = self.feature_info[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normed tokens ``(B, M+1, C)``, the class token at ``M // 2``."""
        x, _ = self._embed(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool:
            mid = (x.shape[1] - 1) // 2  # the class token of M+1 tokens sits at M // 2
            if self.global_pool == 'token':
                x = x[:, mid]
            else:
                patches = torch.cat([x[:, :mid], x[:, mid + 1:]], dim=1)
                x = patches.mean(1) if self.global_pool == 'avg' else patches.amax(1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class VimFeaturePyramid(nn.Module):
    """``features_only`` for Vim: a ViTDet-style simple feature pyramid over the plain backbone.

    Level ``i`` (reduction 4, 8, 16, 32) takes the output of block ``block_indices[i]`` (default: the last block of
    each quarter, e.g. 5/11/17/23 as in the official UperNet config) as an NCHW map at the stem stride ``s`` and
    rescales it like the official ``seg/backbone/vim.py`` ``fpn1..4``: 2x2 stride-2 transposed convs (BatchNorm +
    GELU between two of them) to go finer, identity at ``s``, max-pooling to go coarser. These layers are new: they
    are not in the classification checkpoint and start at their initialization.
    """
    output_fmt = 'NCHW'

    def __init__(
            self,
            model: Vim,
            out_indices: Sequence[int] = (0, 1, 2, 3),
            block_indices: Optional[Sequence[int]] = None,
            reductions: Sequence[int] = (4, 8, 16, 32),
            **kwargs,
    ):
        super().__init__()
        kwargs.pop('feature_cls', None)
        kwargs.pop('flatten_sequential', None)
        # timm passes the model's own output_fmt (its tokens); the pyramid's levels are NCHW maps.
        output_fmt = kwargs.pop('output_fmt', self.output_fmt)
        if output_fmt not in (self.output_fmt, model.output_fmt):
            raise ValueError(f"Vim's feature pyramid returns {self.output_fmt} maps, got output_fmt={output_fmt!r}")
        if kwargs:
            raise ValueError(f'unknown feature options for Vim: {sorted(kwargs)}')
        depth, dim = len(model.blocks), model.embed_dim
        stride = model.patch_embed.stride
        if block_indices is None:
            block_indices = [max((i + 1) * depth // len(reductions) - 1, 0) for i in range(len(reductions))]
        if len(block_indices) != len(reductions):
            raise ValueError(f'block_indices needs one block per level ({len(reductions)}), got {block_indices}')
        out_indices = tuple(out_indices)
        if not out_indices or min(out_indices) < 0 or max(out_indices) >= len(reductions):
            raise ValueError(f'out_indices must index the {len(reductions)} pyramid levels, got {out_indices}')
        self.out_indices = out_indices
        self.block_indices = [int(block_indices[i]) for i in out_indices]
        model.prune_intermediate_layers(max(self.block_indices), prune_norm=True, prune_head=True)
        self.model = model
        self.fpn = nn.ModuleList([self._level(dim, stride, reductions[i]) for i in out_indices])
        self.feature_info = FeatureInfo(
            [dict(num_chs=dim, reduction=reductions[i], module=f'fpn.{j}') for j, i in enumerate(out_indices)],
            tuple(range(len(out_indices))))

    @staticmethod
    def _level(dim: int, stride: int, reduction: int) -> nn.Module:
        if reduction == stride:
            return nn.Identity()
        ratio = max(reduction, stride) // min(reduction, stride)
        if ratio * min(reduction, stride) != max(reduction, stride) or ratio & (ratio - 1):
            raise ValueError(f'pyramid reduction {reduction} is not a power-of-two multiple of the stride {stride}')
        if reduction > stride:
            return nn.MaxPool2d(kernel_size=ratio, stride=ratio)
        layers: List[nn.Module] = []
        for k in range(int(math.log2(ratio))):
            if k:
                layers += [nn.BatchNorm2d(dim), nn.GELU()]
            layers.append(nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        unique = sorted(set(self.block_indices))
        maps = dict(zip(unique, self.model.forward_intermediates(x, indices=unique, intermediates_only=True)))
        return [op(maps[b]).contiguous() for op, b in zip(self.fpn, self.block_indices)]


# Official state-dict names → ours.
_OFFICIAL_RENAMES = (
    (r'^layers\.(\d+)\.', r'blocks.\1.'),
    (r'^norm_f\.', 'norm.'),
)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: Vim) -> Dict[str, torch.Tensor]:
    """Convert an official Vim state dict (``VisionMamba``) to this module tree.

    Our own state dicts pass through the renames unchanged. A position embedding for another grid (e.g. a patch16
    checkpoint into a stride-8 model, as the official "+" fine-tuning starts) is resampled around its middle class
    slot.
    """
    own = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in _OFFICIAL_RENAMES:
            key, n = re.subn(pattern, repl, key)
            if n:
                break
        if key == 'pos_embed' and key in own and value.shape != own[key].shape and value.device.type != 'meta':
            value = resample_pos_embed(value, model.patch_embed.grid_size)
        out[key] = value
    return out


def _create_vim(variant: str, pretrained: bool = False, **kwargs) -> Vim:
    load_through_model(kwargs)  # official files need the safe loader and the conversion
    feature_cfg = dict(out_indices=kwargs.pop('out_indices', (0, 1, 2, 3)), feature_cls=VimFeaturePyramid)
    if 'block_indices' in kwargs:
        feature_cfg['block_indices'] = kwargs.pop('block_indices')
    return build_model_with_cfg(
        Vim, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=feature_cfg,
        **kwargs,
    )


# --- from_official: the official VisionMamba constructor's arguments, mapped to ours ----------------------------

_REQUIRED = dict(  # official flag -> the only value the released models (and this implementation) use
    rms_norm=True, if_abs_pos_embed=True, if_rope=False, bimamba_type='v2', if_bimamba=False, if_cls_token=True,
    use_middle_cls_token=True, use_double_cls_token=False, if_bidirectional=False, init_layer_scale=None,
)


def from_official(checkpoint: Optional[str] = None, **official_kwargs) -> Vim:
    """The Vim equal to the official ``VisionMamba(**official_kwargs)``, optionally loaded from an official file.

    Raises ValueError for arguments that select code the released models do not use.
    """
    kw = dict(official_kwargs)
    for flag, expected in _REQUIRED.items():
        value = kw.pop(flag, expected)
        if value != expected:
            raise ValueError(f'{flag}={value!r} is not supported (the released Vim models use {expected!r})')
    if kw.pop('flip_img_sequences_ratio', -1.) > 0:
        raise ValueError('flip_img_sequences_ratio > 0 is not supported (random sequence flips, no release uses it)')
    if kw.pop('ssm_cfg', None):
        raise ValueError('ssm_cfg is not supported (no released Vim sets it)')
    final_pool = kw.pop('final_pool_type', 'none')
    if final_pool not in ('none', 'mean', 'max', 'all'):
        raise ValueError(f"final_pool_type must be 'none', 'mean', 'max' or 'all', got {final_pool!r}")
    # Ignored by the official model too: the pool type with a class token, the fused/unfused add-norm choice
    # (same math), RoPE sizes without RoPE, init options, factory kwargs, and vim_base's misspelt 'if_devide_out'.
    for ignored in ('fused_add_norm', 'if_rope_residual', 'ft_seq_len', 'pt_hw_seq_len', 'initializer_cfg',
                    'device', 'dtype', 'if_devide_out'):
        kw.pop(ignored, None)
    renames = dict(
        img_size='img_size', patch_size='patch_size', stride='stride', depth='depth', embed_dim='embed_dim',
        d_state='d_state', channels='in_chans', num_classes='num_classes', drop_rate='drop_rate',
        drop_path_rate='drop_path_rate', norm_epsilon='norm_eps', residual_in_fp32='residual_in_fp32',
        if_divide_out='divide_out',
    )
    unknown = sorted(set(kw) - set(renames))
    if unknown:
        raise ValueError(f'unknown VisionMamba arguments: {unknown}')
    args: Dict[str, Any] = dict(drop_path_rate=0.1)  # the official default, where it differs from ours
    args.update({renames[k]: v for k, v in kw.items()})
    model = Vim(**args)
    if checkpoint is not None:
        model.load_pretrained(checkpoint)
    return model


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return {
        'url': url, 'custom_load': True,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None,
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'fixed_input_size': False,
        'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225),
        'first_conv': 'patch_embed.proj', 'classifier': 'head',
        'license': 'apache-2.0', 'origin_url': 'https://github.com/hustvl/Vim',
        'paper_ids': 'arXiv:2401.09417',
        'paper_name': 'Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space Model',
        **kwargs,
    }


_HF = 'https://huggingface.co/hustvl/'

default_cfgs = generate_default_cfgs({
    'vim_tiny.in1k': _cfg(_HF + 'Vim-tiny-midclstok/resolve/main/vim_t_midclstok_76p1acc.pth'),
    'vim_tiny_stride8.in1k': _cfg(_HF + 'Vim-tiny-midclstok/resolve/main/vim_t_midclstok_ft_78p3acc.pth'),
    'vim_small.in1k': _cfg(_HF + 'Vim-small-midclstok/resolve/main/vim_s_midclstok_80p5acc.pth'),
    'vim_small_stride8.in1k': _cfg(_HF + 'Vim-small-midclstok/resolve/main/vim_s_midclstok_ft_81p6acc.pth'),
    # The official README links only the repository; this file name is the repository's, not re-verified here.
    'vim_base.in1k': _cfg(_HF + 'Vim-base-midclstok/resolve/main/vim_b_midclstok_81p9acc.pth'),
    'test_vim.untrained': _cfg(input_size=(3, 64, 64)),
})


@register_model
def vim_tiny(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-Ti (7.1M), official ``vim_tiny_patch16_224_bimambav2_..._midclstok_div2``."""
    model_args = dict(embed_dim=192, depth=24, drop_path_rate=0.0)
    return _create_vim('vim_tiny', pretrained, **dict(model_args, **kwargs))


@register_model
def vim_tiny_stride8(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-Ti+ (7.3M): patch 16, stride 8 (27x27 tokens at 224), fine-tuned from Vim-Ti."""
    model_args = dict(embed_dim=192, depth=24, stride=8, drop_path_rate=0.0)
    return _create_vim('vim_tiny_stride8', pretrained, **dict(model_args, **kwargs))


@register_model
def vim_small(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-S (25.8M)."""
    model_args = dict(embed_dim=384, depth=24, drop_path_rate=0.05)
    return _create_vim('vim_small', pretrained, **dict(model_args, **kwargs))


@register_model
def vim_small_stride8(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-S+ (26.0M): patch 16, stride 8, fine-tuned from Vim-S."""
    model_args = dict(embed_dim=384, depth=24, stride=8, drop_path_rate=0.05)
    return _create_vim('vim_small_stride8', pretrained, **dict(model_args, **kwargs))


@register_model
def vim_base(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-B (97.6M)."""
    model_args = dict(embed_dim=768, depth=24, drop_path_rate=0.1)
    return _create_vim('vim_base', pretrained, **dict(model_args, **kwargs))


@register_model
def test_vim(pretrained: bool = False, **kwargs) -> Vim:
    """A tiny Vim for tests and demos."""
    model_args = dict(img_size=64, embed_dim=32, depth=4, drop_path_rate=0.0)
    return _create_vim('test_vim', pretrained, **dict(model_args, **kwargs))
