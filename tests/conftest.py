from __future__ import annotations

import os

import torch

# Without a GPU, Triton kernels run on the CPU through Triton's interpreter. It must be chosen
# before any kernel is defined, so here, before the tests import mambaseq's kernel modules.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest


@pytest.fixture
def seed() -> int:
    """A fresh random seed per test (shown in the failure report), so inputs differ every run."""
    value = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    torch.manual_seed(value)
    return value
