"""Selective scan in Triton: forward and backward, chunked over L, with recomputation.

Same signature and semantics as `reference.selective_scan_ref` (see that module for the math):

    u, delta, z: (batch, dim, L) fp32/bf16/fp16, any strides
    A: (dim, d_state) fp32;  B, C: (batch, n_groups, d_state, L) or (dim, d_state)
    D, delta_bias: (dim,) fp32;  initial_state / final_state: (batch, dim, d_state) fp32

How it runs. A program owns BLOCK_D channels (one per thread) x d_state states of one batch
row and walks its stretch of the sequence in tiles of BLOCK_L steps. A tile is
(BLOCK_L, d_state, BLOCK_D) with channels across threads and the time steps and states of a
channel inside its thread, so the recurrence h_t = a_t h_{t-1} + x_t inside a tile (one
`tl.associative_scan` over (a, x) pairs along time) and the sum over states need no data exchange
between threads; the state carries from tile to tile in registers. When batch x dim alone cannot
fill the GPU (long DNA sequences), L is also cut into chunks run in parallel: pass 1 scans each
chunk from a zero state, a small kernel carries the true state across chunk boundaries (with the
chunk's total decay exp(A * sum(delta))), and pass 2 rescans from the true chunk-start states and
writes y.

Backward recomputes. The forward saves the state every BLOCK_T steps (the backward's tile;
4 * d_state bytes per channel per BLOCK_T steps, 1 byte per channel per token at the default 64)
and nothing else. The backward uses another tile layout: (BLOCK_D, BLOCK_T) with time across
the threads of a warp and a few channels inside each thread, states taken one at a time. For each
state it rebuilds the tile's forward states from the saved one (a scan along time), runs the
adjoint recurrence g_t = C_t dy_t + a_{t+1} g_{t+1} as a reverse scan, and adds that state's share
to every gradient; tiles are walked right to left with the adjoint carried in registers. No
per-step or per-tile buffer is written. Chunks run in parallel the same two-pass way as the
forward: a local-adjoint pass, a carry kernel, the gradient pass. The local-adjoint pass needs no
scan: the gradient a chunk passes to its start from a zero gradient at its end is
sum_t exp(A S_t) C_t dy_t, S_t the chunk's dt summed through t (the product of its decays), a weighted
sum taken in the forward's tile layout (`_adjoint_local_kernel`). dB and dC (shared across the
channels of a group) are summed over the channels of a thread in registers, then over channel
blocks: a program owns one chunk of time and walks several channel blocks, adding into its own
partial copy of dB/dC with plain loads and stores (no atomics); the copies are summed at the end.
dA, dD and d(delta_bias) are per-program partial sums reduced afterwards.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from .device import cdiv, next_power_of_2, sm_count
from .launch import launch


@triton.jit
def _affine_combine(a_prev, x_prev, a_cur, x_cur):
    # Compose h -> a_prev h + x_prev, then h -> a_cur h + x_cur (prev: earlier in scan order).
    return a_prev * a_cur, x_prev * a_cur + x_cur


@triton.jit
def _adjoint_combine(fa_later, r_later, c_later, fa_cur, r_cur, c_cur):
    # Right-to-left scan for g_t = c_t + a_{t+1} g_{t+1}. A segment [t..s] is (fa, R, C): fa its
    # first a (a_t), R = prod a_u for u in (t, s], C = sum_k prod_{u in (t, k]} a_u c_k.
    # Joining [t..m] (cur) with the later [m+1..s]: fa = fa_cur, R = R_cur fa_later R_later,
    # C = C_cur + R_cur fa_later C_later.
    link = r_cur * fa_later
    return fa_cur, link * r_later, c_cur + link * c_later


@triton.jit
def _softplus(x):
    # torch's softplus with threshold 20 (identity above it).
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))


@triton.jit
def _ld_block(dim, dim_per_group, DSTATE: tl.constexpr, N_P2: tl.constexpr, BLOCK_D: tl.constexpr):
    # The forward's layout (also the local-adjoint pass's): program (batch row x channel block, chunk),
    # channels across threads, states inside a thread. 64-bit offsets: at 1M-token contexts, offsets
    # into states and inputs pass 2^31.
    pid_bd = tl.program_id(0)
    n_dblocks = tl.cdiv(dim, BLOCK_D)
    b = (pid_bd // n_dblocks).to(tl.int64)
    d0 = (pid_bd % n_dblocks) * BLOCK_D
    offs_d = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
    offs_n = tl.arange(0, N_P2)
    mask_d = offs_d < dim
    mask_n = offs_n < DSTATE
    mask_nd = mask_n[:, None] & mask_d[None, :]
    nd_idx = offs_d[None, :] * DSTATE + offs_n[:, None]
    return b, tl.program_id(1).to(tl.int64), d0 // dim_per_group, offs_d, offs_n, mask_d, mask_n, mask_nd, nd_idx


@triton.jit
def _ld_steps(l0, offs_t, l_end, mask_d):
    # The steps of the forward-layout tile starting at l0: indices, as a column, the steps before
    # l_end, and the (BLOCK_L, BLOCK_D) mask.
    offs_l = l0 + offs_t
    mask_l = offs_l < l_end
    return offs_l, offs_l[:, None], mask_l, mask_l[:, None] & mask_d[None, :]


@triton.jit
def _load_tile(ptr, b, s_b, s_d, s_l, d_idx, l_idx, mask):
    # A tile of a (batch, dim, L) tensor, as fp32, laid out as the channel and step indices broadcast:
    # (BLOCK_L, BLOCK_D) for the forward's offs_d[None, :] and offs_l[:, None], (BLOCK_D, BLOCK_T) for
    # the backward's offs_d[:, None] and offs_l[None, :].
    return tl.load(ptr + b * s_b + d_idx * s_d + l_idx * s_l, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _bias_row(bias_ptr, offs_d, mask_d, HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr):
    # delta_bias of a channel block; zeros without one (then never read: _delta_tile adds it only under
    # HAS_BIAS). Both branches return the same shape, as Triton 3.6 requires.
    if HAS_BIAS:
        return tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0)
    else:
        return tl.zeros([BLOCK_D], dtype=tl.float32)


@triton.jit
def _delta_tile(raw, bias, mask, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    # dt = softplus(delta + bias) of a tile, 0 at padding steps (no decay, no input); `bias` comes
    # broadcast to the tile's layout: bias[None, :] in the forward's, bias[:, None] in the backward's.
    if HAS_BIAS:
        raw = raw + bias
    if SOFTPLUS:
        raw = _softplus(raw)
    return tl.where(mask, raw, 0.0)


@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, y_ptr,
    h_in_ptr, h_out_ptr, segs_ptr, dsum_ptr,
    L, chunk_len, n_chunks, n_segs, dim, dim_per_group,
    s_u_b, s_u_d, s_u_l, s_dt_b, s_dt_d, s_dt_l, s_z_b, s_z_d, s_z_l, s_y_b, s_y_d, s_y_l,
    s_B_b, s_B_g, s_B_n, s_B_l, s_C_b, s_C_g, s_C_n, s_C_l,
    DSTATE: tl.constexpr, N_P2: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    B_CONST: tl.constexpr, C_CONST: tl.constexpr, WRITE_Y: tl.constexpr, SAVE_SEGS: tl.constexpr,
    SEG: tl.constexpr, SUM_DELTA: tl.constexpr, LOAD_H: tl.constexpr,
):
    # Tiles are (BLOCK_L, N_P2, BLOCK_D): channels across threads, time steps and states inside
    # each thread, so the scan over time and the sum over states need no data exchange.
    b, c, g, offs_d, offs_n, mask_d, mask_n, mask_nd, nd_idx = _ld_block(dim, dim_per_group, DSTATE, N_P2, BLOCK_D)
    offs_t = tl.arange(0, BLOCK_L).to(tl.int64)
    d_row = offs_d[None, :]
    A2 = tl.load(A_ptr + nd_idx, mask=mask_nd, other=0.0) * 1.4426950408889634
    state_idx = (b * n_chunks + c) * dim * DSTATE + nd_idx
    if LOAD_H:
        h = tl.load(h_in_ptr + state_idx, mask=mask_nd, other=0.0)
    else:
        h = tl.zeros([N_P2, BLOCK_D], dtype=tl.float32)
    bias = _bias_row(bias_ptr, offs_d, mask_d, HAS_BIAS, BLOCK_D)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0)
    if B_CONST:
        B_nd = tl.load(B_ptr + nd_idx, mask=mask_nd, other=0.0)
    if C_CONST:
        C_nd = tl.load(C_ptr + nd_idx, mask=mask_nd, other=0.0)
    dsum = tl.zeros([BLOCK_D], dtype=tl.float32)

    l_start = c * chunk_len
    l_end = tl.minimum(l_start + chunk_len, L)
    for l0 in range(l_start, l_end, BLOCK_L):
        offs_l, l_col, mask_l, m2 = _ld_steps(l0, offs_t, l_end, mask_d)
        mask_ln = mask_l[:, None] & mask_n[None, :]
        if SAVE_SEGS:
            # The backward starts each of its tiles (segments of SEG steps) from these states.
            if l0 % SEG == 0:
                tl.store(segs_ptr + (b * n_segs + l0 // SEG) * dim * DSTATE + nd_idx, h, mask=mask_nd)
        dt = _delta_tile(_load_tile(delta_ptr, b, s_dt_b, s_dt_d, s_dt_l, d_row, l_col, m2), bias[None, :], m2,
                         HAS_BIAS, SOFTPLUS)
        uu = _load_tile(u_ptr, b, s_u_b, s_u_d, s_u_l, d_row, l_col, m2)
        if SUM_DELTA:
            dsum += tl.sum(dt, axis=0)
        a = tl.exp2(dt[:, None, :] * A2[None, :, :])
        if B_CONST:
            Bt = B_nd[None, :, :]
        else:
            Bt = tl.load(B_ptr + b * s_B_b + g * s_B_g + offs_l[:, None] * s_B_l + offs_n[None, :] * s_B_n,
                         mask=mask_ln, other=0.0).to(tl.float32)[:, :, None]
        x = (dt * uu)[:, None, :] * Bt
        a_cum, x_cum = tl.associative_scan((a, x), 0, _affine_combine)
        hs = a_cum * h[None, :, :] + x_cum
        if WRITE_Y:
            if C_CONST:
                Ct = C_nd[None, :, :]
            else:
                Ct = tl.load(C_ptr + b * s_C_b + g * s_C_g + offs_l[:, None] * s_C_l + offs_n[None, :] * s_C_n,
                             mask=mask_ln, other=0.0).to(tl.float32)[:, :, None]
            yt = tl.sum(hs * Ct, axis=1)
            if HAS_D:
                yt += Dv[None, :] * uu
            if HAS_Z:
                zz = _load_tile(z_ptr, b, s_z_b, s_z_d, s_z_l, d_row, l_col, m2)
                yt = yt * zz * tl.sigmoid(zz)
            tl.store(y_ptr + b * s_y_b + offs_l[:, None] * s_y_l + offs_d[None, :] * s_y_d,
                     yt.to(y_ptr.dtype.element_ty), mask=m2)
        # Padding steps have a = 1 and x = 0, so the last row is the state at l_end - 1.
        h = tl.sum(tl.where(offs_t[:, None, None] == BLOCK_L - 1, hs, 0.0), axis=0)
    tl.store(h_out_ptr + state_idx, h, mask=mask_nd)
    if SUM_DELTA:
        tl.store(dsum_ptr + (b * n_chunks + c) * dim + offs_d, dsum, mask=mask_d)


@triton.jit
def _adjoint_local_kernel(
    delta_ptr, bias_ptr, A_ptr, C_ptr, z_ptr, dy_ptr, gloc_ptr,
    L, chunk_len, n_chunks, dim, dim_per_group,
    s_dt_b, s_dt_d, s_dt_l, s_z_b, s_z_d, s_z_l, s_dy_b, s_dy_d, s_dy_l, s_C_b, s_C_g, s_C_n, s_C_l,
    DSTATE: tl.constexpr, N_P2: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr, C_CONST: tl.constexpr,
):
    # The backward's local-adjoint pass: the gradient each chunk passes to its start state from a zero
    # gradient at its end, G = sum_t (prod_{u <= t} a_u) C_t dy_t over the chunk. The product of the
    # decays a_u = exp(dt_u A) is exp(A S_t), S_t the chunk's dt summed through t, so G is a weighted sum,
    # not a scan; and in the forward's tile layout (channels across threads, time steps and states inside
    # each thread) neither the running sum S nor the sum over time exchanges data between threads.
    # exp(A S_t) <= 1 (A < 0, S_t >= 0): it underflows towards 0 as the product does, never overflows.
    b, c, g, offs_d, offs_n, mask_d, mask_n, mask_nd, nd_idx = _ld_block(dim, dim_per_group, DSTATE, N_P2, BLOCK_D)
    offs_t = tl.arange(0, BLOCK_L).to(tl.int64)
    d_row = offs_d[None, :]
    A2 = tl.load(A_ptr + nd_idx, mask=mask_nd, other=0.0) * 1.4426950408889634
    bias = _bias_row(bias_ptr, offs_d, mask_d, HAS_BIAS, BLOCK_D)
    if C_CONST:
        C_nd = tl.load(C_ptr + nd_idx, mask=mask_nd, other=0.0)
    G = tl.zeros([N_P2, BLOCK_D], dtype=tl.float32)
    S = tl.zeros([BLOCK_D], dtype=tl.float32)
    l_start = c * chunk_len
    l_end = tl.minimum(l_start + chunk_len, L)
    for l0 in range(l_start, l_end, BLOCK_L):
        offs_l, l_col, mask_l, m2 = _ld_steps(l0, offs_t, l_end, mask_d)
        dt = _delta_tile(_load_tile(delta_ptr, b, s_dt_b, s_dt_d, s_dt_l, d_row, l_col, m2), bias[None, :], m2,
                         HAS_BIAS, SOFTPLUS)
        dyg = _load_tile(dy_ptr, b, s_dy_b, s_dy_d, s_dy_l, d_row, l_col, m2)
        if HAS_Z:
            zz = _load_tile(z_ptr, b, s_z_b, s_z_d, s_z_l, d_row, l_col, m2)
            dyg = dyg * zz * tl.sigmoid(zz)
        St = S[None, :] + tl.cumsum(dt, axis=0)
        if C_CONST:
            Ct = C_nd[None, :, :]
        else:
            Ct = tl.load(C_ptr + b * s_C_b + g * s_C_g + offs_l[:, None] * s_C_l + offs_n[None, :] * s_C_n,
                         mask=mask_l[:, None] & mask_n[None, :], other=0.0).to(tl.float32)[:, :, None]
        G += tl.sum(tl.exp2(St[:, None, :] * A2[None, :, :]) * Ct * dyg[:, None, :], axis=0)
        S += tl.sum(dt, axis=0)
    tl.store(gloc_ptr + (b * n_chunks + c) * dim * DSTATE + nd_idx, G, mask=mask_nd)


@triton.jit
def _carry_chunks_kernel(
    A_ptr, dsum_ptr, local_ptr, start_ptr, h0_ptr, out_ptr,
    n_chunks, dim, DSTATE: tl.constexpr, N_P2: tl.constexpr, BLOCK_D: tl.constexpr,
    REVERSE: tl.constexpr, HAS_H0: tl.constexpr,
):
    # Forward: s_0 = h0, s_{c+1} = exp(A S_c) s_c + local_c; start[c] = s_c; out = s_nc.
    # Reverse (adjoint): e_{nc-1} = h0 (dfinal), e_{c-1} = exp(A S_c) e_c + local_c;
    # start[c] = e_c (the gradient reaching the end of chunk c).
    pid = tl.program_id(0)
    n_dblocks = tl.cdiv(dim, BLOCK_D)
    b = (pid // n_dblocks).to(tl.int64)
    offs_d = (pid % n_dblocks) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    offs_n = tl.arange(0, N_P2)
    mask_d = offs_d < dim
    mask_dn = mask_d[:, None] & (offs_n[None, :] < DSTATE)
    A2 = tl.load(A_ptr + offs_d[:, None] * DSTATE + offs_n[None, :], mask=mask_dn, other=0.0) * 1.4426950408889634
    if HAS_H0:
        s = tl.load(h0_ptr + (b * dim + offs_d[:, None]) * DSTATE + offs_n[None, :], mask=mask_dn, other=0.0)
    else:
        s = tl.zeros([BLOCK_D, N_P2], dtype=tl.float32)
    for i in range(0, n_chunks):
        c = n_chunks - 1 - i if REVERSE else i
        base = b * n_chunks + c
        tl.store(start_ptr + (base * dim + offs_d[:, None]) * DSTATE + offs_n[None, :], s, mask=mask_dn)
        S = tl.load(dsum_ptr + base * dim + offs_d, mask=mask_d, other=0.0)
        local = tl.load(local_ptr + (base * dim + offs_d[:, None]) * DSTATE + offs_n[None, :], mask=mask_dn,
                        other=0.0)
        s = tl.exp2(S[:, None] * A2) * s + local
    tl.store(out_ptr + (b * dim + offs_d[:, None]) * DSTATE + offs_n[None, :], s, mask=mask_dn)


@triton.jit
def _state_row(ptr, row, n, s_n, s_l, offs_l, mask_l, offs_d, mask_d, DSTATE: tl.constexpr, CONST: tl.constexpr):
    # B or C of state n, broadcastable over a (BLOCK_D, BLOCK_T) tile: per channel when constant
    # ((dim, d_state)), else per time step (a 1-D row, which crosses shared memory to meet the tile's
    # layout once per state; as a whole tile it would take a thread's registers once per channel).
    # if/else, not an early return: Triton 3.6 types both returns alike even under a constexpr test.
    if CONST:
        return tl.load(ptr + offs_d * DSTATE + n, mask=mask_d, other=0.0)[:, None]
    else:
        return tl.load(ptr + row + n * s_n + offs_l * s_l, mask=mask_l, other=0.0).to(tl.float32)[None, :]


@triton.jit
def _add_state_grad(prod, acc, ptr, row, n, col, offs_l, mask_l, CONST: tl.constexpr):
    # dB or dC of state n from prod (BLOCK_D, BLOCK_T): summed over time into acc
    # (BLOCK_D, N_P2) when constant, else over channels into the program's own copy of the row.
    if CONST:
        acc += tl.where(col == n, tl.sum(prod, axis=1)[:, None], 0.0)
    else:
        ptrs = ptr + row + offs_l
        tl.store(ptrs, tl.load(ptrs, mask=mask_l, other=0.0) + tl.sum(prod, axis=0), mask=mask_l)
    return acc


@triton.jit
def _scan_bwd_kernel(
    u_ptr, delta_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dy_ptr,
    segs_ptr, carry_ptr, du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr,
    dA_part_ptr, dD_part_ptr, dbias_part_ptr, dB_part_ptr, dC_part_ptr, dh0_ptr,
    L, chunk_len, n_chunks, n_segs, dim, dim_per_group, n_groups, batch, n_splits, per_split,
    s_u_b, s_u_d, s_u_l, s_dt_b, s_dt_d, s_dt_l, s_z_b, s_z_d, s_z_l, s_dy_b, s_dy_d, s_dy_l,
    s_B_b, s_B_g, s_B_n, s_B_l, s_C_b, s_C_g, s_C_n, s_C_l, s_o_b, s_o_d, s_o_l,
    DSTATE: tl.constexpr, N_P2: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    B_CONST: tl.constexpr, C_CONST: tl.constexpr, HAS_CARRY: tl.constexpr,
):
    # Tiles are (BLOCK_D, BLOCK_T): time across threads (several steps per thread), channels
    # inside a thread, states one at a time. Per state, the forward and adjoint recurrences of a
    # tile are two scans along time, and the sums over channels for dB and dC stay in-thread.
    # A program owns one chunk of time of one batch row and walks `per_split` channel blocks one
    # after the other. dB and dC of that stretch of time go to the program's own partial copy
    # (one per split, summed afterwards) with plain loads and stores: atomics from every channel
    # block were the backward's bottleneck (RESULTS.md).
    pid = tl.program_id(0)
    c = (pid % n_chunks).to(tl.int64)
    rest = pid // n_chunks
    b = (rest // n_splits).to(tl.int64)
    split = rest % n_splits
    offs_n = tl.arange(0, N_P2)
    offs_t = tl.arange(0, BLOCK_T).to(tl.int64)
    col = offs_n[None, :]
    first = offs_t[None, :] == 0
    l_start = c * chunk_len
    l_end = tl.minimum(l_start + chunk_len, L)
    n_tiles = tl.cdiv(l_end - l_start, BLOCK_T)
    for j in range(0, per_split):
        d0 = (split * per_split + j) * BLOCK_D
        if d0 < dim:
            # One channel block of the chunk, right to left over its tiles.
            g = d0 // dim_per_group
            offs_d = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
            d_col = offs_d[:, None]
            mask_d = offs_d < dim
            dn_idx = offs_d[:, None] * DSTATE + col
            mask_dn = mask_d[:, None] & (col < DSTATE)

            state_idx = (b * n_chunks + c) * dim * DSTATE + dn_idx
            if not HAS_CARRY:
                carry = tl.zeros([BLOCK_D, N_P2], dtype=tl.float32)
            else:
                carry = tl.load(carry_ptr + state_idx, mask=mask_dn, other=0.0)
            bias = _bias_row(bias_ptr, offs_d, mask_d, HAS_BIAS, BLOCK_D)
            if HAS_D:
                Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0)
            dA_acc = tl.zeros([BLOCK_D, N_P2], dtype=tl.float32)
            dB_acc = tl.zeros([BLOCK_D, N_P2], dtype=tl.float32)
            dC_acc = tl.zeros([BLOCK_D, N_P2], dtype=tl.float32)
            dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
            dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
            bc_row = b * s_B_b + g * s_B_g
            cc_row = b * s_C_b + g * s_C_g
            dbc_row = ((split * batch + b) * n_groups + g) * DSTATE * L
            # The previous channel block's loads and stores of this program's dB/dC copy are done.
            tl.debug_barrier()
            for i in range(0, n_tiles):
                l0 = l_start + (n_tiles - 1 - i) * BLOCK_T
                offs_l = l0 + offs_t
                l_row = offs_l[None, :]
                mask_l = offs_l < l_end
                m2 = mask_d[:, None] & mask_l[None, :]
                # Only dt, dt*u and the gated dy live through the state loop; what the end of the tile
                # needs besides is loaded again there (cache hits), as holding it spilled registers.
                dt = _delta_tile(_load_tile(delta_ptr, b, s_dt_b, s_dt_d, s_dt_l, d_col, l_row, m2), bias[:, None], m2,
                                 HAS_BIAS, SOFTPLUS)
                dyg = _load_tile(dy_ptr, b, s_dy_b, s_dy_d, s_dy_l, d_col, l_row, m2)
                if HAS_Z:
                    zz = _load_tile(z_ptr, b, s_z_b, s_z_d, s_z_l, d_col, l_row, m2)
                    dyg = dyg * zz * tl.sigmoid(zz)
                dtu = dt * _load_tile(u_ptr, b, s_u_b, s_u_d, s_u_l, d_col, l_row, m2)
                y_pre = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
                gB_sum = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)  # sum_n g B_n
                gdA_sum = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)  # sum_n g A_n a_t h_{t-1}
                seg_base = (b * n_segs + l0 // BLOCK_T) * dim * DSTATE
                for n in range(0, DSTATE):
                    A_n = tl.load(A_ptr + offs_d * DSTATE + n, mask=mask_d, other=0.0)
                    a = tl.exp2(dt * (A_n * 1.4426950408889634)[:, None])
                    # B and C as rows: as whole tiles they add spills on sm_90 under Triton 3.6
                    # (benchmarks/scan_bwd_ir.py), and more instructions per state.
                    C_n = _state_row(C_ptr, cc_row, n, s_C_n, s_C_l, offs_l, mask_l, offs_d, mask_d, DSTATE, C_CONST)
                    cdy = C_n * dyg
                    carry_n = tl.sum(tl.where(col == n, carry, 0.0), axis=1)
                    B_n = _state_row(B_ptr, bc_row, n, s_B_n, s_B_l, offs_l, mask_l, offs_d, mask_d, DSTATE, B_CONST)
                    x = dtu * B_n
                    h0 = tl.load(segs_ptr + seg_base + offs_d * DSTATE + n, mask=mask_d, other=0.0)
                    a_cum, x_cum = tl.associative_scan((a, x), 1, _affine_combine)
                    hs = a_cum * h0[:, None] + x_cum
                    # Triton reverses the lanes of each operand and result of a reverse scan (96 of this
                    # kernel's 198 shuffles). Two operands instead of three (the next step's decays from a
                    # shifted dt tile) cost more exponentials: 2% slower on Triton 3.9 (RESULTS.md, session 9).
                    ones = tl.full(a.shape, 1.0, tl.float32)
                    _fa, r, cv = tl.associative_scan((a, ones, cdy), 1, _adjoint_combine, reverse=True)
                    gr = cv + r * carry_n[:, None]  # dL/dh_t
                    new = tl.sum(tl.where(first, a * gr, 0.0), axis=1)
                    if HAS_Z:
                        y_pre += hs * C_n
                    gB_sum += gr * B_n
                    p = gr * (hs - x)  # g_t a_t h_{t-1}
                    gdA_sum += p * A_n[:, None]
                    dA_acc += tl.where(col == n, tl.sum(p * dt, axis=1)[:, None], 0.0)
                    dB_acc = _add_state_grad(gr * dtu, dB_acc, dB_ptr, dbc_row + n * L, n, col, offs_l, mask_l,
                                             B_CONST)
                    dC_acc = _add_state_grad(hs * dyg, dC_acc, dC_ptr, dbc_row + n * L, n, col, offs_l, mask_l,
                                             C_CONST)
                    carry = tl.where(col == n, new[:, None], carry)
                o_idx = b * s_o_b + offs_d[:, None] * s_o_d + offs_l[None, :] * s_o_l
                uu = _load_tile(u_ptr, b, s_u_b, s_u_d, s_u_l, d_col, l_row, m2)
                du = gB_sum * dt
                if HAS_D:
                    dD_acc += tl.sum(dyg * uu, axis=1)
                    du += dyg * Dv[:, None]
                    y_pre += Dv[:, None] * uu
                if HAS_Z:
                    dy = _load_tile(dy_ptr, b, s_dy_b, s_dy_d, s_dy_l, d_col, l_row, m2)
                    zz = _load_tile(z_ptr, b, s_z_b, s_z_d, s_z_l, d_col, l_row, m2)
                    sz = tl.sigmoid(zz)
                    dz = dy * y_pre * sz * (1.0 + zz * (1.0 - sz))
                    tl.store(dz_ptr + o_idx, dz.to(dz_ptr.dtype.element_ty), mask=m2)
                ddt = gdA_sum + gB_sum * uu
                if SOFTPLUS:
                    dt_raw = _load_tile(delta_ptr, b, s_dt_b, s_dt_d, s_dt_l, d_col, l_row, m2)
                    if HAS_BIAS:
                        dt_raw = dt_raw + bias[:, None]
                    ddt = ddt * tl.sigmoid(dt_raw)
                ddt = tl.where(m2, ddt, 0.0)
                dbias_acc += tl.sum(ddt, axis=1)
                tl.store(du_ptr + o_idx, du.to(du_ptr.dtype.element_ty), mask=m2)
                tl.store(ddelta_ptr + o_idx, ddt.to(ddelta_ptr.dtype.element_ty), mask=m2)

            part = (b * n_chunks + c) * dim
            tl.store(dA_part_ptr + part * DSTATE + dn_idx, dA_acc, mask=mask_dn)
            tl.store(dD_part_ptr + part + offs_d, dD_acc, mask=mask_d)
            tl.store(dbias_part_ptr + part + offs_d, dbias_acc, mask=mask_d)
            if B_CONST:
                tl.store(dB_part_ptr + part * DSTATE + dn_idx, dB_acc, mask=mask_dn)
            if C_CONST:
                tl.store(dC_part_ptr + part * DSTATE + dn_idx, dC_acc, mask=mask_dn)
            if c == 0:
                tl.store(dh0_ptr + b * dim * DSTATE + dn_idx, carry, mask=mask_dn)


# Forward tiles: block_l steps x block_d channels, one channel per thread (block_d None: 32 per
# warp). Chosen by the sweeps in benchmarks/scan.py on an H100 (RESULTS.md); longer tiles spill.
FWD_TILE = dict(block_l=8, block_d=None, num_warps=1)
# Backward tiles: block_t steps across the threads x block_d channels inside each thread. block_t
# is also the spacing of the states the forward saves for the backward (4 * d_state bytes per
# channel per block_t steps).
# maxnreg caps registers per thread (None: ptxas's choice, 255 at one warp, so 8 warps per SM). A
# cap of 128 with 4 channels and 16 programs per SM was 2-7% faster on three shapes under Triton 3.9
# but lost 10-30% on the grid's batch 16 x dim 1536 (more chunks): not the default (RESULTS.md).
BWD_TILE = dict(block_t=64, block_d=8, num_warps=1, maxnreg=None)
# The backward splits the channel blocks of a chunk over this many programs per SM at most
# (each split adds a partial copy of dB and dC, summed afterwards), within SPLIT_BYTES of copies.
BWD_PROGRAMS_PER_SM = 8
SPLIT_BYTES = 2**30
TARGET_WARPS_PER_SM = 8  # chunking target; 8 beat 16 and 32 on the anchor grid (RESULTS.md)
MIN_CHUNK_TILES = 4
# Shorter sequences run as one chunk. A split saves most of a short call's GPU time (batch 1, dim
# 1024, L 512, chunks of 64 steps: forward+backward 366 -> 104 us of kernels) but costs four more
# launches and five buffers, and such a call is host-bound: timed in alternation, forward+backward
# took 1.02 ms as one chunk and 1.29 ms split at L 512 (0.94 and 1.24 at L 1024; RESULTS.md).
SPLIT_FROM_L = 2048


def _block_d(dim_per_group: int, n_groups: int, block_d: int | None, num_warps: int) -> int:
    if block_d is None:
        block_d = 32 * num_warps  # one channel per thread
    block_d = min(block_d, next_power_of_2(dim_per_group))
    if n_groups > 1:
        # A block of channels must stay inside one group of B/C.
        while dim_per_group % block_d:
            block_d //= 2
    return block_d


def _num_splits(plan: _Plan, device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    programs = BWD_PROGRAMS_PER_SM * sm_count(device)
    return max(1, min(cdiv(programs, plan.n_chunks * plan.batch), plan.max_splits()))


def _strides3(x: Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def _bc_strides(X: Tensor) -> tuple[int, int, int, int]:
    return (0, 0, 0, 0) if X.dim() == 2 else (X.stride(0), X.stride(1), X.stride(2), X.stride(3))


def _tile(default: dict, given: dict) -> dict:
    return {**default, **{k: v for k, v in given.items() if v is not None}}


def _plan(u: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_len: int | None, fwd: dict, bwd: dict) -> _Plan:
    """The plan of a call, built once per shape: planning in Python is a good part of a short call's
    host time (RESULTS.md)."""
    groups = {X.shape[1] for X in (B, C) if X.dim() == 4}
    return _cached_plan(tuple(u.shape), A.shape[1], B.dim() == 2, C.dim() == 2, groups.pop() if groups else 1,
                        chunk_len, tuple(sorted(fwd.items())), tuple(sorted(bwd.items())), u.device)


@functools.lru_cache(maxsize=1024)
def _cached_plan(shape: tuple[int, int, int], N: int, const_b: bool, const_c: bool, G: int, chunk_len: int | None,
                 fwd: tuple, bwd: tuple, device: torch.device) -> _Plan:
    return _Plan(shape, N, const_b, const_c, G, chunk_len, dict(fwd), dict(bwd), device)


class _Plan:
    """Shapes, tiles and chunking of one call, shared by forward and backward (read-only: cached)."""

    def __init__(self, shape: tuple[int, int, int], N: int, const_b: bool, const_c: bool, G: int,
                 chunk_len: int | None, fwd: dict, bwd: dict, device: torch.device) -> None:
        self.batch, self.dim, self.L = shape
        self.N = N
        self.N_P2 = next_power_of_2(self.N)
        self.const_b, self.const_c = const_b, const_c
        self.G = G
        self.dim_per_group = self.dim // self.G
        self.fwd, self.bwd = _tile(FWD_TILE, fwd), _tile(BWD_TILE, bwd)
        for tile in (self.fwd, self.bwd):
            tile["block_d"] = _block_d(self.dim_per_group, self.G, tile["block_d"], tile["num_warps"])
        # Backward tiles start where the forward saved a state: at multiples of block_t, which
        # forward tile starts must hit, and chunks hold whole backward tiles.
        self.seg = self.bwd["block_t"] = max(self.bwd["block_t"], self.fwd["block_l"])
        if chunk_len is None:
            chunk_len = cdiv(self.L, self._num_chunks(device))
        self.chunk_len = max(self.seg, cdiv(chunk_len, self.seg) * self.seg)
        self.n_chunks = max(1, cdiv(self.L, self.chunk_len))
        self.n_segs = max(1, cdiv(self.L, self.seg))

    def max_splits(self) -> int:
        """How many programs may share the channel blocks of one chunk in the backward (each
        split keeps a partial copy of dB and dC)."""
        copy_bytes = 2 * self.batch * self.G * self.N * self.L * 4
        return max(1, min(cdiv(self.dim, self.bwd["block_d"]), SPLIT_BYTES // copy_bytes))

    def _num_chunks(self, device: torch.device) -> int:
        if device.type != "cuda" or self.L < SPLIT_FROM_L:
            return 1
        sms = sm_count(device)
        # Split L only when batch x dim leaves the GPU short of work, into chunks of at least
        # min_chunk steps (each chunk costs one more pass over it and a carry step): for the
        # forward, until TARGET_WARPS_PER_SM; for the backward, until BWD_PROGRAMS_PER_SM once
        # the channel blocks are split as far as memory allows.
        min_chunk = max(MIN_CHUNK_TILES * self.fwd["block_l"], self.seg)
        fwd_programs = self.batch * cdiv(self.dim, self.fwd["block_d"]) * self.fwd["num_warps"]
        wanted = max((TARGET_WARPS_PER_SM * sms) // fwd_programs,
                     cdiv(BWD_PROGRAMS_PER_SM * sms, self.batch * self.max_splits()))
        return max(1, min(wanted, self.L // min_chunk))

    def grid(self, tile: dict) -> tuple[int, int]:
        return (self.batch * cdiv(self.dim, tile["block_d"]), self.n_chunks)

    def meta(self, tile: dict) -> dict:
        return dict(DSTATE=self.N, N_P2=self.N_P2, BLOCK_D=tile["block_d"], B_CONST=self.const_b,
                    C_CONST=self.const_c, num_warps=tile["num_warps"])


def _launch_options(tile: dict) -> dict:
    # maxnreg only where set: a launch option older Triton builds may not know.
    return {"num_warps": tile["num_warps"], **({"maxnreg": tile["maxnreg"]} if tile.get("maxnreg") else {})}


def _states(plan: _Plan, n: int, like: Tensor) -> Tensor:
    return torch.empty(plan.batch, n, plan.dim, plan.N, device=like.device, dtype=torch.float32)


def _fwd_launch(plan: _Plan, u, delta, A, B, C, D, z, delta_bias, softplus, y, h_in, h_out, segs, dsum,
                write_y: bool, sum_delta: bool) -> None:
    # h_in None: every chunk starts from zero (no buffer, no fill).
    launch(_scan_fwd_kernel, plan.grid(plan.fwd),
        u, delta, delta_bias, A, B, C, D, z, y, h_in, h_out, segs, dsum,
        plan.L, plan.chunk_len, plan.n_chunks, plan.n_segs, plan.dim, plan.dim_per_group,
        *_strides3(u), *_strides3(delta), *(_strides3(z) if z is not None else (0, 0, 0)),
        *(_strides3(y) if y is not None else (0, 0, 0)), *_bc_strides(B), *_bc_strides(C),
        HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus, HAS_D=D is not None, HAS_Z=z is not None,
        WRITE_Y=write_y, SAVE_SEGS=segs is not None, SEG=plan.seg, SUM_DELTA=sum_delta, LOAD_H=h_in is not None,
        BLOCK_L=plan.fwd["block_l"], **plan.meta(plan.fwd))


def _scan_forward(plan: _Plan, u, delta, A, B, C, D, z, delta_bias, softplus, h0, save: bool):
    """Returns y, the final state, the states the backward starts its tiles from (when `save`), and
    per-chunk sum(delta)."""
    y = torch.empty(plan.batch, plan.dim, plan.L, device=u.device, dtype=u.dtype)
    dsum = torch.empty(plan.batch, plan.n_chunks, plan.dim, device=u.device, dtype=torch.float32)
    final = torch.empty(plan.batch, plan.dim, plan.N, device=u.device, dtype=torch.float32)
    inputs = (u, delta, A, B, C, D, z, delta_bias, softplus)
    if plan.n_chunks == 1:
        starts = None if h0 is None else h0.view(plan.batch, 1, plan.dim, plan.N)
    else:
        local = _states(plan, plan.n_chunks, u)
        _fwd_launch(plan, *inputs, None, None, local, None, dsum, write_y=False, sum_delta=True)
        starts = _states(plan, plan.n_chunks, u)
        launch(_carry_chunks_kernel, (plan.batch * cdiv(plan.dim, 32),),
            A, dsum, local, starts, h0, final, plan.n_chunks, plan.dim,
            DSTATE=plan.N, N_P2=plan.N_P2, BLOCK_D=32, REVERSE=False, HAS_H0=h0 is not None)
    ends = _states(plan, plan.n_chunks, u)
    segs = _states(plan, plan.n_segs, u) if save else None
    _fwd_launch(plan, *inputs, y, starts, ends, segs, dsum, write_y=True, sum_delta=plan.n_chunks == 1)
    if plan.n_chunks == 1:
        final = ends[:, 0]
    return y, final, segs, dsum


def _adjoint_local_launch(plan: _Plan, delta, delta_bias, A, C, z, dy, softplus, gloc) -> None:
    launch(_adjoint_local_kernel, plan.grid(plan.fwd),
        delta, delta_bias, A, C, z, dy, gloc, plan.L, plan.chunk_len, plan.n_chunks, plan.dim, plan.dim_per_group,
        *_strides3(delta), *(_strides3(z) if z is not None else (0, 0, 0)), *_strides3(dy), *_bc_strides(C),
        DSTATE=plan.N, N_P2=plan.N_P2, BLOCK_D=plan.fwd["block_d"], BLOCK_L=plan.fwd["block_l"],
        HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus, HAS_Z=z is not None, C_CONST=plan.const_c,
        num_warps=plan.fwd["num_warps"])


def _bwd_arguments(plan: _Plan, inputs: tuple, outputs: tuple, carry, splits: int,
                   per_split: int) -> tuple[list, dict]:
    """The backward kernel's runtime arguments and constexprs (shared by the launch and
    `compile_bwd_offline`)."""
    u, delta, A, B, C, D, z, delta_bias, softplus, dy, segs = inputs
    du, ddelta, dz, dB, dC, parts, dD_part, dbias_part, dB_part, dC_part, dh0 = outputs
    args = [u, delta, delta_bias, A, B, C, D, z, dy, segs, carry, du, ddelta, dz, dB, dC,
            parts, dD_part, dbias_part, dB_part, dC_part, dh0,
            plan.L, plan.chunk_len, plan.n_chunks, plan.n_segs, plan.dim, plan.dim_per_group, plan.G,
            plan.batch, splits, per_split,
            *_strides3(u), *_strides3(delta), *(_strides3(z) if z is not None else (0, 0, 0)), *_strides3(dy),
            *_bc_strides(B), *_bc_strides(C), *_strides3(du)]
    meta = {k: v for k, v in plan.meta(plan.bwd).items() if k != "num_warps"}
    constexprs = dict(HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus, HAS_D=D is not None, HAS_Z=z is not None,
                      BLOCK_T=plan.bwd["block_t"], HAS_CARRY=carry is not None, **meta)
    return args, constexprs


def _scan_backward(plan: _Plan, dy, dfinal, u, delta, A, B, C, D, z, delta_bias, softplus, segs, dsum):
    dev = u.device
    du = torch.empty(plan.batch, plan.dim, plan.L, device=dev, dtype=u.dtype)
    ddelta = torch.empty(plan.batch, plan.dim, plan.L, device=dev, dtype=delta.dtype)
    dz = torch.empty(plan.batch, plan.dim, plan.L, device=dev, dtype=z.dtype) if z is not None else None
    n_dblocks = cdiv(plan.dim, plan.bwd["block_d"])
    n_splits = _num_splits(plan, dev)
    per_split = cdiv(n_dblocks, n_splits)
    n_splits = cdiv(n_dblocks, per_split)
    # The per-split copies of dB and dC, zeroed in one allocation (and summed in one reduction below):
    # a short call's host time goes in such small operations (RESULTS.md).
    n_copied = (not plan.const_b) + (not plan.const_c)
    copies = torch.zeros(n_copied, n_splits, plan.batch, plan.G, plan.N, plan.L, device=dev, dtype=torch.float32)
    dB = None if plan.const_b else copies[0]
    dC = None if plan.const_c else copies[n_copied - 1]
    parts = _states(plan, plan.n_chunks, u)
    dD_part = torch.empty(plan.batch, plan.n_chunks, plan.dim, device=dev, dtype=torch.float32)
    dbias_part = torch.empty_like(dD_part)
    dB_part = _states(plan, plan.n_chunks, u) if plan.const_b else None
    dC_part = _states(plan, plan.n_chunks, u) if plan.const_c else None
    dh0 = torch.empty(plan.batch, plan.dim, plan.N, device=dev, dtype=torch.float32)
    if dfinal is not None:  # None: no gradient reaches the final state (no buffer, no fill)
        dfinal = dfinal.float().contiguous()
    inputs = (u, delta, A, B, C, D, z, delta_bias, softplus, dy, segs)
    outputs = (du, ddelta, dz, dB, dC, parts, dD_part, dbias_part, dB_part, dC_part, dh0)

    if plan.n_chunks == 1:
        carry = None if dfinal is None else dfinal.view(plan.batch, 1, plan.dim, plan.N)
    else:
        gloc = _states(plan, plan.n_chunks, u)
        _adjoint_local_launch(plan, delta, delta_bias, A, C, z, dy, softplus, gloc)
        carry = _states(plan, plan.n_chunks, u)
        launch(_carry_chunks_kernel, (plan.batch * cdiv(plan.dim, 32),),
            A, dsum, gloc, carry, dfinal, dh0, plan.n_chunks, plan.dim,
            DSTATE=plan.N, N_P2=plan.N_P2, BLOCK_D=32, REVERSE=True, HAS_H0=dfinal is not None)
    args, constexprs = _bwd_arguments(plan, inputs, outputs, carry, n_splits, per_split)
    launch(_scan_bwd_kernel, (plan.n_chunks * plan.batch * n_splits,), *args, **constexprs, **_launch_options(plan.bwd))
    summed = copies.sum(1) if n_splits > 1 else copies[:, 0]
    dA = _partial_sum(parts)
    dD = _partial_sum(dD_part) if D is not None else None
    dbias = _partial_sum(dbias_part) if delta_bias is not None else None
    dB = _partial_sum(dB_part) if plan.const_b else summed[0]
    dC = _partial_sum(dC_part) if plan.const_c else summed[n_copied - 1]
    return du, ddelta, dA, dB, dC, dD, dz, dbias, dh0


def _partial_sum(parts: Tensor) -> Tensor:
    """(batch, n_chunks, ...) per-program partial sums -> (...); a view when there is one (one batch row
    in one chunk, the usual short call), which saves a reduction launch."""
    return parts[0, 0] if parts.shape[0] * parts.shape[1] == 1 else parts.sum(dim=(0, 1))


def compile_bwd_offline(batch: int = 8, dim: int = 1536, seqlen: int = 2048, d_state: int = 16, *,
                        dtype: torch.dtype = torch.bfloat16, has_carry: bool = True,
                        n_chunks: int = 2, n_splits: int = 64, per_split: int = 3, arch: int = 90,
                        **bwd_tile: int) -> dict:
    """Compile `_scan_bwd_kernel` (the gradient pass) for an NVIDIA GPU of compute capability `arch` on
    any machine (not under TRITON_INTERPRET), as the mixer calls it: u, delta, z, dy and input-dependent B/C (one group)
    in `dtype`, D, delta_bias, softplus. `n_chunks`, `n_splits` and `per_split` only matter where they
    are 1 (a launch makes such ints constants); the defaults are what an H100 runs at the default shape.

    Returns {"registers", "spill_bytes", "shared_bytes", "convert_layout" (ops in the Triton GPU IR),
    "barriers" (bar.sync in the PTX), the same two counted inside the loop over states (the
    innermost loop) as "convert_layout_state_loop" and "barriers_state_loop", "ttgir", "ptx"}.
    """
    from .offline import compile_kernel, ops_by_loop_depth, ptx_by_loop_depth, ptxas_usage

    plan = _Plan((batch, dim, seqlen), d_state, False, False, 1, cdiv(seqlen, n_chunks), {},
                 {k: v for k, v in bwd_tile.items() if v is not None}, torch.device("meta"))

    def empty(*shape: int, dt: torch.dtype = torch.float32) -> Tensor:
        return torch.empty(*shape, device="meta", dtype=dt)

    act = empty(batch, dim, seqlen, dt=dtype)  # u, delta, z, dy and their gradients
    bc = empty(batch, 1, d_state, seqlen, dt=dtype)
    inputs = (act, act, empty(dim, d_state), bc, bc, empty(dim), act, empty(dim), True, act,
              empty(batch, plan.n_segs, dim, d_state))
    states = empty(batch, plan.n_chunks, dim, d_state)
    dbc = empty(1, batch, 1, d_state, seqlen)
    parts = empty(batch, plan.n_chunks, dim)
    outputs = (act, act, act, dbc, dbc, states, parts, parts, None, None, empty(batch, dim, d_state))
    carry = states if has_carry else None
    args, constexprs = _bwd_arguments(plan, inputs, outputs, carry, n_splits, per_split)
    kernel = compile_kernel(_scan_bwd_kernel, args, constexprs, arch=arch, **_launch_options(plan.bwd))
    ttgir, ptx = kernel.asm["ttgir"], kernel.asm["ptx"]
    # The loop over states is the innermost loop: its body sits one level below the deepest scf.for.
    body = max(ops_by_loop_depth(ttgir, "scf.for")) + 1
    converts = ops_by_loop_depth(ttgir, "ttg.convert_layout")
    # LLVM may drop loops that run once (per_split 1): the PTX's innermost loop is the state loop.
    barriers, deepest = ptx_by_loop_depth(ptx, "bar.sync")
    return dict(**ptxas_usage(ptx, arch), shared_bytes=kernel.metadata.shared,
                convert_layout=sum(converts.values()), convert_layout_state_loop=converts.get(body, 0),
                barriers=sum(barriers.values()), barriers_state_loop=barriers.get(deepest, 0), ttgir=ttgir, ptx=ptx)


class SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, h0, chunk_len, fwd_tile, bwd_tile):
        B_in, C_in = B, C
        B = B.unsqueeze(1) if B.dim() == 3 else B
        C = C.unsqueeze(1) if C.dim() == 3 else C
        plan = _plan(u, A, B, C, chunk_len, fwd_tile, bwd_tile)
        A = A.float().contiguous()
        B = B.float().contiguous() if B.dim() == 2 else B
        C = C.float().contiguous() if C.dim() == 2 else C
        D = D.float().contiguous() if D is not None else None
        delta_bias = delta_bias.float().contiguous() if delta_bias is not None else None
        # Outputs without a gradient come to backward as None rather than as zeros autograd would
        # allocate and fill: a final state nobody uses costs nothing.
        ctx.set_materialize_grads(False)
        ctx.plan, ctx.softplus, ctx.has_h0 = plan, softplus, h0 is not None
        if h0 is not None:  # None: a zero start, which the kernels take without a buffer
            h0 = h0.float().contiguous()
        save = any(ctx.needs_input_grad)
        y, final, segs, dsum = _scan_forward(plan, u, delta, A, B, C, D, z, delta_bias, softplus, h0, save)
        ctx.bc_shapes = (B_in.shape, C_in.shape, B_in.dtype, C_in.dtype)
        if save:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, segs, dsum)
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        u, delta, A, B, C, D, z, delta_bias, segs, dsum = ctx.saved_tensors
        plan = ctx.plan
        if dy is None:
            dy = torch.zeros_like(u)
        du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = _scan_backward(
            plan, dy, dfinal, u, delta, A, B, C, D, z, delta_bias, ctx.softplus, segs, dsum)
        b_shape, c_shape, b_dtype, c_dtype = ctx.bc_shapes
        dB = dB.reshape(b_shape).to(b_dtype)
        dC = dC.reshape(c_shape).to(c_dtype)
        return du, ddelta, dA, dB, dC, dD, dz, dbias, None, dh0 if ctx.has_h0 else None, None, None, None


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
    *,
    chunk_len: int | None = None,
    block_d: int | None = None,
    block_l: int | None = None,
    num_warps: int | None = None,
    bwd_block_t: int | None = None,
    bwd_block_d: int | None = None,
    bwd_num_warps: int | None = None,
    bwd_maxnreg: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan on the Triton kernels; same contract as `reference.selective_scan_ref`.

    u, delta, z: (batch, dim, L); A: (dim, d_state); B, C: (batch, n_groups, d_state, L),
    (batch, d_state, L) or (dim, d_state); D, delta_bias: (dim,); initial_state:
    (batch, dim, d_state). `chunk_len` forces the split of L into parallel chunks (default:
    chosen from the GPU's size); `block_l`, `block_d`, `num_warps` set the forward tile and
    `bwd_block_t`, `bwd_block_d`, `bwd_num_warps` the backward's (powers of two); `bwd_maxnreg` caps
    the backward's registers per thread (more programs fit on an SM, at the risk of spills).
    """
    fwd = dict(block_l=block_l, block_d=block_d, num_warps=num_warps)
    bwd = dict(block_t=bwd_block_t, block_d=bwd_block_d, num_warps=bwd_num_warps, maxnreg=bwd_maxnreg)
    y, final = SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                                     chunk_len, fwd, bwd)
    return (y, final) if return_final_state else y
