"""Host-side helpers of the Triton wrappers (`kernels.device`) against Triton's own."""

from __future__ import annotations

import pytest
import triton

from mambaseq.kernels.device import cdiv, next_power_of_2


@pytest.mark.parametrize("b", [1, 3, 32, 64, 1000])
def test_cdiv_matches_triton(b):
    assert [cdiv(a, b) for a in range(0, 5000, 7)] == [triton.cdiv(a, b) for a in range(0, 5000, 7)]


def test_next_power_of_2_matches_triton():
    assert [next_power_of_2(n) for n in range(0, 5000)] == [triton.next_power_of_2(n) for n in range(0, 5000)]
