"""Sampling one token per row in Triton (generation); same contract as `reference.sample_token_ref`:

    logits: (batch, vocab) float; noise: (batch, vocab) fp32 Exp(1) > 0, or None (greedy);
    tokens: (batch,) int64, written; log_likelihood: (batch,) float64, updated in place

    token = argmax(logits / temperature - log(noise))   (greedy: argmax(logits))
    log_likelihood += logits[token] - logsumexp(logits)

One program per row, the whole vocabulary in one tile. In a generation step this replaces about
ten small PyTorch kernels (scale, softmax, race, argmax, log-softmax, gather, add, copy), each a
launch of a few microseconds inside the CUDA graph, with one.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from .device import next_power_of_2
from .launch import launch


@triton.jit
def _sample_token_kernel(logits_ptr, noise_ptr, tokens_ptr, ll_ptr, V, temperature,
                         s_x_b, s_x_v, s_e_b, s_e_v, s_t_b, s_ll_b,
                         GREEDY: tl.constexpr, BLOCK_V: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_V)
    mask = offs < V
    x = tl.load(logits_ptr + b * s_x_b + offs * s_x_v, mask=mask, other=float("-inf")).to(tl.float32)
    if GREEDY:
        score = x
    else:
        e = tl.load(noise_ptr + b * s_e_b + offs * s_e_v, mask=mask, other=1.0)
        # IEEE division, as torch divides: an approximate one could flip near-ties against the reference.
        score = tl.where(mask, tl.math.div_rn(x, temperature) - tl.log(e), float("-inf"))
    best = tl.max(score, axis=0)
    # torch.argmax's choice among equal maxima: the first.
    token = tl.min(tl.where(score == best, offs, BLOCK_V), axis=0)
    m = tl.max(x, axis=0)
    lse = m + tl.log(tl.sum(tl.where(mask, tl.exp(x - m), 0.0), axis=0))
    log_p = tl.sum(tl.where(offs == token, x, 0.0), axis=0) - lse
    tl.store(tokens_ptr + b * s_t_b, token.to(tl.int64))
    ll = tl.load(ll_ptr + b * s_ll_b)
    tl.store(ll_ptr + b * s_ll_b, ll + log_p.to(tl.float64))


def sample_token(logits: Tensor, noise: Tensor | None, temperature: float, tokens: Tensor,
                 log_likelihood: Tensor) -> Tensor:
    """See `reference.sample_token_ref`."""
    batch, vocab = logits.shape
    greedy = temperature == 0 or noise is None
    e = logits if greedy else noise  # any pointer when greedy: never read
    launch(_sample_token_kernel, (batch,),
        logits, e, tokens, log_likelihood, vocab, float(temperature) if not greedy else 1.0,
        *logits.stride(), *e.stride(), tokens.stride(0), log_likelihood.stride(0),
        GREEDY=greedy, BLOCK_V=next_power_of_2(vocab), num_warps=1 if vocab <= 1024 else 4)
    return tokens
