"""The Triton selective scan against the float64 sequential loop: values and every gradient.

On a CPU-only machine these run under TRITON_INTERPRET=1 (set in conftest) at small shapes; the
GPU-marked tests repeat them at real shapes on CUDA.
"""

from __future__ import annotations

import pytest
import torch
from helpers import rel_err

pytest.importorskip("triton")

from mambaseq.kernels.reference import selective_scan_chunked, selective_scan_ref
from mambaseq.kernels.selective_scan_triton import selective_scan as selective_scan_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}


def make_inputs(batch, dim, d_state, L, groups=1, dtype=torch.float32, const_b=False, const_c=False,
                device=DEVICE, with_state=True):
    def rnd(*shape, dt=dtype):
        return torch.randn(*shape, device=device, dtype=dt)

    return dict(
        u=rnd(batch, dim, L),
        delta=rnd(batch, dim, L) * 0.5,
        A=-torch.rand(dim, d_state, device=device) * 4 - 0.1,
        B=rnd(dim, d_state, dt=torch.float32) if const_b else rnd(batch, groups, d_state, L),
        C=rnd(dim, d_state, dt=torch.float32) if const_c else rnd(batch, groups, d_state, L),
        D=rnd(dim, dt=torch.float32),
        z=rnd(batch, dim, L),
        delta_bias=rnd(dim, dt=torch.float32) * 0.5,
        initial_state=rnd(batch, dim, d_state, dt=torch.float32) if with_state else None,
    )


def check(x, dtype, backward=True, final_grad=True, **kwargs):
    """Run Triton and the float64 loop on the same inputs; compare outputs and gradients (with
    `final_grad` False, only y reaches the loss, as in a model that drops the final state)."""
    present = {k: v for k, v in x.items() if v is not None}
    leaves = {k: v.clone().requires_grad_(backward) for k, v in present.items()}
    y, s = selective_scan_triton(**leaves, return_final_state=True, **kwargs)
    # The float64 loop on the CPU at interpreter sizes; at GPU sizes the float64 chunked reference
    # on the GPU (held to the loop by tests/kernels/test_reference.py), as the loop takes minutes.
    on_gpu = x["u"].is_cuda
    reference = selective_scan_chunked if on_gpu else selective_scan_ref
    ref_leaves = {k: v.detach().double().requires_grad_(backward) for k, v in present.items()}
    y_ref, s_ref = reference(**ref_leaves, return_final_state=True, delta_softplus=kwargs.get("delta_softplus", True))
    assert y.dtype == x["u"].dtype and s.dtype == torch.float32
    assert rel_err(y, y_ref) < TOL[dtype]
    assert rel_err(s, s_ref) < max(TOL[dtype] / 10, 1e-5)
    if not backward:
        return
    dy = torch.randn_like(y_ref)
    ds = torch.randn_like(s_ref) if final_grad else torch.zeros_like(s_ref)
    ((y.double() * dy).sum() + (s.double() * ds).sum() if final_grad else (y.double() * dy).sum()).backward()
    ((y_ref * dy).sum() + (s_ref * ds).sum()).backward()
    for name in present:
        grad = leaves[name].grad
        assert grad is not None and grad.dtype == present[name].dtype, name
        assert rel_err(grad, ref_leaves[name].grad) < TOL[dtype] * 5, name


@pytest.mark.parametrize("batch,dim,d_state,L,chunk_len", [
    (1, 4, 4, 1, None),     # a single step
    (2, 8, 16, 37, None),   # odd L, one chunk
    (1, 8, 16, 100, 32),    # several chunks; last chunk and last tile partial
    (2, 6, 5, 45, 16),      # dim and d_state not powers of two
])
def test_matches_reference(seed, batch, dim, d_state, L, chunk_len):
    check(make_inputs(batch, dim, d_state, L), torch.float32, chunk_len=chunk_len, block_l=8, bwd_block_t=16)


def test_default_tiles(seed):
    check(make_inputs(1, 8, 4, 50), torch.float32)


@pytest.mark.parametrize("block_t,block_d,chunk_len", [
    (16, 4, 12),   # chunk length rounds up to whole backward tiles
    (4, 1, 16),    # a backward tile shorter than the forward's: raised to it
    (32, 8, 64),   # dim 6 in blocks of 8: masked channels
])
def test_backward_tiles(seed, block_t, block_d, chunk_len):
    check(make_inputs(1, 6, 4, 70), torch.float32, chunk_len=chunk_len, block_l=8, bwd_block_t=block_t,
          bwd_block_d=block_d)


@pytest.mark.parametrize("groups", [1, 3])
def test_backward_channel_blocks_split_over_programs(seed, monkeypatch, groups):
    # 3 channel blocks in 2 splits: one program walks two blocks (its dB/dC copy accumulates), the
    # other one block and one past the end.
    from mambaseq.kernels import selective_scan_triton as sst

    monkeypatch.setattr(sst, "_num_splits", lambda plan, device: 2)
    check(make_inputs(2, 12, 4, 40, groups=groups), torch.float32, chunk_len=16, block_l=8, bwd_block_t=16,
          bwd_block_d=4)


def test_no_states_saved_without_gradients(seed):
    # Inference keeps nothing for a backward; the output is the same.
    x = make_inputs(1, 4, 4, 40)
    with torch.no_grad():
        y0 = selective_scan_triton(**x, block_l=8, bwd_block_t=16)
    leaves = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    y1 = selective_scan_triton(**leaves, block_l=8, bwd_block_t=16)
    assert y1.grad_fn is not None and torch.equal(y0, y1.detach())


@pytest.mark.parametrize("groups", [2, 4])
def test_groups(seed, groups):
    check(make_inputs(2, 8, 4, 40, groups=groups), torch.float32, chunk_len=16, block_l=8, bwd_block_t=16)


@pytest.mark.parametrize("const_b,const_c", [(True, False), (False, True), (True, True)])
def test_constant_b_c(seed, const_b, const_c):
    check(make_inputs(1, 8, 4, 33, const_b=const_b, const_c=const_c), torch.float32, chunk_len=16, block_l=8,
          bwd_block_t=16)


@pytest.mark.parametrize("drop", ["D", "z", "delta_bias", "initial_state"])
def test_optional_inputs(seed, drop):
    x = make_inputs(1, 4, 4, 20)
    x[drop] = None
    check(x, torch.float32, block_l=8, bwd_block_t=16)


@pytest.mark.parametrize("chunk_len", [None, 16])
@pytest.mark.parametrize("with_state", [True, False])
def test_final_state_without_gradient(seed, chunk_len, with_state):
    check(make_inputs(1, 6, 4, 40, with_state=with_state), torch.float32, final_grad=False, chunk_len=chunk_len,
          block_l=8, bwd_block_t=16)


def test_without_softplus(seed):
    x = make_inputs(1, 4, 4, 20)
    x["delta"] = x["delta"].abs()
    check(x, torch.float32, delta_softplus=False, block_l=8, bwd_block_t=16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(seed, dtype):
    check(make_inputs(1, 8, 8, 50, dtype=dtype), dtype, chunk_len=32, block_l=8, bwd_block_t=16)


def test_strided_views_like_the_model_makes(seed):
    # x and z as halves of one projection output laid out (batch, L, 2*dim), seen as (batch, 2*dim, L).
    batch, dim, d_state, L = 2, 8, 4, 24
    x = make_inputs(batch, dim, d_state, L)
    xz = torch.randn(batch, L, 2 * dim, device=DEVICE).transpose(1, 2)
    x["u"], x["z"] = xz[:, :dim], xz[:, dim:]
    check(x, torch.float32, block_l=8, bwd_block_t=16)


def test_outputs_are_fully_written(seed):
    # Different chunkings of the same inputs agree: no element comes from stale memory.
    x = make_inputs(1, 4, 4, 70)
    outs = [selective_scan_triton(**x, chunk_len=c, block_l=8, bwd_block_t=16) for c in (16, 32, 70)]
    assert all(torch.isfinite(o).all() for o in outs)
    assert rel_err(outs[0], outs[2]) < 1e-6 and rel_err(outs[1], outs[2]) < 1e-6


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("batch,dim,L,dtype", [
    (2, 256, 4096, torch.float32),
    (1, 512, 2048, torch.bfloat16),
    (1, 64, 65536, torch.float32),   # long L: several parallel chunks
    (4, 96, 1000, torch.float16),
])
def test_gpu_real_shapes(seed, batch, dim, L, dtype):
    check(make_inputs(batch, dim, 16, L, dtype=dtype), dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_groups_and_long_chunks(seed):
    check(make_inputs(2, 128, 16, 20000, groups=4), torch.float32, chunk_len=2048)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_offsets_beyond_int32(seed):
    # batch x dim x L = 2^31: offsets into u, delta, z and their gradients pass int32 for the last
    # channels. Channels are independent apart from dB and dC, so those channels alone must give
    # the same outputs and gradients.
    x = make_inputs(1, 1024, 16, 2**21, dtype=torch.bfloat16, with_state=False)
    x["delta"] = x["delta"] - 3.0  # short memory: chunk boundaries do not matter for the check
    last = slice(1016, 1024)
    parts = {"u": x["u"][:, last], "delta": x["delta"][:, last], "z": x["z"][:, last], "A": x["A"][last],
             "D": x["D"][last], "delta_bias": x["delta_bias"][last], "B": x["B"], "C": x["C"]}
    dy = torch.randn_like(x["u"])
    results = []
    for inputs, grad_out in ((x, dy), (parts, dy[:, last])):
        leaves = {k: v.clone().requires_grad_(k in ("u", "delta", "z")) for k, v in inputs.items() if v is not None}
        y = selective_scan_triton(**leaves)
        y.backward(grad_out)
        results.append([y[:, -8:].float()] + [leaves[k].grad[:, -8:].float() for k in ("u", "delta", "z")])
        del y, leaves
    for full, alone in zip(results[0], results[1], strict=True):
        assert torch.isfinite(full).all() and rel_err(full, alone) < 2e-2
