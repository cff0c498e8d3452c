"""The Lightning LM module: activation checkpointing changes memory, not results."""

from __future__ import annotations

import torch
from helpers import mean_nll_grads, rel_err

from mambaseq import MambaConfig
from mambaseq.training.lm_module import CausalLMModule


def test_activation_checkpointing_gives_the_same_gradients(seed):
    config = MambaConfig.from_preset("tiny").to_dict()
    plain = CausalLMModule(config)
    checkpointed = CausalLMModule(config, checkpoint_activations=True)
    checkpointed.model.load_state_dict(plain.model.state_dict())
    batch = torch.randint(0, 12, (2, 65))
    grads = [mean_nll_grads(module, batch) for module in (plain, checkpointed)]
    assert rel_err(grads[1], grads[0]) < 1e-6
