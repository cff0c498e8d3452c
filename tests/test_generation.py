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


# ---------------------------------------------------------------------------------------------
# sample_stream: the batched sampler
# ---------------------------------------------------------------------------------------------

from mambaseq.generation import StreamSample, _ChunkSampler, sample_stream  # noqa: E402
from mambaseq.models import SashimiConfig, SashimiLM  # noqa: E402

TINY = torch.finfo(torch.float32).tiny


def _sashimi(vocab_size=32):
    torch.manual_seed(0)
    model = SashimiLM(SashimiConfig.from_preset("sashimi-tiny", vocab_size=vocab_size))
    with torch.no_grad():
        model.embedding.weight.mul_(20)  # logits of order 1, as in _model
        model.lm_head.weight.mul_(5)
    return model.eval()


def _stream_model(kind):
    if kind == "mamba":
        torch.manual_seed(0)
        return _model()
    return _sashimi()


def _reference_stream(model, prompt, n_new, sampling, seed, chunk, vocab_limit):
    """The plain loop: prefill, then sample_next and model.step one token at a time, with the noise
    contract of sample_stream (one Exp(1) draw of (chunk, batch, vocab) per chunk of samples)."""
    generator = torch.Generator().manual_seed(seed)
    batch = prompt.shape[0]
    cache = model.allocate_cache(batch)
    with torch.no_grad():
        logits = model(prompt, cache=cache)[:, -1, :vocab_limit]
        tokens, log_likelihood, noise = [], torch.zeros(batch, dtype=torch.float64), None
        for i in range(n_new):
            if i % chunk == 0 and sampling.temperature > 0:
                noise = torch.empty(chunk, batch, vocab_limit).exponential_(generator=generator).clamp_min_(TINY)
            token = sample_next(logits, sampling, noise=None if noise is None else noise[i % chunk])
            log_likelihood += torch.log_softmax(logits.float(), -1)[torch.arange(batch), token].double()
            tokens.append(token)
            logits = model.step(token, cache)[:, :vocab_limit]
    return torch.stack(tokens, 1), log_likelihood


def _stream(model, prompt, n_new, sampling, seed, **kwargs):
    return sample_stream(model, prompt, n_new, sampling, torch.Generator().manual_seed(seed), **kwargs)


@pytest.mark.parametrize("kind", ["mamba", "sashimi"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("with_prompt", [True, False])
def test_sample_stream_equals_reference_loop(kind, batch, with_prompt):
    model = _stream_model(kind)
    vocab = model.config.vocab_size
    # Prompt of 5: the chunks do not start at a multiple of SashimiLM's period (16); 40 new
    # samples: two full chunks and a partial one.
    prompt = torch.randint(0, vocab, (batch, 5), generator=torch.Generator().manual_seed(1)) if with_prompt else None
    sampling = SamplingConfig(temperature=1.0)
    result = _stream(model, prompt, 40, sampling, seed=3, batch_size=batch, start_token=2)
    reference_prompt = prompt if with_prompt else torch.full((batch, 1), 2)
    tokens, log_likelihood = _reference_stream(model, reference_prompt, 40, sampling, 3, 16, vocab)
    assert isinstance(result, StreamSample)
    assert result.tokens.shape == (batch, 40)
    assert torch.equal(result.tokens, tokens)
    # Without a prompt the sampler prefills the start token once at batch 1 (the reference at batch
    # `batch`): the float32 logits may differ in the last bit.
    torch.testing.assert_close(result.log_likelihood, log_likelihood, rtol=1e-7, atol=1e-7)
    assert result.prompt_len == reference_prompt.shape[1]
    assert not result.used_cuda_graph


@pytest.mark.parametrize("kind", ["mamba", "sashimi"])
@pytest.mark.parametrize("sampling", [SamplingConfig(temperature=1.0), SamplingConfig(temperature=0.7, top_k=5),
                                      SamplingConfig(temperature=1.3, top_p=0.8)])
def test_stream_log_likelihood_equals_full_forward(kind, sampling):
    # Independent of the step path: one forward over prompt + samples, log_softmax at temperature 1.
    model = _stream_model(kind)
    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (2, 7), generator=torch.Generator().manual_seed(4))
    result = _stream(model, prompt, 37, sampling, seed=5)
    with torch.no_grad():
        full = model(torch.cat([prompt, result.tokens], 1))[:, 6:-1, :vocab]
    expected = torch.log_softmax(full.double(), -1).gather(2, result.tokens[..., None])[..., 0].sum(1)
    torch.testing.assert_close(result.log_likelihood, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", ["mamba", "sashimi"])
def test_stream_log_likelihood_without_prompt_excludes_start_token(kind):
    model = _stream_model(kind)
    vocab = model.config.vocab_size
    result = _stream(model, None, 20, SamplingConfig(), seed=6, batch_size=2, start_token=3)
    sequence = torch.cat([torch.full((2, 1), 3), result.tokens], 1)
    with torch.no_grad():
        full = model(sequence)[:, :-1, :vocab]
    expected = torch.log_softmax(full.double(), -1).gather(2, result.tokens[..., None])[..., 0].sum(1)
    torch.testing.assert_close(result.log_likelihood, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", ["mamba", "sashimi"])
def test_greedy_stream_is_argmax_of_full_forward(kind):
    model = _stream_model(kind)
    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (3, 6), generator=torch.Generator().manual_seed(7))
    result = _stream(model, prompt, 35, SamplingConfig(temperature=0), seed=0)
    with torch.no_grad():
        full = model(torch.cat([prompt, result.tokens], 1))[:, 5:-1, :vocab]
    assert torch.equal(result.tokens, full.argmax(-1))


def test_greedy_stream_does_not_depend_on_chunk():
    model = _sashimi()
    prompt = torch.randint(0, 32, (2, 3), generator=torch.Generator().manual_seed(8))
    a = _stream(model, prompt, 50, SamplingConfig(temperature=0), seed=0, chunk=16)
    b = _stream(model, prompt, 50, SamplingConfig(temperature=0), seed=0, chunk=48)
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.log_likelihood, b.log_likelihood, rtol=1e-12, atol=1e-12)


def test_stream_same_seed_same_output_different_seed_different():
    model = _sashimi()
    a = _stream(model, None, 30, SamplingConfig(), seed=11, batch_size=2)
    b = _stream(model, None, 30, SamplingConfig(), seed=11, batch_size=2)
    c = _stream(model, None, 30, SamplingConfig(), seed=12, batch_size=2)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.log_likelihood, b.log_likelihood)
    assert not torch.equal(a.tokens, c.tokens)


def test_shared_prompt_is_prefilled_once_for_all_streams():
    # A (1, P) prompt with batch_size n gives the streams of the (n, P) prompt of n copies.
    model = _sashimi()
    prompt = torch.randint(0, 32, (1, 9), generator=torch.Generator().manual_seed(9))
    shared = _stream(model, prompt, 24, SamplingConfig(), seed=2, batch_size=3)
    copied = _stream(model, prompt.expand(3, -1), 24, SamplingConfig(), seed=2)
    assert torch.equal(shared.tokens, copied.tokens)
    torch.testing.assert_close(shared.log_likelihood, copied.log_likelihood, rtol=1e-6, atol=1e-6)


def test_stream_never_emits_ids_beyond_vocab_limit():
    model = _model(vocab_size=13, tie_embeddings=False)
    with torch.no_grad():
        model.lm_head.weight[13:] = 0
        model.lm_head.weight[13:, 0] = 1e3  # padded rows would win by far
    result = _stream(model, None, 40, SamplingConfig(temperature=2.0), seed=0, batch_size=4)
    assert int(result.tokens.max()) < 13
    assert torch.isfinite(result.log_likelihood).all()


def test_stream_progress_is_reported_every_k_samples():
    model = _model()
    calls = []
    _stream(model, None, 100, SamplingConfig(), seed=0, on_progress=calls.append, progress_every=32)
    # Chunks of 16: reported after 32, 64, 96 and at the end.
    assert calls == [32, 64, 96, 100]


def test_stream_zero_new_tokens():
    model = _model()
    result = _stream(model, None, 0, SamplingConfig(), seed=0, batch_size=2)
    assert result.tokens.shape == (2, 0)
    assert torch.equal(result.log_likelihood, torch.zeros(2, dtype=torch.float64))


def test_chunk_keeps_every_cache_tensor_at_its_pinned_address():
    # What a CUDA graph relies on: SashimiLM replaces `pending` and `upsampled` at each step, and the
    # sampler must copy them back into the tensors the graph was captured with.
    from mambaseq.models.cache import get_slot, tensor_slots

    model = _sashimi()
    cache = model.allocate_cache(2)
    with torch.no_grad():
        logits = model(torch.zeros(2, 3, dtype=torch.long), cache=cache)[:, -1]
        sampler = _ChunkSampler(model, cache, logits, SamplingConfig(), 32, 16)
        before = [(get_slot(h, k), get_slot(h, k).data_ptr()) for h, k in tensor_slots(cache)]
        sampler.run_chunk(16)
    after = [get_slot(h, k) for h, k in tensor_slots(cache)]
    assert len(before) == len(after) == 2 * (3 + 2) + 2 * 2  # 5 blocks x (conv, ssm) + 2 stages x 2 buffers
    assert all(a is t and a.data_ptr() == ptr for (t, ptr), a in zip(before, after, strict=True))
    assert cache.seqlen_offset == 3 + 16


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(use_cuda_graph=True), "CUDA"),
    (dict(chunk=12), "period"),
    (dict(start_token=32), "start_token"),
    (dict(batch_size=2, prompt=torch.zeros(3, 4, dtype=torch.long)), "rows"),
    (dict(prompt=torch.full((1, 4), 40)), "prompt ids"),
    (dict(prompt=torch.zeros(4, dtype=torch.long)), "prompt"),
])
def test_stream_rejects_bad_arguments(kwargs, match):
    model = _sashimi()
    prompt = kwargs.pop("prompt", None)
    with pytest.raises(ValueError, match=match):
        _stream(model, prompt, 8, SamplingConfig(), seed=0, **kwargs)


def test_exponential_race_samples_the_softmax_distribution():
    generator = torch.Generator().manual_seed(0)
    logits = torch.tensor([[1.0, 0.0, -1.0, 2.0, 0.5]])
    draws = 200_000
    noise = torch.empty(draws, 5).exponential_(generator=generator)
    ids = sample_next(logits.expand(draws, -1), SamplingConfig(), noise=noise)
    frequencies = torch.bincount(ids, minlength=5).double() / draws
    expected = torch.softmax(logits[0].double(), -1)
    # Standard error of each frequency is at most 0.0012: 5 of them are a generous margin.
    assert (frequencies - expected).abs().max() < 0.006


@pytest.mark.parametrize("sampling", [SamplingConfig(top_k=3), SamplingConfig(top_p=0.5)])
def test_exponential_race_never_draws_filtered_tokens(sampling):
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 20, generator=generator)
    kept = torch.softmax(logits, -1)
    for _ in range(20):
        # Noise clamped as sample_stream clamps it: a tiny draw must not revive a filtered token.
        noise = torch.empty(64, 20).exponential_(generator=generator).clamp_min_(TINY)
        noise[:, ::2] = TINY
        ids = sample_next(logits, sampling, noise=noise)
        if sampling.top_k:
            assert (logits.topk(3, -1).indices == ids[:, None]).any(-1).all()
        else:
            probs, order = kept.sort(-1, descending=True)
            allowed = (probs.cumsum(-1) - probs) < 0.5
            allowed_ids = [set(order[r][allowed[r]].tolist()) for r in range(64)]
            assert all(int(ids[r]) in allowed_ids[r] for r in range(64))


# GPU: the CUDA graph path against the eager path of the same function.

def _cuda_model(kind):
    return _stream_model(kind).cuda()


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["mamba", "sashimi"])
@pytest.mark.parametrize("sampling", [SamplingConfig(temperature=0), SamplingConfig(temperature=1.0),
                                      SamplingConfig(temperature=0.8, top_k=5),
                                      SamplingConfig(temperature=1.0, top_p=0.9)])
def test_cuda_graph_equals_eager(kind, sampling):
    model = _cuda_model(kind)
    prompt = torch.randint(0, model.config.vocab_size, (3, 5), generator=torch.Generator().manual_seed(0))
    runs = {}
    for graph in (False, True):
        generator = torch.Generator(device="cuda").manual_seed(21)
        runs[graph] = sample_stream(model, prompt, 150, sampling, generator, use_cuda_graph=graph)
    assert runs[True].used_cuda_graph and not runs[False].used_cuda_graph
    assert torch.equal(runs[True].tokens, runs[False].tokens)
    torch.testing.assert_close(runs[True].log_likelihood, runs[False].log_likelihood, rtol=1e-6, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["mamba", "sashimi"])
def test_cuda_graph_same_seed_same_output(kind):
    model = _cuda_model(kind)
    runs = [sample_stream(model, None, 200, SamplingConfig(), torch.Generator(device="cuda").manual_seed(5),
                          batch_size=4) for _ in range(2)]
    assert runs[0].used_cuda_graph
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert torch.equal(runs[0].log_likelihood, runs[1].log_likelihood)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["mamba", "sashimi"])
def test_cuda_graph_log_likelihood_equals_full_forward(kind):
    model = _cuda_model(kind)
    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (2, 7), device="cuda")
    result = sample_stream(model, prompt, 100, SamplingConfig(), torch.Generator(device="cuda").manual_seed(1))
    assert result.used_cuda_graph
    with torch.no_grad():
        full = model(torch.cat([prompt, result.tokens], 1))[:, 6:-1, :vocab]
    expected = torch.log_softmax(full.double(), -1).gather(2, result.tokens[..., None])[..., 0].sum(1)
    torch.testing.assert_close(result.log_likelihood, expected, rtol=1e-4, atol=1e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["mamba", "sashimi"])
def test_sampling_loop_never_synchronises(kind):
    # The per-chunk work, eager and replayed, under CUDA's sync debug mode set to raise.
    model = _cuda_model(kind)
    cache = model.allocate_cache(4)
    with torch.no_grad():
        logits = model(torch.zeros(4, 3, dtype=torch.long, device="cuda"), cache=cache)[:, -1]
        sampler = _ChunkSampler(model, cache, logits, SamplingConfig(top_p=0.9), model.config.vocab_size, 16)
        graph = sampler.capture(cache.seqlen_offset)
        generator = torch.Generator(device="cuda").manual_seed(0)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                sampler.draw_noise(generator)
                sampler.run_chunk(16)
                sampler.draw_noise(generator)
                graph.replay()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_expanded_cache_is_stacked_with_identical_rows():
    from mambaseq.generation import _expand_cache

    model = _sashimi()
    cache = model.allocate_cache(1)
    with torch.no_grad():
        model(torch.randint(0, 32, (1, 7)), cache=cache)
    big = _expand_cache(model, cache, 3)
    assert big.seqlen_offset == 7 and big.batch_size == 3
    for small, states in [(cache.center, big.center), (cache.stages[1].up, big.stages[1].up)]:
        assert states.intact() and states.conv.shape[1] == 3
        assert torch.equal(states.ssm, small.ssm.expand_as(states.ssm))
    assert torch.equal(big.stages[0].pending, cache.stages[0].pending.expand(3, -1, -1))


def test_sampler_keeps_layer_states_views_of_the_stacked_cache():
    # The fused stack step writes the stacked tensor: the pinned layer states must alias it.
    model = _sashimi()
    cache = model.allocate_cache(2)
    with torch.no_grad():
        logits = model(torch.zeros(2, 3, dtype=torch.long), cache=cache)[:, -1]
        _ChunkSampler(model, cache, logits, SamplingConfig(), 32, 16).run_chunk(16)
    for states in [cache.center, *(s for stage in cache.stages for s in (stage.down, stage.up))]:
        assert states.intact()
        assert all(state.ssm.data_ptr() == states.ssm[l].data_ptr() for l, state in enumerate(states))


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["mamba", "sashimi"])
def test_cuda_graph_fused_stack_step_equals_per_block(kind, monkeypatch):
    # The fused stack step (one launch per stack) inside the captured chunk gives the tokens of
    # the block-by-block step.
    model = _cuda_model(kind)
    runs = {}
    for value in ("0", "1"):
        monkeypatch.setenv("MAMBASEQ_STACK_STEP", value)
        generator = torch.Generator(device="cuda").manual_seed(3)
        runs[value] = sample_stream(model, None, 160, SamplingConfig(), generator, batch_size=4)
        assert runs[value].used_cuda_graph
    assert torch.equal(runs["1"].tokens, runs["0"].tokens)
    torch.testing.assert_close(runs["1"].log_likelihood, runs["0"].log_likelihood, rtol=1e-5, atol=1e-3)
