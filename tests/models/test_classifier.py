"""MambaClassifier: a language model's backbone under a pooled head."""

from __future__ import annotations

import pytest
import torch

from mambaseq import MambaConfig, MambaLM
from mambaseq.models import MambaClassifier
from mambaseq.models.heads import POOLINGS

CONFIG = MambaConfig(d_model=16, n_layer=2, vocab_size=12, d_state=4)


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("batch,length", [(1, 1), (3, 17)])
def test_logits_are_the_head_on_the_pooled_lm_hidden_states(seed, pooling, batch, length):
    lm = MambaLM(CONFIG).eval()
    classifier = MambaClassifier(CONFIG, num_classes=5, pooling=pooling, norm="none").eval()
    classifier.backbone.load_state_dict(lm.backbone.state_dict())
    ids = torch.randint(7, 12, (batch, length))
    with torch.no_grad():
        hidden = lm.hidden_states(ids)
        pooled = {"mean": hidden.mean(1), "max": hidden.amax(1), "first": hidden[:, 0], "last": hidden[:, -1]}[pooling]
        want = pooled @ classifier.head.proj.weight.T + classifier.head.proj.bias
        got = classifier(ids)
    assert got.shape == (batch, 5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_backbone_parameter_names_match_the_lm():
    lm_names = {k for k in MambaLM(CONFIG).state_dict() if k.startswith("backbone.")}
    assert {k for k in MambaClassifier(CONFIG, 3).state_dict() if k.startswith("backbone.")} == lm_names


def test_head_config_rebuilds_the_same_head():
    classifier = MambaClassifier(CONFIG, 4, pooling="last", dropout=0.1, norm="none")
    assert classifier.head_config() == {"num_classes": 4, "pooling": "last", "dropout": 0.1, "norm": "none"}


@pytest.mark.parametrize("kwargs,message", [({"num_classes": 1}, "at least 2"),
                                            ({"num_classes": 3, "pooling": "median"}, "pooling")])
def test_bad_head_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MambaClassifier(CONFIG, **kwargs)
