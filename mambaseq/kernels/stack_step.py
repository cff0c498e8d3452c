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
     recomputed per K chunk from the residual, which is cheaper than a pass and a barrier), then the
     conv update of those channels (shift the window, dot with the conv weight, bias, SiLU); the
     conv output x and the gate z go to a scratch buffer.
  2. x_proj over chunks of d_inner into three register accumulators, dt (dt_rank), B and C (d_state).
  3. per chunk of channels: Δ = softplus(dt @ dt_projᵀ + dt_bias), the SSM state update,
     y = <C, h> + D x, gated by silu(z), into the scratch buffer.
  4. out_proj over chunks of d_inner, added to the residual, which stays in the output buffer for
     the next layer.

Triton cannot slice a register tile, so a value that a later pass reads by other chunks than it
was made in goes through global memory (the scratch rows, a few KiB per program, L1/L2-resident),
with `tl.debug_barrier()` (a CTA barrier, which also orders the global accesses of the program's
threads) between the pass that writes it and the one that reads it. A barrier also sits between the
loads and stores of every read-modify-write (conv window, SSM state, residual): a tile element may
be held by several threads, and none may see another's store before its own load.

Products: with BLOCK_B >= 16, `tl.dot` (fp32 in "ieee" precision, so no TF32 rounding; bf16/fp16
on tensor cores, fp32 accumulation); below that (tl.dot needs M, N, K >= 16), broadcast products
accumulated in a 3-D tile and reduced once per output chunk. Accumulation is always fp32, and the
activations are rounded to the model dtype wherever the per-block step rounds them (norm output,
projections, conv output, y), so bf16 follows the per-block path closely; in fp32 the rounding is
the identity and only the summation order differs from the reference.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from .device import sm_count
from .stack_weights import StackWeights

BLOCK_B_ENV = "MAMBASEQ_STACK_BLOCK_B"  # rows per program, to tune without code changes
_PRODUCT_TILE = 4096  # elements of one broadcast-product tile (registers: 32 per thread at 4 warps)


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
def _mm_zeros(BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, USE_DOT: tl.constexpr):
    if USE_DOT:
        acc = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_B, BLOCK_K, BLOCK_N], dtype=tl.float32)
    return acc


@triton.jit
def _mm_acc(acc, a, wT, USE_DOT: tl.constexpr, DOT_FP32: tl.constexpr):
    # a: (BLOCK_B, BLOCK_K) in the weight dtype; wT: (BLOCK_K, BLOCK_N).
    if USE_DOT:
        if DOT_FP32:
            acc = tl.dot(a.to(tl.float32), wT.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, wT, acc, input_precision="ieee")
    else:
        acc += a.to(tl.float32)[:, :, None] * wT.to(tl.float32)[None, :, :]
    return acc


@triton.jit
def _mm_result(acc, USE_DOT: tl.constexpr):
    if USE_DOT:
        out = acc
    else:
        out = tl.sum(acc, axis=1)
    return out


@triton.jit
def _stack_step_kernel(
    res_in_ptr, res_ptr, conv_state_ptr, ssm_state_ptr, scratch_ptr,
    norm_w_ptr, in_w_ptr, in_b_ptr, conv_w_ptr, conv_b_ptr, x_proj_w_ptr, dt_proj_w_ptr, dt_bias_ptr,
    B_ptr, C_ptr, A_ptr, D_ptr, out_w_ptr, out_b_ptr,
    batch, eps, s_res_in,
    N_LAYER: tl.constexpr, DM: tl.constexpr, DI: tl.constexpr, R: tl.constexpr, N: tl.constexpr,
    K: tl.constexpr, SELECTIVE: tl.constexpr, HAS_IN_BIAS: tl.constexpr, HAS_CONV_BIAS: tl.constexpr,
    HAS_OUT_BIAS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_KM: tl.constexpr, BLOCK_KI: tl.constexpr,
    BLOCK_CI: tl.constexpr, BLOCK_CS: tl.constexpr, BLOCK_CO: tl.constexpr, R_P: tl.constexpr,
    N_P: tl.constexpr, KM1_P: tl.constexpr, USE_DOT: tl.constexpr, DOT_FP32: tl.constexpr,
):
    WT = in_w_ptr.dtype.element_ty  # the model dtype
    RT = res_ptr.dtype.element_ty  # the residual stream's dtype
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = rows < batch
    rows = rows.to(tl.int64)
    res_rows = res_ptr + rows[:, None] * DM
    # Per row: x after the conv, z, then y; fp32 holding values already rounded to WT.
    scr_x = scratch_ptr + rows[:, None] * (3 * DI)
    scr_z = scr_x + DI
    scr_y = scr_x + 2 * DI
    offs_r = tl.arange(0, R_P)
    offs_n = tl.arange(0, N_P)
    offs_j = tl.arange(0, KM1_P)  # conv window slots held in the state
    mask_n = offs_n < N
    mask_j = offs_j < K - 1

    for d0 in range(0, DM, BLOCK_CO):
        offs_d = d0 + tl.arange(0, BLOCK_CO)
        m = mask_b[:, None] & (offs_d[None, :] < DM)
        r = tl.load(res_in_ptr + rows[:, None] * s_res_in + offs_d[None, :], mask=m, other=0.0)
        tl.store(res_rows + offs_d[None, :], r.to(RT), mask=m)
    tl.debug_barrier()

    for l in range(N_LAYER):
        state_rows = l * batch + rows  # (n_layer, batch) flattened, int64

        # ---- pass 1: RMSNorm, in_proj, conv update ----
        sum_sq = tl.zeros([BLOCK_B], dtype=tl.float32)
        for k0 in range(0, DM, BLOCK_KM):
            offs_k = k0 + tl.arange(0, BLOCK_KM)
            m = mask_b[:, None] & (offs_k[None, :] < DM)
            r = _round(tl.load(res_rows + offs_k[None, :], mask=m, other=0.0).to(tl.float32), WT)
            sum_sq += tl.sum(r * r, axis=1)
        rstd = tl.rsqrt(sum_sq / DM + eps)
        in_w = in_w_ptr + l * (2 * DI * DM)
        for c0 in range(0, DI, BLOCK_CI):
            offs_c = c0 + tl.arange(0, BLOCK_CI)
            mask_c = offs_c < DI
            acc_x = _mm_zeros(BLOCK_B, BLOCK_KM, BLOCK_CI, USE_DOT)
            acc_z = _mm_zeros(BLOCK_B, BLOCK_KM, BLOCK_CI, USE_DOT)
            for k0 in range(0, DM, BLOCK_KM):
                offs_k = k0 + tl.arange(0, BLOCK_KM)
                mask_k = offs_k < DM
                r = tl.load(res_rows + offs_k[None, :], mask=mask_b[:, None] & mask_k[None, :], other=0.0)
                g = tl.load(norm_w_ptr + l * DM + offs_k, mask=mask_k, other=0.0).to(tl.float32)
                normed = _round(_round(r.to(tl.float32), WT) * rstd[:, None] * g[None, :], WT).to(WT)
                m_w = mask_k[:, None] & mask_c[None, :]
                w_x = tl.load(in_w + offs_c[None, :] * DM + offs_k[:, None], mask=m_w, other=0.0)
                w_z = tl.load(in_w + (DI + offs_c[None, :]) * DM + offs_k[:, None], mask=m_w, other=0.0)
                acc_x = _mm_acc(acc_x, normed, w_x, USE_DOT, DOT_FP32)
                acc_z = _mm_acc(acc_z, normed, w_z, USE_DOT, DOT_FP32)
            x = _mm_result(acc_x, USE_DOT)
            z = _mm_result(acc_z, USE_DOT)
            if HAS_IN_BIAS:
                x += tl.load(in_b_ptr + l * 2 * DI + offs_c, mask=mask_c, other=0.0).to(tl.float32)[None, :]
                z += tl.load(in_b_ptr + l * 2 * DI + DI + offs_c, mask=mask_c, other=0.0).to(tl.float32)[None, :]
            x = _round(x, WT)
            z = _round(z, WT)

            m2 = mask_b[:, None] & mask_c[None, :]
            m3 = m2[:, :, None] & mask_j[None, None, :]
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
            tl.store(scr_z + offs_c[None, :], z, mask=m2)
        tl.debug_barrier()

        # ---- pass 2: x_proj -> dt (low rank), B, C, kept in registers ----
        if SELECTIVE:
            xw = x_proj_w_ptr + l * ((R + 2 * N) * DI)
            acc_dt = _mm_zeros(BLOCK_B, BLOCK_KI, R_P, USE_DOT)
            acc_B = _mm_zeros(BLOCK_B, BLOCK_KI, N_P, USE_DOT)
            acc_C = _mm_zeros(BLOCK_B, BLOCK_KI, N_P, USE_DOT)
            for k0 in range(0, DI, BLOCK_KI):
                offs_k = k0 + tl.arange(0, BLOCK_KI)
                mask_k = offs_k < DI
                a = tl.load(scr_x + offs_k[None, :], mask=mask_b[:, None] & mask_k[None, :], other=0.0).to(WT)
                w_dt = tl.load(xw + offs_r[None, :] * DI + offs_k[:, None],
                               mask=mask_k[:, None] & (offs_r < R)[None, :], other=0.0)
                m_w = mask_k[:, None] & mask_n[None, :]
                w_B = tl.load(xw + (R + offs_n[None, :]) * DI + offs_k[:, None], mask=m_w, other=0.0)
                w_C = tl.load(xw + (R + N + offs_n[None, :]) * DI + offs_k[:, None], mask=m_w, other=0.0)
                acc_dt = _mm_acc(acc_dt, a, w_dt, USE_DOT, DOT_FP32)
                acc_B = _mm_acc(acc_B, a, w_B, USE_DOT, DOT_FP32)
                acc_C = _mm_acc(acc_C, a, w_C, USE_DOT, DOT_FP32)
            dt_low = _round(_mm_result(acc_dt, USE_DOT), WT).to(WT)  # (BLOCK_B, R_P), the dt_proj input
            B_sel = _round(_mm_result(acc_B, USE_DOT), WT)[:, None, :]  # (BLOCK_B, 1, N_P)
            C_sel = _round(_mm_result(acc_C, USE_DOT), WT)[:, None, :]

        # ---- pass 3: Δ, SSM state update, y = <C, h> + D x, gate ----
        for c0 in range(0, DI, BLOCK_CS):
            offs_c = c0 + tl.arange(0, BLOCK_CS)
            mask_c = offs_c < DI
            m2 = mask_b[:, None] & mask_c[None, :]
            m3 = m2[:, :, None] & mask_n[None, None, :]
            x = tl.load(scr_x + offs_c[None, :], mask=m2, other=0.0)
            z = tl.load(scr_z + offs_c[None, :], mask=m2, other=0.0)
            dt = tl.load(dt_bias_ptr + l * DI + offs_c, mask=mask_c, other=0.0)[None, :]
            if SELECTIVE:
                w_dt = tl.load(dt_proj_w_ptr + (l * DI + offs_c[None, :]) * R + offs_r[:, None],
                               mask=(offs_r < R)[:, None] & mask_c[None, :], other=0.0)  # (R_P, BLOCK_CS)
                acc = _mm_acc(_mm_zeros(BLOCK_B, R_P, BLOCK_CS, USE_DOT), dt_low, w_dt, USE_DOT, DOT_FP32)
                dt += _round(_mm_result(acc, USE_DOT), WT)
                B3 = B_sel
                C3 = C_sel
            else:
                m_cn = mask_c[:, None] & mask_n[None, :]
                const = (l * DI + offs_c[:, None]) * N + offs_n[None, :]
                B3 = tl.load(B_ptr + const, mask=m_cn, other=0.0)[None, :, :]
                C3 = tl.load(C_ptr + const, mask=m_cn, other=0.0)[None, :, :]
            dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))  # softplus
            A = tl.load(A_ptr + (l * DI + offs_c[:, None]) * N + offs_n[None, :],
                        mask=mask_c[:, None] & mask_n[None, :], other=0.0)
            h_ptrs = ssm_state_ptr + ((state_rows[:, None] * DI + offs_c[None, :]) * N)[:, :, None] \
                + offs_n[None, None, :]
            h = tl.load(h_ptrs, mask=m3, other=0.0)
            tl.debug_barrier()  # read before any thread writes it back
            h = tl.exp(dt[:, :, None] * A[None, :, :]) * h + (dt * x)[:, :, None] * B3
            tl.store(h_ptrs, h, mask=m3)
            y = tl.sum(h * C3, axis=2)
            y += tl.load(D_ptr + l * DI + offs_c, mask=mask_c, other=0.0)[None, :] * x
            y = _round(y * z * tl.sigmoid(z), WT)
            tl.store(scr_y + offs_c[None, :], y, mask=m2)
        tl.debug_barrier()

        # ---- pass 4: out_proj, residual add ----
        out_w = out_w_ptr + l * (DM * DI)
        for d0 in range(0, DM, BLOCK_CO):
            offs_d = d0 + tl.arange(0, BLOCK_CO)
            mask_d = offs_d < DM
            acc = _mm_zeros(BLOCK_B, BLOCK_KI, BLOCK_CO, USE_DOT)
            for k0 in range(0, DI, BLOCK_KI):
                offs_k = k0 + tl.arange(0, BLOCK_KI)
                mask_k = offs_k < DI
                a = tl.load(scr_y + offs_k[None, :], mask=mask_b[:, None] & mask_k[None, :], other=0.0).to(WT)
                w = tl.load(out_w + offs_d[None, :] * DI + offs_k[:, None], mask=mask_k[:, None] & mask_d[None, :],
                            other=0.0)
                acc = _mm_acc(acc, a, w, USE_DOT, DOT_FP32)
            out = _mm_result(acc, USE_DOT)
            if HAS_OUT_BIAS:
                out += tl.load(out_b_ptr + l * DM + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
            out = _round(out, WT)
            m = mask_b[:, None] & mask_d[None, :]
            r = tl.load(res_rows + offs_d[None, :], mask=m, other=0.0).to(tl.float32)
            tl.debug_barrier()  # read before any thread writes it back
            tl.store(res_rows + offs_d[None, :], _round(r + out, RT).to(RT), mask=m)
        tl.debug_barrier()


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(1, n))


def _block_b(batch: int, device: torch.device) -> int:
    """Rows per program: 1 on a GPU, where builds of 2 rows per program failed to compile at the
    sc09 shapes (H100, triton 3.6, 2026-11-23; the interpreter does not compile); elsewhere the
    fewest that keep the programs within one wave of SMs (16 or more rows go through tl.dot).
    MAMBASEQ_STACK_BLOCK_B overrides both."""
    value = os.environ.get(BLOCK_B_ENV, "").strip()
    if value:
        return int(value)
    if device.type == "cuda":
        return 1
    block = 1
    while block < 32 and triton.cdiv(batch, block) > sm_count(device):
        block *= 2
    return block


def _tiles(w: StackWeights, block_b: int) -> dict[str, int]:
    """Constexpr tile sizes. tl.dot needs every dimension >= 16; the broadcast products keep one
    product tile near _PRODUCT_TILE elements (in_proj holds two of them, x_proj three)."""
    use_dot = block_b >= 16
    dm, di = _pow2(w.d_model), _pow2(w.d_inner)
    r_p, n_p = _pow2(w.dt_rank), _pow2(w.d_state)
    if use_dot:
        r_p, n_p = max(16, r_p), max(16, n_p)
        block_km, block_ki = max(16, min(dm, 64)), max(16, min(di, 64))
        block_ci = block_co = 64
        block_cs = max(16, min(di, _PRODUCT_TILE // (block_b * n_p)))
    else:
        block_km, block_ki = min(dm, 64), min(di, 64)
        block_ci = max(1, min(di, _PRODUCT_TILE // 2 // (block_b * block_km)))
        block_ki = max(1, min(block_ki, _PRODUCT_TILE // (block_b * (r_p + 2 * n_p))))
        block_co = max(1, min(dm, _PRODUCT_TILE // (block_b * block_ki)))
        block_cs = max(1, min(di, _PRODUCT_TILE // (block_b * n_p)))
    return dict(BLOCK_B=block_b, BLOCK_KM=block_km, BLOCK_KI=block_ki, BLOCK_CI=block_ci, BLOCK_CS=block_cs,
                BLOCK_CO=block_co, R_P=r_p, N_P=n_p, KM1_P=_pow2(w.d_conv - 1), USE_DOT=use_dot,
                # Triton's interpreter multiplies the raw bits of bf16 operands in tl.dot: there, and
                # only there, they are widened to fp32 first (exact products, fp32 sums as on GPU).
                DOT_FP32=use_dot and os.environ.get("TRITON_INTERPRET") == "1")


def mamba_stack_step(residual: Tensor, weights: StackWeights, conv_state: Tensor, ssm_state: Tensor,
                     *, block_b: int | None = None, num_warps: int = 4) -> Tensor:
    """One position through a stack of Mamba blocks in one Triton launch; same contract as
    `reference.mamba_stack_step_ref`.

    residual: (batch, d_model); conv_state: (n_layer, batch, d_inner, d_conv - 1) and ssm_state:
    (n_layer, batch, d_inner, d_state) fp32, contiguous, updated in place. Returns the new
    residual (batch, d_model) in residual.dtype. `block_b` (rows per program, a power of two; >= 16
    uses tl.dot) defaults to MAMBASEQ_STACK_BLOCK_B or a heuristic. No host synchronisation and
    only per-call allocations from the caching allocator: capturable in a CUDA graph.
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
    out = torch.empty(batch, w.d_model, device=residual.device, dtype=residual.dtype)
    if n == 0 or batch == 0:
        return out.copy_(residual)
    block_b = block_b or _block_b(batch, residual.device)
    if block_b < 1 or block_b & (block_b - 1):
        raise ValueError(f"block_b must be a power of two, got {block_b}")
    # Fresh per call: the caching allocator makes it cheap, and under CUDA-graph capture it is
    # allocated from the graph's pool at a fixed address, as every other intermediate.
    scratch = torch.empty(batch, 3 * w.d_inner, device=residual.device, dtype=torch.float32)
    _stack_step_kernel[(triton.cdiv(batch, block_b),)](
        residual, out, conv_state, ssm_state, scratch,
        w.norm_weight, w.in_proj_weight, w.in_proj_bias, w.conv_weight, w.conv_bias, w.x_proj_weight,
        w.dt_proj_weight, w.dt_bias, w.B, w.C, w.A, w.D, w.out_proj_weight, w.out_proj_bias,
        batch, w.eps, residual.stride(0),
        N_LAYER=n, DM=w.d_model, DI=w.d_inner, R=w.dt_rank, N=w.d_state, K=w.d_conv, SELECTIVE=w.selective,
        HAS_IN_BIAS=w.in_proj_bias is not None, HAS_CONV_BIAS=w.conv_bias is not None,
        HAS_OUT_BIAS=w.out_proj_bias is not None, **_tiles(w, block_b),
        # No software pipelining: a prefetch must never move a load across the barriers above.
        num_warps=num_warps, num_stages=1,
    )
    return out
