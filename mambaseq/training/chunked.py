"""Chunked training: the exact loss and gradients of a batch in the memory of `chunk_tokens` tokens.

A Mamba LM is recurrent: a window of L tokens gives the same outputs as L / c consecutive chunks of
c tokens when every layer's state (the causal conv's last inputs and the SSM state) is carried
from one chunk into the next. `chunked_nll` runs each chunk under one activation checkpoint whose
inputs are the chunk's ids and the carried states and whose outputs are the chunk's summed loss
and the states at its end. Autograd then keeps, between forward and backward, only the ids and the
states between chunks (per chunk: n_layer x batch x d_inner x (d_state + d_conv - 1) fp32 values,
whatever c is). Backward walks the chunks from the last to the first: it recomputes one chunk's
forward, differentiates it, and hands the gradient of the chunk's initial states to the chunk
before (the scan and the conv take gradients through their initial states), so nothing is
truncated.

A batch of many short windows (the early stages of a sequence-length warmup keep the tokens per
step constant, so L = 1024 comes as 1024 windows at 2^20 tokens per step) is cut the other way: a
few rows at a time, each group under its own checkpoint, from zero states.

Memory: one chunk's activations instead of the whole batch's, so the peak no longer grows with L
or the batch beyond the ids and the states. Compute: one more forward, as per-block checkpointing, and kernels
sized by c rather than L. Per-block checkpointing (`checkpoint_blocks`) steps aside inside a chunk
(the blocks run with states), and the memory-lean mixer (`fused_inner`) has no state path, so
chunks run the plain mixer: with c small enough its activations fit anyway.

Why chunk the sequence and not the layers (a checkpoint every few blocks): the fp32 residual at
every block boundary alone is 512 bytes per token per block at d_model 128, 6 GiB for the 12 blocks
of dna-1.4m at L = 2^20, and one block's backward needs about as much again; only cutting L bounds
both (benchmarks/RESULTS.md, issue 4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor

from ..models import MambaLM
from ..models.cache import InferenceCache, LayerState


def _chunk_nll(model: MambaLM, vocab_size: int, inputs: Tensor, targets: Tensor,
               *states: Tensor) -> tuple[Tensor, ...]:
    """One chunk: (summed NLL, conv_0, ssm_0, conv_1, ssm_1, ...) at its end, from the states at its start."""
    cache = InferenceCache([LayerState(conv, ssm) for conv, ssm in zip(states[0::2], states[1::2], strict=True)])
    logits = model(inputs, cache)[..., :vocab_size]
    nll = F.cross_entropy(logits.reshape(-1, vocab_size).float(), targets.reshape(-1), reduction="sum")
    # The conv state is a view of the last columns of this chunk's projections: a compact copy, so
    # the states kept between chunks do not hold those whole buffers alive.
    carried = [t.clone() for layer in cache.layers for t in (layer.conv, layer.ssm)]
    return (nll, *carried)


def chunked_nll(model: MambaLM, inputs: Tensor, targets: Tensor, chunk_tokens: int, vocab_size: int | None = None,
                ) -> Tensor:
    """The summed next-token NLL of `targets` given `inputs`, `chunk_tokens` tokens at a time.

    inputs, targets: (batch, L) token ids; logits beyond `vocab_size` (the model's padded
    vocabulary tail) are cut as in plain training. Windows of L >= chunk_tokens run one row at a
    time in chunks of chunk_tokens positions with the states carried; shorter ones run
    chunk_tokens // L rows at a time. Returns a scalar (fp32) equal to
    `cross_entropy(model(inputs), targets, reduction="sum")` up to rounding, with the same
    gradients, whose autograd graph keeps one chunk's activations at a time (module docstring).
    """
    if not isinstance(model, MambaLM):
        raise TypeError(f"chunked training needs a MambaLM, got {type(model).__name__}")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    if inputs.shape != targets.shape or inputs.dim() != 2:
        raise ValueError(f"inputs and targets must both be (batch, L), got {tuple(inputs.shape)} and "
                         f"{tuple(targets.shape)}")
    cfg = model.config
    vocab_size = vocab_size or cfg.vocab_size
    batch, length = inputs.shape
    rows = max(1, chunk_tokens // max(length, 1))
    chunk_len = min(length, chunk_tokens)
    total = inputs.new_zeros((), dtype=torch.float32)
    for first in range(0, batch, rows):
        group = slice(first, first + rows)
        # fp32 conv states: the conv casts them to its input dtype, and a bf16 value survives the round trip.
        cache = InferenceCache.empty(cfg.n_layer, inputs[group].shape[0], cfg.d_inner, cfg.d_conv, cfg.d_state,
                                     device=inputs.device, dtype=torch.float32)
        states: list[Tensor] = [t for layer in cache.layers for t in (layer.conv, layer.ssm)]
        for start in range(0, length, chunk_len):
            part = slice(start, start + chunk_len)
            nll, *states = torch.utils.checkpoint.checkpoint(
                _chunk_nll, model, vocab_size, inputs[group, part], targets[group, part], *states,
                use_reentrant=False)
            total = total + nll
    return total
