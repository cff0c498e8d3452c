"""Sampling from a Mamba LM or SashimiLM in step mode: prefill the prompt with one full forward, then step.

`generate` is the simple loop (DNA); `sample_stream` the batched sampler for long streams (audio):
everything stays on the device, no host synchronisation per sample, and on CUDA the per-sample
work is replayed from a CUDA graph.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .kernels import sample_token
from .kernels.reference import record_token
from .models import InferenceCache, MambaLM
from .models.cache import get_slot, set_slot, tensor_slots


@dataclass
class SamplingConfig:
    """temperature 0 means greedy; top_k 0 and top_p 1.0 switch those filters off."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not (0 <= self.temperature < math.inf):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def sample_next(logits: Tensor, config: SamplingConfig, generator: torch.Generator | None = None,
                noise: Tensor | None = None) -> Tensor:
    """logits: (batch, vocab) -> token ids (batch,).

    Without `noise`, draws with torch.multinomial (which waits for the device on CUDA). With
    `noise`, (batch, vocab) independent Exp(1) draws (> 0), it is the exponential race instead:
    argmax_i p_i / E_i is distributed as Categorical(p), since E_i / p_i ~ Exp(rate p_i) and the
    smallest of independent exponentials is i with probability p_i / sum(p); taken in log space,
    argmax_i logits_i / temperature - log E_i (the softmax's normaliser changes no argmax). Same
    distribution, but no host synchronisation and no hidden RNG, so it can run inside a CUDA graph.
    """
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
    if noise is not None:  # in log space, as kernels.sample_token races: no probability underflows to 0
        return (logits - noise.log()).argmax(-1)
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)


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


# ----------------------------------------------------------------------------------------------
# Batched stream sampler: everything on the device, no per-sample host synchronisation, and on
# CUDA the per-sample work replayed from a CUDA graph.
#
# SashimiLM's step does different work at different positions: stage s runs its inner stage only
# when a coarse step completes, which `_stream_stage` decides in Python from the position, so the
# work of a sample depends on its position mod prod(pool) (the model's period; 1 for MambaLM). The
# sampler captures ONE graph covering a chunk of `chunk` consecutive samples, `chunk` a multiple of
# the period, starting at the position right after the prompt: capture runs the Python branches of
# those positions, and since every chunk starts at the same phase, replaying it is right for every
# full chunk. Rather than one graph per phase: one launch per chunk instead of one per sample, one
# memory pool, and no replay order to keep. The price: a last partial chunk (n_new mod chunk
# samples) runs eagerly, through the same function, and noise is drawn a chunk at a time.
# ----------------------------------------------------------------------------------------------

CHUNK_TARGET = 16  # samples per chunk (one graph replay, one noise draw) when the model has no period
WARMUP_CHUNKS = 2  # eager chunks run before capture: compiles the Triton kernels, settles cuBLAS
_TINY = torch.finfo(torch.float32).tiny


@dataclass
class StreamSample:
    """What `sample_stream` returns.

    tokens: (batch, n_new) int64, the generated ids only (the prompt is not repeated here).
    log_likelihood: (batch,) float64, the sum over the generated tokens of log p(token | everything
        before it) in nats, under the model itself: temperature 1, no top-k/top-p, normalised over
        ids < vocab_limit. It does not depend on the sampling settings used to draw the tokens
        (`sampling` records those), so it compares across settings.
    prompt_len: positions consumed before the first generated token (the prompt, or 1 for the
        start token when there was no prompt).
    used_cuda_graph: whether full chunks were replayed from a CUDA graph.
    timings: seconds spent in "prefill", "setup" (buffers, warm-up and capture) and "loop";
        on CUDA each is measured between device synchronisations.
    """

    tokens: Tensor
    log_likelihood: Tensor
    sampling: SamplingConfig
    prompt_len: int
    used_cuda_graph: bool
    timings: dict[str, float] = field(default_factory=dict)


def _own(tensor: Tensor) -> Tensor:
    return tensor if tensor.is_contiguous() else tensor.contiguous().clone()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _ChunkSampler:
    """Static buffers and the work of `chunk` consecutive samples, which a CUDA graph can capture.

    A CUDA graph replays fixed kernels on fixed addresses, so every tensor the per-sample work
    reads across samples lives in a buffer fixed here: the cache tensors (pinned: a model
    step that replaces a cache tensor instead of updating it, as SashimiLM does with `pending` and
    `upsampled`, has its result copied back into the pinned one), the logits of the next sample, the
    exponential noise of the chunk, the chunk's tokens and the running log-likelihood. `run_chunk`
    is the one function both paths execute: called directly (eager) or captured once and replayed.
    """

    def __init__(self, model: nn.Module, cache: Any, logits: Tensor, sampling: SamplingConfig,
                 vocab_limit: int, chunk: int) -> None:
        self.model, self.cache, self.sampling = model, cache, sampling
        self.vocab_limit, self.chunk = vocab_limit, chunk
        self.slots = tensor_slots(cache)
        # The cache's own tensors (the cache is this sampler's), not copies: a layer state may be a
        # view into a stacked tensor that the fused stack step updates (models.cache.StackedStates),
        # and a copy would cut it off. Only a non-contiguous one (none the models make) is copied.
        self.pinned = [_own(get_slot(h, k)) for h, k in self.slots]
        self.restore_slots()
        batch, device = logits.shape[0], logits.device
        self.logits = logits.contiguous().clone()  # (batch, padded vocab): predicts the next sample
        # Exponential noise for the exponential race (see sample_next); refilled before each chunk.
        self.noise = (torch.ones(chunk, batch, vocab_limit, device=device)
                      if sampling.temperature > 0 else None)
        self.tokens = torch.zeros(batch, chunk, dtype=torch.long, device=device)
        self.log_likelihood = torch.zeros(batch, dtype=torch.float64, device=device)

    def restore_slots(self) -> None:
        """Point the cache at the pinned tensors again (their contents are not touched)."""
        for (holder, key), pinned in zip(self.slots, self.pinned, strict=True):
            set_slot(holder, key, pinned)

    def _pin(self) -> None:
        for (holder, key), pinned in zip(self.slots, self.pinned, strict=True):
            current = get_slot(holder, key)
            if current is not pinned:
                pinned.copy_(current)
                set_slot(holder, key, pinned)

    def buffers(self) -> list[Tensor]:
        """Every buffer the chunk writes (what a warm-up must put back)."""
        return [*self.pinned, self.logits, self.tokens, self.log_likelihood]

    def draw_noise(self, generator: torch.Generator | None) -> None:
        """One draw of (chunk, batch, vocab_limit) Exp(1) noise, clamped away from 0 so that a
        filtered-out token (probability 0) can never win the race through 0 / 0."""
        if self.noise is not None:
            self.noise.exponential_(generator=generator).clamp_min_(_TINY)

    def run_chunk(self, steps: int) -> None:
        """`steps` (<= chunk) samples: sample from `logits`, record, step the model on the sample.

        The model steps after every sample, the last included, so the cache always ends up having
        consumed every token written. No host synchronisation: positions are Python ints and the
        tensors never leave the device.
        """
        plain = self.sampling.top_k == 0 and self.sampling.top_p == 1.0
        for j in range(steps):
            logits = self.logits[:, : self.vocab_limit]
            noise = None if self.noise is None else self.noise[j]
            if plain:  # one fused op on CUDA: draw, score and record (kernels.sample_token)
                token = sample_token(logits, noise, self.sampling.temperature, self.tokens[:, j], self.log_likelihood)
            else:  # the model's own log-likelihood all the same: temperature 1, no filtering
                token = record_token(logits, sample_next(logits, self.sampling, noise=noise), self.tokens[:, j],
                                     self.log_likelihood)
            self.logits.copy_(self.model.step(token, self.cache))
            self._pin()

    def capture(self, offset: int) -> torch.cuda.CUDAGraph:
        """A CUDA graph of one full chunk starting at stream position `offset` (mod the model's
        period). Warm-up chunks run eagerly on a side stream first, so every Triton kernel is
        compiled (none autotunes; if one did, it would settle here too, never inside the capture,
        where its trial launches would update the state in place) and cuBLAS has its workspaces;
        the buffers are put back afterwards, so the warm-up leaves no trace in the output."""
        device = self.logits.device
        saved = [b.clone() for b in self.buffers()]
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        try:
            with torch.cuda.stream(side):
                for _ in range(WARMUP_CHUNKS):
                    self.cache.seqlen_offset = offset
                    self.run_chunk(self.chunk)
        finally:
            torch.cuda.current_stream(device).wait_stream(side)
            self.restore_slots()
            for buffer, value in zip(self.buffers(), saved, strict=True):
                buffer.copy_(value)
            del saved
        graph = torch.cuda.CUDAGraph()
        self.cache.seqlen_offset = offset
        try:
            with torch.cuda.graph(graph):
                self.run_chunk(self.chunk)
        finally:
            # Capture runs no kernel: the buffers hold what they held; only the Python-side
            # references may point at tensors of an unfinished capture.
            self.restore_slots()
            self.cache.seqlen_offset = offset
        return graph


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _expand_cache(model: nn.Module, cache: Any, batch: int) -> Any:
    """A cache of `batch` rows, each a copy of batch-1 `cache`.

    Allocated by the model and filled in place rather than by replacing the tensors of `cache`,
    which would break states that are views into a stacked tensor (models.cache.StackedStates).
    """
    expanded = model.allocate_cache(batch)
    for (holder, key), (big_holder, big_key) in zip(tensor_slots(cache), tensor_slots(expanded), strict=True):
        target = get_slot(big_holder, big_key)
        target.copy_(get_slot(holder, key).expand_as(target))
    expanded.seqlen_offset = cache.seqlen_offset
    return expanded


@torch.no_grad()
def sample_stream(
    model: nn.Module,
    prompt: Tensor | None,
    n_new: int,
    sampling: SamplingConfig | None = None,
    generator: torch.Generator | None = None,
    *,
    batch_size: int | None = None,
    start_token: int = 0,
    vocab_limit: int | None = None,
    chunk: int | None = None,
    use_cuda_graph: bool | None = None,
    on_progress: Callable[[int], None] | None = None,
    progress_every: int = 2048,
) -> StreamSample:
    """Sample `n_new` tokens for each of many streams at once, in step mode.

    model: a MambaLM or SashimiLM (anything with `forward(ids, cache)`, `step(ids, cache)` and
        `allocate_cache(batch)`), in eval mode.
    prompt: (batch, P) ids, P >= 1, on any device; or (1, P) with `batch_size` = n for n streams of
        one prompt (prefilled once, the state copied); or None: each stream starts from the single
        token `start_token` (`batch_size` streams, default 1), which conditions the model but is
        not part of the output or of the log-likelihood.
    sampling: temperature / top-k / top-p (temperature 0: greedy). Tokens are drawn among ids
        < `vocab_limit` (default: the model's vocab_size; padded rows are never drawn).
    generator: for the noise, on the model's device. The draws: before each chunk of `chunk`
        samples, one `exponential_` of a (chunk, batch, vocab_limit) float32 tensor, clamped to
        float32's smallest normal number, whose row j drives sample j of the chunk through
        `sample_next(..., noise=row)`; a last, partial chunk draws a full chunk too. Greedy
        sampling draws nothing. Same generator state, same device: same tokens.
    chunk: samples per chunk, a multiple of the model's period (SashimiLM: prod(pool); default: the
        smallest multiple >= 16).
    use_cuda_graph: None: on CUDA, capture a chunk as a CUDA graph and replay it, falling back to
        eager with a warning if capture fails; True: must (an error otherwise); False: eager.
    on_progress: called with the number of samples done per stream, about every `progress_every`
        samples and at the end; each call waits for the device once (the only synchronisations in
        the loop).

    The prompt is prefilled with one forward; the first token is drawn from its last logits, and
    each next one from `model.step` on the previous. Returns a StreamSample.
    """
    sampling = sampling or SamplingConfig()
    device = _model_device(model)
    vocab_limit = vocab_limit or model.config.vocab_size
    if n_new < 0:
        raise ValueError(f"n_new must be >= 0, got {n_new}")
    if prompt is None:
        if not 0 <= start_token < vocab_limit:
            raise ValueError(f"start_token must be in [0, {vocab_limit}), got {start_token}")
        prompt = torch.full((1, 1), start_token, dtype=torch.long)
        batch_size = batch_size or 1
    if prompt.dim() != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must be (batch, P) with P >= 1, got {tuple(prompt.shape)}")
    batch = batch_size or prompt.shape[0]
    if batch < 1 or prompt.shape[0] not in (1, batch):
        raise ValueError(f"prompt has {prompt.shape[0]} rows for batch_size {batch}: give one row or {batch}")
    if prompt.numel() and not 0 <= int(prompt.min()) <= int(prompt.max()) < vocab_limit:
        raise ValueError(f"prompt ids must lie in [0, {vocab_limit})")
    period = int(getattr(model.config, "total_pool", 1))
    chunk = chunk or period * -(-CHUNK_TARGET // period)
    if chunk < 1 or chunk % period:
        raise ValueError(f"chunk must be a positive multiple of the model's period {period}, got {chunk}")
    if use_cuda_graph and device.type != "cuda":
        raise ValueError(f"use_cuda_graph=True needs a model on a CUDA device, not {device}")
    graph_wanted = device.type == "cuda" if use_cuda_graph is None else use_cuda_graph

    timings: dict[str, float] = {}
    clock = time.perf_counter()
    # Prefill: one forward over the prompt, once per distinct prompt (a shared one at batch 1).
    cache = model.allocate_cache(prompt.shape[0])
    logits = model(prompt.to(device), cache=cache)[:, -1]
    offset = cache.seqlen_offset
    if prompt.shape[0] != batch:
        cache = _expand_cache(model, cache, batch)
        logits = logits.expand(batch, -1)
    _sync(device)
    now = time.perf_counter()
    timings["prefill"], clock = now - clock, now

    sampler = _ChunkSampler(model, cache, logits, sampling, vocab_limit, chunk)
    graph = None
    if graph_wanted and n_new >= chunk:
        try:
            graph = sampler.capture(offset)
        except Exception as err:  # any capture failure means: run eagerly
            if use_cuda_graph:
                raise
            warnings.warn(f"CUDA graph capture failed, sampling without it: {err}", RuntimeWarning,
                          stacklevel=2)
    _sync(device)
    now = time.perf_counter()
    timings["setup"], clock = now - clock, now

    tokens = torch.empty(batch, n_new, dtype=torch.long, device=device)
    reported = 0
    for start in range(0, n_new, chunk):
        steps = min(chunk, n_new - start)
        sampler.draw_noise(generator)
        if graph is not None and steps == chunk:
            graph.replay()
        else:
            cache.seqlen_offset = offset + start  # the model's Python-side position (phase)
            sampler.run_chunk(steps)
        tokens[:, start: start + steps].copy_(sampler.tokens[:, :steps])
        done = start + steps
        if on_progress is not None and (done - reported >= progress_every or done == n_new):
            _sync(device)  # one wait per progress_every samples, so the count shown is real
            on_progress(done)
            reported = done
    cache.seqlen_offset = offset + n_new
    _sync(device)
    timings["loop"] = time.perf_counter() - clock
    return StreamSample(tokens, sampler.log_likelihood.clone(), sampling, offset, graph is not None, timings)
