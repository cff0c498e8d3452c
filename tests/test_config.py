from __future__ import annotations

import dataclasses
import json
import math

import pytest

from mambaseq.config import PRESETS, MambaConfig
from mambaseq.models import MambaLM


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_round_trip(name):
    config = MambaConfig.from_preset(name)
    assert MambaConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_file_round_trip(name, tmp_path):
    config = MambaConfig.from_preset(name, dt_rank=5, tie_embeddings=False)
    path = tmp_path / "config.json"
    config.to_json(path)
    assert MambaConfig.from_json(path) == config
    assert MambaConfig.from_json(str(path)) == config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_dict_round_trip(name):
    config = MambaConfig.from_preset(name)
    data = config.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert MambaConfig.from_dict(data) == config


def test_to_json_holds_every_field():
    config = MambaConfig.from_preset("tiny")
    data = json.loads(config.to_json())
    assert set(data) == {f.name for f in dataclasses.fields(MambaConfig)}


@pytest.mark.parametrize("d_model", [1, 15, 16, 17, 64, 100, 128, 257])
def test_dt_rank_auto(d_model):
    config = MambaConfig(d_model=d_model, n_layer=1, vocab_size=4)
    assert config.dt_rank == "auto"
    assert config.dt_rank_value == math.ceil(d_model / 16)


def test_dt_rank_explicit():
    assert MambaConfig(d_model=64, n_layer=1, vocab_size=4, dt_rank=7).dt_rank_value == 7


@pytest.mark.parametrize(("vocab", "multiple", "expected"),
                         [(12, 8, 16), (16, 8, 16), (17, 8, 24), (1, 8, 8), (256, 8, 256),
                          (50277, 16, 50288), (5, 1, 5), (10, 3, 12)])
def test_padded_vocab_size(vocab, multiple, expected):
    config = MambaConfig(d_model=16, n_layer=1, vocab_size=vocab, pad_vocab_size_multiple=multiple)
    assert config.padded_vocab_size == expected


@pytest.mark.parametrize(("field", "value"), [
    ("d_model", 0),
    ("d_model", -4),
    ("d_model", 3.5),
    ("d_model", True),
    ("n_layer", 0),
    ("vocab_size", 0),
    ("d_state", 0),
    ("d_conv", 0),
    ("expand", 0),
    ("pad_vocab_size_multiple", 0),
    ("dt_rank", 0),
    ("dt_rank", "big"),
    ("dt_min", 0.0),
    ("dt_min", 0.5),
])
def test_invalid_value_names_field(field, value):
    data = {**PRESETS["tiny"], field: value}
    with pytest.raises(ValueError, match=field):
        MambaConfig(**data)


def test_dt_max_below_dt_min_names_both():
    with pytest.raises(ValueError) as info:
        MambaConfig(d_model=16, n_layer=1, vocab_size=4, dt_min=0.2, dt_max=0.1)
    assert "dt_min" in str(info.value) and "dt_max" in str(info.value)


def test_from_dict_rejects_unknown_keys():
    data = {**MambaConfig.from_preset("tiny").to_dict(), "d_modle": 3, "zzz": 1}
    with pytest.raises(ValueError) as info:
        MambaConfig.from_dict(data)
    assert "d_modle" in str(info.value) and "zzz" in str(info.value)


def test_from_json_rejects_unknown_keys():
    text = json.dumps({**PRESETS["tiny"], "n_layers": 4})
    with pytest.raises(ValueError, match="n_layers"):
        MambaConfig.from_json(text)


def test_unknown_preset_raises():
    with pytest.raises(ValueError, match="no-such-preset"):
        MambaConfig.from_preset("no-such-preset")


def test_preset_overrides():
    config = MambaConfig.from_preset("tiny", n_layer=5)
    assert config.n_layer == 5
    assert config.d_model == PRESETS["tiny"]["d_model"]


@pytest.mark.parametrize(("name", "expected"), [("dna-1.4m", 1.4e6), ("dna-7m", 7e6), ("sc09-6m", 6e6)])
def test_preset_parameter_count(name, expected):
    model = MambaLM(MambaConfig.from_preset(name))
    count = model.num_parameters()
    assert abs(count - expected) <= 0.1 * expected, f"{name}: {count} parameters"


def test_diff_names_differing_keys():
    a = MambaConfig.from_preset("tiny")
    b = MambaConfig.from_preset("tiny", d_model=a.d_model * 2, n_layer=a.n_layer + 1)
    assert a.diff(b) == {"d_model": (a.d_model, b.d_model), "n_layer": (a.n_layer, b.n_layer)}
    assert set(b.diff(a)) == {"d_model", "n_layer"}


def test_diff_of_equal_configs_is_empty():
    assert MambaConfig.from_preset("tiny").diff(MambaConfig.from_preset("tiny")) == {}


def test_bool_dt_rank_is_rejected():
    with pytest.raises(ValueError, match="dt_rank"):
        MambaConfig(d_model=16, n_layer=1, vocab_size=4, dt_rank=True)
