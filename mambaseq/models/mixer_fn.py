"""Memory-lean training path of the selective mixer: everything after in_proj as one autograd node.

`mamba_inner(xz, ...)` computes what `MambaMixer.forward` computes after its input projection
(causal conv + SiLU -> x_proj -> dt_proj -> selective scan with D skip and SiLU(z) gate ->
out_proj) for the selective, stateless case, but autograd keeps only xz and the parameters. The
plain path keeps, per token and per block, the conv output, x_proj's output, delta, B, C, the
scan's fp32 working copies and y (see tests/models/test_mixer_fn.py for the measured bytes);
here backward re-runs that forward from xz under grad and differentiates it with
`torch.autograd.grad`, so the transient activations of one mixer exist only while that mixer's
backward runs. The price is one more forward of the mixer core (conv, two small projections,
one scan forward, out_proj) per training step.

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


def mixer_inner_reference(
    xz: Tensor,
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
    """The mixer core after in_proj, as plain differentiable ops (what `mamba_inner` recomputes).

    xz: (batch, 2*d_inner, L), any strides (the mixer's is a transposed view, contiguous along L);
    conv_weight: (d_inner, 1, d_conv) or (d_inner, d_conv); conv_bias: (d_inner,);
    x_proj_weight: (dt_rank + 2*d_state, d_inner); dt_proj_weight: (d_inner, dt_rank);
    dt_proj_bias, D: (d_inner,); A_log: (d_inner, d_state); out_proj_weight: (d_model, d_inner);
    out_proj_bias: (d_model,). Returns (batch, L, d_model).

    The same op sequence, layouts and dtype casts as `MambaMixer.forward` on its selective,
    stateless path (tests hold the two to each other), so fused and plain runs agree bit for bit
    in fp32 and take the same autocast casts in bf16.
    """
    batch, two_d, L = xz.shape
    d_inner = two_d // 2
    d_state = A_log.shape[1]
    dt_rank = dt_proj_weight.shape[1]
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
    """Forward without a graph, keeping only xz and the parameters; backward recomputes and
    differentiates `mixer_inner_reference`."""

    @staticmethod
    def forward(ctx, xz: Tensor, *params: Tensor | None) -> Tensor:
        device_type = xz.device.type
        ctx.autocast = (device_type, torch.is_autocast_enabled(device_type),
                        torch.get_autocast_dtype(device_type))
        # Function.forward already runs without grad: no intermediate is referenced after this.
        out = mixer_inner_reference(xz, *params)
        ctx.save_for_backward(xz, *params)
        return out

    @staticmethod
    def backward(ctx, dout: Tensor) -> tuple[Tensor | None, ...]:
        saved = ctx.saved_tensors
        wanted = [i for i, t in enumerate(saved) if t is not None and ctx.needs_input_grad[i]]
        # Fresh leaves: gradients of the recompute stop here instead of flowing into the outer graph.
        leaves = [t.detach().requires_grad_(i in wanted) if t is not None else None
                  for i, t in enumerate(saved)]
        device_type, enabled, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
            out = mixer_inner_reference(*leaves)
        grads = torch.autograd.grad(out, [leaves[i] for i in wanted], dout, allow_unused=True)
        result: list[Tensor | None] = [None] * len(saved)
        for i, g in zip(wanted, grads, strict=True):
            result[i] = g
        return tuple(result)


def mamba_inner(
    xz: Tensor,
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
    """The selective mixer after in_proj, xz (batch, 2*d_inner, L) -> (batch, L, d_model), saving
    only xz and the parameters for backward (see the module docstring; shapes as in
    `mixer_inner_reference`). Stateless: streaming with a carried state uses the plain path."""
    return MambaInnerFn.apply(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias,
                              A_log, D, out_proj_weight, out_proj_bias)
