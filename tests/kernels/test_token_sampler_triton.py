"""The Triton token sampler against its reference (`sample_token_ref`), on the CPU through Triton's
interpreter and on the GPU: the same token per row for the same noise, the same log-likelihood."""

from __future__ import annotations

import pytest
import torch

from mambaseq.kernels.reference import sample_token_ref
from mambaseq.kernels.token_sampler import sample_token

TINY = torch.finfo(torch.float32).tiny


def _inputs(batch: int, vocab: int, padded: int, dtype: torch.dtype, device: str, chunk: int = 4):
    # Logits as generation holds them: a slice of a padded vocabulary (rows strided); tokens as a
    # column of the chunk's (batch, chunk) table; a running log-likelihood that is not zero.
    logits = (3 * torch.randn(batch, padded, device=device)).to(dtype)[:, :vocab]
    noise = torch.empty(batch, vocab, device=device).exponential_().clamp_min_(TINY)
    table = torch.full((batch, chunk), -1, dtype=torch.long, device=device)
    log_likelihood = torch.randn(batch, dtype=torch.float64, device=device)
    return logits, noise, table, log_likelihood


def _both(logits, noise, temperature, table, log_likelihood, column=1):
    ours_table, ours_ll = table.clone(), log_likelihood.clone()
    ref_table, ref_ll = table.clone(), log_likelihood.clone()
    sample_token(logits, noise, temperature, ours_table[:, column], ours_ll)
    sample_token_ref(logits, noise, temperature, ref_table[:, column], ref_ll)
    return (ours_table, ours_ll), (ref_table, ref_ll)


@pytest.mark.parametrize("batch,vocab,padded", [(1, 256, 256), (3, 5, 8), (5, 300, 320)])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference(seed, batch, vocab, padded, temperature, dtype):
    logits, noise, table, log_likelihood = _inputs(batch, vocab, padded, dtype, "cpu")
    (ours_table, ours_ll), (ref_table, ref_ll) = _both(logits, noise, temperature, table, log_likelihood)
    assert torch.equal(ours_table, ref_table)  # the other columns untouched, too
    torch.testing.assert_close(ours_ll, ref_ll, rtol=0, atol=1e-5)


def test_greedy_without_noise_is_first_argmax(seed):
    # Ties: every row's maximum appears twice; torch.argmax takes the first.
    logits = torch.randn(4, 16)
    logits[:, 3] = logits[:, 11] = 10.0
    tokens, log_likelihood = torch.empty(4, dtype=torch.long), torch.zeros(4, dtype=torch.float64)
    sample_token(logits, None, 1.0, tokens, log_likelihood)
    assert tokens.tolist() == [3, 3, 3, 3]
    torch.testing.assert_close(log_likelihood, torch.log_softmax(logits, -1)[:, 3].double(), rtol=0, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("batch,vocab,padded", [(1, 256, 256), (256, 256, 256), (7, 300, 320)])
@pytest.mark.parametrize("temperature", [1.0, 0.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference_on_gpu(seed, batch, vocab, padded, temperature, dtype):
    logits, noise, table, log_likelihood = _inputs(batch, vocab, padded, dtype, "cuda")
    (ours_table, ours_ll), (ref_table, ref_ll) = _both(logits, noise, temperature, table, log_likelihood)
    # The GPU's log is not torch's to the last bit: a row may differ only where its two best scores
    # are that close.
    scores = logits.float() if temperature == 0 else logits.float() / temperature - noise.log()
    top2 = scores.topk(2, -1).values
    near_tie = (top2[:, 0] - top2[:, 1]) < 1e-5 * top2[:, 0].abs().clamp_min(1)
    differ = ours_table[:, 1] != ref_table[:, 1]
    assert not (differ & ~near_tie).any()
    same = ~differ
    torch.testing.assert_close(ours_ll[same], ref_ll[same], rtol=0, atol=1e-5)
