"""The fused stack step's reference and packing against real MambaBlocks, and its wiring into step mode."""

from __future__ import annotations

import pytest
import torch
from helpers import rel_err
from torch import nn

from mambaseq.config import MambaConfig
from mambaseq.kernels.reference import mamba_stack_step_ref
from mambaseq.models import MambaBlock, StackedStates
from mambaseq.models.stack_step import pack_blocks, packed_weights


@pytest.fixture(autouse=True)
def fused_on(monkeypatch):
    """The fused step is opt-in; these tests check what it does when on (a test may turn it off)."""
    monkeypatch.setenv("MAMBASEQ_STACK_STEP", "1")


def _blocks(n_layer=3, dtype=torch.float32, **overrides):
    config = MambaConfig(**{**dict(d_model=24, n_layer=n_layer, vocab_size=8, d_state=4, d_conv=3), **overrides})
    blocks = nn.ModuleList(MambaBlock(config) for _ in range(n_layer))
    with torch.no_grad():  # every weight off its init, so a skipped or misplaced tensor shows
        for param in blocks.parameters():
            param.add_(0.2 * torch.randn_like(param))
    return blocks.to(dtype), config


def _states(config, n_layer, batch, dtype=torch.float32):
    states = StackedStates.zeros(n_layer, batch, config.d_inner, config.d_conv, config.d_state, dtype=dtype)
    states.conv.normal_()
    states.ssm.normal_()
    return states


@pytest.mark.parametrize("selective", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n_layer", [1, 3])
def test_reference_equals_block_steps(seed, selective, bias, n_layer):
    blocks, config = _blocks(n_layer, selective=selective, bias=bias, conv_bias=bias)
    weights = pack_blocks(blocks)
    states = _states(config, n_layer, batch=5)
    conv, ssm = states.conv.clone(), states.ssm.clone()
    residual = residual_ref = torch.randn(5, config.d_model)
    with torch.no_grad():
        for _ in range(3):
            residual_ref = mamba_stack_step_ref(residual_ref, weights, conv, ssm)
            for block, state in zip(blocks, states, strict=True):
                residual = block.step(residual, state)
    assert rel_err(residual_ref, residual) <= 1e-6
    assert rel_err(conv, states.conv) <= 1e-6 and rel_err(ssm, states.ssm) <= 1e-6


def test_reference_equals_block_steps_in_bfloat16(seed):
    blocks, config = _blocks(2, dtype=torch.bfloat16)
    weights = pack_blocks(blocks)
    states = _states(config, 2, batch=3, dtype=torch.bfloat16)
    conv, ssm = states.conv.clone(), states.ssm.clone()
    residual = torch.randn(3, config.d_model)  # residual_in_fp32
    with torch.no_grad():
        out = mamba_stack_step_ref(residual, weights, conv, ssm)
        for block, state in zip(blocks, states, strict=True):
            residual = block.step(residual, state)
    assert out.dtype == torch.float32
    assert rel_err(out, residual) <= 1e-6 and rel_err(conv, states.conv) <= 1e-6


def test_pack_refuses_layer_norm_blocks():
    blocks, _ = _blocks(2, rms_norm=False)
    with pytest.raises(ValueError, match="RMSNorm"):
        pack_blocks(blocks)
    assert packed_weights(blocks) is None


def test_pack_is_cached_until_a_parameter_changes():
    blocks, _ = _blocks(2)
    first = packed_weights(blocks)
    assert packed_weights(blocks) is first
    with torch.no_grad():
        blocks[1].mixer.out_proj.weight.mul_(2)  # in place: the version counter moves
    second = packed_weights(blocks)
    assert second is not first
    assert torch.equal(second.out_proj_weight[1], blocks[1].mixer.out_proj.weight)
    blocks.to(torch.float64)  # new tensors: the data pointers move
    assert packed_weights(blocks).dtype == torch.float64


# --- wiring: step mode takes the fused stack step, and gives the per-block result ---------------

import mambaseq.kernels as kernels  # noqa: E402
import mambaseq.models.stack_step as stack_module  # noqa: E402
from mambaseq import MambaLM  # noqa: E402
from mambaseq.models import SashimiConfig, SashimiLM  # noqa: E402


@pytest.fixture
def fused_calls(monkeypatch):
    """The n_layer of every fused stack step taken."""
    calls = []
    fused = stack_module.mamba_stack_step

    def counting(residual, weights, conv_state, ssm_state):
        calls.append(weights.n_layer)
        return fused(residual, weights, conv_state, ssm_state)

    monkeypatch.setattr(stack_module, "mamba_stack_step", counting)
    return calls


def _perturbed(model):
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def _mamba(**overrides):
    return _perturbed(MambaLM(MambaConfig(**{**dict(d_model=24, n_layer=3, vocab_size=12, d_state=4), **overrides})))


def _sashimi(**overrides):
    base = dict(d_model=8, n_layer=[2, 1, 2], pool=[2, 2], vocab_size=16, d_state=4, d_conv=3,
                selective=[True, False, True])
    return _perturbed(SashimiLM(SashimiConfig(**{**base, **overrides})))


def _stream(model, ids, prefill, monkeypatch, stack_step):
    """Prefill, then step: the logits of every position from `prefill - 1` on, and the cache."""
    monkeypatch.setenv(stack_module.ENV_VAR, stack_step)
    cache = model.allocate_cache(ids.shape[0])
    with torch.no_grad():
        logits = [model(ids[:, :prefill], cache=cache)[:, -1]]
        logits += [model.step(ids[:, t], cache) for t in range(prefill, ids.shape[1])]
    return torch.stack(logits, 1), cache


@pytest.mark.parametrize("overrides", [{}, dict(selective=False), dict(bias=True, d_conv=2)],
                         ids=["selective", "lti", "bias"])
def test_mamba_lm_fused_step_matches_per_block(seed, monkeypatch, fused_calls, overrides):
    model = _mamba(**overrides)
    ids = torch.randint(0, 12, (3, 12))
    fused, fused_cache = _stream(model, ids, 4, monkeypatch, "1")
    assert fused_calls == [3] * 8
    plain, plain_cache = _stream(model, ids, 4, monkeypatch, "0")
    assert len(fused_calls) == 8  # none with the switch off
    assert rel_err(fused, plain) <= 1e-5
    assert rel_err(fused_cache.layers.ssm, plain_cache.layers.ssm) <= 1e-5


@pytest.mark.parametrize("batch", [1, 3])
def test_sashimi_fused_step_matches_per_block(seed, monkeypatch, fused_calls, batch):
    model = _sashimi()
    ids = torch.randint(0, 16, (batch, 15))
    fused, fused_cache = _stream(model, ids, 3, monkeypatch, "1")
    assert fused_calls and set(fused_calls) == {1, 2}  # every stack, center (1 block) included
    plain, plain_cache = _stream(model, ids, 3, monkeypatch, "0")
    assert rel_err(fused, plain) <= 1e-5
    assert rel_err(fused_cache.center.ssm, plain_cache.center.ssm) <= 1e-5
    assert torch.equal(fused_cache.stages[1].pending, plain_cache.stages[1].pending)


def test_sashimi_fused_stream_equals_full_forward(seed, monkeypatch, fused_calls):
    model = _sashimi()
    ids = torch.randint(0, 16, (2, 13))
    with torch.no_grad():
        full = model(ids)
    stepped, _ = _stream(model, ids, 1, monkeypatch, "1")
    assert fused_calls
    assert rel_err(stepped, full) <= 1e-5


def test_layer_norm_blocks_step_block_by_block(seed, monkeypatch, fused_calls):
    model = _mamba(rms_norm=False)
    ids = torch.randint(0, 12, (2, 6))
    with torch.no_grad():
        full = model(ids)
    stepped, _ = _stream(model, ids, 1, monkeypatch, "1")
    assert fused_calls == []
    assert rel_err(stepped, full) <= 1e-5


def test_autograd_steps_block_by_block(seed, fused_calls):
    model = _mamba()
    cache = model.allocate_cache(2)
    logits = model.step(torch.tensor([1, 2]), cache)  # grad mode: the fused kernel has no backward
    assert fused_calls == []
    assert logits.requires_grad


def test_rebound_state_steps_block_by_block(seed, fused_calls):
    model = _mamba()
    cache = model.allocate_cache(2)
    cache.layers[1].ssm = cache.layers[1].ssm.clone()
    with torch.no_grad():
        model.step(torch.tensor([1, 2]), cache)
    assert fused_calls == []
    assert cache.layers[1].ssm.abs().sum() > 0


@pytest.mark.parametrize("make,fused", [(_mamba, False), (_sashimi, True)], ids=["mamba", "sashimi"])
def test_unset_switch_takes_the_models_default(seed, monkeypatch, fused_calls, make, fused):
    # SashimiLM fuses by default (measured faster on the H100), MambaLM does not (measured slower).
    model = make()
    monkeypatch.delenv(stack_module.ENV_VAR)
    cache = model.allocate_cache(2)
    with torch.no_grad():
        for t in range(4):
            model.step(torch.tensor([t, t + 1]), cache)
    assert bool(fused_calls) == fused


@pytest.mark.parametrize("env,fused_by_default,d_model,expected", [
    (None, True, stack_module.FUSED_MAX_D_MODEL, True),
    (None, True, 2 * stack_module.FUSED_MAX_D_MODEL, False),
    (None, False, 64, False),
    ("1", False, 2 * stack_module.FUSED_MAX_D_MODEL, True),
    ("0", True, 64, False),
])
def test_default_fuses_only_narrow_stacks(monkeypatch, env, fused_by_default, d_model, expected):
    # Wide stacks were measured slower fused (one SM per stream); the switch overrides the width rule.
    if env is None:
        monkeypatch.delenv(stack_module.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(stack_module.ENV_VAR, env)
    assert stack_module.stack_step_enabled(fused_by_default, d_model) is expected


def test_bad_switch_value_is_an_error(monkeypatch):
    monkeypatch.setenv(stack_module.ENV_VAR, "maybe")
    with pytest.raises(ValueError, match="MAMBASEQ_STACK_STEP"):
        stack_module.stack_step_enabled()


@pytest.mark.parametrize("make", [_mamba, _sashimi])
def test_allocate_cache_packs_so_steps_never_do(seed, monkeypatch, make):
    # A CUDA-graph capture must not pack (it would record the packing into the graph).
    model = make()
    cache = model.allocate_cache(2)

    def no_packing(blocks):
        raise AssertionError("packed during a step")

    monkeypatch.setattr(stack_module, "pack_blocks", no_packing)
    with torch.no_grad():
        for t in range(5):
            model.step(torch.tensor([t, t + 1]), cache)


def test_fused_step_through_triton_under_interpreter(seed, monkeypatch, fused_calls):
    """The CUDA dispatch of the stack step (the Triton kernel) inside SashimiLM's step mode, on a
    CPU-only machine under TRITON_INTERPRET=1 by routing the op to Triton."""
    pytest.importorskip("triton")
    if not torch.cuda.is_available():
        import os
        if os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = _sashimi().to(device)
    ids = torch.randint(0, 16, (2, 8), device=device)
    reference, _ = _stream(model, ids, 2, monkeypatch, "1")
    dispatch = kernels._dispatch
    used = set()

    def triton_stack_step(op, device):
        if op != "mamba_stack_step":
            return dispatch(op, device)
        used.add(op)
        return kernels._triton_op(op)

    monkeypatch.setattr(kernels, "_dispatch", triton_stack_step)
    fused, _ = _stream(model, ids, 2, monkeypatch, "1")
    assert used == {"mamba_stack_step"}
    assert rel_err(fused, reference) <= 1e-5
