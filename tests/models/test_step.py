"""Step (recurrent) mode reproduces the full forward position by position."""

from __future__ import annotations

import pytest
import torch
from helpers import rel_err

from mambaseq import MambaConfig, MambaLM

CONFIGS = {
    "tiny": MambaConfig.from_preset("tiny"),
    "tiny-wide-state": MambaConfig.from_preset("tiny", d_state=32, d_conv=2, n_layer=3),
    "tiny-untied-layernorm": MambaConfig.from_preset("tiny", tie_embeddings=False, rms_norm=False, bias=True),
    "tiny-non-selective": MambaConfig.from_preset("tiny", selective=False),
}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("prefill", [1, 6])
def test_step_logits_match_forward(seed, name, prefill):
    model = MambaLM(CONFIGS[name]).eval()
    ids = torch.randint(0, 12, (3, 24))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(3)
        assert rel_err(model(ids[:, :prefill], cache=cache), full[:, :prefill]) <= 1e-5
        assert cache.seqlen_offset == prefill
        for t in range(prefill, 24):
            assert rel_err(model.step(ids[:, t], cache), full[:, t]) <= 1e-5, t
    assert cache.seqlen_offset == 24


@pytest.mark.parametrize("chunks", [[5, 5, 14], [1, 23], [24]])
def test_chunked_forward_with_cache_matches_one_shot(seed, chunks):
    model = MambaLM(CONFIGS["tiny"]).eval()
    ids = torch.randint(0, 12, (2, 24))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(2)
        parts, start = [], 0
        for size in chunks:
            parts.append(model(ids[:, start:start + size], cache=cache))
            start += size
    assert rel_err(torch.cat(parts, 1), full) <= 1e-5


def test_cache_reset_starts_over(seed):
    model = MambaLM(CONFIGS["tiny"]).eval()
    ids = torch.randint(0, 12, (1, 10))
    with torch.no_grad():
        cache = model.allocate_cache(1)
        first = model(ids, cache=cache)
        cache.reset()
        again = model(ids, cache=cache)
    assert torch.equal(first, again) and cache.seqlen_offset == 10
