"""On a GPU, the Triton kernels give bitwise the same outputs and gradients when run twice on the same
inputs: none of them adds with atomics, so a difference would mean a race (a value read before
another program or thread wrote it). Same-seed training runs on the H100 differed by about 0.03
bits/base after 500 steps (RESULTS.md, session 9); these tests tell the kernels' part.

The CPU interpreter runs programs one after another, so these checks mean something only on CUDA.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from mambaseq import MambaConfig
from mambaseq.kernels.conv1d import causal_conv1d
from mambaseq.kernels.selective_scan_triton import selective_scan
from mambaseq.models import MambaMixer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _twice(fn, inputs: dict, dout: torch.Tensor) -> list[list[torch.Tensor]]:
    """Outputs and input gradients of two calls of fn(**inputs) on the same inputs and output gradient."""
    runs = []
    for _ in range(2):
        leaves = {k: v.detach().clone().requires_grad_(v.is_floating_point()) for k, v in inputs.items()}
        out, final = fn(**leaves)
        torch.autograd.backward([out, final], [dout, torch.ones_like(final)])
        runs.append([out.detach(), final.detach()] + [leaves[k].grad for k in sorted(leaves)])
    return runs


def _assert_bitwise_equal(runs: list[list[torch.Tensor]]) -> None:
    for i, (a, b) in enumerate(zip(*runs, strict=True)):
        assert a is not None and b is not None and torch.equal(a, b), f"tensor {i} differs between runs"


@pytest.mark.parametrize("batch,dim,L,dtype", [
    (1, 256, 2**16, torch.bfloat16),  # chunks run in parallel, channel blocks split over programs
    (2, 512, 4096, torch.float32),
])
def test_selective_scan_is_repeatable(seed, batch, dim, L, dtype):
    def rnd(*shape, dt=dtype):
        return torch.randn(*shape, device="cuda", dtype=dt)

    inputs = dict(u=rnd(batch, dim, L), delta=rnd(batch, dim, L) * 0.5,
                  A=-torch.rand(dim, 16, device="cuda") - 0.1, B=rnd(batch, 1, 16, L), C=rnd(batch, 1, 16, L),
                  D=rnd(dim, dt=torch.float32), z=rnd(batch, dim, L), delta_bias=rnd(dim, dt=torch.float32),
                  initial_state=rnd(batch, dim, 16, dt=torch.float32))
    runs = _twice(lambda **x: selective_scan(**x, return_final_state=True), inputs, rnd(batch, dim, L))
    _assert_bitwise_equal(runs)


def test_causal_conv1d_is_repeatable(seed):
    x = torch.randn(2, 512, 4096, device="cuda")
    inputs = dict(x=x, weight=torch.randn(512, 4, device="cuda"), bias=torch.randn(512, device="cuda"),
                  initial_state=torch.randn(2, 512, 3, device="cuda"))
    runs = _twice(lambda **a: causal_conv1d(**a, activation="silu", return_final_state=True), inputs,
                  torch.randn_like(x))
    _assert_bitwise_equal(runs)


def test_mixer_gradients_are_repeatable(seed):
    mixer = MambaMixer(MambaConfig(d_model=256, n_layer=1, vocab_size=12, d_state=16)).cuda()
    x = torch.randn(2, 4096, 256, device="cuda")
    grads = []
    for _ in range(2):
        mixer.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = mixer(x)
        out.float().square().mean().backward()
        grads.append([p.grad.clone() for p in mixer.parameters()])
    _assert_bitwise_equal(grads)
