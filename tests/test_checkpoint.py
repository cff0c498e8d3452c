from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mambaseq.checkpoint import (
    CONFIG_NAME,
    FORMAT,
    WEIGHTS_NAME,
    CheckpointError,
    from_pretrained,
    load_weights,
    read_model_dir,
    save_pretrained,
)
from mambaseq.config import MambaConfig
from mambaseq.models import MambaLM


def _config(**overrides):
    base = dict(d_model=32, n_layer=2, vocab_size=11, d_state=8)
    return MambaConfig(**{**base, **overrides})


def _model(**overrides):
    model = MambaLM(_config(**overrides))
    # Move every weight away from its deterministic init, so a load that silently skips a tensor
    # (e.g. A_log, D, norms, zero biases) shows up in the logits.
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model.eval()


def _ids(config, batch=2, length=13):
    return torch.randint(0, config.vocab_size, (batch, length))


@pytest.mark.parametrize("tied", [True, False])
def test_round_trip_gives_identical_logits(tmp_path, tied):
    model = _model(tie_embeddings=tied)
    save_pretrained(model, tmp_path / "m")
    loaded = from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    ids = _ids(model.config)
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


@pytest.mark.parametrize("tied", [True, False])
def test_round_trip_restores_every_tensor(tmp_path, tied):
    model = _model(tie_embeddings=tied)
    save_pretrained(model, tmp_path)
    loaded = from_pretrained(tmp_path)
    expected, got = model.state_dict(), loaded.state_dict()
    assert set(got) == set(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_round_trip_keeps_embeddings_tied(tmp_path):
    save_pretrained(_model(tie_embeddings=True), tmp_path)
    loaded = from_pretrained(tmp_path)
    assert loaded.lm_head.weight is loaded.backbone.embedding.weight


def test_untied_head_is_its_own_tensor(tmp_path):
    model = _model(tie_embeddings=False)
    save_pretrained(model, tmp_path)
    loaded = from_pretrained(tmp_path)
    assert loaded.lm_head.weight is not loaded.backbone.embedding.weight
    assert not torch.equal(loaded.lm_head.weight, loaded.backbone.embedding.weight)


def test_from_pretrained_returns_eval_mode(tmp_path):
    save_pretrained(_model().train(), tmp_path)
    assert not from_pretrained(tmp_path).training


@pytest.mark.parametrize("tied", [True, False])
def test_directory_holds_exactly_config_and_weights(tmp_path, tied):
    directory = tmp_path / "nested" / "model"
    returned = save_pretrained(_model(tie_embeddings=tied), directory)
    assert returned == directory
    assert sorted(p.name for p in directory.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME])


def test_saving_twice_leaves_no_temp_files(tmp_path):
    save_pretrained(_model(), tmp_path)
    save_pretrained(_model(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME])


def test_failed_save_leaves_previous_checkpoint_and_no_temp_files(tmp_path, monkeypatch):
    import mambaseq.checkpoint as checkpoint

    model = _model()
    save_pretrained(model, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def failing_save_file(state, path, metadata=None):
        with open(path, "wb") as handle:
            handle.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(_model(d_model=48), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    ids = _ids(model.config)
    with torch.no_grad():
        assert torch.equal(from_pretrained(tmp_path)(ids), model(ids))


def test_config_json_format_and_metadata(tmp_path):
    metadata = {"vocabulary": list("ACGTN"), "sample_rate": 16000, "classes": ["yes", "no"]}
    model = _model()
    save_pretrained(model, tmp_path, metadata=metadata)
    raw = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert raw["format"] == FORMAT == "mambaseq"
    assert raw["model"] == model.config.to_dict()
    document = read_model_dir(tmp_path)
    assert document["metadata"] == metadata
    assert document["config"] == model.config


def test_metadata_defaults_to_empty(tmp_path):
    save_pretrained(_model(), tmp_path)
    assert read_model_dir(tmp_path)["metadata"] == {}


@pytest.mark.parametrize("tied", [True, False])
def test_safetensors_holds_lm_head_only_when_untied(tmp_path, tied):
    model = _model(tie_embeddings=tied)
    save_pretrained(model, tmp_path)
    state = load_file(tmp_path / WEIGHTS_NAME)
    assert ("lm_head.weight" in state) is (not tied)
    assert "backbone.embedding.weight" in state


def test_load_into_different_config_names_each_key(tmp_path):
    save_pretrained(_model(d_model=32, n_layer=2), tmp_path)
    other = MambaLM(_config(d_model=48, n_layer=3))
    with pytest.raises(CheckpointError) as info:
        load_weights(other, tmp_path)
    message = str(info.value)
    assert "d_model" in message and "n_layer" in message
    assert "d_state" not in message and "vocab_size" not in message
    assert str(tmp_path) in message


def test_load_into_different_tying_names_key(tmp_path):
    save_pretrained(_model(tie_embeddings=True), tmp_path)
    with pytest.raises(CheckpointError, match="tie_embeddings"):
        load_weights(MambaLM(_config(tie_embeddings=False)), tmp_path)


def test_load_weights_into_matching_model(tmp_path):
    model = _model()
    save_pretrained(model, tmp_path)
    target = MambaLM(_config()).eval()
    ids = _ids(model.config)
    with torch.no_grad():
        assert not torch.equal(target(ids), model(ids))
        assert load_weights(target, tmp_path) is target
        assert torch.equal(target(ids), model(ids))


def test_missing_directory(tmp_path):
    missing = tmp_path / "does-not-exist"
    with pytest.raises(CheckpointError) as info:
        from_pretrained(missing)
    assert str(missing) in str(info.value)


def test_missing_config_json(tmp_path):
    save_pretrained(_model(), tmp_path)
    (tmp_path / CONFIG_NAME).unlink()
    with pytest.raises(CheckpointError) as info:
        from_pretrained(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert CONFIG_NAME in str(info.value)


def test_invalid_json(tmp_path):
    save_pretrained(_model(), tmp_path)
    (tmp_path / CONFIG_NAME).write_text('{"format": "mambaseq", "model": {')
    with pytest.raises(CheckpointError) as info:
        from_pretrained(tmp_path)
    assert str(tmp_path / CONFIG_NAME) in str(info.value)


def test_json_of_another_format(tmp_path):
    save_pretrained(_model(), tmp_path)
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(CheckpointError) as info:
        from_pretrained(tmp_path)
    assert str(tmp_path / CONFIG_NAME) in str(info.value)


def test_invalid_model_config_in_json(tmp_path):
    model = _model()
    save_pretrained(model, tmp_path)
    path = tmp_path / CONFIG_NAME
    document = json.loads(path.read_text())
    document["model"]["d_model"] = -1
    path.write_text(json.dumps(document))
    with pytest.raises(CheckpointError) as info:
        from_pretrained(tmp_path)
    assert str(path) in str(info.value) and "d_model" in str(info.value)


def test_corrupt_safetensors(tmp_path):
    save_pretrained(_model(), tmp_path)
    weights = tmp_path / WEIGHTS_NAME
    weights.write_bytes(b"\x00\x01 this is not a safetensors file " * 7)
    with pytest.raises(CheckpointError) as info:
        from_pretrained(tmp_path)
    assert str(weights) in str(info.value)


def test_truncated_safetensors(tmp_path):
    save_pretrained(_model(), tmp_path)
    weights = tmp_path / WEIGHTS_NAME
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        from_pretrained(tmp_path)
    assert str(weights) in str(info.value)


def test_missing_safetensors(tmp_path):
    save_pretrained(_model(), tmp_path)
    (tmp_path / WEIGHTS_NAME).unlink()
    with pytest.raises(CheckpointError) as info:
        from_pretrained(tmp_path)
    assert str(tmp_path) in str(info.value) and WEIGHTS_NAME in str(info.value)


def test_missing_tensor(tmp_path):
    save_pretrained(_model(), tmp_path)
    weights = tmp_path / WEIGHTS_NAME
    state = load_file(weights)
    dropped = "backbone.layers.1.mixer.A_log"
    del state[dropped]
    save_file(state, weights)
    with pytest.raises(CheckpointError) as info:
        from_pretrained(tmp_path)
    assert str(weights) in str(info.value) and dropped in str(info.value)


def test_unexpected_tensor(tmp_path):
    save_pretrained(_model(), tmp_path)
    weights = tmp_path / WEIGHTS_NAME
    state = load_file(weights)
    state["extra.weight"] = torch.zeros(3)
    save_file(state, weights)
    with pytest.raises(CheckpointError, match=r"extra\.weight"):
        from_pretrained(tmp_path)


def test_wrong_shape_tensor(tmp_path):
    save_pretrained(_model(), tmp_path)
    weights = tmp_path / WEIGHTS_NAME
    state = load_file(weights)
    key = "backbone.layers.0.mixer.D"
    state[key] = torch.zeros(state[key].numel() + 1)
    save_file(state, weights)
    with pytest.raises(CheckpointError) as info:
        from_pretrained(tmp_path)
    assert str(weights) in str(info.value) and key in str(info.value)


def test_checkpoint_error_is_value_error():
    assert issubclass(CheckpointError, ValueError)


@pytest.mark.parametrize("version", ["1", None, 1.0, True])
def test_format_version_of_wrong_type(tmp_path, version):
    save_pretrained(_model(), tmp_path)
    document = json.loads((tmp_path / CONFIG_NAME).read_text())
    document["format_version"] = version
    (tmp_path / CONFIG_NAME).write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="format_version"):
        read_model_dir(tmp_path)


def test_saved_files_follow_the_umask(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        save_pretrained(_model(), tmp_path)
    finally:
        os.umask(old)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def _classifier():
    from mambaseq.models import MambaClassifier

    model = MambaClassifier(_config(), num_classes=3, pooling="last", dropout=0.1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
        model.head.norm.running_mean.normal_()
        model.head.norm.running_var.uniform_(0.5, 2.0)
        model.head.norm.running_mean.normal_()
        model.head.norm.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_classifier_round_trip_gives_identical_logits(tmp_path):
    model = _classifier()
    save_pretrained(model, tmp_path)
    loaded = from_pretrained(tmp_path)
    assert type(loaded).__name__ == "MambaClassifier" and loaded.head_config() == model.head_config()
    ids = _ids(model.config)
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_classifier_folder_from_before_the_head_norm_loads_unnormalized(tmp_path):
    from mambaseq.models import MambaClassifier

    model = MambaClassifier(_config(), num_classes=3, norm="none").eval()
    save_pretrained(model, tmp_path)
    document = json.loads((tmp_path / CONFIG_NAME).read_text())
    del document["head"]["norm"]
    (tmp_path / CONFIG_NAME).write_text(json.dumps(document))
    loaded = from_pretrained(tmp_path)
    assert loaded.head_config()["norm"] == "none"
    ids = _ids(model.config)
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


@pytest.mark.parametrize("edit,message", [
    (lambda doc: doc.update(architecture="Transformer"), "unknown architecture"),
    (lambda doc: doc.pop("head"), "needs a 'head'"),
])
def test_bad_classifier_config_is_a_checkpoint_error(tmp_path, edit, message):
    save_pretrained(_classifier(), tmp_path)
    document = json.loads((tmp_path / CONFIG_NAME).read_text())
    edit(document)
    (tmp_path / CONFIG_NAME).write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match=message):
        from_pretrained(tmp_path)


@pytest.mark.parametrize("tied", [True, False])
def test_describe_counts_parameters_without_building_a_model(tmp_path, monkeypatch, tied):
    from mambaseq import checkpoint
    from mambaseq.checkpoint import describe_model_dir

    model = _model(tie_embeddings=tied)
    save_pretrained(model, tmp_path, metadata={"task": "dna-lm", "seq_len": 64})

    def refuse(*args, **kwargs):
        raise AssertionError("describe must not build a model")

    monkeypatch.setattr(checkpoint, "build_model", refuse)
    monkeypatch.setattr(checkpoint.MambaLM, "__init__", refuse)
    report = describe_model_dir(tmp_path)
    assert report["parameters"] == model.num_parameters()
    assert report["architecture"] == "MambaLM" and report["metadata"]["seq_len"] == 64
    assert report["dtypes"] == ["F32"] and report["model"]["d_model"] == model.config.d_model


def test_cli_info_model_json(tmp_path, capsys):
    from mambaseq.cli.main import main

    save_pretrained(_classifier(), tmp_path, metadata={"task": "dna-classify", "classes": ["a", "b", "c"]})
    assert main(["info", "--model", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["head"]["num_classes"] == 3 and report["metadata"]["classes"] == ["a", "b", "c"]
    assert main(["info", "--model", str(tmp_path / "missing")]) == 2


def test_cli_info_model_describes_a_unet_audio_model(tmp_path, capsys, monkeypatch):
    from mambaseq.cli.main import main
    from mambaseq.models.sashimi import SashimiConfig, SashimiLM
    from mambaseq.tasks.audio import make_codec
    from mambaseq.tasks.audio.model_dir import audio_metadata

    monkeypatch.setenv("COLUMNS", "200")
    config = SashimiConfig.from_preset("sashimi-tiny")
    save_pretrained(SashimiLM(config), tmp_path, metadata=audio_metadata(8000, make_codec("linear", 6)))
    assert main(["info", "--model", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"pools {config.pool}" in out and f"blocks per stage {config.n_layer}" in out
    assert "8000 Hz, linear 6 bits" in out


def test_cli_info_model_shows_the_classifier_head_norm(tmp_path, capsys, monkeypatch):
    from mambaseq.cli.main import main

    monkeypatch.setenv("COLUMNS", "200")
    save_pretrained(_classifier(), tmp_path, metadata={"task": "dna-classify"})
    assert main(["info", "--model", str(tmp_path)]) == 0
    assert "3 classes, last pooling, batch norm" in capsys.readouterr().out
