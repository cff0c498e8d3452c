"""The Lightning LM module: activation checkpointing changes memory, not results."""

from __future__ import annotations

import torch
from helpers import rel_err

from mambaseq import MambaConfig
from mambaseq.training.lm_module import CausalLMModule


def test_activation_checkpointing_gives_the_same_gradients(seed):
    config = MambaConfig.from_preset("tiny").to_dict()
    plain = CausalLMModule(config)
    checkpointed = CausalLMModule(config, checkpoint_activations=True)
    checkpointed.model.load_state_dict(plain.model.state_dict())
    batch = torch.randint(0, 12, (2, 65))
    grads = []
    for module in (plain, checkpointed):
        nll, tokens = module._nll(batch)
        (nll / tokens).backward()
        grads.append(torch.cat([p.grad.flatten() for p in module.model.parameters()]))
    assert rel_err(grads[1], grads[0]) < 1e-6
