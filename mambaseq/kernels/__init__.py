"""The math of mambaseq: one public function per op, dispatched to a fast path or the reference.

Tensor layout, the same for every backend (see `reference.py` for the full contract):

    selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True,
                   initial_state=None, return_final_state=False) -> y | (y, final_state)
        u, delta, z: (batch, dim, L); A: (dim, d_state); B, C: (batch, n_groups, d_state, L)
        or (dim, d_state); D, delta_bias: (dim,); states: (batch, dim, d_state) fp32.
    causal_conv1d(x, weight, bias=None, activation=None, initial_state=None,
                  return_final_state=False) -> y | (y, final_state)
        x: (batch, dim, L); weight: (dim, width); states: (batch, dim, width - 1).
    causal_conv1d_update(x, conv_state, weight, bias=None, activation=None) -> y
        x: (batch, dim); conv_state updated in place.
    selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                           dt_softplus=True) -> y
        x, dt, z: (batch, dim); B, C: (batch, n_groups, d_state); state updated in place.
    mamba_stack_step(residual, weights, conv_state, ssm_state) -> residual
        one position through a whole stack of Mamba blocks (RMSNorm) in one call: residual
        (batch, d_model); weights: StackWeights; conv_state (n_layer, batch, dim, width - 1) and
        ssm_state (n_layer, batch, dim, d_state) fp32 updated in place.
    sample_token(logits, noise, temperature, tokens, log_likelihood) -> tokens
        one sample per row (exponential race with Exp(1) noise; greedy without) written into
        tokens (batch,) int64, its log-probability at temperature 1 added to log_likelihood
        (batch,) float64; logits, noise: (batch, vocab).

Backend choice: CUDA tensors take the Triton kernel of an op when one is registered, everything
else the PyTorch reference. `MAMBASEQ_KERNELS=reference|triton` forces one (`auto`, the default,
chooses by device).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

import torch

from . import reference
from .stack_weights import StackWeights

OPS = ("selective_scan", "causal_conv1d", "causal_conv1d_update", "selective_state_update", "mamba_stack_step",
       "sample_token")
ENV_VAR = "MAMBASEQ_KERNELS"
CHOICES = ("auto", "reference", "triton")

# The reference used on each op's CPU path. For the scan it is the chunked version: the
# sequential `selective_scan_ref` is the specification the tests hold it to.
_REFERENCE: dict[str, Callable[..., Any]] = {
    "selective_scan": reference.selective_scan_chunked,
    "causal_conv1d": reference.causal_conv1d_ref,
    "causal_conv1d_update": reference.causal_conv1d_update_ref,
    "selective_state_update": reference.selective_state_update_ref,
    "mamba_stack_step": reference.mamba_stack_step_ref,
    "sample_token": reference.sample_token_ref,
}

# Triton fast paths: op -> module of this package that defines a function of the op's name.
# Imported on first use, so `import mambaseq` stays light and works without triton. (A module
# must not carry an op's own name: importing it would rebind that name on this package.)
_TRITON_MODULES: dict[str, str] = {
    "selective_scan": "selective_scan_triton",
    "causal_conv1d": "conv1d",
    "causal_conv1d_update": "conv1d",
    "selective_state_update": "state_update",
    "mamba_stack_step": "stack_step",
    "sample_token": "token_sampler",
}
_TRITON: dict[str, Callable[..., Any]] = {}


class KernelBackendError(RuntimeError):
    """The requested backend cannot run an op on the given device."""


def _triton_op(op: str) -> Callable[..., Any] | None:
    if op not in _TRITON and op in _TRITON_MODULES and triton_version() is not None:
        module = importlib.import_module(f".{_TRITON_MODULES[op]}", __name__)
        _TRITON[op] = getattr(module, op)
    return _TRITON.get(op)


def requested_backend() -> str:
    choice = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise KernelBackendError(f"{ENV_VAR}={choice!r} is not one of {', '.join(CHOICES)}")
    return choice


def triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def backend_for(op: str, device: torch.device | str) -> str:
    """Name of the backend `op` takes for tensors on `device`: 'reference' or 'triton'."""
    device = torch.device(device)
    choice = requested_backend()
    if choice == "reference":
        return "reference"
    has_kernel = _triton_op(op) is not None
    available = has_kernel and device.type == "cuda"
    if choice == "triton" and not available:
        why = ("this build has no Triton kernel for it" if not has_kernel
               else f"Triton kernels run on CUDA tensors, not {device.type}")
        raise KernelBackendError(f"{ENV_VAR}=triton but {op} cannot use Triton: {why}")
    return "triton" if available else "reference"


def _dispatch(op: str, device: torch.device) -> Callable[..., Any]:
    return _TRITON[op] if backend_for(op, device) == "triton" else _REFERENCE[op]


def backend_report(devices: list[str] | None = None) -> dict[str, dict[str, str]]:
    """{device: {op: backend}} for the CPU and every visible CUDA device, as `mambaseq info` shows."""
    if devices is None:
        devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    report = {}
    for device in devices:
        row = {}
        for op in OPS:
            try:
                row[op] = backend_for(op, device)
            except KernelBackendError as err:
                row[op] = f"error: {err}"
        report[device] = row
    return report


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True,
                   initial_state=None, return_final_state=False):
    return _dispatch("selective_scan", u.device)(
        u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
        initial_state=initial_state, return_final_state=return_final_state)


def causal_conv1d(x, weight, bias=None, activation=None, initial_state=None, return_final_state=False):
    return _dispatch("causal_conv1d", x.device)(
        x, weight, bias=bias, activation=activation, initial_state=initial_state,
        return_final_state=return_final_state)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None):
    return _dispatch("causal_conv1d_update", x.device)(x, conv_state, weight, bias=bias,
                                                       activation=activation)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True):
    return _dispatch("selective_state_update", x.device)(
        state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)


def mamba_stack_step(residual, weights, conv_state, ssm_state):
    return _dispatch("mamba_stack_step", residual.device)(residual, weights, conv_state, ssm_state)


def sample_token(logits, noise, temperature, tokens, log_likelihood):
    return _dispatch("sample_token", logits.device)(logits, noise, temperature, tokens, log_likelihood)


for _op in OPS:
    globals()[_op].__doc__ = _REFERENCE[_op].__doc__

__all__ = [
    "CHOICES",
    "ENV_VAR",
    "OPS",
    "KernelBackendError",
    "StackWeights",
    "backend_for",
    "backend_report",
    "causal_conv1d",
    "causal_conv1d_update",
    "mamba_stack_step",
    "requested_backend",
    "sample_token",
    "selective_scan",
    "selective_state_update",
    "triton_version",
]
