"""Chunked training: the loss and gradients of the whole batch, one chunk in memory at a time."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from helpers import flat_grads, mean_nll_grads, rel_err

from mambaseq import MambaConfig, kernels
from mambaseq.models import MambaLM, SashimiConfig, SashimiLM
from mambaseq.training import lm_module
from mambaseq.training.chunked import chunked_nll
from mambaseq.training.lm_module import CausalLMModule

VOCAB = 12


def _perturbed(model):
    with torch.no_grad():  # off the init's round values, so every parameter's gradient matters
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


def _model(**overrides) -> MambaLM:
    config = MambaConfig(**{**dict(d_model=16, n_layer=2, vocab_size=VOCAB, d_state=4, d_conv=4), **overrides})
    return _perturbed(MambaLM(config))


def _sashimi(**overrides) -> SashimiLM:
    config = SashimiConfig(**{**dict(d_model=8, n_layer=[1, 1, 1], pool=[2, 2], vocab_size=VOCAB, d_state=4,
                                     d_conv=3, selective=[True, False, True]), **overrides})
    return _perturbed(SashimiLM(config))


def _plain_nll(model: MambaLM, inputs, targets):
    logits = model(inputs)[..., :VOCAB]
    return F.cross_entropy(logits.reshape(-1, VOCAB).float(), targets.reshape(-1), reduction="sum")


def _assert_chunks_equal_whole(model, rows: int, chunk_tokens: int) -> None:
    ids = torch.randint(0, VOCAB, (rows, 30))
    inputs, targets = ids[:, :-1], ids[:, 1:]
    plain_loss, plain_grads = _loss_and_grads(model, lambda: _plain_nll(model, inputs, targets))
    loss, grads = _loss_and_grads(model, lambda: chunked_nll(model, inputs, targets, chunk_tokens, VOCAB))
    assert rel_err(loss, plain_loss) < 1e-6
    assert rel_err(grads, plain_grads) < 1e-5


def _loss_and_grads(model, loss_fn):
    model.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    return loss.detach(), flat_grads(model)


@pytest.mark.parametrize("chunk_tokens", [1, 5, 16, 29, 58, 64])
@pytest.mark.parametrize("overrides", [{}, dict(selective=False), dict(bias=True, d_conv=2)],
                         ids=["selective", "time-invariant", "bias-conv2"])
def test_chunked_loss_and_gradients_equal_the_whole_batch(seed, chunk_tokens, overrides):
    # L = 29 is a multiple of no chunk length but itself: the last chunk is short. Gradients of the
    # early chunks reach them only through the carried states, so a cut there would show. 58 and 64
    # take two rows at a time (the last group one row).
    _assert_chunks_equal_whole(_model(**overrides), 3, chunk_tokens)


@pytest.mark.parametrize("chunk_tokens", [1, 3, 5, 16])
def test_sashimi_chunks_equal_the_whole_window(seed, chunk_tokens):
    # Chunk boundaries off the pooling grid (1, 3, 5) leave pending rows in the cache; their gradients,
    # and those of the up-sampled rows, must flow back into the earlier chunks. Inner stages then see
    # single positions, which must take the differentiable path, not the in-place step.
    _assert_chunks_equal_whole(_sashimi(), 2, chunk_tokens)


@pytest.mark.parametrize("make", [_model, _sashimi], ids=["mamba", "sashimi"])
def test_masked_targets_do_not_count(seed, make):
    model = make()
    ids = torch.randint(0, VOCAB, (3, 26))
    inputs, targets = ids[:, :-1], ids[:, 1:]
    mask = torch.rand(3, 25) < 0.7

    def plain():
        logits = model(inputs)[..., :VOCAB]
        return F.cross_entropy(logits[mask].float(), targets[mask], reduction="sum")

    plain_loss, plain_grads = _loss_and_grads(model, plain)
    loss, grads = _loss_and_grads(model, lambda: chunked_nll(model, inputs, targets, 6, VOCAB, mask=mask))
    assert rel_err(loss, plain_loss) < 1e-6
    assert rel_err(grads, plain_grads) < 1e-5


def test_chunks_that_drop_the_state_gradient_would_differ(seed):
    # The check above can fail: detaching the states between chunks (truncated backprop) moves
    # the gradients well past its tolerance.
    model = _model()
    ids = torch.randint(0, VOCAB, (2, 33))
    inputs, targets = ids[:, :-1], ids[:, 1:]
    _, plain_grads = _loss_and_grads(model, lambda: _plain_nll(model, inputs, targets))

    def truncated():
        cache, total = model.allocate_cache(2, dtype=torch.float32), 0
        for start in range(0, 32, 8):
            cache = cache.detach()
            logits = model(inputs[:, start:start + 8], cache)[..., :VOCAB]
            total = total + F.cross_entropy(logits.reshape(-1, VOCAB), targets[:, start:start + 8].reshape(-1),
                                            reduction="sum")
        return total

    _, grads = _loss_and_grads(model, truncated)
    assert rel_err(grads, plain_grads) > 1e-3


def test_chunked_gradients_through_the_triton_kernels(seed, monkeypatch):
    # The CUDA path: Triton conv and scan, gradients through their initial states (interpreted on a
    # CPU-only machine, at a small shape).
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = _model(n_layer=1).to(device)
    ids = torch.randint(0, VOCAB, (1, 20), device=device)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    _, plain_grads = _loss_and_grads(model, lambda: _plain_nll(model, inputs, targets))
    monkeypatch.setattr(kernels, "_dispatch", lambda op, dev: kernels._triton_op(op))
    _, grads = _loss_and_grads(model, lambda: chunked_nll(model, inputs, targets, 7, VOCAB))
    assert rel_err(grads, plain_grads) < 1e-4


def test_short_windows_go_a_few_rows_at_a_time(seed, monkeypatch):
    # Windows of 10 tokens at 25 tokens per chunk: 2 rows per piece, 3 pieces for 5 rows.
    model = _model()
    ids = torch.randint(0, VOCAB, (5, 11))
    inputs, targets = ids[:, :-1], ids[:, 1:]
    shapes = []
    forward = MambaLM.forward

    def spy(self, input_ids, cache=None):
        shapes.append(tuple(input_ids.shape))
        return forward(self, input_ids, cache)

    _, plain_grads = _loss_and_grads(model, lambda: _plain_nll(model, inputs, targets))
    monkeypatch.setattr(MambaLM, "forward", spy)
    shapes.clear()
    _, grads = _loss_and_grads(model, lambda: chunked_nll(model, inputs, targets, 25, VOCAB))
    assert shapes[:3] == [(2, 10), (2, 10), (1, 10)]  # then the same three again, recomputed in backward
    assert rel_err(grads, plain_grads) < 1e-5


def test_module_trains_in_chunks_and_validates_whole(seed, monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        calls.append(args[3])
        return chunked_nll(*args, **kwargs)

    monkeypatch.setattr(lm_module, "chunked_nll", spy)
    module = CausalLMModule(_model().config.to_dict(), chunk_tokens=16)
    batch = torch.randint(0, VOCAB, (2, 25))
    module._nll(batch)
    assert calls == [16]
    with torch.no_grad():
        module._nll(batch, torch.ones(2, dtype=torch.bool))
    assert calls == [16]


def test_module_with_chunks_gives_the_plain_gradients(seed):
    config = _model().config.to_dict()
    plain, chunked = CausalLMModule(config), CausalLMModule(config, chunk_tokens=6)
    chunked.model.load_state_dict(plain.model.state_dict())
    batch = torch.randint(0, VOCAB, (2, 21))
    grads = [mean_nll_grads(module, batch) for module in (plain, chunked)]
    assert rel_err(grads[1], grads[0]) < 1e-5


@pytest.mark.parametrize("value", [0, -4, 2.5, True])
def test_bad_chunk_tokens_is_refused(value):
    with pytest.raises(ValueError, match="chunk_tokens"):
        CausalLMModule(_model().config.to_dict(), chunk_tokens=value)


def test_chunked_nll_needs_a_streaming_model():
    with pytest.raises(TypeError, match="streaming cache"):
        chunked_nll(torch.nn.Linear(2, 2), torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long), 2)


@pytest.mark.gpu
def test_chunked_training_memory_stays_at_one_chunk(seed):
    """On the GPU under bf16 autocast: the same gradients as the whole window, and the peak memory of
    a 2^16 window trained in 2^12 chunks a small fraction of the plain one's."""
    model = MambaLM(MambaConfig.from_preset("dna-1.4m", vocab_size=VOCAB)).cuda()
    ids = torch.randint(7, 11, (1, 2**16 + 1), device="cuda")
    inputs, targets = ids[:, :-1], ids[:, 1:]
    peaks, grads = [], []
    for loss_fn in (lambda: _plain_nll(model, inputs, targets),
                    lambda: chunked_nll(model, inputs, targets, 2**12, VOCAB)):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, g = _loss_and_grads(model, loss_fn)
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() - base)
        grads.append(g)
    assert peaks[1] < peaks[0] / 4, peaks
    assert rel_err(grads[1], grads[0]) < 2e-2
