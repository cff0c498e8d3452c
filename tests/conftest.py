from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture
def seed() -> int:
    """A fresh random seed per test (shown in the failure report), so inputs differ every run."""
    value = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    torch.manual_seed(value)
    return value
