"""Backbone and language model: shapes, tying, causality, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mambaseq import MambaConfig, MambaLM


def tiny(**overrides):
    return MambaConfig.from_preset("tiny", **overrides)


def test_logits_cover_padded_vocabulary(seed):
    model = MambaLM(tiny(vocab_size=11))
    assert model(torch.randint(0, 11, (2, 7))).shape == (2, 7, 16)


def test_hidden_states_shape(seed):
    model = MambaLM(tiny())
    assert model.hidden_states(torch.randint(0, 12, (3, 9))).shape == (3, 9, 64)


def test_tied_head_shares_embedding():
    model = MambaLM(tiny())
    assert model.lm_head.weight.data_ptr() == model.backbone.embedding.weight.data_ptr()


def test_untied_head_is_separate():
    model = MambaLM(tiny(tie_embeddings=False))
    assert model.lm_head.weight.data_ptr() != model.backbone.embedding.weight.data_ptr()


def test_out_proj_shrinks_with_depth():
    # GPT-2-style rescaling: the output projection's spread falls as 1/sqrt(n_layer).
    shallow = MambaLM(tiny(n_layer=1)).backbone.layers[0].mixer.out_proj.weight.std()
    deep = MambaLM(tiny(n_layer=16)).backbone.layers[0].mixer.out_proj.weight.std()
    assert (deep / shallow).item() == pytest.approx(1 / math.sqrt(16), rel=0.1)


@pytest.mark.parametrize("rms_norm", [True, False])
def test_model_is_causal(seed, rms_norm):
    model = MambaLM(tiny(rms_norm=rms_norm)).eval()
    ids = torch.randint(0, 12, (1, 30))
    changed = ids.clone()
    changed[0, 20:] = (changed[0, 20:] + 1) % 12
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert torch.equal(a[:, :20], b[:, :20])
    assert not torch.allclose(a[:, 20:], b[:, 20:])


def test_gradients_reach_every_parameter(seed):
    model = MambaLM(tiny())
    ids = torch.randint(0, 12, (2, 40))
    logits = model(ids[:, :-1])
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_residual_stream_is_fp32_in_bf16_model(seed):
    model = MambaLM(tiny()).to(torch.bfloat16)
    seen = []
    model.backbone.norm_f.register_forward_pre_hook(lambda mod, args: seen.append(args[0].dtype))
    logits = model(torch.randint(0, 12, (1, 8)))
    assert torch.isfinite(logits.float()).all()
    # residual_in_fp32 keeps the residual in fp32; it is cast to the norm's dtype only at the end.
    assert seen == [torch.bfloat16]
    residual = model.backbone._residual(torch.randint(0, 12, (1, 8)))
    assert residual.dtype == torch.float32
