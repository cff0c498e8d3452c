"""Memory-lean training path of the selective mixer: the whole mixer as one autograd node.

`mamba_inner(hidden, ...)` computes what `MambaMixer.forward` computes on its selective,
stateless path (in_proj -> causal conv + SiLU -> x_proj -> dt_proj -> selective scan with D skip
and SiLU(z) gate -> out_proj), but autograd keeps only the mixer's input and the parameters. The
plain path keeps, per token and per block, xz, the conv output, x_proj's output, delta, B, C, the
scan's own saved inputs and y (tests/models/test_mixer_fn.py measures the bytes); here backward
re-runs the forward from the input under grad and differentiates it with `torch.autograd.grad`,
so one mixer's activations exist only while that mixer's backward runs. The price is one more
forward of the mixer (two projections, conv, x_proj/dt_proj, one scan forward) per step.

Why the input and not in_proj's output xz (as mamba_ssm's `mamba_inner_fn` does): in_proj keeps
its input for its weight gradient on either design, so saving xz as well costs 2*d_inner more
values per token (1 KiB per block per token for dna-1.4m under bf16) for one small matmul saved
in backward. Under autocast the kept copy is the autocast-dtype cast in_proj would make anyway.

Why a model-level function and not a kernel op: it is not a new piece of math with its own fast
path, it is a memory strategy over the public dispatched ops (`causal_conv1d`,
`selective_scan`), so it runs on the CPU reference and the CUDA Triton kernels alike, and the
scan's own backward (the Triton one recomputes its states from chunk boundaries) does the
scan's part of the gradient.

Autocast: the forward runs inside whatever autocast context the caller has (so the dtypes are
those of the plain mixer: bf16 projections and scan inputs under bf16 autocast, fp32 scan
accumulation). Backward may run on another thread (CUDA autograd) without that context, so the
forward records it and the recompute re-enters it: the recomputed graph is the forward's graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import kernels


def mixer_reference(
    hidden: Tensor,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor | None,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    x_proj_weight: Tensor,
    dt_proj_weight: Tensor,
    dt_proj_bias: Tensor,
    A_log: Tensor,
    D: Tensor,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
) -> Tensor:
    """The selective mixer as plain differentiable ops (what `mamba_inner` recomputes).

    hidden: (batch, L, d_model); in_proj_weight: (2*d_inner, d_model); in_proj_bias: (2*d_inner,);
    conv_weight: (d_inner, 1, d_conv) or (d_inner, d_conv); conv_bias: (d_inner,);
    x_proj_weight: (dt_rank + 2*d_state, d_inner); dt_proj_weight: (d_inner, dt_rank);
    dt_proj_bias, D: (d_inner,); A_log: (d_inner, d_state); out_proj_weight: (d_model, d_inner);
    out_proj_bias: (d_model,). Returns (batch, L, d_model).

    The same op sequence, layouts and dtype casts as `MambaMixer.forward` on its selective,
    stateless path (tests hold the two to each other), so fused and plain runs agree bit for bit
    in fp32 and take the same autocast casts in bf16. Written out again rather than shared with
    the mixer so that the mixer's own path stays the independent reference of the tests.
    """
    batch, L, _ = hidden.shape
    d_inner = in_proj_weight.shape[0] // 2
    d_state = A_log.shape[1]
    dt_rank = dt_proj_weight.shape[1]
    # xz (batch, 2*d_inner, L), contiguous along L: (channels, batch*L) products, as in the mixer.
    xz = torch.matmul(in_proj_weight, hidden.reshape(batch * L, -1).t())
    if in_proj_bias is not None:
        xz = xz + in_proj_bias.to(xz.dtype)[:, None]
    xz = xz.reshape(2 * d_inner, batch, L).transpose(0, 1)
    x, z = xz[:, :d_inner], xz[:, d_inner:]
    x = kernels.causal_conv1d(x, conv_weight.reshape(d_inner, -1), conv_bias, activation="silu")
    x_dbl = torch.nn.functional.linear(x.transpose(1, 2).reshape(batch * L, d_inner), x_proj_weight)
    dt, B, C = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=-1)
    # delta = dt_proj.weight @ dt^T laid out (batch, d_inner, L) contiguous along L, no bias: the
    # scan adds dt_proj's bias in fp32 before the softplus.
    delta = torch.matmul(dt_proj_weight, dt.t()).reshape(d_inner, batch, L).transpose(0, 1)
    B = B.reshape(batch, L, 1, d_state).permute(0, 2, 3, 1).contiguous()  # (b, 1, N, L)
    C = C.reshape(batch, L, 1, d_state).permute(0, 2, 3, 1).contiguous()
    A = -torch.exp(A_log.float())
    y = kernels.selective_scan(x, delta, A, B, C, D=D.float(), z=z, delta_bias=dt_proj_bias.float(),
                               delta_softplus=True)
    return torch.nn.functional.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


class MambaInnerFn(torch.autograd.Function):
    """Forward without a graph, keeping only the (autocast-cast) input and the parameters;
    backward recomputes `mixer_reference` under grad and differentiates it."""

    @staticmethod
    def forward(ctx, hidden: Tensor, *params: Tensor | None) -> Tensor:
        device_type = hidden.device.type
        enabled = torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type)
        ctx.autocast = (device_type, enabled, dtype)
        ctx.hidden_dtype = hidden.dtype
        if enabled and hidden.dtype in (torch.float32, torch.float16, torch.bfloat16):
            # in_proj would cast its input to the autocast dtype anyway: keep that copy (half the
            # bytes of an fp32 norm output), exactly what the plain path's matmul keeps.
            hidden = hidden.to(dtype)
        # Function.forward already runs without grad: no intermediate outlives this call.
        out = mixer_reference(hidden, *params)
        ctx.save_for_backward(hidden, *params)
        return out

    @staticmethod
    def backward(ctx, dout: Tensor) -> tuple[Tensor | None, ...]:
        saved = ctx.saved_tensors
        wanted = [i for i, t in enumerate(saved) if t is not None and ctx.needs_input_grad[i]]
        # Fresh leaves: the recompute's gradients stop here instead of flowing into the outer graph.
        leaves = [t.detach().requires_grad_(i in wanted) if t is not None else None
                  for i, t in enumerate(saved)]
        device_type, enabled, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
            out = mixer_reference(*leaves)
        grads = torch.autograd.grad(out, [leaves[i] for i in wanted], dout)
        result: list[Tensor | None] = [None] * len(saved)
        for i, g in zip(wanted, grads, strict=True):
            result[i] = g
        if result[0] is not None:  # the gradient of the autocast cast: back to the input's dtype
            result[0] = result[0].to(ctx.hidden_dtype)
        return tuple(result)


def mamba_inner(
    hidden: Tensor,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor | None,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    x_proj_weight: Tensor,
    dt_proj_weight: Tensor,
    dt_proj_bias: Tensor,
    A_log: Tensor,
    D: Tensor,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None = None,
) -> Tensor:
    """The selective mixer, hidden (batch, L, d_model) -> (batch, L, d_model), keeping only its
    input (in the autocast dtype under autocast) and the parameters for backward (see the module
    docstring; shapes as in `mixer_reference`). Stateless: streaming uses the plain path."""
    return MambaInnerFn.apply(hidden, in_proj_weight, in_proj_bias, conv_weight, conv_bias, x_proj_weight,
                              dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight, out_proj_bias)
