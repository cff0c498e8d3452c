"""The selective SSM mixer of the seed paper (Algorithm 2, Figure 3): one Mamba block's core."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import MambaConfig
from ..kernels import causal_conv1d, causal_conv1d_update, selective_scan, selective_state_update
from .cache import LayerState
from .mixer_fn import mamba_inner


class MambaMixer(nn.Module):
    """in_proj -> (x, z); x -> causal depthwise conv + SiLU -> x_proj -> (dt, B, C);
    dt -> dt_proj -> delta; selective scan with D skip, gated by SiLU(z); out_proj.

    With `config.selective=False` the SSM is time-invariant: there is no x_proj or dt_proj;
    Δ = softplus(dt_bias) per channel and B, C are learned (d_inner, d_state) matrices, passed to
    the scan in its constant form. The block around the SSM (projections, conv, gate) is unchanged.
    """

    def __init__(self, config: MambaConfig) -> None:
        super().__init__()
        self.config = config
        d_model, d_inner, N, R = config.d_model, config.d_inner, config.d_state, config.dt_rank_value
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=config.bias)
        self.conv1d = nn.Conv1d(d_inner, d_inner, config.d_conv, groups=d_inner, bias=config.conv_bias)
        if config.selective:
            self.x_proj = nn.Linear(d_inner, R + 2 * N, bias=False)
            self.dt_proj = nn.Linear(R, d_inner, bias=True)
        else:
            self.dt_bias = nn.Parameter(torch.empty(d_inner))
            self.B = nn.Parameter(torch.empty(d_inner, N))
            self.C = nn.Parameter(torch.empty(d_inner, N))
        self.A_log = nn.Parameter(torch.empty(d_inner, N))
        self.D = nn.Parameter(torch.empty(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=config.bias)
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        if not config.selective:
            # SSM parameters, not feature matrices: no decay, as for A_log and D (and as S4 does).
            for param in (self.dt_bias, self.B, self.C):
                param._no_weight_decay = True
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Seed-paper initialisation of the SSM parameters (Section 3.6 and Appendix)."""
        cfg = self.config
        d_inner, N, R = cfg.d_inner, cfg.d_state, cfg.dt_rank_value
        # S4D-real: A_n = -(n + 1), the same for every channel.
        self.A_log.copy_(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D.fill_(1.0)
        if cfg.selective:
            nn.init.uniform_(self.dt_proj.weight, -(R**-0.5), R**-0.5)
        # softplus(bias) is log-uniform in [dt_min, dt_max], floored; the bias is its inverse.
        log_lo, log_hi = math.log(cfg.dt_min), math.log(cfg.dt_max)
        dt = torch.exp(torch.rand(d_inner) * (log_hi - log_lo) + log_lo).clamp(min=cfg.dt_init_floor)
        (self.dt_proj.bias if cfg.selective else self.dt_bias).copy_(dt + torch.log(-torch.expm1(-dt)))
        if not cfg.selective:
            # S4D's choice for a real diagonal SSM: B = 1 (its scale is folded into C), C ~ N(0, 1).
            self.B.fill_(1.0)
            nn.init.normal_(self.C)

    def _split_dt_bc(self, x_dbl: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        R, N = self.config.dt_rank_value, self.config.d_state
        return torch.split(x_dbl, [R, N, N], dim=-1)

    def forward(self, hidden: Tensor, state: LayerState | None = None) -> Tensor:
        """hidden: (batch, L, d_model) -> (batch, L, d_model).

        With `state`, the sequence continues from it and the state is overwritten (in place, unless
        gradients flow through it) by the one at the end (prefill and chunked streaming).
        """
        if state is None and self.config.selective and self.config.fused_inner:
            # Same result; autograd keeps only `hidden` and the weights (backward recomputes the rest).
            return mamba_inner(hidden, self.in_proj.weight, self.in_proj.bias, self.conv1d.weight,
                               self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight, self.dt_proj.bias,
                               self.A_log, self.D, self.out_proj.weight, self.out_proj.bias)
        batch, L, _ = hidden.shape
        d_inner = self.config.d_inner
        # Projections are laid out (channels, batch*L) so that every (batch, dim, L) tensor the
        # kernels read is contiguous along L (their coalesced axis) without extra copies.
        xz = self._project_time_major(self.in_proj, hidden.reshape(batch * L, -1), batch)  # (b, 2*d_inner, L)
        x, z = xz[:, :d_inner], xz[:, d_inner:]
        conv_weight = self.conv1d.weight.squeeze(1)  # (d_inner, d_conv)
        if state is None:
            x = causal_conv1d(x, conv_weight, self.conv1d.bias, activation="silu")
        else:
            x, conv_state = causal_conv1d(x, conv_weight, self.conv1d.bias, activation="silu",
                                          initial_state=state.conv.to(x.dtype), return_final_state=True)
        if self.config.selective:
            x_dbl = self.x_proj(x.transpose(1, 2).reshape(batch * L, d_inner))  # (b*L, dt_rank + 2N)
            dt, B, C = self._split_dt_bc(x_dbl)
            delta = self._project_time_major(self.dt_proj, dt, batch, bias=False)  # (b, d_inner, L)
            B = B.reshape(batch, L, 1, -1).permute(0, 2, 3, 1).contiguous()  # (b, 1, N, L)
            C = C.reshape(batch, L, 1, -1).permute(0, 2, 3, 1).contiguous()
            delta_bias = self.dt_proj.bias.float()
        else:
            # Δ = softplus(0 + dt_bias): the scan adds the bias and applies softplus in fp32, as
            # on the selective path. B, C: (d_inner, N), the scan's constant form.
            delta, B, C, delta_bias = torch.zeros_like(x), self.B, self.C, self.dt_bias.float()
        A = -torch.exp(self.A_log.float())
        scan_args = dict(D=self.D.float(), z=z, delta_bias=delta_bias, delta_softplus=True)
        if state is None:
            y = selective_scan(x, delta, A, B, C, **scan_args)
        else:
            y, ssm_state = selective_scan(x, delta, A, B, C, **scan_args, initial_state=state.ssm,
                                          return_final_state=True)
            if torch.is_grad_enabled() and (conv_state.requires_grad or ssm_state.requires_grad):
                # Backprop through a stream: the new states carry the graph, so they replace the
                # old tensors (a stacked cache then steps block by block: see cache.StackedStates).
                state.conv, state.ssm = conv_state.to(state.conv.dtype), ssm_state.float()
            else:
                # In place, so that states which are views into a stacked cache stay views.
                state.conv.copy_(conv_state)
                state.ssm.copy_(ssm_state)
        return self.out_proj(y.transpose(1, 2))

    @staticmethod
    def _project_time_major(linear: nn.Linear, rows: Tensor, batch: int, bias: bool = True) -> Tensor:
        """linear(rows) for rows (batch*L, in), returned as (batch, out, L) contiguous along L."""
        out = torch.matmul(linear.weight, rows.t())  # (out, batch*L)
        if bias and linear.bias is not None:
            out = out + linear.bias.to(out.dtype)[:, None]
        return out.reshape(out.shape[0], batch, -1).transpose(0, 1)

    def step(self, hidden: Tensor, state: LayerState) -> Tensor:
        """One position: hidden (batch, d_model) -> (batch, d_model); updates `state` in place."""
        d_inner = self.config.d_inner
        xz = self.in_proj(hidden)
        x, z = xz[:, :d_inner], xz[:, d_inner:]
        x = causal_conv1d_update(x, state.conv, self.conv1d.weight.squeeze(1), self.conv1d.bias,
                                 activation="silu")
        if self.config.selective:
            dt, B, C = self._split_dt_bc(self.x_proj(x))
            dt = F.linear(dt, self.dt_proj.weight)
            dt_bias = self.dt_proj.bias.float()
        else:
            # selective_state_update reads B, C per batch row, (batch, n_groups, d_state); its 2-D
            # form means (batch, d_state), not the scan's constant (dim, d_state). So the constant
            # goes in as d_inner groups of one channel each, broadcast over the batch by a
            # stride-0 view (no copy here; the Triton kernel reads it through its strides).
            batch = x.shape[0]
            dt, dt_bias = torch.zeros_like(x), self.dt_bias.float()
            B, C = self.B.expand(batch, -1, -1), self.C.expand(batch, -1, -1)
        A = -torch.exp(self.A_log.float())
        y = selective_state_update(state.ssm, x, dt, A, B, C, D=self.D.float(), z=z,
                                   dt_bias=dt_bias, dt_softplus=True)
        return self.out_proj(y)
