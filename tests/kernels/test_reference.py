"""Reference ops against the specification: the float64 sequential loop and hand-written math."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import rel_err

from mambaseq.kernels.reference import (
    causal_conv1d_ref,
    causal_conv1d_update_ref,
    selective_scan_chunked,
    selective_scan_ref,
    selective_state_update_ref,
)


def make_scan_inputs(batch, dim, d_state, L, groups=1, const_b=False, const_c=False,
                     dtype=torch.float32, with_state=True):
    # Inputs in `dtype`; A, D, delta_bias and the state in fp32 (float64 when dtype is float64).
    param = torch.float64 if dtype == torch.float64 else torch.float32

    def rnd(*shape, dt=dtype):
        return torch.randn(*shape, dtype=dt)

    return dict(
        u=rnd(batch, dim, L),
        delta=rnd(batch, dim, L) * 0.5,
        A=-torch.rand(dim, d_state, dtype=param) * 4 - 0.1,
        B=rnd(dim, d_state) if const_b else rnd(batch, groups, d_state, L),
        C=rnd(dim, d_state) if const_c else rnd(batch, groups, d_state, L),
        D=rnd(dim, dt=param),
        z=rnd(batch, dim, L),
        delta_bias=rnd(dim, dt=param) * 0.5,
        initial_state=rnd(batch, dim, d_state, dt=param) if with_state else None,
    )


def as64(inputs):
    return {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}


def test_loop_matches_scalar_recurrence(seed):
    # The specification checked against the recurrence written out with Python floats.
    x = make_scan_inputs(1, 1, 2, 4, dtype=torch.float64)
    y, last = selective_scan_ref(**x, return_final_state=True)
    h = [x["initial_state"][0, 0, n].item() for n in range(2)]
    for t in range(4):
        dt = F.softplus(x["delta"][0, 0, t] + x["delta_bias"][0]).item()
        u = x["u"][0, 0, t].item()
        out = 0.0
        for n in range(2):
            h[n] = math.exp(dt * x["A"][0, n].item()) * h[n] + dt * x["B"][0, 0, n, t].item() * u
            out += x["C"][0, 0, n, t].item() * h[n]
        out += x["D"][0].item() * u
        zt = x["z"][0, 0, t].item()
        out *= zt / (1 + math.exp(-zt))
        assert y[0, 0, t].item() == pytest.approx(out, rel=1e-12, abs=1e-12)
    assert last[0, 0].tolist() == pytest.approx(h, rel=1e-12)


@pytest.mark.parametrize("batch,dim,d_state,L",
                         [(1, 4, 4, 1), (2, 8, 16, 37), (2, 6, 8, 130), (1, 16, 4, 257)])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("chunk_size", [1, 16, 128])
def test_chunked_matches_loop_float64(seed, batch, dim, d_state, L, groups, chunk_size):
    x = make_scan_inputs(batch, dim, d_state, L, groups=groups, dtype=torch.float64)
    y_ref, s_ref = selective_scan_ref(**x, return_final_state=True)
    y, s = selective_scan_chunked(**x, return_final_state=True, chunk_size=chunk_size)
    assert rel_err(y, y_ref) < 1e-12
    assert rel_err(s, s_ref) < 1e-12


@pytest.mark.parametrize("const_b,const_c", [(True, False), (False, True), (True, True)])
def test_chunked_constant_bc(seed, const_b, const_c):
    x = make_scan_inputs(2, 8, 4, 45, const_b=const_b, const_c=const_c, dtype=torch.float64)
    y_ref = selective_scan_ref(**x)
    assert rel_err(selective_scan_chunked(**x, chunk_size=8), y_ref) < 1e-12


@pytest.mark.parametrize("drop", ["D", "z", "delta_bias", "initial_state"])
def test_chunked_optional_inputs(seed, drop):
    x = make_scan_inputs(2, 8, 4, 33, dtype=torch.float64)
    x[drop] = None
    assert rel_err(selective_scan_chunked(**x, chunk_size=8), selective_scan_ref(**x)) < 1e-12


def test_no_softplus(seed):
    x = make_scan_inputs(1, 8, 4, 20, dtype=torch.float64)
    x["delta"] = x["delta"].abs()
    x["delta_bias"] = None
    y_ref = selective_scan_ref(**x, delta_softplus=False)
    assert rel_err(selective_scan_chunked(**x, delta_softplus=False, chunk_size=8), y_ref) < 1e-12
    assert rel_err(y_ref, selective_scan_ref(**x)) > 1e-3  # the flag changes the result


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2), (torch.float16, 1e-2)])
def test_low_precision_inputs_against_float64(seed, dtype, tol):
    x = make_scan_inputs(2, 16, 8, 77, groups=2, dtype=dtype)
    y, s = selective_scan_chunked(**x, return_final_state=True, chunk_size=16)
    y_ref, s_ref = selective_scan_ref(**as64(x), return_final_state=True)
    assert y.dtype == dtype and s.dtype == torch.float32
    assert rel_err(y, y_ref) < tol
    assert rel_err(s, s_ref) < 1e-5  # the state accumulates in fp32 whatever the input dtype


@pytest.mark.parametrize("split", [1, 13, 31])
@pytest.mark.parametrize("scan", [selective_scan_ref, selective_scan_chunked])
def test_state_carries_across_calls(seed, split, scan):
    x = make_scan_inputs(2, 8, 4, 32, dtype=torch.float64)
    y_full, s_full = scan(**x, return_final_state=True)
    first = {k: (v[..., :split] if k in ("u", "delta", "z", "B", "C") else v) for k, v in x.items()}
    rest = {k: (v[..., split:] if k in ("u", "delta", "z", "B", "C") else v) for k, v in x.items()}
    y1, s1 = scan(**first, return_final_state=True)
    rest["initial_state"] = s1
    y2, s2 = scan(**rest, return_final_state=True)
    assert rel_err(torch.cat([y1, y2], -1), y_full) < 1e-12
    assert rel_err(s2, s_full) < 1e-12


@pytest.mark.parametrize("groups,L,chunk_size", [(1, 1, 4), (2, 19, 4), (1, 40, 16)])
@pytest.mark.parametrize("const_b,const_c", [(False, False), (True, False), (False, True)])
def test_chunked_gradients_match_loop(seed, groups, L, chunk_size, const_b, const_c):
    x = make_scan_inputs(2, 4, 3, L, groups=groups, const_b=const_b, const_c=const_c, dtype=torch.float64)
    dy = torch.randn(2, 4, L, dtype=torch.float64)
    ds = torch.randn(2, 4, 3, dtype=torch.float64)

    def grads(scan, **kw):
        leaves = {k: v.clone().requires_grad_(True) for k, v in x.items()}
        y, s = scan(**leaves, return_final_state=True, **kw)
        ((y * dy).sum() + (s * ds).sum()).backward()
        return {k: v.grad for k, v in leaves.items()}

    g_ref = grads(selective_scan_ref)
    g = grads(selective_scan_chunked, chunk_size=chunk_size)
    for name in x:
        assert g[name] is not None, name
        assert rel_err(g[name], g_ref[name]) < 1e-10, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_gradients_low_precision(seed, dtype):
    x = make_scan_inputs(2, 8, 4, 50, groups=2, dtype=dtype)
    dy = torch.randn(2, 8, 50, dtype=torch.float64)

    def grads(scan, inputs, **kw):
        leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
        (scan(**leaves, **kw).double() * dy).sum().backward()
        return {k: v.grad for k, v in leaves.items()}

    g = grads(selective_scan_chunked, x, chunk_size=16)
    g_ref = grads(selective_scan_ref, as64(x))
    for name in x:
        assert g[name].dtype == x[name].dtype, name
        assert rel_err(g[name], g_ref[name]) < (1e-5 if dtype == torch.float32 else 2e-2), name


def test_chunked_gradcheck(seed):
    x = make_scan_inputs(1, 2, 2, 7, groups=1, dtype=torch.float64)
    names = list(x)
    leaves = [x[k].clone().requires_grad_(True) for k in names]

    def f(*args):
        y, s = selective_scan_chunked(**dict(zip(names, args, strict=True)), return_final_state=True,
                                      chunk_size=3)
        return y, s

    assert torch.autograd.gradcheck(f, leaves)


def test_rejects_bad_shapes():
    x = make_scan_inputs(2, 8, 4, 10)
    with pytest.raises(ValueError, match="n_groups=3 does not divide dim=8"):
        selective_scan_chunked(**{**x, "B": torch.randn(2, 3, 4, 10), "C": torch.randn(2, 3, 4, 10)})
    with pytest.raises(ValueError, match="initial_state"):
        selective_scan_chunked(**{**x, "initial_state": torch.randn(2, 8, 5)})


def conv_loop(x, weight, bias, initial_state):
    # y_t = sum_k w_k x_{t - (W-1) + k}, written as a loop over taps.
    W = weight.shape[1]
    xp = torch.cat([initial_state, x], -1)
    y = torch.zeros_like(x)
    for t in range(x.shape[-1]):
        for k in range(W):
            y[..., t] += weight[:, k] * xp[..., t + k]
    return y + bias[:, None]


@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("L", [1, 3, 20])
def test_causal_conv1d_matches_loop(seed, width, L):
    x = torch.randn(2, 5, L, dtype=torch.float64)
    w, b = torch.randn(5, width, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    s0 = torch.randn(2, 5, width - 1, dtype=torch.float64)
    y, s = causal_conv1d_ref(x, w, b, activation="silu", initial_state=s0, return_final_state=True)
    assert rel_err(y, F.silu(conv_loop(x, w, b, s0))) < 1e-12
    assert torch.equal(s, torch.cat([s0, x], -1)[..., -(width - 1):])


@pytest.mark.parametrize("width", [2, 4])
def test_conv_update_matches_full_conv(seed, width):
    x = torch.randn(3, 6, 12)
    w, b = torch.randn(6, width), torch.randn(6)
    y_full = causal_conv1d_ref(x, w, b, activation="silu")
    state = torch.zeros(3, 6, width - 1)
    steps = [causal_conv1d_update_ref(x[..., t], state, w, b, activation="silu") for t in range(12)]
    assert rel_err(torch.stack(steps, -1), y_full) < 1e-6


@pytest.mark.parametrize("groups", [1, 2])
def test_state_update_matches_scan(seed, groups):
    x = make_scan_inputs(2, 8, 4, 15, groups=groups)
    y_ref, s_ref = selective_scan_ref(**x, return_final_state=True)
    state = x["initial_state"].clone()
    ys = [selective_state_update_ref(state, x["u"][..., t], x["delta"][..., t], x["A"], x["B"][..., t],
                                     x["C"][..., t], D=x["D"], z=x["z"][..., t], dt_bias=x["delta_bias"])
          for t in range(15)]
    assert rel_err(torch.stack(ys, -1), y_ref) < 1e-5
    assert rel_err(state, s_ref) < 1e-5
