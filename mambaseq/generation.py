"""Sampling from a Mamba LM in step mode: prefill the prompt with one full forward, then step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .models import InferenceCache, MambaLM


@dataclass
class SamplingConfig:
    """temperature 0 means greedy; top_k 0 and top_p 1.0 switch those filters off."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def sample_next(logits: Tensor, config: SamplingConfig, generator: torch.Generator | None = None) -> Tensor:
    """logits: (batch, vocab) -> token ids (batch,)."""
    if config.temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / config.temperature
    if config.top_k:
        kth = torch.topk(logits, min(config.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass.
        drop = probs.cumsum(-1) - probs >= config.top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: MambaLM,
    prompt: Tensor,
    max_new_tokens: int,
    sampling: SamplingConfig | None = None,
    generator: torch.Generator | None = None,
    vocab_limit: int | None = None,
    return_logits: bool = False,
    allowed: Tensor | None = None,
    on_step: Callable[[int], None] | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Continue `prompt` (batch, L >= 1) by `max_new_tokens` tokens.

    Returns (batch, L + max_new_tokens) token ids, and with `return_logits` the logits that
    produced each new token, (batch, max_new_tokens, vocab). `vocab_limit` masks the padded
    vocabulary rows (ids >= vocab_limit) so they are never sampled; `allowed` (bool, (vocab_limit,))
    restricts sampling further (e.g. to the four bases). `on_step(i)` is called after each token.
    """
    if prompt.dim() != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must be (batch, L) with L >= 1, got {tuple(prompt.shape)}")
    sampling = sampling or SamplingConfig()
    vocab_limit = vocab_limit or model.config.vocab_size
    cache: InferenceCache = model.allocate_cache(prompt.shape[0])
    logits = model(prompt, cache=cache)[:, -1]
    tokens, all_logits = [prompt], []
    for i in range(max_new_tokens):
        logits = logits[:, :vocab_limit]
        if allowed is not None:
            logits = logits.masked_fill(~allowed.to(logits.device), float("-inf"))
        token = sample_next(logits, sampling, generator)
        tokens.append(token.unsqueeze(1))
        if return_logits:
            all_logits.append(logits)
        if i + 1 < max_new_tokens:
            logits = model.step(token, cache)
        if on_step is not None:
            on_step(i)
    out = torch.cat(tokens, dim=1)
    if return_logits:
        return out, torch.stack(all_logits, dim=1) if all_logits else prompt.new_zeros(
            prompt.shape[0], 0, vocab_limit, dtype=torch.float32)
    return out
