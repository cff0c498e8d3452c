"""The fused stack-step Triton kernel against its reference: returned residual and both states
(updated in place), over consecutive steps, under the interpreter on CPU-only machines."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from helpers import rel_err

pytest.importorskip("triton")

from mambaseq.kernels import StackWeights
from mambaseq.kernels.reference import mamba_stack_step_ref
from mambaseq.kernels.stack_step import mamba_stack_step

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def random_weights(n_layer, d_model, d_state, d_conv, selective=True, bias=True, dtype=torch.float32, expand=2):
    """Fresh random StackWeights of a plausible scale (unit-variance projections, Δ around 0.05)."""
    di, R = expand * d_model, math.ceil(d_model / 16)

    def w(*shape, fan_in=1, fp32=False):
        t = torch.randn(n_layer, *shape, device=DEVICE) / math.sqrt(fan_in)
        return t if fp32 else t.to(dtype)

    def maybe(*shape):
        return 0.1 * w(*shape) if bias else None

    common = dict(
        norm_weight=(1 + 0.2 * w(d_model, fp32=True)).to(dtype), eps=1e-5,
        in_proj_weight=w(2 * di, d_model, fan_in=d_model), in_proj_bias=maybe(2 * di),
        conv_weight=w(di, d_conv, fan_in=d_conv), conv_bias=maybe(di),
        dt_bias=w(di, fp32=True) - 3.0, A=-torch.exp(0.5 * w(di, d_state, fp32=True)),
        D=w(di, fp32=True), out_proj_weight=w(d_model, di, fan_in=di), out_proj_bias=maybe(d_model),
    )
    if selective:
        return StackWeights(**common, x_proj_weight=w(R + 2 * d_state, di, fan_in=di),
                            dt_proj_weight=w(di, R, fan_in=R))
    return StackWeights(**common, B=w(di, d_state, fp32=True), C=w(di, d_state, fp32=True))


def random_states(w, batch, state_dtype):
    conv = torch.randn(w.n_layer, batch, w.d_inner, w.d_conv - 1, device=DEVICE).to(state_dtype)
    ssm = torch.randn(w.n_layer, batch, w.d_inner, w.d_state, device=DEVICE)
    return conv, ssm


def exact_weights(w):
    """The same weight values in fp32: the reference run on them rounds nothing to the model dtype."""
    return dataclasses.replace(w, **{f.name: getattr(w, f.name).float() for f in dataclasses.fields(w)
                                     if isinstance(getattr(w, f.name), torch.Tensor)})


def check_steps(w, batch, residual_dtype, tol, block_b=None, steps=3):
    """Steps the kernel and the reference side by side. In bf16 both round activations after every
    block, so over a deep stack two bf16 paths drift apart by about as much as either does from
    exact math (8 layers, 3 steps: ~1%); they are held to the fp32-math reference instead, and the
    kernel may be off it by at most `tol` or twice as much as the bf16 reference is."""
    conv, ssm = random_states(w, batch, w.dtype)
    conv_ref, ssm_ref = conv.clone(), ssm.clone()
    low = w.dtype != torch.float32
    w_exact, conv_exact, ssm_exact = (exact_weights(w), conv.float(), ssm.clone()) if low else (w, conv_ref, ssm_ref)
    for _ in range(steps):
        residual = torch.randn(batch, w.d_model, device=DEVICE).to(residual_dtype)
        out = mamba_stack_step(residual, w, conv, ssm, block_b=block_b)
        ref = mamba_stack_step_ref(residual, w, conv_ref, ssm_ref)
        exact = mamba_stack_step_ref(residual.float(), w_exact, conv_exact, ssm_exact) if low else ref
        assert out.dtype == residual_dtype
        for got, low_ref, want in ((out, ref, exact), (conv, conv_ref, conv_exact), (ssm, ssm_ref, ssm_exact)):
            assert rel_err(got, want) < max(tol, 2 * rel_err(low_ref, want))


# (d_model, n_layer, batch, d_conv, d_state, block_b): block_b None is the default heuristic,
# 16 goes through tl.dot (with a partial last row tile), 2 is a multi-row tile of broadcast products.
SHAPES = [(16, 1, 1, 4, 16, None), (24, 3, 3, 2, 4, None), (24, 2, 17, 4, 16, 16), (16, 2, 5, 3, 4, 2)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "d{}-n{}-b{}-k{}-s{}-bb{}".format(*s))
@pytest.mark.parametrize("selective", [True, False], ids=["selective", "lti"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_matches_reference(seed, shape, selective, bias, dtype):
    d_model, n_layer, batch, d_conv, d_state, block_b = shape
    w = random_weights(n_layer, d_model, d_state, d_conv, selective, bias, dtype)
    check_steps(w, batch, torch.float32, 1e-5 if dtype == torch.float32 else 1e-2, block_b)


@pytest.mark.parametrize("block_b", [1, 16])
def test_residual_in_model_dtype(seed, block_b):
    # residual_in_fp32=False: the residual stream is bf16 and rounds after every block.
    w = random_weights(2, 16, 4, 4, dtype=torch.bfloat16)
    check_steps(w, 3, torch.bfloat16, 1e-2, block_b)


def test_fp32_states_with_bf16_weights(seed):
    # allocate_cache(dtype=torch.float32) on a bf16 model: the conv window is kept in fp32.
    w = random_weights(2, 16, 4, 4, dtype=torch.bfloat16)
    conv, ssm = random_states(w, 2, torch.float32)
    conv_ref, ssm_ref = conv.clone(), ssm.clone()
    residual = torch.randn(2, 16, device=DEVICE)
    out = mamba_stack_step(residual, w, conv, ssm)
    assert rel_err(out, mamba_stack_step_ref(residual, w, conv_ref, ssm_ref)) < 1e-2
    assert rel_err(conv, conv_ref) < 1e-2


def test_strided_residual_rows(seed):
    # x[:, 0] of a (batch, 1, D) stream is contiguous, but a column slice of a wider buffer is not.
    w = random_weights(2, 16, 4, 4)
    wide = torch.randn(3, 40, device=DEVICE)
    residual = wide[:, 5:21]
    conv, ssm = random_states(w, 3, torch.float32)
    conv_ref, ssm_ref = conv.clone(), ssm.clone()
    out = mamba_stack_step(residual, w, conv, ssm)
    assert rel_err(out, mamba_stack_step_ref(residual, w, conv_ref, ssm_ref)) < 1e-5


def test_rejects_states_of_the_wrong_shape():
    w = random_weights(2, 16, 4, 4)
    conv, ssm = random_states(w, 3, torch.float32)
    residual = torch.randn(3, 16, device=DEVICE)
    with pytest.raises(ValueError, match="conv_state"):
        mamba_stack_step(residual, w, conv[:1], ssm)
    with pytest.raises(ValueError, match="ssm_state"):
        mamba_stack_step(residual, w, conv, ssm.transpose(2, 3).contiguous())
    with pytest.raises(ValueError, match="ssm_state"):
        mamba_stack_step(residual, w, conv, ssm.double())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("d_model", [64, 128, 256])  # the three stage widths of sashimi-sc09
@pytest.mark.parametrize(("batch", "block_b"), [(1, None), (7, None), (256, None), (256, 16), (256, 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_matches_reference_at_real_shapes(seed, d_model, batch, block_b, dtype):
    w = random_weights(8, d_model, 16, 4, dtype=dtype, bias=False)
    check_steps(w, batch, torch.float32, 1e-5 if dtype == torch.float32 else 1e-2, block_b)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("batch", [1, 256])
def test_time_invariant_at_real_shapes(seed, batch):
    w = random_weights(8, 128, 16, 4, selective=False)
    check_steps(w, batch, torch.float32, 1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_replays_from_a_cuda_graph(seed):
    w = random_weights(4, 64, 16, 4)
    conv, ssm = random_states(w, 3, torch.float32)
    conv_ref, ssm_ref = conv.clone(), ssm.clone()
    residual = torch.randn(3, 64, device=DEVICE)
    mamba_stack_step(residual, w, conv.clone(), ssm.clone())  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = mamba_stack_step(residual, w, conv, ssm)
    for _ in range(3):
        graph.replay()
        ref = mamba_stack_step_ref(residual, w, conv_ref, ssm_ref)
        assert rel_err(out, ref) < 1e-5 and rel_err(ssm, ssm_ref) < 1e-5


COMPILE_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_stack_step_triton import random_weights
from mambaseq.kernels.stack_step import compile_offline
for shape in {shapes!r}:
    d_model, n_layer, d_conv, d_state, selective, bias, dtype, block_b = shape
    w = random_weights(n_layer, d_model, d_state, d_conv, selective, bias, getattr(torch, dtype))
    result = compile_offline(w, {batch}, block_b, num_warps={num_warps})
    assert result["registers"], result
    print("compiled", shape, result["registers"], result["spill_bytes"])
"""


def compile_for_hopper(tmp_path, shapes, num_warps=8, batch=37):
    """[(registers, spill bytes)] per shape, from the real compiler for sm_90, in a process without
    TRITON_INTERPRET."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton.backends.nvidia.compiler")
    tests = str(Path(__file__).parent)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path), TRITON_DEFAULT_FP_FUSION="1",
               PYTHONPATH=os.pathsep.join([str(Path(tests).parents[1]), str(Path(tests).parent), tests]))
    script = COMPILE_SCRIPT.format(tests=tests, shapes=shapes, num_warps=num_warps, batch=batch)
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line.split() for line in run.stdout.splitlines() if line.startswith("compiled")]
    assert len(lines) == len(shapes), run.stdout
    return [(int(line[-2]), int(line[-1])) for line in lines]


def test_compiles_for_hopper_without_a_gpu(tmp_path):
    """What the interpreter does not check (power-of-two tiles, tl.dot shapes, types the GPU
    lowering accepts)."""
    compile_for_hopper(tmp_path, [(24, 2, 4, 16, True, True, "float32", 1), (24, 1, 2, 4, False, False, "bfloat16", 16),
                                  (64, 2, 3, 16, True, False, "bfloat16", 2),
                                  (128, 1, 4, 16, True, True, "float32", 32)])


def test_double_buffered_weight_tiles_do_not_spill(tmp_path):
    # The GPU default (one row per program, 4 warps) at the widest sc09 stack: the prefetched tile
    # doubles the weight registers, which must still fit (a spill is a trip to memory per tile).
    shapes = [(256, 2, 4, 16, True, True, "float32", 1), (256, 2, 4, 16, True, True, "bfloat16", 1)]
    for shape, (registers, spill_bytes) in zip(shapes, compile_for_hopper(tmp_path, shapes, 4, 256), strict=True):
        assert spill_bytes == 0, (shape, registers, spill_bytes)


@pytest.mark.parametrize("block_b", [1, 2, 4, 8, 16, 32])
def test_tiles_are_powers_of_two_and_dot_sized(block_b):
    # tl.arange sizes must be powers of two on the GPU (the interpreter does not check), and every
    # tl.dot dimension at least 16.
    from mambaseq.kernels.stack_step import _tiles

    for d_model in (16, 24, 64, 100, 256, 1024):
        for d_state in (4, 5, 16):
            w = random_weights(1, d_model, d_state, 4)
            tiles = _tiles(w, block_b)
            sizes = {k: v for k, v in tiles.items() if k not in ("USE_DOT", "DOT_FP32")}
            assert all(v >= 1 and v & (v - 1) == 0 for v in sizes.values()), (d_model, d_state, sizes)
            if tiles["USE_DOT"]:
                assert min(tiles[k] for k in ("BLOCK_B", "BLOCK_KM", "BLOCK_KI", "BLOCK_CI", "BLOCK_CO",
                                              "R_P", "N_P")) >= 16
