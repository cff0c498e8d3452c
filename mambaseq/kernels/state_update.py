"""Single-step selective-state update in Triton (decoding); same contract as
`reference.selective_state_update_ref`:

    state: (batch, dim, d_state) fp32, updated in place; x, dt, z: (batch, dim);
    A: (dim, d_state); B, C: (batch, n_groups, d_state) or (batch, d_state); D, dt_bias: (dim,)

    dt = softplus(dt + dt_bias); state = exp(dt A) state + dt x B; y = <C, state> + D x; y *= silu(z)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .device import cdiv, next_power_of_2
from .launch import launch


@triton.jit
def _state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr,
    dim, dim_per_group, s_st_b, s_st_d, s_st_n, s_x_b, s_x_d, s_dt_b, s_dt_d, s_z_b, s_z_d,
    s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n,
    DSTATE: tl.constexpr, N_P2: tl.constexpr, BLOCK_D: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, N_P2)
    mask_d = offs_d < dim
    mask_dn = mask_d[:, None] & (offs_n[None, :] < DSTATE)
    g = offs_d // dim_per_group  # per channel: a block may straddle groups
    st_ptrs = state_ptr + b * s_st_b + offs_d[:, None] * s_st_d + offs_n[None, :] * s_st_n
    h = tl.load(st_ptrs, mask=mask_dn, other=0.0)
    x = tl.load(x_ptr + b * s_x_b + offs_d * s_x_d, mask=mask_d, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + b * s_dt_b + offs_d * s_dt_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
    A = tl.load(A_ptr + offs_d[:, None] * DSTATE + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + b * s_B_b + g[:, None] * s_B_g + offs_n[None, :] * s_B_n, mask=mask_dn,
                 other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + b * s_C_b + g[:, None] * s_C_g + offs_n[None, :] * s_C_n, mask=mask_dn,
                 other=0.0).to(tl.float32)
    h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * Bv
    tl.store(st_ptrs, h, mask=mask_dn)
    y = tl.sum(h * Cv, axis=1)
    if HAS_D:
        y += tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32) * x
    if HAS_Z:
        z = tl.load(z_ptr + b * s_z_b + offs_d * s_z_d, mask=mask_d, other=0.0).to(tl.float32)
        y = y * z * tl.sigmoid(z)
    tl.store(y_ptr + b * dim + offs_d, y.to(y_ptr.dtype.element_ty), mask=mask_d)


def selective_state_update(
    state: Tensor,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = True,
) -> Tensor:
    """One decoding step of the selective scan on Triton; updates `state` (fp32) in place.

    state: (batch, dim, d_state); x, dt, z: (batch, dim); A: (dim, d_state);
    B, C: (batch, n_groups, d_state) or (batch, d_state); D, dt_bias: (dim,). Returns y (batch, dim).
    """
    if state.dtype != torch.float32:
        raise ValueError(f"state must be fp32, got {state.dtype}")
    batch, dim = x.shape
    N = A.shape[1]
    B = B.unsqueeze(1) if B.dim() == 2 else B
    C = C.unsqueeze(1) if C.dim() == 2 else C
    A = A.float().contiguous()
    y = torch.empty(batch, dim, device=x.device, dtype=x.dtype)
    block = min(64, next_power_of_2(dim))
    zs = z.stride() if z is not None else (0, 0)
    launch(_state_update_kernel, (batch, cdiv(dim, block)),
        state, x, dt, A, B, C, D, z, dt_bias, y, dim, dim // B.shape[1], *state.stride(), *x.stride(),
        *dt.stride(), *zs, *B.stride(), *C.stride(),
        DSTATE=N, N_P2=next_power_of_2(N), BLOCK_D=block, HAS_D=D is not None, HAS_Z=z is not None,
        HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus)
    return y
