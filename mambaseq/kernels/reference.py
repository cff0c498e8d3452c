"""Plain PyTorch reference ops: the specification of every kernel, and the CPU path.

Layout (channel-major, as the model produces it after its input projection):

    u, delta, z:        (batch, dim, L)
    A:                  (dim, d_state)                       fp32, negative real
    B, C:               (batch, n_groups, d_state, L)        input-dependent ("selective")
                        (batch, d_state, L)                  the same with one group
                        (dim, d_state)                       constant over time
    D, delta_bias:      (dim,)                               fp32
    initial_state,
    final_state:        (batch, dim, d_state)                fp32 (float64 with float64 inputs)

Recurrence per channel d and state n (zero-order hold on A, Euler on B, as in the seed paper):

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t = <C_t, h_t> + D * u_t,      then y_t *= silu(z_t) when z is given,

with delta = softplus(delta + delta_bias) when delta_softplus is set. Channel d reads group
d // (dim // n_groups) of B and C. All accumulation happens in fp32 (or float64); y comes back in
u's dtype.

`selective_scan_ref` is the sequential loop (the specification). `selective_scan_chunked` gives
the same result in a few hundred vectorised steps instead of L, fast enough to train small
models on a CPU; autograd differentiates both.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class _ScanInputs(NamedTuple):
    u: Tensor  # (batch, dim, L) compute dtype
    delta: Tensor  # (batch, dim, L) compute dtype, after bias and softplus
    A: Tensor  # (dim, d_state)
    B: Tensor  # (batch, G, d_state, L) or (dim, d_state)
    C: Tensor
    h0: Tensor  # (batch, dim, d_state)
    n_groups: int


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _check_bc(name: str, X: Tensor, batch: int, dim: int, d_state: int, L: int) -> Tensor:
    if X.dim() == 2:
        if X.shape != (dim, d_state):
            raise ValueError(f"{name}: constant form must be (dim, d_state)=({dim}, {d_state}), "
                             f"got {tuple(X.shape)}")
        return X
    if X.dim() == 3:
        X = X.unsqueeze(1)
    if X.dim() != 4 or X.shape[0] != batch or X.shape[2] != d_state or X.shape[3] != L:
        raise ValueError(f"{name}: expected (batch, n_groups, d_state, L)=({batch}, G, {d_state}, {L}), "
                         f"got {tuple(X.shape)}")
    if dim % X.shape[1] != 0:
        raise ValueError(f"{name}: n_groups={X.shape[1]} does not divide dim={dim}")
    return X


def _prepare(u, delta, A, B, C, delta_bias, delta_softplus, initial_state) -> _ScanInputs:
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (batch, dim, L); got {tuple(u.shape)} and "
                         f"{tuple(delta.shape)}")
    batch, dim, L = u.shape
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (dim, d_state) with dim={dim}, got {tuple(A.shape)}")
    d_state = A.shape[1]
    B = _check_bc("B", B, batch, dim, d_state, L)
    C = _check_bc("C", C, batch, dim, d_state, L)
    groups = {X.shape[1] for X in (B, C) if X.dim() == 4}
    if len(groups) > 1:
        raise ValueError(f"B and C must have the same number of groups, got {sorted(groups)}")
    dtype = _compute_dtype(u)
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    if initial_state is None:
        h0 = u.new_zeros(batch, dim, d_state, dtype=dtype)
    else:
        if initial_state.shape != (batch, dim, d_state):
            raise ValueError(f"initial_state must be (batch, dim, d_state)=({batch}, {dim}, {d_state}), "
                             f"got {tuple(initial_state.shape)}")
        h0 = initial_state.to(dtype)
    return _ScanInputs(u.to(dtype), delta, A.to(dtype), B.to(dtype), C.to(dtype), h0,
                       groups.pop() if groups else 1)


def _finish(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None, out_dtype: torch.dtype) -> Tensor:
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(out_dtype)


def selective_scan_ref(
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
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan as a sequential loop over time: the specification (float64-capable).

    u, delta, z: (batch, dim, L); A: (dim, d_state); B, C: (batch, n_groups, d_state, L) or
    (dim, d_state); D, delta_bias: (dim,); initial_state: (batch, dim, d_state).
    Returns y: (batch, dim, L) in u.dtype, and final_state: (batch, dim, d_state) when asked.
    """
    p = _prepare(u, delta, A, B, C, delta_bias, delta_softplus, initial_state)
    dim = u.shape[1]
    per_group = dim // p.n_groups

    def at_step(X: Tensor, t: int) -> Tensor:  # -> (batch, dim, d_state) or (dim, d_state)
        return X if X.dim() == 2 else X[..., t].repeat_interleave(per_group, dim=1)

    h = p.h0
    ys = []
    for t in range(u.shape[2]):
        decay = torch.exp(p.delta[:, :, t, None] * p.A)
        h = decay * h + (p.delta[:, :, t] * p.u[:, :, t])[..., None] * at_step(p.B, t)
        ys.append((h * at_step(p.C, t)).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else p.u.new_zeros(p.u.shape)
    y = _finish(y, p.u, D, z, u.dtype)
    return (y, h) if return_final_state else y


def _chunked_scan(p: _ScanInputs, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Core of the chunked scan on prepared inputs: returns (y without D/z, final_state).

    The sequence is cut into nc chunks of T steps. Pass 1 scans every chunk from a zero state,
    all chunks at once; the chunk-end states then carry the true state across chunks (nc small
    steps, using the chunk's total decay exp(A * sum(delta))); pass 2 repeats the T steps from the
    true chunk-start states and reads out y. Python-level steps: 2T + nc instead of L.
    """
    batch, dim, L = p.u.shape
    N = p.A.shape[1]
    G = p.n_groups
    dg = dim // G
    T = max(1, min(chunk_size, L))
    nc = math.ceil(L / T)
    pad = nc * T - L
    delta, u, B, C = p.delta, p.u, p.B, p.C
    if pad:
        # delta = 0 on padding: decay 1 and no input, so the state passes through unchanged.
        delta, u = F.pad(delta, (0, pad)), F.pad(u, (0, pad))
        B = B if B.dim() == 2 else F.pad(B, (0, pad))
        C = C if C.dim() == 2 else F.pad(C, (0, pad))

    def by_step(x: Tensor) -> Tensor:  # (batch, dim, nc*T) -> (T, batch, G, nc, dg)
        return x.reshape(batch, G, dg, nc, T).permute(4, 0, 1, 3, 2)

    def bc_by_step(X: Tensor) -> Tensor:  # (batch, G, N, nc*T) -> (T, batch, G, nc, N)
        return X.reshape(batch, G, N, nc, T).permute(4, 0, 1, 3, 2)

    dl = by_step(delta)
    du = by_step(delta * u)
    Ag = p.A.view(1, G, 1, dg, N)
    Bs = None if B.dim() == 2 else bc_by_step(B).unsqueeze(-2)  # (T, b, G, nc, 1, N)
    B_const = B.view(1, G, 1, dg, N) if B.dim() == 2 else None
    Cs = None if C.dim() == 2 else bc_by_step(C).unsqueeze(-1)  # (T, b, G, nc, N, 1)
    C_const = C.view(1, G, 1, dg, N) if C.dim() == 2 else None

    decays, inputs = [], []
    h = None
    for t in range(T):
        decay = torch.exp(dl[t].unsqueeze(-1) * Ag)
        inp = du[t].unsqueeze(-1) * (Bs[t] if Bs is not None else B_const)
        h = inp if h is None else torch.addcmul(inp, decay, h)
        decays.append(decay)
        inputs.append(inp)

    chunk_decay = torch.exp(dl.sum(0).unsqueeze(-1) * Ag)  # (batch, G, nc, dg, N)
    carried = p.h0.view(batch, G, dg, N)
    starts = []
    for c in range(nc):
        starts.append(carried)
        carried = torch.addcmul(h[:, :, c], chunk_decay[:, :, c], carried)
    h = torch.stack(starts, dim=2)

    ys = []
    for t in range(T):
        h = torch.addcmul(inputs[t], decays[t], h)
        ys.append(torch.matmul(h, Cs[t]).squeeze(-1) if Cs is not None else (h * C_const).sum(-1))
    y = torch.stack(ys, dim=-1)  # (batch, G, nc, dg, T)
    y = y.permute(0, 1, 3, 2, 4).reshape(batch, dim, nc * T)[..., :L]
    return y, carried.reshape(batch, dim, N)


def selective_scan_chunked(
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
    chunk_size: int = 128,
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan, chunked over time (same signature and result as `selective_scan_ref`).

    u, delta, z: (batch, dim, L); A: (dim, d_state); B, C: (batch, n_groups, d_state, L) or
    (dim, d_state); D, delta_bias: (dim,); initial_state: (batch, dim, d_state).
    """
    p = _prepare(u, delta, A, B, C, delta_bias, delta_softplus, initial_state)
    if u.shape[2] == 0:
        y, last = p.u.new_zeros(p.u.shape), p.h0
    else:
        y, last = _chunked_scan(p, chunk_size)
    y = _finish(y, p.u, D, z, u.dtype)
    return (y, last) if return_final_state else y


def causal_conv1d_ref(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: str | None = None,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Causal depthwise conv1d: y_t = sum_k weight[:, k] * x_{t - (width-1) + k} + bias.

    x: (batch, dim, L); weight: (dim, width); bias: (dim,); activation: None or "silu";
    initial_state: (batch, dim, width - 1), the inputs just before x (zeros when None).
    Returns y: (batch, dim, L) in x.dtype and, when asked, final_state: (batch, dim, width - 1),
    the last width - 1 inputs (what a following call takes as initial_state).
    """
    if activation not in (None, "silu"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    batch, dim, _L = x.shape
    width = weight.shape[-1]
    weight = weight.reshape(dim, width)
    dtype = _compute_dtype(x)
    if initial_state is None:
        initial_state = x.new_zeros(batch, dim, width - 1)
    elif initial_state.shape != (batch, dim, width - 1):
        raise ValueError(f"initial_state must be (batch, dim, width-1)=({batch}, {dim}, {width - 1}), "
                         f"got {tuple(initial_state.shape)}")
    xp = torch.cat([initial_state.to(dtype), x.to(dtype)], dim=-1)
    y = F.conv1d(xp, weight.to(dtype).unsqueeze(1), None if bias is None else bias.to(dtype), groups=dim)
    if activation == "silu":
        y = F.silu(y)
    y = y.to(x.dtype)
    if not return_final_state:
        return y
    return y, xp[..., xp.shape[-1] - (width - 1):].to(x.dtype)


def causal_conv1d_update_ref(
    x: Tensor,
    conv_state: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: str | None = None,
) -> Tensor:
    """One decoding step of the causal conv; updates conv_state in place.

    x: (batch, dim); conv_state: (batch, dim, width - 1); weight: (dim, width); bias: (dim,).
    Returns y: (batch, dim) in x.dtype.
    """
    if activation not in (None, "silu"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    dim, width = weight.shape[0], weight.shape[-1]
    dtype = _compute_dtype(x)
    window = torch.cat([conv_state.to(dtype), x.to(dtype).unsqueeze(-1)], dim=-1)  # (batch, dim, width)
    y = (window * weight.reshape(dim, width).to(dtype)).sum(-1)
    if bias is not None:
        y = y + bias.to(dtype)
    if activation == "silu":
        y = F.silu(y)
    conv_state.copy_(window[..., 1:])
    return y.to(x.dtype)


def selective_state_update_ref(
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
    """One decoding step of the selective scan; updates state in place.

    state: (batch, dim, d_state) fp32; x, dt, z: (batch, dim); A: (dim, d_state);
    B, C: (batch, n_groups, d_state) or (batch, d_state); D, dt_bias: (dim,).
    Returns y: (batch, dim) in x.dtype. Same math as one step of `selective_scan_ref`.
    """
    _batch, dim = x.shape
    dtype = state.dtype
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    if dt_softplus:
        dt = F.softplus(dt)

    def per_channel(X: Tensor) -> Tensor:  # -> (batch, dim, d_state)
        X = X.to(dtype)
        if X.dim() == 2:
            X = X.unsqueeze(1)
        return X.repeat_interleave(dim // X.shape[1], dim=1)

    xf = x.to(dtype)
    decay = torch.exp(dt.unsqueeze(-1) * A.to(dtype))
    state.copy_(decay * state + (dt * xf).unsqueeze(-1) * per_channel(B))
    y = (state * per_channel(C)).sum(-1)
    if D is not None:
        y = y + xf * D.to(dtype)
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(x.dtype)
