"""Triton causal conv1d (forward, backward, decode update) against the PyTorch reference.

Runs under TRITON_INTERPRET=1 on a CPU-only machine (conftest), on CUDA where there is one.
"""

from __future__ import annotations

import pytest
import torch
from helpers import rel_err

pytest.importorskip("triton")

from mambaseq.kernels.conv1d import causal_conv1d, causal_conv1d_update
from mambaseq.kernels.reference import causal_conv1d_ref, causal_conv1d_update_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("L", [1, 2, 37, 300])
@pytest.mark.parametrize("silu,with_bias,with_state", [(True, True, True), (False, False, False), (True, False, True)])
def test_forward_and_gradients_match_reference(seed, width, L, silu, with_bias, with_state):
    batch, dim = 2, 20
    x = torch.randn(batch, dim, L, device=DEVICE)
    w = torch.randn(dim, width, device=DEVICE)
    b = torch.randn(dim, device=DEVICE) if with_bias else None
    s0 = torch.randn(batch, dim, width - 1, device=DEVICE) if with_state else None
    act = "silu" if silu else None
    inputs = {k: v for k, v in dict(x=x, weight=w, bias=b, initial_state=s0).items() if v is not None}
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    ref_leaves = {k: v.double().requires_grad_(True) for k, v in inputs.items()}
    y, fin = causal_conv1d(**leaves, activation=act, return_final_state=True)
    y_ref, fin_ref = causal_conv1d_ref(**ref_leaves, activation=act, return_final_state=True)
    assert rel_err(y, y_ref) < 1e-5
    assert torch.equal(fin.double(), fin_ref)
    dy, dfin = torch.randn_like(y_ref), torch.randn_like(fin_ref)
    ((y.double() * dy).sum() + (fin.double() * dfin).sum()).backward()
    ((y_ref * dy).sum() + (fin_ref * dfin).sum()).backward()
    for name in inputs:
        assert rel_err(leaves[name].grad, ref_leaves[name].grad) < 1e-5, name


def test_strided_input_view(seed):
    xz = torch.randn(2, 33, 16, device=DEVICE).transpose(1, 2)  # (batch, 2*dim, L), stride 1 on channels
    x = xz[:, :8]
    w, b = torch.randn(8, 4, device=DEVICE), torch.randn(8, device=DEVICE)
    assert rel_err(causal_conv1d(x, w, b, "silu"), causal_conv1d_ref(x.double(), w.double(), b.double(), "silu")) < 1e-5


@pytest.mark.parametrize("width", [2, 3, 4])
def test_update_matches_reference(seed, width):
    batch, dim = 3, 40
    state = torch.randn(batch, dim, width - 1, device=DEVICE)
    state_ref = state.clone()
    w, b = torch.randn(dim, width, device=DEVICE), torch.randn(dim, device=DEVICE)
    for _ in range(3):
        x = torch.randn(batch, dim, device=DEVICE)
        y = causal_conv1d_update(x, state, w, b, "silu")
        y_ref = causal_conv1d_update_ref(x, state_ref, w, b, "silu")
        assert rel_err(y, y_ref) < 1e-5
        assert torch.equal(state, state_ref)
