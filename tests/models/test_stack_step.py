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
