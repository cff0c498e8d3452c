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

Backward recomputes: the forward saves only the state at the start of every chunk
(4 * d_state bytes per channel per chunk). The backward first reruns the forward recurrence to get
the state at the start of every tile (a transient buffer), then walks each chunk's tiles right
to left: it rebuilds the states of the tile, runs the adjoint recurrence
g_t = C_t dy_t + a_{t+1} g_{t+1} as a reverse associative scan, and forms every gradient in the
same pass. Chunks run in parallel the same two-pass way. dB and dC (shared across the channels of
a group) are accumulated with fp32 atomics; dA, dD and d(delta_bias) as per-program partial sums
reduced afterwards.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

LOG2E = math.log2(math.e)


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
def _scan_fwd_kernel(
    u_ptr, delta_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, y_ptr,
    h_in_ptr, h_out_ptr, tiles_ptr, dsum_ptr,
    L, chunk_len, n_chunks, n_tiles_total, dim, dim_per_group,
    s_u_b, s_u_d, s_u_l, s_dt_b, s_dt_d, s_dt_l, s_z_b, s_z_d, s_z_l, s_y_b, s_y_d, s_y_l,
    s_B_b, s_B_g, s_B_n, s_B_l, s_C_b, s_C_g, s_C_n, s_C_l,
    DSTATE: tl.constexpr, N_P2: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    B_CONST: tl.constexpr, C_CONST: tl.constexpr, WRITE_Y: tl.constexpr, SAVE_TILES: tl.constexpr,
    SUM_DELTA: tl.constexpr,
):
    # Tiles are (BLOCK_L, N_P2, BLOCK_D): channels across threads, time steps and states inside
    # each thread, so the scan over time and the sum over states need no data exchange.
    pid_bd = tl.program_id(0)
    c = tl.program_id(1).to(tl.int64)
    n_dblocks = tl.cdiv(dim, BLOCK_D)
    # 64-bit offsets: at 1M-token contexts, offsets into states and inputs pass 2^31.
    b = (pid_bd // n_dblocks).to(tl.int64)
    d0 = (pid_bd % n_dblocks) * BLOCK_D
    g = d0 // dim_per_group
    offs_d = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
    offs_n = tl.arange(0, N_P2)
    offs_t = tl.arange(0, BLOCK_L).to(tl.int64)
    mask_d = offs_d < dim
    mask_n = offs_n < DSTATE
    mask_nd = mask_n[:, None] & mask_d[None, :]
    nd_idx = offs_d[None, :] * DSTATE + offs_n[:, None]

    A2 = tl.load(A_ptr + nd_idx, mask=mask_nd, other=0.0) * 1.4426950408889634
    state_idx = (b * n_chunks + c) * dim * DSTATE + nd_idx
    h = tl.load(h_in_ptr + state_idx, mask=mask_nd, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0)
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
        offs_l = l0 + offs_t
        mask_l = offs_l < l_end
        m2 = mask_l[:, None] & mask_d[None, :]
        mask_ln = mask_l[:, None] & mask_n[None, :]
        if SAVE_TILES:
            tile = l0 // BLOCK_L
            tl.store(tiles_ptr + (b * n_tiles_total + tile) * dim * DSTATE + nd_idx, h, mask=mask_nd)
        dt = tl.load(delta_ptr + b * s_dt_b + offs_l[:, None] * s_dt_l + offs_d[None, :] * s_dt_d,
                     mask=m2, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias[None, :]
        if SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(m2, dt, 0.0)
        uu = tl.load(u_ptr + b * s_u_b + offs_l[:, None] * s_u_l + offs_d[None, :] * s_u_d,
                     mask=m2, other=0.0).to(tl.float32)
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
                zz = tl.load(z_ptr + b * s_z_b + offs_l[:, None] * s_z_l + offs_d[None, :] * s_z_d,
                             mask=m2, other=0.0).to(tl.float32)
                yt = yt * zz * tl.sigmoid(zz)
            tl.store(y_ptr + b * s_y_b + offs_l[:, None] * s_y_l + offs_d[None, :] * s_y_d,
                     yt.to(y_ptr.dtype.element_ty), mask=m2)
        # Padding steps have a = 1 and x = 0, so the last row is the state at l_end - 1.
        h = tl.sum(tl.where(offs_t[:, None, None] == BLOCK_L - 1, hs, 0.0), axis=0)
    tl.store(h_out_ptr + state_idx, h, mask=mask_nd)
    if SUM_DELTA:
        tl.store(dsum_ptr + (b * n_chunks + c) * dim + offs_d, dsum, mask=mask_d)


@triton.jit
def _carry_chunks_kernel(
    A_ptr, dsum_ptr, local_ptr, start_ptr, h0_ptr, out_ptr,
    n_chunks, dim, DSTATE: tl.constexpr, N_P2: tl.constexpr, BLOCK_D: tl.constexpr,
    REVERSE: tl.constexpr,
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
    s = tl.load(h0_ptr + (b * dim + offs_d[:, None]) * DSTATE + offs_n[None, :], mask=mask_dn, other=0.0)
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
def _scan_bwd_kernel(
    u_ptr, delta_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dy_ptr,
    tiles_ptr, carry_ptr, du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr,
    dA_part_ptr, dD_part_ptr, dbias_part_ptr, dB_part_ptr, dC_part_ptr, dh0_ptr, gloc_ptr,
    L, chunk_len, n_chunks, n_tiles_total, dim, dim_per_group, n_groups,
    s_u_b, s_u_d, s_u_l, s_dt_b, s_dt_d, s_dt_l, s_z_b, s_z_d, s_z_l, s_dy_b, s_dy_d, s_dy_l,
    s_B_b, s_B_g, s_B_n, s_B_l, s_C_b, s_C_g, s_C_n, s_C_l, s_o_b, s_o_d, s_o_l,
    DSTATE: tl.constexpr, N_P2: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    B_CONST: tl.constexpr, C_CONST: tl.constexpr, LOCAL_ONLY: tl.constexpr,
):
    # LOCAL_ONLY: from a zero gradient at the chunk end, only the gradient the chunk passes to
    # its start state (k = a_t (C_t dy_t + k_{t+1}) right to left); no states needed.
    pid_bd = tl.program_id(0)
    c = tl.program_id(1).to(tl.int64)
    n_dblocks = tl.cdiv(dim, BLOCK_D)
    # 64-bit offsets: at 1M-token contexts, offsets into states and inputs pass 2^31.
    b = (pid_bd // n_dblocks).to(tl.int64)
    d0 = (pid_bd % n_dblocks) * BLOCK_D
    g = d0 // dim_per_group
    offs_d = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
    offs_n = tl.arange(0, N_P2)
    offs_t = tl.arange(0, BLOCK_L).to(tl.int64)
    mask_d = offs_d < dim
    mask_n = offs_n < DSTATE
    mask_nd = mask_n[:, None] & mask_d[None, :]
    nd_idx = offs_d[None, :] * DSTATE + offs_n[:, None]

    A = tl.load(A_ptr + nd_idx, mask=mask_nd, other=0.0)
    A2 = A * 1.4426950408889634
    state_idx = (b * n_chunks + c) * dim * DSTATE + nd_idx
    if LOCAL_ONLY:
        carry = tl.zeros([N_P2, BLOCK_D], dtype=tl.float32)
    else:
        carry = tl.load(carry_ptr + state_idx, mask=mask_nd, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0)
    if B_CONST:
        B_nd = tl.load(B_ptr + nd_idx, mask=mask_nd, other=0.0)
        dB_acc = tl.zeros([N_P2, BLOCK_D], dtype=tl.float32)
    if C_CONST:
        C_nd = tl.load(C_ptr + nd_idx, mask=mask_nd, other=0.0)
        dC_acc = tl.zeros([N_P2, BLOCK_D], dtype=tl.float32)
    dA_acc = tl.zeros([N_P2, BLOCK_D], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)

    l_start = c * chunk_len
    l_end = tl.minimum(l_start + chunk_len, L)
    n_tiles = tl.cdiv(l_end - l_start, BLOCK_L)
    for i in range(0, n_tiles):
        l0 = l_start + (n_tiles - 1 - i) * BLOCK_L
        offs_l = l0 + offs_t
        mask_l = offs_l < l_end
        m2 = mask_l[:, None] & mask_d[None, :]
        mask_ln = mask_l[:, None] & mask_n[None, :]
        dt_raw = tl.load(delta_ptr + b * s_dt_b + offs_l[:, None] * s_dt_l + offs_d[None, :] * s_dt_d,
                         mask=m2, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt_raw = dt_raw + bias[None, :]
        if SOFTPLUS:
            dt = _softplus(dt_raw)
        else:
            dt = dt_raw
        dt = tl.where(m2, dt, 0.0)
        uu = tl.load(u_ptr + b * s_u_b + offs_l[:, None] * s_u_l + offs_d[None, :] * s_u_d,
                     mask=m2, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + b * s_dy_b + offs_l[:, None] * s_dy_l + offs_d[None, :] * s_dy_d,
                     mask=m2, other=0.0).to(tl.float32)
        if HAS_Z:
            zz = tl.load(z_ptr + b * s_z_b + offs_l[:, None] * s_z_l + offs_d[None, :] * s_z_d,
                         mask=m2, other=0.0).to(tl.float32)
            sz = tl.sigmoid(zz)
            dyg = dy * zz * sz
        else:
            dyg = dy
        if C_CONST:
            Ct = C_nd[None, :, :]
        else:
            Ct = tl.load(C_ptr + b * s_C_b + g * s_C_g + offs_l[:, None] * s_C_l + offs_n[None, :] * s_C_n,
                         mask=mask_ln, other=0.0).to(tl.float32)[:, :, None]
        a = tl.exp2(dt[:, None, :] * A2[None, :, :])
        cdy = Ct * dyg[:, None, :]
        if LOCAL_ONLY:
            k_a, k_x = tl.associative_scan((a, a * cdy), 0, _affine_combine, reverse=True)
            k = k_a * carry[None, :, :] + k_x
            carry = tl.sum(tl.where(offs_t[:, None, None] == 0, k, 0.0), axis=0)
        else:
            if B_CONST:
                Bt = B_nd[None, :, :]
            else:
                Bt = tl.load(B_ptr + b * s_B_b + g * s_B_g + offs_l[:, None] * s_B_l + offs_n[None, :] * s_B_n,
                             mask=mask_ln, other=0.0).to(tl.float32)[:, :, None]
            dtu = dt * uu
            x = dtu[:, None, :] * Bt
            h_start = tl.load(tiles_ptr + (b * n_tiles_total + l0 // BLOCK_L) * dim * DSTATE + nd_idx,
                              mask=mask_nd, other=0.0)
            a_cum, x_cum = tl.associative_scan((a, x), 0, _affine_combine)
            hs = a_cum * h_start[None, :, :] + x_cum
            if HAS_Z:
                y_pre = tl.sum(hs * Ct, axis=1)
                if HAS_D:
                    y_pre += Dv[None, :] * uu
                dz = dy * y_pre * sz * (1.0 + zz * (1.0 - sz))
                tl.store(dz_ptr + b * s_o_b + offs_l[:, None] * s_o_l + offs_d[None, :] * s_o_d,
                         dz.to(dz_ptr.dtype.element_ty), mask=m2)
            du = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32)
            if HAS_D:
                dD_acc += tl.sum(dyg * uu, axis=0)
                du = dyg * Dv[None, :]
            _fa, r, cv = tl.associative_scan((a, tl.full(a.shape, 1.0, tl.float32), cdy), 0, _adjoint_combine,
                                             reverse=True)
            gr = cv + r * carry[None, :, :]  # dL/dh_t
            carry = tl.sum(tl.where(offs_t[:, None, None] == 0, a * gr, 0.0), axis=0)
            decayed = hs - x  # a_t h_{t-1}
            if B_CONST:
                dB_acc += tl.sum(gr * dtu[:, None, :], axis=0)
            else:
                dB_t = tl.sum(gr * dtu[:, None, :], axis=2)
                tl.atomic_add(dB_ptr + ((b * n_groups + g) * DSTATE + offs_n[None, :]) * L + offs_l[:, None],
                              dB_t, mask=mask_ln)
            if C_CONST:
                dC_acc += tl.sum(hs * dyg[:, None, :], axis=0)
            else:
                dC_t = tl.sum(hs * dyg[:, None, :], axis=2)
                tl.atomic_add(dC_ptr + ((b * n_groups + g) * DSTATE + offs_n[None, :]) * L + offs_l[:, None],
                              dC_t, mask=mask_ln)
            ddt = tl.sum(gr * (decayed * A[None, :, :] + uu[:, None, :] * Bt), axis=1)
            du += tl.sum(gr * Bt, axis=1) * dt
            dA_acc += tl.sum(gr * decayed * dt[:, None, :], axis=0)
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(dt_raw)
            ddt = tl.where(m2, ddt, 0.0)
            dbias_acc += tl.sum(ddt, axis=0)
            tl.store(du_ptr + b * s_o_b + offs_l[:, None] * s_o_l + offs_d[None, :] * s_o_d,
                     du.to(du_ptr.dtype.element_ty), mask=m2)
            tl.store(ddelta_ptr + b * s_o_b + offs_l[:, None] * s_o_l + offs_d[None, :] * s_o_d,
                     ddt.to(ddelta_ptr.dtype.element_ty), mask=m2)

    if LOCAL_ONLY:
        tl.store(gloc_ptr + state_idx, carry, mask=mask_nd)
    else:
        part = (b * n_chunks + c) * dim
        tl.store(dA_part_ptr + part * DSTATE + nd_idx, dA_acc, mask=mask_nd)
        tl.store(dD_part_ptr + part + offs_d, dD_acc, mask=mask_d)
        tl.store(dbias_part_ptr + part + offs_d, dbias_acc, mask=mask_d)
        if B_CONST:
            tl.store(dB_part_ptr + part * DSTATE + nd_idx, dB_acc, mask=mask_nd)
        if C_CONST:
            tl.store(dC_part_ptr + part * DSTATE + nd_idx, dC_acc, mask=mask_nd)
        if c == 0:
            tl.store(dh0_ptr + b * dim * DSTATE + nd_idx, carry, mask=mask_nd)


# Tile defaults, chosen by the sweep in benchmarks/scan.py on an H100 (see benchmarks/RESULTS.md).
# Tile defaults, chosen by the sweeps in benchmarks/scan.py on an H100 (see benchmarks/RESULTS.md).
# The forward gains from longer tiles; the backward holds ~10 tile-sized arrays per thread and
# spills beyond 2 steps. block_d None means 32 channels per warp (one per thread).
FWD_TILE = dict(block_l=8, block_d=None, num_warps=1)
BWD_TILE = dict(block_l=2, block_d=None, num_warps=1)
TARGET_WARPS_PER_SM = 8  # chunking target; 8 beat 16 and 32 on the anchor grid (RESULTS.md)
MIN_CHUNK_TILES = 4


def _block_d(dim_per_group: int, n_groups: int, block_d: int | None, num_warps: int) -> int:
    if block_d is None:
        block_d = min(32 * num_warps, triton.next_power_of_2(dim_per_group))  # one channel per thread
        if n_groups > 1:
            # A block of channels must stay inside one group of B/C.
            while dim_per_group % block_d:
                block_d //= 2
    if n_groups > 1 and dim_per_group % block_d:
        raise ValueError(f"block_d={block_d} must divide dim // n_groups = {dim_per_group}")
    return block_d


def _num_chunks(programs: int, num_warps: int, L: int, block_l: int, device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    # Split L only when batch x dim leaves the GPU short of warps, into chunks of at least
    # MIN_CHUNK_TILES tiles (each chunk costs one more pass over it and a carry step).
    wanted = (TARGET_WARPS_PER_SM * sms) // (programs * num_warps)
    return max(1, min(wanted, L // (MIN_CHUNK_TILES * block_l)))


def _strides3(x: Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def _bc_strides(X: Tensor) -> tuple[int, int, int, int]:
    return (0, 0, 0, 0) if X.dim() == 2 else (X.stride(0), X.stride(1), X.stride(2), X.stride(3))


class _Plan:
    """Shapes, tiles and chunking of one call, shared by forward and backward."""

    def __init__(self, u: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_len: int | None,
                 block_d: int | None, block_l: int | None, num_warps: int | None = None) -> None:
        self.batch, self.dim, self.L = u.shape
        self.N = A.shape[1]
        self.N_P2 = triton.next_power_of_2(self.N)
        self.const_b, self.const_c = B.dim() == 2, C.dim() == 2
        groups = {X.shape[1] for X in (B, C) if X.dim() == 4}
        self.G = groups.pop() if groups else 1
        self.dim_per_group = self.dim // self.G
        self.fwd, self.bwd = ({"block_l": block_l or tile["block_l"], "num_warps": num_warps or tile["num_warps"]}
                              for tile in (FWD_TILE, BWD_TILE))
        for tile, default in ((self.fwd, FWD_TILE), (self.bwd, BWD_TILE)):
            tile["block_d"] = _block_d(self.dim_per_group, self.G, block_d or default["block_d"], tile["num_warps"])
        self.block_l = max(self.fwd["block_l"], self.bwd["block_l"])  # chunks hold whole tiles of both
        if chunk_len is None:
            programs = self.batch * triton.cdiv(self.dim, self.fwd["block_d"])
            n_chunks = _num_chunks(programs, self.fwd["num_warps"], self.L, self.block_l, u.device)
            chunk_len = triton.cdiv(self.L, n_chunks)
        self.chunk_len = max(self.block_l, triton.cdiv(chunk_len, self.block_l) * self.block_l)
        self.n_chunks = max(1, triton.cdiv(self.L, self.chunk_len))
        self.n_tiles = max(1, triton.cdiv(self.L, self.bwd["block_l"]))  # tiles whose start states backward uses

    def grid(self, tile: dict) -> tuple[int, int]:
        return (self.batch * triton.cdiv(self.dim, tile["block_d"]), self.n_chunks)

    def meta(self, tile: dict, block_l: int | None = None) -> dict:
        return dict(DSTATE=self.N, N_P2=self.N_P2, BLOCK_D=tile["block_d"], BLOCK_L=block_l or tile["block_l"],
                    B_CONST=self.const_b, C_CONST=self.const_c, num_warps=tile["num_warps"])


def _states(plan: _Plan, n: int, like: Tensor, zero: bool = True) -> Tensor:
    make = torch.zeros if zero else torch.empty
    return make(plan.batch, n, plan.dim, plan.N, device=like.device, dtype=torch.float32)


def _fwd_launch(plan: _Plan, u, delta, A, B, C, D, z, delta_bias, softplus, y, h_in, h_out, tiles, dsum,
                write_y: bool, save_tiles: bool, sum_delta: bool) -> None:
    _scan_fwd_kernel[plan.grid(plan.fwd)](
        u, delta, delta_bias, A, B, C, D, z, y, h_in, h_out, tiles, dsum,
        plan.L, plan.chunk_len, plan.n_chunks, plan.n_tiles, plan.dim, plan.dim_per_group,
        *_strides3(u), *_strides3(delta), *(_strides3(z) if z is not None else (0, 0, 0)),
        *(_strides3(y) if y is not None else (0, 0, 0)), *_bc_strides(B), *_bc_strides(C),
        HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus, HAS_D=D is not None, HAS_Z=z is not None,
        WRITE_Y=write_y, SAVE_TILES=save_tiles, SUM_DELTA=sum_delta,
        **plan.meta(plan.fwd, plan.bwd["block_l"] if save_tiles else None))


def _scan_forward(plan: _Plan, u, delta, A, B, C, D, z, delta_bias, softplus, h0):
    """Returns y, the final state, the state at the start of every chunk, and per-chunk sum(delta)."""
    y = torch.empty(plan.batch, plan.dim, plan.L, device=u.device, dtype=u.dtype)
    dsum = torch.empty(plan.batch, plan.n_chunks, plan.dim, device=u.device, dtype=torch.float32)
    final = torch.empty(plan.batch, plan.dim, plan.N, device=u.device, dtype=torch.float32)
    inputs = (u, delta, A, B, C, D, z, delta_bias, softplus)
    if plan.n_chunks == 1:
        starts = h0.view(plan.batch, 1, plan.dim, plan.N)
    else:
        local = _states(plan, plan.n_chunks, u, zero=False)
        _fwd_launch(plan, *inputs, None, _states(plan, plan.n_chunks, u), local, None, dsum,
                    write_y=False, save_tiles=False, sum_delta=True)
        starts = _states(plan, plan.n_chunks, u, zero=False)
        _carry_chunks_kernel[(plan.batch * triton.cdiv(plan.dim, 32),)](
            A, dsum, local, starts, h0, final, plan.n_chunks, plan.dim,
            DSTATE=plan.N, N_P2=plan.N_P2, BLOCK_D=32, REVERSE=False)
    ends = _states(plan, plan.n_chunks, u, zero=False)
    _fwd_launch(plan, *inputs, y, starts, ends, None, dsum, write_y=True, save_tiles=False,
                sum_delta=plan.n_chunks == 1)
    if plan.n_chunks == 1:
        final = ends[:, 0]
    return y, final, starts, dsum


def _scan_backward(plan: _Plan, dy, dfinal, u, delta, A, B, C, D, z, delta_bias, softplus, starts, dsum):
    dev = u.device
    inputs = (u, delta, A, B, C, D, z, delta_bias, softplus)
    # Recompute the state at the start of every tile from the saved chunk-start states.
    tiles = _states(plan, plan.n_tiles, u, zero=False)
    _fwd_launch(plan, *inputs, None, starts, _states(plan, plan.n_chunks, u, zero=False), tiles, dsum,
                write_y=False, save_tiles=True, sum_delta=False)
    du = torch.empty(plan.batch, plan.dim, plan.L, device=dev, dtype=u.dtype)
    ddelta = torch.empty(plan.batch, plan.dim, plan.L, device=dev, dtype=delta.dtype)
    dz = torch.empty(plan.batch, plan.dim, plan.L, device=dev, dtype=z.dtype) if z is not None else None
    dB = None if plan.const_b else torch.zeros(plan.batch, plan.G, plan.N, plan.L, device=dev, dtype=torch.float32)
    dC = None if plan.const_c else torch.zeros(plan.batch, plan.G, plan.N, plan.L, device=dev, dtype=torch.float32)
    parts = _states(plan, plan.n_chunks, u, zero=False)
    dD_part = torch.empty(plan.batch, plan.n_chunks, plan.dim, device=dev, dtype=torch.float32)
    dbias_part = torch.empty_like(dD_part)
    dB_part = _states(plan, plan.n_chunks, u, zero=False) if plan.const_b else None
    dC_part = _states(plan, plan.n_chunks, u, zero=False) if plan.const_c else None
    dh0 = torch.empty(plan.batch, plan.dim, plan.N, device=dev, dtype=torch.float32)
    if dfinal is None:
        dfinal = torch.zeros(plan.batch, plan.dim, plan.N, device=dev, dtype=torch.float32)
    dfinal = dfinal.float().contiguous()
    flags = dict(HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus, HAS_D=D is not None, HAS_Z=z is not None,
                 **plan.meta(plan.bwd))

    def launch(carry, local_only, gloc=None):
        _scan_bwd_kernel[plan.grid(plan.bwd)](
            u, delta, delta_bias, A, B, C, D, z, dy, tiles, carry, du, ddelta, dz, dB, dC,
            parts, dD_part, dbias_part, dB_part, dC_part, dh0, gloc,
            plan.L, plan.chunk_len, plan.n_chunks, plan.n_tiles, plan.dim, plan.dim_per_group, plan.G,
            *_strides3(u), *_strides3(delta), *(_strides3(z) if z is not None else (0, 0, 0)), *_strides3(dy),
            *_bc_strides(B), *_bc_strides(C), *_strides3(du), LOCAL_ONLY=local_only, **flags)

    if plan.n_chunks == 1:
        carry = dfinal.view(plan.batch, 1, plan.dim, plan.N)
    else:
        gloc = _states(plan, plan.n_chunks, u, zero=False)
        launch(None, True, gloc)
        carry = _states(plan, plan.n_chunks, u, zero=False)
        _carry_chunks_kernel[(plan.batch * triton.cdiv(plan.dim, 32),)](
            A, dsum, gloc, carry, dfinal, torch.empty_like(dfinal), plan.n_chunks, plan.dim,
            DSTATE=plan.N, N_P2=plan.N_P2, BLOCK_D=32, REVERSE=True)
    launch(carry, False)
    dA = parts.sum(dim=(0, 1))
    dD = dD_part.sum(dim=(0, 1)) if D is not None else None
    dbias = dbias_part.sum(dim=(0, 1)) if delta_bias is not None else None
    dB = dB_part.sum(dim=(0, 1)) if plan.const_b else dB
    dC = dC_part.sum(dim=(0, 1)) if plan.const_c else dC
    return du, ddelta, dA, dB, dC, dD, dz, dbias, dh0


class SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, h0, chunk_len, block_d, block_l, num_warps):
        B_in, C_in = B, C
        B = B.unsqueeze(1) if B.dim() == 3 else B
        C = C.unsqueeze(1) if C.dim() == 3 else C
        plan = _Plan(u, A, B, C, chunk_len, block_d, block_l, num_warps)
        A = A.float().contiguous()
        B = B.float().contiguous() if B.dim() == 2 else B
        C = C.float().contiguous() if C.dim() == 2 else C
        D = D.float().contiguous() if D is not None else None
        delta_bias = delta_bias.float().contiguous() if delta_bias is not None else None
        ctx.plan, ctx.softplus, ctx.has_h0 = plan, softplus, h0 is not None
        if h0 is None:
            h0 = torch.zeros(plan.batch, plan.dim, plan.N, device=u.device, dtype=torch.float32)
        h0 = h0.float().contiguous()
        y, final, starts, dsum = _scan_forward(plan, u, delta, A, B, C, D, z, delta_bias, softplus, h0)
        ctx.bc_shapes = (B_in.shape, C_in.shape, B_in.dtype, C_in.dtype)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, starts, dsum)
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        u, delta, A, B, C, D, z, delta_bias, starts, dsum = ctx.saved_tensors
        plan = ctx.plan
        if dy is None:
            dy = torch.zeros_like(u)
        du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = _scan_backward(
            plan, dy, dfinal, u, delta, A, B, C, D, z, delta_bias, ctx.softplus, starts, dsum)
        b_shape, c_shape, b_dtype, c_dtype = ctx.bc_shapes
        dB = dB.reshape(b_shape).to(b_dtype)
        dC = dC.reshape(c_shape).to(c_dtype)
        return du, ddelta, dA, dB, dC, dD, dz, dbias, None, dh0 if ctx.has_h0 else None, None, None, None, None


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
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan on the Triton kernels; same contract as `reference.selective_scan_ref`.

    u, delta, z: (batch, dim, L); A: (dim, d_state); B, C: (batch, n_groups, d_state, L),
    (batch, d_state, L) or (dim, d_state); D, delta_bias: (dim,); initial_state:
    (batch, dim, d_state). `chunk_len` forces the split of L into parallel chunks (default:
    chosen from the GPU's size); `block_d`, `block_l`, `num_warps` set the tile.
    """
    y, final = SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                                     chunk_len, block_d, block_l, num_warps)
    return (y, final) if return_final_state else y
