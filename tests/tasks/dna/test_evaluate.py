"""Bits/base by context length within a window (`mambaseq eval dna --by-position`)."""

from __future__ import annotations

import math

import pytest
import torch

from mambaseq.tasks.dna.evaluate import position_bands


def test_bands_average_the_positions_they_cover():
    # Two windows; per window, the bases predicted from 1..5 preceding bases cost 1..5 bits.
    position_nll = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64) * 2 * math.log(2)
    bands = position_bands(position_nll, windows=2)
    assert [(b["context_from"], b["context_to"], b["tokens"]) for b in bands] == [(1, 1, 2), (2, 3, 4), (4, 5, 4)]
    assert [b["bits_per_base"] for b in bands] == pytest.approx([1.0, 2.5, 4.5])


@pytest.mark.parametrize("seq_len", [1, 2, 7, 8, 1000])
def test_bands_cover_every_position_once(seq_len):
    bands = position_bands(torch.ones(seq_len, dtype=torch.float64), windows=3)
    covered = [c for b in bands for c in range(b["context_from"], b["context_to"] + 1)]
    assert covered == list(range(1, seq_len + 1))
    assert sum(b["tokens"] for b in bands) == 3 * seq_len
