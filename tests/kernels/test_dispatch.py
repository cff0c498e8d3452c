"""Backend choice by device and MAMBASEQ_KERNELS."""

from __future__ import annotations

import pytest
import torch

import mambaseq.kernels as kernels
from mambaseq.kernels import KernelBackendError, backend_for, backend_report


@pytest.fixture
def fake_triton_scan(monkeypatch):
    calls = []

    def fake(*args, **kwargs):
        calls.append(args)
        return "fast"

    monkeypatch.setitem(kernels._TRITON, "selective_scan", fake)
    return calls


@pytest.mark.parametrize("choice", ["", "auto", "reference"])
def test_cpu_takes_reference(monkeypatch, choice):
    monkeypatch.setenv("MAMBASEQ_KERNELS", choice)
    assert all(backend_for(op, "cpu") == "reference" for op in kernels.OPS)


@pytest.fixture
def no_triton_conv(monkeypatch):
    monkeypatch.delitem(kernels._TRITON_MODULES, "causal_conv1d")
    monkeypatch.delitem(kernels._TRITON, "causal_conv1d", raising=False)


def test_cuda_takes_registered_triton_kernel(monkeypatch, fake_triton_scan, no_triton_conv):
    monkeypatch.delenv("MAMBASEQ_KERNELS", raising=False)
    assert backend_for("selective_scan", "cuda:0") == "triton"
    assert backend_for("causal_conv1d", "cuda:0") == "reference"  # no Triton kernel for it
    assert backend_for("selective_scan", "cpu") == "reference"


@pytest.mark.parametrize("op", ["selective_scan", "causal_conv1d", "causal_conv1d_update", "selective_state_update",
                                "mamba_stack_step"])
def test_every_op_has_a_triton_kernel_for_cuda(monkeypatch, op):
    pytest.importorskip("triton")
    monkeypatch.delenv("MAMBASEQ_KERNELS", raising=False)
    assert backend_for(op, "cuda:0") == "triton"


def test_reference_can_be_forced_on_cuda(monkeypatch, fake_triton_scan):
    monkeypatch.setenv("MAMBASEQ_KERNELS", "reference")
    assert backend_for("selective_scan", "cuda:0") == "reference"


def test_forced_triton_without_kernel_is_an_error(monkeypatch, no_triton_conv):
    monkeypatch.setenv("MAMBASEQ_KERNELS", "triton")
    with pytest.raises(KernelBackendError, match="causal_conv1d"):
        backend_for("causal_conv1d", "cuda:0")


def test_forced_triton_on_cpu_is_an_error(monkeypatch, fake_triton_scan):
    monkeypatch.setenv("MAMBASEQ_KERNELS", "triton")
    with pytest.raises(KernelBackendError, match="CUDA tensors"):
        backend_for("selective_scan", "cpu")


def test_unknown_choice_is_an_error(monkeypatch):
    monkeypatch.setenv("MAMBASEQ_KERNELS", "cuda")
    with pytest.raises(KernelBackendError, match="MAMBASEQ_KERNELS"):
        backend_for("selective_scan", "cpu")


def test_public_op_calls_the_chosen_backend(monkeypatch, fake_triton_scan):
    # Dispatch goes by the tensor's device: a CPU tensor never reaches the fake fast path.
    monkeypatch.delenv("MAMBASEQ_KERNELS", raising=False)
    u = torch.randn(1, 2, 3)
    y = kernels.selective_scan(u, u, -torch.ones(2, 4), torch.randn(1, 4, 3), torch.randn(1, 4, 3))
    assert isinstance(y, torch.Tensor) and not fake_triton_scan


def test_report_covers_every_op_and_device():
    report = backend_report(["cpu", "cuda:0"])
    assert set(report) == {"cpu", "cuda:0"}
    assert all(set(row) == set(kernels.OPS) for row in report.values())


def test_stack_step_dispatches_by_device(monkeypatch):
    calls = []
    monkeypatch.setitem(kernels._TRITON, "mamba_stack_step", lambda *args: calls.append(args))
    monkeypatch.setitem(kernels._REFERENCE, "mamba_stack_step", lambda *args: "reference")
    monkeypatch.delenv("MAMBASEQ_KERNELS", raising=False)
    assert kernels.mamba_stack_step(torch.zeros(1, 4), None, None, None) == "reference" and not calls
