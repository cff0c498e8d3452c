"""One Triton launch for the single-position step of a whole stack of Mamba blocks (RMSNorm);
same contract as `reference.mamba_stack_step_ref`:

    residual: (batch, d_model); weights: StackWeights (leading dim n_layer);
    conv_state: (n_layer, batch, d_inner, d_conv - 1), ssm_state: (n_layer, batch, d_inner, d_state)
    fp32, both contiguous and updated in place. Returns the residual after the last block.

Why: step mode at small batch is bound by launches (about 15 small kernels per block), so the
whole stack runs in one.

Work split: one program per tile of BLOCK_B batch rows, which loops over the layers and, per layer,
over four passes on its rows (rows never interact, so no program waits for another):

  1. RMSNorm statistics of the residual; in_proj chunk by chunk of channels (the normed rows are
     recomputed per K chunk from the residual, which is cheaper than a pass and a barrier), x and
     the gate z to a scratch buffer; after a barrier, the conv update (shift the window, dot with
     the conv weight, bias, SiLU), the conv output x to the scratch buffer. The conv is not fused
     into in_proj's loop because its barrier would stop the prefetch (below) at every chunk.
  2. x_proj over chunks of d_inner into three accumulators, dt (dt_rank), B and C (d_state), stored
     to the scratch rows.
  3. per SUB_B rows and chunk of channels: Δ = softplus(dt @ dt_projᵀ + dt_bias), the SSM state
     update, y = <C, h> + D x, gated by silu(z), into the scratch rows. Its (rows, channels, d_state)
     tiles take a few rows at a time, so they stay small whatever BLOCK_B.
  4. out_proj over chunks of d_inner, added to the residual. The residual ping-pongs between two
     buffers (each layer reads one and writes the other), so this pass has no read-modify-write
     and no barrier inside its loop; the last layer writes the one returned.

Triton cannot slice a register tile, so a value that a later pass reads by other chunks than it
was made in goes through global memory (the scratch rows: 3 d_inner + dt_rank + 2 d_state fp32 per
batch row, allocated per call, L1/L2-resident), with `tl.debug_barrier()` (a CTA barrier, which
also orders the global accesses of the program's threads) between the pass that writes it and the
one that reads it. A barrier also sits between the
loads and stores of every read-modify-write (conv window, SSM state): a tile element may be held by
several threads, and none may see another's store before its own load.

Prefetch: at small batch a loop over weight tiles is bound by each tile's trip to memory, and with
num_stages=1 (Triton's pipeliner could move a load across a barrier) nothing overlaps it. So the
loops of in_proj, x_proj and out_proj load tile j + 1 (masked off past the end) before reducing tile
j, the loaded tile carried to the next iteration (double buffering by hand); in_proj and out_proj
are flattened over (output chunk, K chunk) so this runs across output chunks too. No prefetch
crosses a barrier or reads what its own pass writes: it reads weights, and scratch or residual values
written before the barrier that opens its loop. Pass 3 is not prefetched (a barrier in each chunk).

Products (in_proj, x_proj, out_proj): with BLOCK_B >= 16, `tl.dot` (fp32 in "ieee" precision, so
no TF32 rounding; bf16/fp16 on tensor cores, fp32 accumulation); below that (tl.dot needs M, N,
K >= 16), broadcast products reduced once per weight tile; weight tiles are (N, K) as in memory, so
with one row (the GPU default) a tile is reduced in the layout it is loaded in, with no transpose
through shared memory (that kept about 3 tiles' worth of registers live: now two fit). dt_proj
(K = dt_rank) is always a broadcast product. Accumulation is always fp32, and the activations are
rounded to the model dtype wherever the per-block step rounds them (norm output, projections, conv
output, y), so bf16 follows the per-block path closely; in fp32 the rounding is the identity and
only the summation order differs from the reference.

`compile_offline` compiles the kernel for sm_90 on a machine without a GPU and reports registers
and spills (what the tile sizes below were chosen by; timings still to be taken on a GPU).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from .device import cdiv, next_power_of_2, sm_count
from .launch import launch
from .stack_weights import StackWeights

BLOCK_B_ENV = "MAMBASEQ_STACK_BLOCK_B"  # rows per program, to tune without code changes
# Tile sizes, chosen by compiling for sm_90 offline (ptxas -v: registers and spills), not yet by timing.
# Read through a cache: change them before the first launch (or call _tile_sizes.cache_clear()).
# Rows x weight-tile elements of one broadcast product (64 per thread at 4 warps); two are live, as the
# loops prefetch the next tile, which fits without spills since tiles are reduced in their load layout.
_MATVEC_TILE = 8192
_STATE_TILE = 2048  # rows x channels x d_state of one SSM-update tile (several are live at once)
_DOT_TILE = 32  # output channels and K per tl.dot chunk
_SUB_B = 4  # rows per SSM-update tile (pass 3)


@triton.jit
def _round(x, DT: tl.constexpr):
    """fp32 x rounded to dtype DT, kept in fp32. For bf16 by hand, round to nearest even on the bits:
    the same on every backend (Triton's interpreter truncates in its own fp32 -> bf16 cast)."""
    if DT == tl.float32:
        out = x
    elif DT == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
        out = bits.to(tl.float32, bitcast=True)
    else:
        out = x.to(DT).to(tl.float32)
    return out


@triton.jit
def _mm_acc(acc, a, w, USE_DOT: tl.constexpr, DOT_FP32: tl.constexpr):
    """acc (BLOCK_B, BLOCK_N) fp32 += a (BLOCK_B, BLOCK_K) @ w (BLOCK_N, BLOCK_K)ᵀ, a in the weight dtype."""
    if USE_DOT:
        if DOT_FP32:
            acc = tl.dot(a.to(tl.float32), tl.trans(w.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, tl.trans(w), acc, input_precision="ieee")
    elif a.shape[0] == 1:
        # One row (the GPU default): a 2-D product, reduced in the layout the tile is loaded in, so
        # the tile goes through no layout conversion (a transpose through shared memory, with its
        # barrier, on every tile); only the row and the result, BLOCK_K and BLOCK_N values, move.
        acc += tl.sum(w.to(tl.float32) * a.to(tl.float32), axis=1)[None, :]
    else:
        # Reduced at once, so registers hold the weight tile and not a 3-D accumulator: the tile
        # can be large, and a large tile means few dependent trips to memory per layer.
        acc += tl.sum(a.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)
    return acc


@triton.jit
def _in_proj_tile(j, in_w, res_rows, norm_w, mask_b, DM: tl.constexpr, DI: tl.constexpr, BLOCK_KM: tl.constexpr,
                  BLOCK_CI: tl.constexpr):
    """Loads of in_proj's tile j (chunk j // NKM of channels, chunk j % NKM of d_model): the residual
    chunk, its norm weight and both weight tiles. Past the last tile every mask is off (the channel
    offsets pass DI), so a prefetch there reads nothing."""
    NKM: tl.constexpr = (DM + BLOCK_KM - 1) // BLOCK_KM
    offs_k = (j % NKM) * BLOCK_KM + tl.arange(0, BLOCK_KM)
    offs_c = (j // NKM) * BLOCK_CI + tl.arange(0, BLOCK_CI)
    mask_k = (offs_k < DM) & (j // NKM * BLOCK_CI < DI)
    r = tl.load(res_rows + offs_k[None, :], mask=mask_b[:, None] & mask_k[None, :], other=0.0)
    g = tl.load(norm_w + offs_k, mask=mask_k, other=0.0)
    m_w = (offs_c < DI)[:, None] & mask_k[None, :]
    w_x = tl.load(in_w + offs_c[:, None] * DM + offs_k[None, :], mask=m_w, other=0.0)
    w_z = tl.load(in_w + (DI + offs_c[:, None]) * DM + offs_k[None, :], mask=m_w, other=0.0)
    return r, g, w_x, w_z


@triton.jit
def _x_proj_tile(j, xw, scr_x, mask_b, DI: tl.constexpr, R: tl.constexpr, N: tl.constexpr, BLOCK_KI: tl.constexpr,
                 R_P: tl.constexpr, N_P: tl.constexpr):
    """Loads of x_proj's tile j (chunk j of d_inner): the conv output and the dt, B and C weight tiles."""
    offs_k = j * BLOCK_KI + tl.arange(0, BLOCK_KI)
    offs_r = tl.arange(0, R_P)
    offs_n = tl.arange(0, N_P)
    mask_k = offs_k < DI
    a = tl.load(scr_x + offs_k[None, :], mask=mask_b[:, None] & mask_k[None, :], other=0.0)
    w_dt = tl.load(xw + offs_r[:, None] * DI + offs_k[None, :], mask=(offs_r < R)[:, None] & mask_k[None, :], other=0.0)
    m_w = (offs_n < N)[:, None] & mask_k[None, :]
    w_B = tl.load(xw + (R + offs_n[:, None]) * DI + offs_k[None, :], mask=m_w, other=0.0)
    w_C = tl.load(xw + (R + N + offs_n[:, None]) * DI + offs_k[None, :], mask=m_w, other=0.0)
    return a, w_dt, w_B, w_C


@triton.jit
def _out_proj_tile(j, out_w, scr_y, res_src, mask_b, DM: tl.constexpr, DI: tl.constexpr, BLOCK_KI: tl.constexpr,
                   BLOCK_CO: tl.constexpr):
    """Loads of out_proj's tile j (chunk j // NKI of outputs, chunk j % NKI of d_inner): y, the weight
    tile and, with the last K chunk only, the residual it is added to."""
    NKI: tl.constexpr = (DI + BLOCK_KI - 1) // BLOCK_KI
    offs_k = (j % NKI) * BLOCK_KI + tl.arange(0, BLOCK_KI)
    offs_d = (j // NKI) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    mask_k = (offs_k < DI) & (j // NKI * BLOCK_CO < DM)
    mask_d = offs_d < DM
    a = tl.load(scr_y + offs_k[None, :], mask=mask_b[:, None] & mask_k[None, :], other=0.0)
    w = tl.load(out_w + offs_d[:, None] * DI + offs_k[None, :], mask=mask_d[:, None] & mask_k[None, :], other=0.0)
    r = tl.load(res_src + offs_d[None, :], mask=mask_b[:, None] & mask_d[None, :] & (j % NKI == NKI - 1), other=0.0)
    return a, w, r


@triton.jit
def _stack_step_kernel(
    res_in_ptr, res_ptr, conv_state_ptr, ssm_state_ptr, scratch_ptr,
    norm_w_ptr, in_w_ptr, in_b_ptr, conv_w_ptr, conv_b_ptr, x_proj_w_ptr, dt_proj_w_ptr, dt_bias_ptr,
    B_ptr, C_ptr, A_ptr, D_ptr, out_w_ptr, out_b_ptr,
    batch, eps, s_res_in,
    N_LAYER: tl.constexpr, DM: tl.constexpr, DI: tl.constexpr, R: tl.constexpr, N: tl.constexpr,
    K: tl.constexpr, SELECTIVE: tl.constexpr, HAS_IN_BIAS: tl.constexpr, HAS_CONV_BIAS: tl.constexpr,
    HAS_OUT_BIAS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_KM: tl.constexpr, BLOCK_KI: tl.constexpr,
    BLOCK_CI: tl.constexpr, BLOCK_CV: tl.constexpr, BLOCK_CS: tl.constexpr, BLOCK_CO: tl.constexpr,
    R_P: tl.constexpr, N_P: tl.constexpr, KM1_P: tl.constexpr, SUB_B: tl.constexpr, RQ_P: tl.constexpr,
    USE_DOT: tl.constexpr, DOT_FP32: tl.constexpr,
):
    WT = in_w_ptr.dtype.element_ty  # the model dtype
    RT = res_ptr.dtype.element_ty  # the residual stream's dtype
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = rows < batch
    rows = rows.to(tl.int64)
    # Per row: x after the conv, z, y (d_inner each; y's slot holds x before the conv until pass 3),
    # then dt (low rank), B, C; fp32 holding values already rounded to WT.
    scr_x = scratch_ptr + rows[:, None] * (3 * DI + R + 2 * N)
    scr_z = scr_x + DI
    scr_y = scr_x + 2 * DI
    scr_dt = scr_x + 3 * DI
    offs_r = tl.arange(0, R_P)
    offs_n = tl.arange(0, N_P)
    offs_j = tl.arange(0, KM1_P)  # conv window slots held in the state
    mask_n = offs_n < N
    mask_j = offs_j < K - 1
    NKM: tl.constexpr = (DM + BLOCK_KM - 1) // BLOCK_KM
    NKI: tl.constexpr = (DI + BLOCK_KI - 1) // BLOCK_KI
    N_IN: tl.constexpr = (DI + BLOCK_CI - 1) // BLOCK_CI * NKM  # in_proj tiles
    N_OUT: tl.constexpr = (DM + BLOCK_CO - 1) // BLOCK_CO * NKI  # out_proj tiles

    # The residual ping-pongs between two buffers (res_ptr: (2, batch, DM)): layer l reads one and
    # writes the other, so pass 4 needs no barrier between its loads and stores of the residual and
    # its tiles can be prefetched across output chunks; the last layer writes buffer 0.
    res_rows = res_ptr + ((N_LAYER % 2) * batch + rows[:, None]) * DM
    for d0 in range(0, DM, BLOCK_CO):
        offs_d = d0 + tl.arange(0, BLOCK_CO)
        m = mask_b[:, None] & (offs_d[None, :] < DM)
        r_in = tl.load(res_in_ptr + rows[:, None] * s_res_in + offs_d[None, :], mask=m, other=0.0)
        tl.store(res_rows + offs_d[None, :], r_in.to(RT), mask=m)
    tl.debug_barrier()

    # Software prefetch: the weight loops load tile j + 1 before reducing tile j, so that load's
    # latency overlaps the reduction (num_stages=1, so Triton's pipeliner does not, and it could move
    # loads across barriers). A prefetch stays within its loop: it reads weights, or scratch and
    # residual values written before the barrier that opens the loop, never anything the same pass writes.
    for l in range(N_LAYER):
        state_rows = l * batch + rows  # (n_layer, batch) flattened, int64
        res_rows = res_ptr + (((N_LAYER - l) % 2) * batch + rows[:, None]) * DM
        res_dst = res_ptr + (((N_LAYER - 1 - l) % 2) * batch + rows[:, None]) * DM

        # ---- pass 1a: RMSNorm, in_proj; x before the conv to y's slot, z to its own ----
        sum_sq = tl.zeros([BLOCK_B], dtype=tl.float32)
        for k0 in range(0, DM, BLOCK_KM):
            offs_k = k0 + tl.arange(0, BLOCK_KM)
            m = mask_b[:, None] & (offs_k[None, :] < DM)
            r = _round(tl.load(res_rows + offs_k[None, :], mask=m, other=0.0).to(tl.float32), WT)
            sum_sq += tl.sum(r * r, axis=1)
        rstd = tl.rsqrt(sum_sq / DM + eps)
        in_w = in_w_ptr + l * (2 * DI * DM)
        norm_w = norm_w_ptr + l * DM
        # The normed rows are recomputed per tile from the residual: cheaper than a pass and a barrier.
        r_t, g_t, w_x, w_z = _in_proj_tile(0, in_w, res_rows, norm_w, mask_b, DM, DI, BLOCK_KM, BLOCK_CI)
        acc_x = tl.zeros([BLOCK_B, BLOCK_CI], dtype=tl.float32)
        acc_z = tl.zeros([BLOCK_B, BLOCK_CI], dtype=tl.float32)
        for j in range(N_IN):
            r_n, g_n, w_x_n, w_z_n = _in_proj_tile(j + 1, in_w, res_rows, norm_w, mask_b, DM, DI, BLOCK_KM, BLOCK_CI)
            normed = _round(_round(r_t.to(tl.float32), WT) * rstd[:, None] * g_t.to(tl.float32)[None, :], WT).to(WT)
            acc_x = _mm_acc(acc_x, normed, w_x, USE_DOT, DOT_FP32)
            acc_z = _mm_acc(acc_z, normed, w_z, USE_DOT, DOT_FP32)
            if j % NKM == NKM - 1:
                offs_c = (j // NKM) * BLOCK_CI + tl.arange(0, BLOCK_CI)
                mask_c = offs_c < DI
                if HAS_IN_BIAS:
                    acc_x += tl.load(in_b_ptr + l * 2 * DI + offs_c, mask=mask_c, other=0.0).to(tl.float32)[None, :]
                    acc_z += tl.load(in_b_ptr + l * 2 * DI + DI + offs_c, mask=mask_c,
                                     other=0.0).to(tl.float32)[None, :]
                m2 = mask_b[:, None] & mask_c[None, :]
                tl.store(scr_y + offs_c[None, :], _round(acc_x, WT), mask=m2)
                tl.store(scr_z + offs_c[None, :], _round(acc_z, WT), mask=m2)
                acc_x = tl.zeros([BLOCK_B, BLOCK_CI], dtype=tl.float32)
                acc_z = tl.zeros([BLOCK_B, BLOCK_CI], dtype=tl.float32)
            r_t, g_t, w_x, w_z = r_n, g_n, w_x_n, w_z_n
        # The conv runs after in_proj, not per channel chunk inside it: its barrier would otherwise sit
        # in in_proj's loop and cut off the prefetch of the next chunk's weights.
        tl.debug_barrier()

        # ---- pass 1b: conv update (shift the window, dot with the conv weight, bias, SiLU) ----
        for c0 in range(0, DI, BLOCK_CV):
            offs_c = c0 + tl.arange(0, BLOCK_CV)
            mask_c = offs_c < DI
            m2 = mask_b[:, None] & mask_c[None, :]
            m3 = m2[:, :, None] & mask_j[None, None, :]
            x = tl.load(scr_y + offs_c[None, :], mask=m2, other=0.0)
            window = conv_state_ptr + ((state_rows[:, None] * DI + offs_c[None, :]) * (K - 1))[:, :, None] \
                + offs_j[None, None, :]
            older = tl.load(window, mask=m3, other=0.0).to(tl.float32)  # slots 0 .. K-2
            newer = tl.load(window + 1, mask=m3 & (offs_j < K - 2)[None, None, :], other=0.0).to(tl.float32)
            w_conv = conv_w_ptr + (l * DI + offs_c) * K
            w_old = tl.load(w_conv[:, None] + offs_j[None, :], mask=mask_c[:, None] & mask_j[None, :],
                            other=0.0).to(tl.float32)
            w_new = tl.load(w_conv + (K - 1), mask=mask_c, other=0.0).to(tl.float32)
            pre = tl.sum(older * w_old[None, :, :], axis=2) + x * w_new[None, :]
            if HAS_CONV_BIAS:
                pre += tl.load(conv_b_ptr + l * DI + offs_c, mask=mask_c, other=0.0).to(tl.float32)[None, :]
            x_conv = _round(pre * tl.sigmoid(pre), WT)
            shifted = tl.where((offs_j == K - 2)[None, None, :], x[:, :, None], newer)
            tl.debug_barrier()  # the whole window is read before it shifts
            ST = conv_state_ptr.dtype.element_ty
            tl.store(window, _round(shifted, ST).to(ST), mask=m3)
            tl.store(scr_x + offs_c[None, :], x_conv, mask=m2)
        tl.debug_barrier()

        # ---- pass 2: x_proj -> dt (low rank), B, C, to the scratch rows ----
        if SELECTIVE:
            xw = x_proj_w_ptr + l * ((R + 2 * N) * DI)
            acc_dt = tl.zeros([BLOCK_B, R_P], dtype=tl.float32)
            acc_B = tl.zeros([BLOCK_B, N_P], dtype=tl.float32)
            acc_C = tl.zeros([BLOCK_B, N_P], dtype=tl.float32)
            a_x, wx_dt, wx_B, wx_C = _x_proj_tile(0, xw, scr_x, mask_b, DI, R, N, BLOCK_KI, R_P, N_P)
            for j in range(NKI):
                a_n, wx_dt_n, wx_B_n, wx_C_n = _x_proj_tile(j + 1, xw, scr_x, mask_b, DI, R, N, BLOCK_KI, R_P, N_P)
                acc_dt = _mm_acc(acc_dt, a_x.to(WT), wx_dt, USE_DOT, DOT_FP32)
                acc_B = _mm_acc(acc_B, a_x.to(WT), wx_B, USE_DOT, DOT_FP32)
                acc_C = _mm_acc(acc_C, a_x.to(WT), wx_C, USE_DOT, DOT_FP32)
                a_x, wx_dt, wx_B, wx_C = a_n, wx_dt_n, wx_B_n, wx_C_n
            m_n = mask_b[:, None] & mask_n[None, :]
            tl.store(scr_dt + offs_r[None, :], _round(acc_dt, WT),
                     mask=mask_b[:, None] & (offs_r < R)[None, :])
            tl.store(scr_dt + R + offs_n[None, :], _round(acc_B, WT), mask=m_n)
            tl.store(scr_dt + R + N + offs_n[None, :], _round(acc_C, WT), mask=m_n)
            tl.debug_barrier()

        # ---- pass 3: Δ, SSM state update, y = <C, h> + D x, gate; SUB_B rows at a time ----
        # Elementwise but for dt_proj (K = dt_rank, small): broadcast products, whatever BLOCK_B, so
        # the (rows, channels, d_state) tiles stay small at any batch tile. Not prefetched: each chunk
        # has a barrier (the state's read-modify-write); all its loads are issued before that barrier.
        offs_q = tl.arange(0, RQ_P)
        mask_q = offs_q < R
        for b0 in range(0, BLOCK_B, SUB_B):
            sub = tl.program_id(0) * BLOCK_B + b0 + tl.arange(0, SUB_B)
            mask_s = sub < batch
            sub = sub.to(tl.int64)
            scr_s = scratch_ptr + sub[:, None] * (3 * DI + R + 2 * N)
            h_rows = l * batch + sub
            if SELECTIVE:
                m_sn = mask_s[:, None] & mask_n[None, :]
                dt_low = tl.load(scr_s + 3 * DI + offs_q[None, :], mask=mask_s[:, None] & mask_q[None, :], other=0.0)
                B3 = tl.load(scr_s + 3 * DI + R + offs_n[None, :], mask=m_sn, other=0.0)[:, None, :]
                C3 = tl.load(scr_s + 3 * DI + R + N + offs_n[None, :], mask=m_sn, other=0.0)[:, None, :]
            for c0 in range(0, DI, BLOCK_CS):
                offs_c = c0 + tl.arange(0, BLOCK_CS)
                mask_c = offs_c < DI
                m2 = mask_s[:, None] & mask_c[None, :]
                m3 = m2[:, :, None] & mask_n[None, None, :]
                m_cn = mask_c[:, None] & mask_n[None, :]
                x = tl.load(scr_s + offs_c[None, :], mask=m2, other=0.0)
                z = tl.load(scr_s + DI + offs_c[None, :], mask=m2, other=0.0)
                dt = tl.load(dt_bias_ptr + l * DI + offs_c, mask=mask_c, other=0.0)[None, :]
                D = tl.load(D_ptr + l * DI + offs_c, mask=mask_c, other=0.0)[None, :]
                if SELECTIVE:
                    w_dt = tl.load(dt_proj_w_ptr + (l * DI + offs_c[None, :]) * R + offs_q[:, None],
                                   mask=mask_q[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
                    dt += _round(tl.sum(dt_low[:, :, None] * w_dt[None, :, :], axis=1), WT)
                else:
                    const = (l * DI + offs_c[:, None]) * N + offs_n[None, :]
                    B3 = tl.load(B_ptr + const, mask=m_cn, other=0.0)[None, :, :]
                    C3 = tl.load(C_ptr + const, mask=m_cn, other=0.0)[None, :, :]
                dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))  # softplus
                A = tl.load(A_ptr + (l * DI + offs_c[:, None]) * N + offs_n[None, :], mask=m_cn, other=0.0)
                h_ptrs = ssm_state_ptr + ((h_rows[:, None] * DI + offs_c[None, :]) * N)[:, :, None] \
                    + offs_n[None, None, :]
                h = tl.load(h_ptrs, mask=m3, other=0.0)
                tl.debug_barrier()  # read before any thread writes it back
                h = tl.exp(dt[:, :, None] * A[None, :, :]) * h + (dt * x)[:, :, None] * B3
                tl.store(h_ptrs, h, mask=m3)
                y = tl.sum(h * C3, axis=2) + D * x
                y = _round(y * z * tl.sigmoid(z), WT)
                tl.store(scr_s + 2 * DI + offs_c[None, :], y, mask=m2)
        tl.debug_barrier()

        # ---- pass 4: out_proj, residual add (into the other residual buffer) ----
        out_w = out_w_ptr + l * (DM * DI)
        a_o, w_o, r_o = _out_proj_tile(0, out_w, scr_y, res_rows, mask_b, DM, DI, BLOCK_KI, BLOCK_CO)
        acc = tl.zeros([BLOCK_B, BLOCK_CO], dtype=tl.float32)
        for j in range(N_OUT):
            a_n, w_n, r_n = _out_proj_tile(j + 1, out_w, scr_y, res_rows, mask_b, DM, DI, BLOCK_KI, BLOCK_CO)
            acc = _mm_acc(acc, a_o.to(WT), w_o, USE_DOT, DOT_FP32)
            if j % NKI == NKI - 1:
                offs_d = (j // NKI) * BLOCK_CO + tl.arange(0, BLOCK_CO)
                mask_d = offs_d < DM
                if HAS_OUT_BIAS:
                    acc += tl.load(out_b_ptr + l * DM + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
                out = _round(acc, WT)
                tl.store(res_dst + offs_d[None, :], _round(r_o.to(tl.float32) + out, RT).to(RT),
                         mask=mask_b[:, None] & mask_d[None, :])
                acc = tl.zeros([BLOCK_B, BLOCK_CO], dtype=tl.float32)
            a_o, w_o, r_o = a_n, w_n, r_n
        tl.debug_barrier()


def _pow2(n: int) -> int:
    return next_power_of_2(max(1, n))


def _fit(budget: int, limit: int) -> int:
    """The largest power of two <= budget and <= limit (a power of two), at least 1: tl.arange sizes."""
    return max(1, min(limit, 1 << (max(1, budget).bit_length() - 1)))


def _block_b(batch: int, device: torch.device) -> int:
    """Rows per program. On a GPU 1: the H100 sweep of 2026-11-23 (`benchmarks/stack_step_speed.py`)
    found one row per program fastest for every sc09 stack at batch 1 and at batch 256 (2 rows cost
    1.5-1.9x, 16 rows 4-10x: the per-program weight reads are not the bound, its dependent trips are);
    rerun on the prefetching kernel (session 10, batch 256), 2 rows cost 2.8-3.6x: the weight tiles
    halve as the rows double, and the multi-row product converts each tile's layout (3x the barriers).
    Elsewhere (the interpreter) the fewest that keep the programs within one wave, so the wider
    builds stay tested. MAMBASEQ_STACK_BLOCK_B overrides both."""
    value = os.environ.get(BLOCK_B_ENV, "").strip()
    if value:
        return int(value)
    if device.type == "cuda":
        return 1
    block = 1
    while block < 32 and cdiv(batch, block) > sm_count(device):
        block *= 2
    return block


def _tiles(w: StackWeights, block_b: int) -> dict[str, int]:
    return dict(_tile_sizes(w.d_model, w.d_inner, w.dt_rank, w.d_state, w.d_conv, block_b,
                            os.environ.get("TRITON_INTERPRET") == "1"))


@functools.lru_cache(maxsize=256)
def _tile_sizes(d_model: int, d_inner: int, dt_rank: int, d_state: int, d_conv: int, block_b: int,
                interpreted: bool) -> dict[str, int]:
    """Constexpr tile sizes. tl.dot needs every dimension >= 16. A broadcast product keeps rows x
    weight tile near _MATVEC_TILE elements (in_proj loads two weight tiles a step, x_proj three):
    the fewer steps, the fewer dependent trips to memory, which bound a step at small batch."""
    use_dot = block_b >= 16
    dm, di = _pow2(d_model), _pow2(d_inner)
    r_p, n_p, rq_p = _pow2(dt_rank), _pow2(d_state), _pow2(dt_rank)
    if use_dot:
        r_p, n_p = max(16, r_p), max(16, n_p)
        block_km, block_ki = max(16, min(dm, _DOT_TILE)), max(16, min(di, _DOT_TILE))
        block_ci = block_co = max(16, _DOT_TILE)
    else:
        budget = _MATVEC_TILE // block_b
        block_km = _fit(budget // 16, dm)
        block_ci = _fit(budget // 2 // block_km, di)
        block_ki = _fit(budget // (r_p + 2 * n_p), di)
        block_co = _fit(budget // block_ki, dm)
    sub_b = min(block_b, _SUB_B)
    block_cs = _fit(_STATE_TILE // (sub_b * max(n_p, rq_p)), di)
    km1_p = _pow2(d_conv - 1)
    block_cv = _fit(_STATE_TILE // (block_b * km1_p), di)
    return dict(BLOCK_B=block_b, BLOCK_KM=block_km, BLOCK_KI=block_ki, BLOCK_CI=block_ci, BLOCK_CV=block_cv,
                BLOCK_CS=block_cs, BLOCK_CO=block_co, R_P=r_p, N_P=n_p, KM1_P=km1_p, SUB_B=sub_b, RQ_P=rq_p,
                USE_DOT=use_dot,
                # Triton's interpreter multiplies the raw bits of bf16 operands in tl.dot: there, and
                # only there, they are widened to fp32 first (exact products, fp32 sums as on GPU).
                DOT_FP32=use_dot and interpreted)


def mamba_stack_step(residual: Tensor, weights: StackWeights, conv_state: Tensor, ssm_state: Tensor,
                     *, block_b: int | None = None, num_warps: int | None = None) -> Tensor:
    """One position through a stack of Mamba blocks in one Triton launch; same contract as
    `reference.mamba_stack_step_ref`.

    residual: (batch, d_model); conv_state: (n_layer, batch, d_inner, d_conv - 1) and ssm_state:
    (n_layer, batch, d_inner, d_state) fp32, contiguous, updated in place. Returns the new
    residual (batch, d_model) in residual.dtype. `block_b` (rows per program, a power of two; >= 16
    uses tl.dot) defaults to MAMBASEQ_STACK_BLOCK_B or a heuristic, `num_warps` to `_num_warps`.
    No host synchronisation and only per-call allocations from the caching allocator: capturable in
    a CUDA graph.
    """
    w = weights
    n, batch = w.n_layer, residual.shape[0]
    if residual.dim() != 2 or residual.shape[1] != w.d_model:
        raise ValueError(f"residual must be (batch, {w.d_model}), got {tuple(residual.shape)}")
    if tuple(conv_state.shape) != (n, batch, w.d_inner, w.d_conv - 1) or not conv_state.is_contiguous():
        raise ValueError(f"conv_state must be contiguous {(n, batch, w.d_inner, w.d_conv - 1)}, "
                         f"got {tuple(conv_state.shape)}")
    if (tuple(ssm_state.shape) != (n, batch, w.d_inner, w.d_state) or not ssm_state.is_contiguous()
            or ssm_state.dtype != torch.float32):
        raise ValueError(f"ssm_state must be contiguous fp32 {(n, batch, w.d_inner, w.d_state)}, "
                         f"got {tuple(ssm_state.shape)} {ssm_state.dtype}")
    if residual.stride(1) != 1:
        residual = residual.contiguous()
    if n == 0 or batch == 0:
        return residual.clone(memory_format=torch.contiguous_format)
    block_b = block_b or _block_b(batch, residual.device)
    if block_b < 1 or block_b & (block_b - 1):
        raise ValueError(f"block_b must be a power of two, got {block_b}")
    # Fresh per call: the caching allocator makes it cheap, and under CUDA-graph capture it is
    # allocated from the graph's pool at a fixed address, as every other intermediate.
    scratch = torch.empty(batch, _scratch_cols(w), device=residual.device, dtype=torch.float32)
    # The residual's two buffers (the kernel's comments say why); the last layer writes the first.
    out = torch.empty(2, batch, w.d_model, device=residual.device, dtype=residual.dtype)
    args, constexprs = _arguments(residual, out, conv_state, ssm_state, scratch, w, batch, block_b)
    # No software pipelining (num_stages=1): a prefetch must never move a load across a barrier.
    programs = cdiv(batch, block_b)
    num_warps = num_warps or _num_warps(programs, residual.device)
    launch(_stack_step_kernel, (programs,), *args, **constexprs, num_warps=num_warps, num_stages=1)
    return out[0]


def _num_warps(programs: int, device: torch.device) -> int:
    """8 warps while every program has an SM to itself, else 4. From the H100 sweep of the
    prefetching kernel (2026-11-23, RESULTS.md): at batch 1, 8 warps ran the d128 / d256 stacks
    1.09x / 1.17x faster than 4 (d64 the same); at batch 256, where programs share SMs, 4 warps ran
    d64 / d256 1.66x / 1.48x faster than 8 (d128 within 5%)."""
    return 8 if programs <= sm_count(device) else 4


def _scratch_cols(w: StackWeights) -> int:
    return 3 * w.d_inner + w.dt_rank + 2 * w.d_state


def _arguments(residual: Tensor, out: Tensor, conv_state: Tensor, ssm_state: Tensor, scratch: Tensor,
               w: StackWeights, batch: int, block_b: int) -> tuple[list[Any], dict[str, Any]]:
    """The kernel's runtime arguments and constexprs (shared by the launch and `compile_offline`)."""
    args = [residual, out, conv_state, ssm_state, scratch,
            w.norm_weight, w.in_proj_weight, w.in_proj_bias, w.conv_weight, w.conv_bias, w.x_proj_weight,
            w.dt_proj_weight, w.dt_bias, w.B, w.C, w.A, w.D, w.out_proj_weight, w.out_proj_bias,
            batch, w.eps, residual.stride(0)]
    constexprs = dict(N_LAYER=w.n_layer, DM=w.d_model, DI=w.d_inner, R=w.dt_rank, N=w.d_state, K=w.d_conv,
                      SELECTIVE=w.selective, HAS_IN_BIAS=w.in_proj_bias is not None,
                      HAS_CONV_BIAS=w.conv_bias is not None, HAS_OUT_BIAS=w.out_proj_bias is not None,
                      **_tiles(w, block_b))
    return args, constexprs


def compile_offline(weights: StackWeights, batch: int, block_b: int, *, residual_dtype: torch.dtype = torch.float32,
                    state_dtype: torch.dtype | None = None, num_warps: int = 8, arch: int = 90) -> dict[str, Any]:
    """Compile the kernel for an NVIDIA GPU of compute capability `arch` without one (Triton's
    front end and ptxas, on any machine; not under TRITON_INTERPRET): the checks the interpreter
    skips (power-of-two tile sizes, tl.dot shapes) and the register and spill counts.

    `weights` may live on the CPU (only dtypes and shapes matter). Returns {"registers",
    "spill_bytes", "shared_bytes", "barriers", "ptx"}.
    """
    from .offline import compile_kernel, ptxas_usage

    w = weights

    def empty(dtype: torch.dtype) -> Tensor:
        return torch.empty(0, dtype=dtype)

    residual = torch.empty(batch, w.d_model, dtype=residual_dtype)
    args, constexprs = _arguments(residual, residual, empty(state_dtype or w.dtype), empty(torch.float32),
                                  empty(torch.float32), w, batch, block_b)
    constexprs["DOT_FP32"] = False  # what a GPU compiles
    kernel = compile_kernel(_stack_step_kernel, args, constexprs, num_warps=num_warps, arch=arch)
    ptx = kernel.asm["ptx"]
    return dict(**ptxas_usage(ptx, arch), shared_bytes=kernel.metadata.shared, barriers=ptx.count("bar.sync"),
                ptx=ptx)
