"""The selective SSM mixer: paper initialisation, shapes, streaming."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import rel_err

from mambaseq import MambaConfig
from mambaseq.models import LayerState, MambaMixer


def small_config(**overrides):
    return MambaConfig(**{"d_model": 32, "n_layer": 2, "vocab_size": 12, "d_state": 8, **overrides})


def test_a_is_s4d_real():
    mixer = MambaMixer(small_config())
    A = -torch.exp(mixer.A_log)
    assert torch.allclose(A, -torch.arange(1, 9).float().expand(64, 8))


def test_d_starts_at_one():
    assert torch.equal(MambaMixer(small_config()).D, torch.ones(64))


def test_dt_bias_gives_step_sizes_in_range(seed):
    cfg = small_config(d_model=256, dt_min=0.002, dt_max=0.05)
    dt = F.softplus(MambaMixer(cfg).dt_proj.bias)
    assert dt.min() >= cfg.dt_min * (1 - 1e-4) and dt.max() <= cfg.dt_max * (1 + 1e-4)
    # Log-uniform: about half of the draws fall below the geometric mean.
    below = (dt < math.sqrt(cfg.dt_min * cfg.dt_max)).float().mean().item()
    assert 0.35 < below < 0.65


def test_dt_floor_applies():
    cfg = small_config(dt_min=1e-6, dt_max=2e-6, dt_init_floor=1e-3)
    dt = F.softplus(MambaMixer(cfg).dt_proj.bias.double())
    assert torch.allclose(dt, torch.full_like(dt, 1e-3), rtol=1e-4)


def test_dt_rank_auto():
    mixer = MambaMixer(small_config(d_model=40))
    assert mixer.dt_proj.in_features == math.ceil(40 / 16)
    assert mixer.x_proj.out_features == 3 + 2 * 8


@pytest.mark.parametrize("L", [1, 9, 64])
def test_forward_shape(seed, L):
    mixer = MambaMixer(small_config())
    assert mixer(torch.randn(3, L, 32)).shape == (3, L, 32)


@pytest.mark.parametrize("split", [1, 7, 20])
def test_streaming_with_state_equals_one_call(seed, split):
    cfg = small_config()
    mixer = MambaMixer(cfg).double()
    x = torch.randn(2, 24, 32, dtype=torch.float64)
    full = mixer(x)
    state = LayerState(conv=torch.zeros(2, cfg.d_inner, cfg.d_conv - 1, dtype=torch.float64),
                       ssm=torch.zeros(2, cfg.d_inner, cfg.d_state))
    parts = [mixer(x[:, :split], state), mixer(x[:, split:], state)]
    assert rel_err(torch.cat(parts, 1), full) < 1e-6


def test_bfloat16_forward_is_close_to_fp32(seed):
    mixer = MambaMixer(small_config())
    x = torch.randn(2, 33, 32)
    ref = mixer(x)
    out = mixer.to(torch.bfloat16)(x.bfloat16())
    assert out.dtype == torch.bfloat16
    assert rel_err(out, ref) < 5e-2
