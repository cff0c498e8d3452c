"""The recipe's `deterministic` option: PyTorch's deterministic algorithms during a run, the
process's settings as they were after it, and (on a GPU) bitwise-repeatable training."""

from __future__ import annotations

import os
from typing import ClassVar

import pytest
import torch

from mambaseq.training.lm_module import CausalLMModule


class Observed(CausalLMModule):
    """Records, at each training step, whether deterministic algorithms are on."""

    seen: ClassVar[list[bool]] = []

    def training_step(self, batch, batch_idx):
        Observed.seen.append(torch.are_deterministic_algorithms_enabled())
        return super().training_step(batch, batch_idx)


@pytest.fixture
def observed():
    Observed.seen = []
    return Observed


@pytest.mark.parametrize("deterministic", [True, False])
def test_training_steps_run_with_deterministic_algorithms_as_asked(tmp_path, tiny, observed, deterministic):
    assert not torch.are_deterministic_algorithms_enabled()
    tiny(tmp_path, observed, deterministic=deterministic, max_steps=3)
    assert observed.seen == [deterministic] * 3


def test_a_deterministic_run_leaves_the_process_settings_as_they_were(tmp_path, tiny):
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    tiny(tmp_path, deterministic=True, max_steps=2)
    assert not torch.are_deterministic_algorithms_enabled()
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == cublas


def test_a_run_without_it_keeps_the_callers_own_setting(tmp_path, tiny, observed):
    torch.use_deterministic_algorithms(True)
    try:
        tiny(tmp_path, observed, max_steps=2)
        assert observed.seen == [True, True]
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_two_deterministic_gpu_runs_give_bitwise_equal_weights(tmp_path, tiny):
    """Same seed, same data, bf16-mixed on the GPU, with the Triton kernels: equal to the last bit."""
    runs = [tiny(tmp_path / f"run{i}", deterministic=True, accelerator="gpu", max_steps=8)[1] for i in range(2)]
    first, second = (dict(m.named_parameters()) for m in runs)
    assert all(torch.equal(first[name], second[name]) for name in first)
