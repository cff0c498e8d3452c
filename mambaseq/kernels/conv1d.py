"""Causal depthwise conv1d in Triton: forward, backward and the single-step decode update.

Same contracts as `reference.causal_conv1d_ref` and `reference.causal_conv1d_update_ref`:

    x: (batch, dim, L) any strides; weight: (dim, width), width 2..4; bias: (dim,)
    initial_state / final_state: (batch, dim, width - 1), the inputs just before / at the end of x
    y_t = act(bias + sum_k weight[:, k] * x_{t - (width-1) + k}), act = identity or SiLU

The forward reads `width` shifted tiles of x (cache hits after the first). The backward first
forms dpre = dy * act'(pre) (recomputing pre) with per-program partial sums of dweight and dbias,
then dx is the same conv run the other way over dpre. The gradient of the initial state (width - 1
positions) and the final state (a slice of the input) are formed with plain tensor ops.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .device import cdiv, next_power_of_2
from .launch import launch


@triton.jit
def _load_shifted(x_ptr, init_ptr, b, offs_d, src, mask_d, s_x_b, s_x_d, s_x_l, WIDTH: tl.constexpr,
                  HAS_INIT: tl.constexpr, dim, L):
    # Input at positions `src` (negative: from the initial state, else zero; >= L: zero).
    m = mask_d[:, None] & (src[None, :] >= 0) & (src[None, :] < L)
    v = tl.load(x_ptr + b * s_x_b + offs_d[:, None] * s_x_d + src[None, :] * s_x_l, mask=m, other=0.0).to(tl.float32)
    if HAS_INIT:
        mi = mask_d[:, None] & (src[None, :] < 0) & (src[None, :] >= -(WIDTH - 1))
        vi = tl.load(init_ptr + (b * dim + offs_d[:, None]) * (WIDTH - 1) + (WIDTH - 1 + src[None, :]),
                     mask=mi, other=0.0).to(tl.float32)
        v = v + vi
    return v


@triton.jit
def _conv_pre(x_ptr, init_ptr, w_ptr, bias_ptr, b, offs_d, offs_l, mask_d, s_x_b, s_x_d, s_x_l, dim, L,
              WIDTH: tl.constexpr, HAS_INIT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr,
              BLOCK_L: tl.constexpr):
    acc = tl.zeros([BLOCK_D, BLOCK_L], dtype=tl.float32)
    for k in tl.static_range(WIDTH):
        w = tl.load(w_ptr + offs_d * WIDTH + k, mask=mask_d, other=0.0).to(tl.float32)
        src = offs_l - (WIDTH - 1) + k
        acc += w[:, None] * _load_shifted(x_ptr, init_ptr, b, offs_d, src, mask_d, s_x_b, s_x_d, s_x_l,
                                          WIDTH, HAS_INIT, dim, L)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    return acc


@triton.jit
def _conv_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, y_ptr, dim, L,
    s_x_b, s_x_d, s_x_l, s_y_b, s_y_d, s_y_l,
    WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    n_dblocks = tl.cdiv(dim, BLOCK_D)
    b = (tl.program_id(0) // n_dblocks).to(tl.int64)
    offs_d = (tl.program_id(0) % n_dblocks) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    offs_l = tl.program_id(1).to(tl.int64) * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_d = offs_d < dim
    pre = _conv_pre(x_ptr, init_ptr, w_ptr, bias_ptr, b, offs_d, offs_l, mask_d, s_x_b, s_x_d, s_x_l, dim, L,
                    WIDTH, HAS_INIT, HAS_BIAS, BLOCK_D, BLOCK_L)
    y = pre * tl.sigmoid(pre) if SILU else pre
    m = mask_d[:, None] & (offs_l[None, :] < L)
    tl.store(y_ptr + b * s_y_b + offs_d[:, None] * s_y_d + offs_l[None, :] * s_y_l, y.to(y_ptr.dtype.element_ty),
             mask=m)


@triton.jit
def _conv_bwd_dpre_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, dy_ptr, dpre_ptr, dw_part_ptr, dbias_part_ptr, dim, L,
    s_x_b, s_x_d, s_x_l, s_dy_b, s_dy_d, s_dy_l,
    WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    n_dblocks = tl.cdiv(dim, BLOCK_D)
    b = (tl.program_id(0) // n_dblocks).to(tl.int64)
    offs_d = (tl.program_id(0) % n_dblocks) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    pid_l = tl.program_id(1).to(tl.int64)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_d = offs_d < dim
    m = mask_d[:, None] & (offs_l[None, :] < L)
    dy = tl.load(dy_ptr + b * s_dy_b + offs_d[:, None] * s_dy_d + offs_l[None, :] * s_dy_l, mask=m,
                 other=0.0).to(tl.float32)
    if SILU:
        pre = _conv_pre(x_ptr, init_ptr, w_ptr, bias_ptr, b, offs_d, offs_l, mask_d, s_x_b, s_x_d, s_x_l, dim, L,
                        WIDTH, HAS_INIT, HAS_BIAS, BLOCK_D, BLOCK_L)
        sig = tl.sigmoid(pre)
        dpre = dy * sig * (1.0 + pre * (1.0 - sig))
    else:
        dpre = dy
    dpre = tl.where(m, dpre, 0.0)
    tl.store(dpre_ptr + (b * dim + offs_d[:, None]) * L + offs_l[None, :], dpre, mask=m)
    part = (b * tl.num_programs(1) + pid_l) * dim + offs_d
    for k in tl.static_range(WIDTH):
        src = offs_l - (WIDTH - 1) + k
        xk = _load_shifted(x_ptr, init_ptr, b, offs_d, src, mask_d, s_x_b, s_x_d, s_x_l, WIDTH, HAS_INIT, dim, L)
        tl.store(dw_part_ptr + part * WIDTH + k, tl.sum(dpre * xk, axis=1), mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_part_ptr + part, tl.sum(dpre, axis=1), mask=mask_d)


@triton.jit
def _conv_bwd_dx_kernel(
    dpre_ptr, w_ptr, dx_ptr, dim, L, s_dx_b, s_dx_d, s_dx_l,
    WIDTH: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    # dx_s = sum_k w_k dpre_{s + (width-1) - k}
    n_dblocks = tl.cdiv(dim, BLOCK_D)
    b = (tl.program_id(0) // n_dblocks).to(tl.int64)
    offs_d = (tl.program_id(0) % n_dblocks) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    offs_l = tl.program_id(1).to(tl.int64) * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_d = offs_d < dim
    acc = tl.zeros([BLOCK_D, BLOCK_L], dtype=tl.float32)
    for k in tl.static_range(WIDTH):
        w = tl.load(w_ptr + offs_d * WIDTH + k, mask=mask_d, other=0.0).to(tl.float32)
        dst = offs_l + (WIDTH - 1) - k
        mk = mask_d[:, None] & (dst[None, :] < L)
        acc += w[:, None] * tl.load(dpre_ptr + (b * dim + offs_d[:, None]) * L + dst[None, :], mask=mk, other=0.0)
    m = mask_d[:, None] & (offs_l[None, :] < L)
    tl.store(dx_ptr + b * s_dx_b + offs_d[:, None] * s_dx_d + offs_l[None, :] * s_dx_l,
             acc.to(dx_ptr.dtype.element_ty), mask=m)


BLOCK_D, BLOCK_L = 16, 128


class CausalConv1dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, initial_state, silu):
        batch, dim, L = x.shape
        width = weight.shape[-1]
        weight = weight.reshape(dim, width).contiguous()
        init = initial_state.contiguous() if initial_state is not None else None
        y = torch.empty(batch, dim, L, device=x.device, dtype=x.dtype)
        grid = (batch * cdiv(dim, BLOCK_D), cdiv(L, BLOCK_L))
        launch(_conv_fwd_kernel, grid, x, weight, bias, init, y, dim, L, *x.stride(), *y.stride(),
               WIDTH=width, HAS_BIAS=bias is not None, HAS_INIT=init is not None, SILU=silu,
               BLOCK_D=BLOCK_D, BLOCK_L=BLOCK_L)
        ctx.silu = silu
        ctx.save_for_backward(x, weight, bias, init)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, init = ctx.saved_tensors
        batch, dim, L = x.shape
        width = weight.shape[-1]
        grid = (batch * cdiv(dim, BLOCK_D), cdiv(L, BLOCK_L))
        dpre = torch.empty(batch, dim, L, device=x.device, dtype=torch.float32)
        dw_part = torch.empty(batch, grid[1], dim, width, device=x.device, dtype=torch.float32)
        dbias_part = torch.empty(batch, grid[1], dim, device=x.device, dtype=torch.float32)
        launch(_conv_bwd_dpre_kernel, grid, x, weight, bias, init, dy, dpre, dw_part, dbias_part, dim, L,
               *x.stride(), *dy.stride(), WIDTH=width, HAS_BIAS=bias is not None,
               HAS_INIT=init is not None, SILU=ctx.silu, BLOCK_D=BLOCK_D, BLOCK_L=BLOCK_L)
        dx = torch.empty(batch, dim, L, device=x.device, dtype=x.dtype)
        launch(_conv_bwd_dx_kernel, grid, dpre, weight, dx, dim, L, *dx.stride(), WIDTH=width, BLOCK_D=BLOCK_D,
               BLOCK_L=BLOCK_L)
        dinit = None
        if init is not None:
            # Initial-state position j is read by tap k of output t = j - k.
            dinit = torch.zeros(batch, dim, width - 1, device=x.device, dtype=torch.float32)
            for j in range(width - 1):
                for k in range(width):
                    if 0 <= j - k < L:
                        dinit[..., j] += weight[:, k].float() * dpre[..., j - k]
            dinit = dinit.to(init.dtype)
        dweight = dw_part.sum(dim=(0, 1)).to(weight.dtype)
        dbias = dbias_part.sum(dim=(0, 1)).to(bias.dtype) if bias is not None else None
        return dx, dweight, dbias, dinit, None


def causal_conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: str | None = None,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Causal depthwise conv1d on Triton; same contract as `reference.causal_conv1d_ref`.

    x: (batch, dim, L); weight: (dim, width) or (dim, 1, width); bias: (dim,);
    initial_state: (batch, dim, width - 1). Returns y (batch, dim, L) and, when asked, the
    final state (batch, dim, width - 1).
    """
    if activation not in (None, "silu"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    dim, width = x.shape[1], weight.shape[-1]
    weight = weight.reshape(dim, width)
    y = CausalConv1dFn.apply(x, weight, bias, initial_state, activation == "silu")
    if not return_final_state:
        return y
    L = x.shape[2]
    if L >= width - 1:
        final = x[..., L - (width - 1):]
    else:
        init = initial_state if initial_state is not None else x.new_zeros(x.shape[0], dim, width - 1)
        final = torch.cat([init[..., L:], x], dim=-1)
    return y, final


@triton.jit
def _conv_update_kernel(
    x_ptr, state_ptr, w_ptr, bias_ptr, y_ptr, dim, s_x_b, s_x_d, s_s_b, s_s_d, s_s_k,
    WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < dim
    xt = tl.load(x_ptr + b * s_x_b + offs_d * s_x_d, mask=mask_d, other=0.0).to(tl.float32)
    acc = tl.load(w_ptr + offs_d * WIDTH + (WIDTH - 1), mask=mask_d, other=0.0).to(tl.float32) * xt
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    state_row = state_ptr + b * s_s_b + offs_d * s_s_d
    # Read the whole window before shifting it in place.
    prev = tl.load(state_row, mask=mask_d, other=0.0)
    for k in tl.static_range(WIDTH - 1):
        cur = prev
        if k + 1 < WIDTH - 1:
            prev = tl.load(state_row + (k + 1) * s_s_k, mask=mask_d, other=0.0)
        acc += tl.load(w_ptr + offs_d * WIDTH + k, mask=mask_d, other=0.0).to(tl.float32) * cur.to(tl.float32)
        if k + 1 < WIDTH - 1:
            tl.store(state_row + k * s_s_k, prev, mask=mask_d)
    tl.store(state_row + (WIDTH - 2) * s_s_k, xt.to(state_ptr.dtype.element_ty), mask=mask_d)
    y = acc * tl.sigmoid(acc) if SILU else acc
    tl.store(y_ptr + b * dim + offs_d, y.to(y_ptr.dtype.element_ty), mask=mask_d)


def causal_conv1d_update(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None,
                         activation: str | None = None) -> Tensor:
    """One decoding step; same contract as `reference.causal_conv1d_update_ref`.

    x: (batch, dim); conv_state: (batch, dim, width - 1), updated in place; weight: (dim, width).
    """
    if activation not in (None, "silu"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    batch, dim = x.shape
    width = weight.shape[-1]
    weight = weight.reshape(dim, width).contiguous()
    y = torch.empty(batch, dim, device=x.device, dtype=x.dtype)
    block = min(256, next_power_of_2(dim))
    launch(_conv_update_kernel, (batch, cdiv(dim, block)),
        x, conv_state, weight, bias, y, dim, *x.stride(), *conv_state.stride(),
        WIDTH=width, HAS_BIAS=bias is not None, SILU=activation == "silu", BLOCK_D=block)
    return y
