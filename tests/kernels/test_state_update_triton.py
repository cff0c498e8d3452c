"""Triton single-step selective-state update against the reference (in-place state)."""

from __future__ import annotations

import pytest
import torch
from helpers import rel_err

pytest.importorskip("triton")

from mambaseq.kernels.reference import selective_state_update_ref
from mambaseq.kernels.state_update import selective_state_update

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dim,d_state,groups", [(8, 16, 1), (24, 5, 2), (100, 16, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("optional", [True, False])
def test_matches_reference(seed, dim, d_state, groups, dtype, optional):
    batch = 3
    state = torch.randn(batch, dim, d_state, device=DEVICE)
    state_ref = state.clone()
    A = -torch.rand(dim, d_state, device=DEVICE) * 4
    D = torch.randn(dim, device=DEVICE) if optional else None
    bias = torch.randn(dim, device=DEVICE) if optional else None
    for _ in range(3):
        x, dt = torch.randn(batch, dim, device=DEVICE, dtype=dtype), torch.randn(batch, dim, device=DEVICE, dtype=dtype)
        z = torch.randn(batch, dim, device=DEVICE, dtype=dtype) if optional else None
        B = torch.randn(batch, groups, d_state, device=DEVICE, dtype=dtype)
        C = torch.randn(batch, groups, d_state, device=DEVICE, dtype=dtype)
        y = selective_state_update(state, x, dt, A, B, C, D=D, z=z, dt_bias=bias)
        y_ref = selective_state_update_ref(state_ref, x, dt, A, B, C, D=D, z=z, dt_bias=bias)
        assert y.dtype == dtype
        assert rel_err(y, y_ref) < (1e-5 if dtype == torch.float32 else 1e-2)
        assert rel_err(state, state_ref) < 1e-5
