"""Chunked training: the exact loss and gradients of a batch in the memory of `chunk_tokens` tokens.

A Mamba LM is recurrent: a window of L tokens gives the same outputs as L / c consecutive chunks of
c tokens when every layer's state (the causal conv's last inputs and the SSM state) is carried
from one chunk into the next; so does a SaShiMi U-Net, whose stream cache also carries each pooled
stage's pending and up-sampled rows. `chunked_nll` takes any model with that streaming contract
(`allocate_cache`, `forward(ids, cache)`: MambaLM and SashimiLM) and runs each chunk under one
activation checkpoint whose inputs are the chunk's ids and the carried cache tensors and whose
outputs are the chunk's summed loss and the cache tensors at its end. Autograd then keeps, between
forward and backward, only the ids and the caches between chunks (for a MambaLM, per chunk:
n_layer x batch x d_inner x (d_state + d_conv - 1) fp32 values, whatever c is). Backward walks
the chunks from the last to the first: it recomputes one chunk's forward, differentiates it, and
hands the gradient of the chunk's initial states to the chunk before (the scan and the conv take
gradients through their initial states), so nothing is truncated.

A batch of many short windows (the early stages of a sequence-length warmup keep the tokens per
step constant, so L = 1024 comes as 1024 windows at 2^20 tokens per step) is cut the other way: a
few rows at a time, each group under its own checkpoint, from zero states.

Memory: one chunk's activations instead of the whole batch's, so the peak no longer grows with L
or the batch beyond the ids and the states. Compute: one more forward, as per-block checkpointing,
and kernels sized by c rather than L. Per-block checkpointing (`checkpoint_blocks`) steps aside inside a chunk
(the blocks run with states), and the memory-lean mixer (`fused_inner`) has no state path, so
chunks run the plain mixer: with c small enough its activations fit anyway.

Why chunk the sequence and not the layers (a checkpoint every few blocks): the fp32 residual at
every block boundary alone is 512 bytes per token per block at d_model 128, 6 GiB for the 12 blocks
of dna-1.4m at L = 2^20, and one block's backward needs about as much again; only cutting L bounds
both (benchmarks/RESULTS.md, issue 4).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from ..models.cache import get_slot, set_slot, tensor_slots


def _chunk_nll(model: nn.Module, vocab_size: int, start: int | None, inputs: Tensor, targets: Tensor,
               mask: Tensor | None, *carried: Tensor) -> tuple[Tensor, ...]:
    """One chunk: (summed NLL of its counted targets, *cache tensors at its end), from the cache
    tensors at its start (`carried`, in `tensor_slots` order) and its stream position `start`;
    with `start` None, whole windows through the plain forward: (summed NLL,)."""
    cache, slots = None, []
    if start is not None:
        # A fresh cache each call (the recompute in backward too) holding the carried tensors.
        cache = model.allocate_cache(inputs.shape[0], dtype=torch.float32, prepare_step=False)
        slots = tensor_slots(cache)
        for (holder, key), tensor in zip(slots, carried, strict=True):
            set_slot(holder, key, tensor)
        cache.seqlen_offset = start
    logits = model(inputs, cache)[..., :vocab_size]
    if mask is not None:
        logits, targets = logits[mask], targets[mask]
    nll = F.cross_entropy(logits.reshape(-1, vocab_size).float(), targets.reshape(-1), reduction="sum")
    # A conv state is a view of the last columns of this chunk's projections: compact copies, so the
    # tensors kept between chunks do not hold those whole buffers alive.
    return (nll, *(get_slot(holder, key).clone() for holder, key in slots))


def wants_chunks(chunk_tokens: int | None, targets: Tensor) -> bool:
    """Whether a batch with these targets trains in chunks: `chunk_tokens` is set, the batch holds
    more tokens than that, and autograd is on (without it a plain forward keeps no activations)."""
    return bool(chunk_tokens) and torch.is_grad_enabled() and targets.numel() > chunk_tokens


def valid_chunk_tokens(chunk_tokens: Any) -> bool:
    """None (no chunking) or a positive integer."""
    return chunk_tokens is None or (isinstance(chunk_tokens, int) and not isinstance(chunk_tokens, bool)
                                    and chunk_tokens >= 1)


def check_chunk_tokens(chunk_tokens: int | None) -> None:
    """ValueError unless `chunk_tokens` is None or a positive integer (the modules' argument)."""
    if not valid_chunk_tokens(chunk_tokens):
        raise ValueError(f"chunk_tokens must be a positive integer or None, got {chunk_tokens!r}")


def chunked_nll(model: nn.Module, inputs: Tensor, targets: Tensor, chunk_tokens: int, vocab_size: int | None = None,
                mask: Tensor | None = None) -> Tensor:
    """The summed next-token NLL of `targets` given `inputs`, `chunk_tokens` tokens at a time.

    model: a MambaLM or SashimiLM (anything with `allocate_cache` and `forward(ids, cache)`).
    inputs, targets: (batch, L) token ids; mask: (batch, L) bool, the targets that count (None: all).
    Logits beyond `vocab_size` (the model's padded vocabulary tail) are cut as in plain training.
    Windows of L >= chunk_tokens run one row at a time in chunks of chunk_tokens positions with the
    cache carried; shorter ones run chunk_tokens // L rows at a time. Returns a scalar (fp32) equal
    to `cross_entropy(model(inputs)[mask], targets[mask], reduction="sum")` up to rounding, with the
    same gradients, whose autograd graph keeps one chunk's activations at a time (module docstring).
    """
    if not callable(getattr(model, "allocate_cache", None)):
        raise TypeError(f"chunked training needs a model with a streaming cache, got {type(model).__name__}")
    if chunk_tokens is None:
        raise ValueError("chunked_nll needs chunk_tokens")
    check_chunk_tokens(chunk_tokens)
    if inputs.shape != targets.shape or inputs.dim() != 2 or (mask is not None and mask.shape != inputs.shape):
        raise ValueError(f"inputs, targets (and mask) must all be (batch, L), got {tuple(inputs.shape)} and "
                         f"{tuple(targets.shape)}")
    vocab_size = vocab_size or model.config.vocab_size
    batch, length = inputs.shape
    rows = max(1, chunk_tokens // max(length, 1))
    total = inputs.new_zeros((), dtype=torch.float32)
    for first in range(0, batch, rows):
        group = slice(first, first + rows)
        if length <= chunk_tokens:  # whole windows, a few rows at a time: no state to carry
            nll, = torch.utils.checkpoint.checkpoint(
                _chunk_nll, model, vocab_size, None, inputs[group], targets[group],
                None if mask is None else mask[group], use_reentrant=False)
            total = total + nll
            continue
        # Zero states to start from, fp32: the models cast them to their compute dtype, and a bf16
        # value survives the round trip.
        cache = model.allocate_cache(inputs[group].shape[0], dtype=torch.float32, prepare_step=False)
        carried = [get_slot(holder, key) for holder, key in tensor_slots(cache)]
        for start in range(0, length, chunk_tokens):
            part = (group, slice(start, start + chunk_tokens))
            nll, *carried = torch.utils.checkpoint.checkpoint(
                _chunk_nll, model, vocab_size, start, inputs[part], targets[part],
                None if mask is None else mask[part], *carried, use_reentrant=False)
            total = total + nll
    return total
