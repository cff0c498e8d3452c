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

`selective_scan_ref` is the sequential loop (the specification; autograd differentiates it).
`selective_scan_chunked` gives the same result in a few hundred vectorised steps instead of L,
with a hand-written backward that recomputes states from chunk boundaries: fast enough to train
small models on a CPU.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .stack_weights import StackWeights


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


class _ChunkLayout:
    """Views between (batch, dim, L) and the chunk-major layout (T, batch, G, nc, dg) the chunked
    scan steps through: step t of every chunk at once, channels split into their B/C groups."""

    def __init__(self, batch: int, dim: int, d_state: int, L: int, groups: int, chunk_size: int) -> None:
        self.batch, self.dim, self.N, self.L, self.G = batch, dim, d_state, L, groups
        self.dg = dim // groups
        self.T = max(1, min(chunk_size, L))
        self.nc = math.ceil(L / self.T)
        self.pad = self.nc * self.T - L

    def steps(self, x: Tensor) -> Tensor:  # (batch, dim, L) -> (T, batch, G, nc, dg)
        x = F.pad(x, (0, self.pad)) if self.pad else x
        return x.reshape(self.batch, self.G, self.dg, self.nc, self.T).permute(4, 0, 1, 3, 2).contiguous()

    def unsteps(self, x: Tensor) -> Tensor:  # (T, batch, G, nc, dg) -> (batch, dim, L)
        x = x.permute(1, 2, 4, 3, 0).reshape(self.batch, self.dim, self.nc * self.T)
        return x[..., : self.L]

    def bc_steps(self, X: Tensor) -> Tensor:  # (batch, G, N, L) -> (T, batch, G, nc, N)
        X = F.pad(X, (0, self.pad)) if self.pad else X
        return X.reshape(self.batch, self.G, self.N, self.nc, self.T).permute(4, 0, 1, 3, 2).contiguous()

    def bc_unsteps(self, X: Tensor) -> Tensor:  # (T, batch, G, nc, N) -> (batch, G, N, L)
        X = X.permute(1, 2, 4, 3, 0).reshape(self.batch, self.G, self.N, self.nc * self.T)
        return X[..., : self.L]

    def per_channel(self, X: Tensor) -> Tensor:  # (dim, N) -> (1, G, 1, dg, N)
        return X.reshape(1, self.G, 1, self.dg, self.N)


class _ChunkedScan(torch.autograd.Function):
    """h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t, y_t = <C_t, h_t>, in chunks of T steps.

    Forward: pass 1 scans every chunk from a zero state (all chunks at once), the chunk-end
    states carry the true state across chunks (nc small steps, using the chunk's total decay
    exp(A * sum delta)), pass 2 repeats the T steps from the true chunk-start states and reads out
    y. Python-level steps: 2T + nc instead of L, on buffers small enough to stay in cache.
    Only the chunk-start states are saved; backward recomputes the states inside chunks and runs
    the adjoint recurrence g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1} the same two-pass way.
    """

    @staticmethod
    def forward(ctx, delta, u, A, B, C, h0, chunk_size):
        batch, dim, L = u.shape
        const_b, const_c = B.dim() == 2, C.dim() == 2
        groups = B.shape[1] if not const_b else (C.shape[1] if not const_c else 1)
        lay = _ChunkLayout(batch, dim, A.shape[1], L, groups, chunk_size)
        dl, du = lay.steps(delta), lay.steps(delta * u)
        Bs = lay.per_channel(B) if const_b else lay.bc_steps(B).unsqueeze(-2)  # (T, b, G, nc, 1, N)
        Cs = lay.per_channel(C) if const_c else lay.bc_steps(C).unsqueeze(-1)  # (T, b, G, nc, N, 1)
        Ag = lay.per_channel(A)

        h = torch.zeros(batch, lay.G, lay.nc, lay.dg, lay.N, dtype=u.dtype, device=u.device)
        decay, inp = torch.empty_like(h), torch.empty_like(h)

        def load_step(t: int) -> None:
            torch.mul(dl[t].unsqueeze(-1), Ag, out=decay).exp_()
            torch.mul(du[t].unsqueeze(-1), Bs if const_b else Bs[t], out=inp)

        for t in range(lay.T):
            load_step(t)
            h, inp = inp.addcmul_(decay, h), h  # one fused pass; the old state's buffer is reused
        starts = _carry_across_chunks(h, torch.exp(dl.sum(0).unsqueeze(-1) * Ag), h0.view(h[:, :, 0].shape))
        final = starts[-1]
        starts = torch.stack(starts[:-1], dim=2)
        h.copy_(starts)
        y = torch.empty(lay.T, batch, lay.G, lay.nc, lay.dg, dtype=u.dtype, device=u.device)
        for t in range(lay.T):
            load_step(t)
            h, inp = inp.addcmul_(decay, h), h
            if const_c:
                torch.sum(h * Cs, dim=-1, out=y[t])
            else:
                torch.matmul(h, Cs[t], out=y[t].unsqueeze(-1))
        ctx.lay, ctx.const_b, ctx.const_c = lay, const_b, const_c
        ctx.save_for_backward(delta, u, A, B, C, starts)
        return lay.unsteps(y), final.reshape(batch, dim, lay.N)

    @staticmethod
    def backward(ctx, dy, dfinal):
        delta, u, A, B, C, starts = ctx.saved_tensors
        lay, const_b, const_c = ctx.lay, ctx.const_b, ctx.const_c
        dl, du = lay.steps(delta), lay.steps(delta * u)
        Bs = lay.per_channel(B) if const_b else lay.bc_steps(B).unsqueeze(-2)
        Cs = lay.per_channel(C) if const_c else lay.bc_steps(C)  # (T, b, G, nc, N)
        Ag = lay.per_channel(A)
        dys = lay.steps(dy if dy is not None else torch.zeros_like(u))
        shape = starts.shape  # (batch, G, nc, dg, N)

        def decay_at(t: int) -> Tensor:
            return torch.exp(dl[t].unsqueeze(-1) * Ag)

        def output_grad(t: int) -> Tensor:  # C_t dy_t: (batch, G, nc, dg, N)
            return dys[t].unsqueeze(-1) * (Cs if const_c else Cs[t].unsqueeze(-2))

        # States inside every chunk, recomputed from the saved chunk-start states.
        states = torch.empty((lay.T, *shape), dtype=u.dtype, device=u.device)
        h = starts
        for t in range(lay.T):
            h = torch.addcmul(du[t].unsqueeze(-1) * (Bs if const_b else Bs[t]), decay_at(t), h)
            states[t] = h

        # Adjoint pass 1: every chunk from a zero gradient at its end, to get the gradient each
        # chunk passes to its start state on its own.
        g = torch.zeros(shape, dtype=u.dtype, device=u.device)
        for t in reversed(range(lay.T)):
            g = decay_at(t) * (g + output_grad(t))
        final_grad = torch.zeros_like(g[:, :, 0]) if dfinal is None else dfinal.reshape(g[:, :, 0].shape)
        ends = _carry_across_chunks(g.flip(2), torch.exp(dl.sum(0).unsqueeze(-1) * Ag).flip(2),
                                    final_grad)
        dh0 = ends[-1]
        carry = torch.stack(ends[:-1], dim=2).flip(2)  # gradient reaching each chunk's end state

        # Adjoint pass 2: the true gradients, and from them every input's gradient.
        d_du = torch.empty_like(dl)
        d_dl = torch.empty_like(dl)
        dA_acc = torch.zeros(shape, dtype=u.dtype, device=u.device)
        dB_steps = None if const_b else torch.empty(lay.T, lay.batch, lay.G, lay.nc, lay.N,
                                                    dtype=u.dtype, device=u.device)
        dC_steps = None if const_c else torch.empty_like(dB_steps if dB_steps is not None else Cs)
        dB_acc = torch.zeros(shape, dtype=u.dtype, device=u.device) if const_b else None
        dC_acc = torch.zeros(shape, dtype=u.dtype, device=u.device) if const_c else None
        g = carry
        for t in reversed(range(lay.T)):
            g = g + output_grad(t)
            h_prev = states[t - 1] if t > 0 else starts
            if const_c:
                dC_acc.addcmul_(dys[t].unsqueeze(-1), states[t])
            else:
                torch.matmul(dys[t].unsqueeze(-2), states[t], out=dC_steps[t].unsqueeze(-2))
            if const_b:
                d_du[t] = (g * Bs).sum(-1)
                dB_acc.addcmul_(g, du[t].unsqueeze(-1))
            else:
                torch.matmul(g, Bs[t].transpose(-1, -2), out=d_du[t].unsqueeze(-1))
                torch.matmul(du[t].unsqueeze(-2), g, out=dB_steps[t].unsqueeze(-2))
            a = decay_at(t)
            d_exponent = g * h_prev * a  # gradient of exp's argument delta_t * A
            d_dl[t] = (d_exponent * Ag).sum(-1)
            dA_acc.addcmul_(d_exponent, dl[t].unsqueeze(-1))
            g = a * g
        d_du, d_dl = lay.unsteps(d_du), lay.unsteps(d_dl)
        d_delta = d_dl + d_du * u
        d_u = d_du * delta
        dA = dA_acc.sum(dim=(0, 2)).reshape(A.shape)
        dB = dB_acc.sum(dim=(0, 2)).reshape(B.shape) if const_b else lay.bc_unsteps(dB_steps)
        dC = dC_acc.sum(dim=(0, 2)).reshape(C.shape) if const_c else lay.bc_unsteps(dC_steps)
        return d_delta, d_u, dA, dB, dC, dh0.reshape(lay.batch, lay.dim, lay.N), None


def _carry_across_chunks(local_end: Tensor, chunk_decay: Tensor, start: Tensor) -> list[Tensor]:
    """s_0 = start, s_{c+1} = chunk_decay[c] * s_c + local_end[c] over dim 2; returns [s_0 .. s_nc]."""
    carried = [start]
    for c in range(local_end.shape[2]):
        carried.append(torch.addcmul(local_end[:, :, c], chunk_decay[:, :, c], carried[-1]))
    return carried


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
        y, last = _ChunkedScan.apply(p.delta, p.u, p.A, p.B, p.C, p.h0, chunk_size)
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


def mamba_stack_step_ref(residual: Tensor, weights: StackWeights, conv_state: Tensor, ssm_state: Tensor) -> Tensor:
    """One position through a stack of n_layer Mamba blocks with RMSNorm:
    residual_{l+1} = residual_l + mixer_l(rmsnorm_l(residual_l)).

    residual: (batch, d_model), fp32 or the model dtype; weights: a StackWeights;
    conv_state: (n_layer, batch, d_inner, d_conv - 1) in the model dtype and
    ssm_state: (n_layer, batch, d_inner, d_state) fp32, both updated in place.
    Returns the residual after the last block: (batch, d_model) in residual.dtype.
    The same ops, casts and order as `MambaBlock.step` block by block (models/lm.py, models/mixer.py).
    """
    w = weights
    d_inner, R, N = w.d_inner, w.dt_rank, w.d_state

    def at(t: Tensor | None, l: int) -> Tensor | None:
        return None if t is None else t[l]

    for l in range(w.n_layer):
        hidden = F.rms_norm(residual.to(w.dtype), (w.d_model,), w.norm_weight[l], w.eps)
        xz = F.linear(hidden, w.in_proj_weight[l], at(w.in_proj_bias, l))
        x, z = xz[:, :d_inner], xz[:, d_inner:]
        x = causal_conv1d_update_ref(x, conv_state[l], w.conv_weight[l], at(w.conv_bias, l), activation="silu")
        if w.selective:
            dt, B, C = torch.split(F.linear(x, w.x_proj_weight[l]), [R, N, N], dim=-1)
            dt = F.linear(dt, w.dt_proj_weight[l])
        else:
            # Constant B, C: one group per channel (see MambaMixer.step); Δ = softplus(0 + dt_bias).
            dt = torch.zeros_like(x)
            B, C = w.B[l].expand(x.shape[0], -1, -1), w.C[l].expand(x.shape[0], -1, -1)
        y = selective_state_update_ref(ssm_state[l], x, dt, w.A[l], B, C, D=w.D[l], z=z, dt_bias=w.dt_bias[l],
                                       dt_softplus=True)
        residual = residual + F.linear(y, w.out_proj_weight[l], at(w.out_proj_bias, l))
    return residual


def sample_token_ref(logits: Tensor, noise: Tensor | None, temperature: float, tokens: Tensor,
                     log_likelihood: Tensor) -> Tensor:
    """One sample per row from `logits` at `temperature`, written into `tokens`, and the model's own
    log-probability of it (temperature 1, no filtering) added to `log_likelihood`.

        logits: (batch, vocab) float; noise: (batch, vocab) fp32 Exp(1) draws (> 0), or None;
        tokens: (batch,) int64, written (may be a strided view); log_likelihood: (batch,) float64,
        updated in place. Returns tokens.

    With noise, the exponential race in log space: argmax_i logits_i / temperature - log(E_i) picks i
    with probability softmax(logits / temperature)_i. Temperature 0 (or no noise) is greedy: the
    first argmax of logits.
    """
    x = logits.float()
    if temperature == 0 or noise is None:
        token = x.argmax(-1)
    else:
        token = (x / temperature - noise.log()).argmax(-1)
    return record_token(x, token, tokens, log_likelihood)


def record_token(logits: Tensor, token: Tensor, tokens: Tensor, log_likelihood: Tensor) -> Tensor:
    """The recording half of `sample_token_ref` for a token drawn elsewhere (filtered sampling):
    `token` (batch,) written into `tokens`, its log-probability under `logits` (batch, vocab) at
    temperature 1, unfiltered, added to `log_likelihood` (batch,) float64. Returns tokens."""
    log_likelihood.add_(torch.log_softmax(logits.float(), dim=-1).gather(1, token[:, None])[:, 0])
    return tokens.copy_(token)
