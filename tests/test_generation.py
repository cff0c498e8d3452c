from __future__ import annotations

import pytest
import torch
from torch import nn

from mambaseq.config import MambaConfig
from mambaseq.generation import SamplingConfig, generate, sample_next
from mambaseq.models import MambaLM


def _model(vocab_size=13, **overrides):
    # vocab 13 pads to 16: the padded rows must never be sampled.
    config = MambaConfig(**{**dict(d_model=32, n_layer=2, vocab_size=vocab_size, d_state=8), **overrides})
    model = MambaLM(config)
    with torch.no_grad():
        # Logits of order 1 (the init gives ~0.1): sampling at temperature 1 is neither
        # near-uniform nor near-deterministic, and greedy argmaxes are well separated.
        model.backbone.embedding.weight.mul_(5)
    return model.eval()


def _prompt(model, batch=3, length=5):
    return torch.randint(0, model.config.vocab_size, (batch, length))


def _rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize(("batch", "prompt_len", "new"), [(1, 1, 6), (3, 5, 8), (2, 9, 1)])
def test_greedy_logits_match_full_forward(batch, prompt_len, new):
    model = _model()
    prompt = _prompt(model, batch, prompt_len)
    vocab = model.config.vocab_size
    out, logits = generate(model, prompt, new, SamplingConfig(temperature=0), return_logits=True)
    assert out.shape == (batch, prompt_len + new)
    assert logits.shape == (batch, new, vocab)
    assert torch.equal(out[:, :prompt_len], prompt)
    with torch.no_grad():
        full = model(out)
    for i in range(new):
        expected = full[:, prompt_len - 1 + i, :vocab]
        assert _rel_err(logits[:, i], expected) <= 1e-5, f"new token {i}"


def test_greedy_tokens_are_argmax_of_returned_logits():
    model = _model()
    prompt = _prompt(model)
    out, logits = generate(model, prompt, 8, SamplingConfig(temperature=0), return_logits=True)
    assert torch.equal(out[:, prompt.shape[1]:], logits.argmax(-1))


def test_greedy_tokens_are_argmax_of_full_forward():
    model = _model()
    prompt = _prompt(model)
    L = prompt.shape[1]
    out = generate(model, prompt, 8, SamplingConfig(temperature=0))
    with torch.no_grad():
        full = model(out)[:, L - 1:-1, : model.config.vocab_size]
    assert torch.equal(out[:, L:], full.argmax(-1))


def test_without_return_logits_returns_tokens_only():
    model = _model()
    prompt = _prompt(model)
    out = generate(model, prompt, 4, SamplingConfig(temperature=0))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (prompt.shape[0], prompt.shape[1] + 4)


def test_zero_new_tokens():
    model = _model()
    prompt = _prompt(model)
    out, logits = generate(model, prompt, 0, return_logits=True)
    assert torch.equal(out, prompt)
    assert logits.shape == (prompt.shape[0], 0, model.config.vocab_size)


def _sample(model, prompt, seed, **sampling):
    generator = torch.Generator().manual_seed(seed)
    return generate(model, prompt, 24, SamplingConfig(**sampling), generator=generator)


def test_same_seed_gives_same_sample():
    model = _model()
    prompt = _prompt(model)
    assert torch.equal(_sample(model, prompt, 1234, temperature=1.0),
                       _sample(model, prompt, 1234, temperature=1.0))


def test_different_seeds_give_different_samples():
    model = _model()
    prompt = _prompt(model)
    assert not torch.equal(_sample(model, prompt, 1, temperature=1.0),
                           _sample(model, prompt, 2, temperature=1.0))


def test_top_k_one_equals_greedy():
    model = _model()
    prompt = _prompt(model)
    greedy = generate(model, prompt, 12, SamplingConfig(temperature=0))
    sampled = generate(model, prompt, 12, SamplingConfig(temperature=1.0, top_k=1),
                       generator=torch.Generator().manual_seed(7))
    assert torch.equal(sampled, greedy)


def test_tiny_top_p_equals_greedy():
    model = _model()
    prompt = _prompt(model)
    greedy = generate(model, prompt, 12, SamplingConfig(temperature=0))
    sampled = generate(model, prompt, 12, SamplingConfig(temperature=1.0, top_p=1e-6),
                       generator=torch.Generator().manual_seed(7))
    assert torch.equal(sampled, greedy)


@pytest.mark.parametrize("sampling", [
    SamplingConfig(temperature=0),
    SamplingConfig(temperature=1.0),
    SamplingConfig(temperature=5.0),
    SamplingConfig(temperature=1.0, top_k=3),
    SamplingConfig(temperature=1.0, top_p=0.5),
])
def test_generate_never_emits_padded_vocab_ids(sampling):
    model = _model(vocab_size=13, tie_embeddings=False)
    head = nn.Linear(model.config.d_model, model.config.padded_vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        # Make the padded rows (13..15) the most likely by far.
        head.bias.zero_()
        head.bias[13:] = 100.0
    model.lm_head = head
    prompt = _prompt(model, batch=4)
    out = generate(model, prompt, 16, sampling, generator=torch.Generator().manual_seed(0))
    assert int(out.max()) < 13


@pytest.mark.parametrize("vocab_limit", [1, 5, 13])
@pytest.mark.parametrize("sampling", [
    SamplingConfig(temperature=0),
    SamplingConfig(temperature=1.0),
    SamplingConfig(temperature=2.0, top_k=4),
    SamplingConfig(temperature=1.0, top_p=0.9),
])
def test_sample_next_never_exceeds_vocab_limit(vocab_limit, sampling):
    # generate() slices logits to vocab_limit before calling sample_next; the padded ids get
    # the largest logits so any leak would show.
    generator = torch.Generator().manual_seed(vocab_limit)
    logits = torch.randn(64, 16, generator=generator)
    logits[:, vocab_limit:] += 100.0
    for _ in range(5):
        ids = sample_next(logits[:, :vocab_limit], sampling, generator)
        assert ids.shape == (64,)
        assert int(ids.min()) >= 0 and int(ids.max()) < vocab_limit


def test_generate_respects_explicit_vocab_limit():
    model = _model(vocab_size=13)
    prompt = _prompt(model)
    out, logits = generate(model, prompt, 16, SamplingConfig(temperature=3.0), return_logits=True,
                           generator=torch.Generator().manual_seed(3), vocab_limit=4)
    assert logits.shape[-1] == 4
    assert int(out[:, prompt.shape[1]:].max()) < 4


def test_sample_next_greedy_is_argmax():
    logits = torch.randn(8, 20)
    assert torch.equal(sample_next(logits, SamplingConfig(temperature=0)), logits.argmax(-1))


def test_sample_next_top_k_stays_in_top_k():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 20, generator=generator)
    top3 = logits.topk(3, dim=-1).indices
    for _ in range(10):
        ids = sample_next(logits, SamplingConfig(temperature=10.0, top_k=3), generator)
        assert (top3 == ids[:, None]).any(-1).all()


@pytest.mark.parametrize("kwargs", [
    dict(temperature=-0.1),
    dict(top_k=-1),
    dict(top_p=0.0),
    dict(top_p=-0.5),
    dict(top_p=1.01),
])
def test_sampling_config_rejects_bad_values(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        SamplingConfig(**kwargs)


@pytest.mark.parametrize("shape", [(5,), (2, 0), (1, 2, 3), ()])
def test_prompt_of_wrong_shape_raises(shape):
    model = _model()
    with pytest.raises(ValueError, match="prompt"):
        generate(model, torch.zeros(shape, dtype=torch.long), 3)
