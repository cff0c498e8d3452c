"""Stacked inference caches: every layer's state is a view into one tensor per stack, and stays one."""

from __future__ import annotations

import pytest
import torch

from mambaseq import MambaConfig, MambaLM
from mambaseq.models import LayerState, SashimiConfig, SashimiLM, StackedStates


def _mamba(**overrides):
    return MambaLM(MambaConfig.from_preset("tiny", **{"n_layer": 3, **overrides})).eval()


def _sashimi():
    config = SashimiConfig(d_model=8, n_layer=[2, 1, 2], pool=[2, 2], vocab_size=16, d_state=4, d_conv=3)
    return SashimiLM(config).eval()


def _stacks(cache):
    if hasattr(cache, "layers"):
        return [cache.layers]
    return [cache.center] + [states for stage in cache.stages for states in (stage.down, stage.up)]


def _is_view_of_stack(states):
    return all(state.conv.data_ptr() == states.conv[l].data_ptr() and state.ssm.data_ptr() == states.ssm[l].data_ptr()
               for l, state in enumerate(states))


@pytest.mark.parametrize("make", [_mamba, _sashimi])
def test_allocate_cache_stacks_every_layer(make):
    model = make()
    cache = model.allocate_cache(3)
    for states in _stacks(cache):
        assert isinstance(states, StackedStates) and states.intact()
        assert states.conv.shape[:2] == (len(states), 3) and states.ssm.dtype == torch.float32
        assert _is_view_of_stack(states)


@pytest.mark.parametrize("make", [_mamba, _sashimi])
def test_prefill_updates_the_stacked_tensors_in_place(seed, make):
    model = make()
    cache = model.allocate_cache(2)
    with torch.no_grad():
        model(torch.randint(0, 12, (2, 9)), cache=cache)
    for states in _stacks(cache):
        assert states.intact() and _is_view_of_stack(states)
        assert states.ssm.abs().sum() > 0  # the prefill wrote through the views


def test_rebinding_a_layer_state_is_noticed():
    states = StackedStates.zeros(2, 1, 4, 3, 2)
    states[1].conv = torch.zeros(1, 4, 2)
    assert not states.intact()
    states = StackedStates.zeros(2, 1, 4, 3, 2)
    states[0] = LayerState(states[0].conv, torch.zeros(1, 4, 2))
    assert not states.intact()


def test_select_and_detach_keep_the_cache_stacked(seed):
    model = _mamba()
    cache = model.allocate_cache(3)
    with torch.no_grad():
        model(torch.randint(0, 12, (3, 5)), cache=cache)
    index = torch.tensor([2, 0])
    picked = cache.select(index)
    assert isinstance(picked.layers, StackedStates) and picked.layers.intact()
    assert torch.equal(picked.layers.ssm, cache.layers.ssm[:, index])
    assert torch.equal(picked.layers[1].conv, cache.layers[1].conv[index])
    detached = cache.detach()
    assert isinstance(detached.layers, StackedStates)
    assert detached.layers.conv.data_ptr() == cache.layers.conv.data_ptr()


def test_streaming_with_grad_replaces_the_states_and_unstacks(seed):
    # Backprop through a stream needs states that carry the graph: the per-block path then.
    model = _mamba()
    cache = model.allocate_cache(1)
    model(torch.randint(0, 12, (1, 4)), cache=cache)
    assert cache.layers[0].ssm.requires_grad
    assert not cache.layers.intact()
