"""Audio model folders: the metadata contract and refusing folders of other tasks."""

from __future__ import annotations

import json

import pytest
import torch

from mambaseq import MambaConfig, MambaLM
from mambaseq.checkpoint import CONFIG_NAME, save_pretrained
from mambaseq.models.sashimi import SashimiConfig, SashimiLM
from mambaseq.tasks.audio import AudioInputError, make_codec
from mambaseq.tasks.audio.model_dir import audio_metadata, check_audio_model, load_audio_model


def _sashimi():
    return SashimiLM(SashimiConfig.from_preset("sashimi-tiny"))


@pytest.mark.parametrize("build", [_sashimi, lambda: MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=256))])
@pytest.mark.parametrize(("codec", "bits", "rate"), [("mulaw", 8, 16000), ("linear", 6, 8000)])
def test_load_gives_the_model_codec_and_rate(tmp_path, build, codec, bits, rate):
    model = build().eval()
    save_pretrained(model, tmp_path, metadata=audio_metadata(rate, make_codec(codec, bits), seq_len=64))
    loaded, got_codec, got_rate, metadata = load_audio_model(tmp_path)
    assert type(loaded) is type(model) and got_codec == make_codec(codec, bits) and got_rate == rate
    assert metadata["seq_len"] == 64
    ids = torch.randint(0, 2**bits, (2, 32))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_dna_model_is_refused(tmp_path):
    save_pretrained(MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=12)), tmp_path,
                    metadata={"task": "dna-lm"})
    with pytest.raises(AudioInputError, match=r"not an audio model.*dna-lm"):
        check_audio_model(tmp_path)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.pop("codec"), "codec"),
    (lambda m: m.update(codec={"name": "alaw"}), "codec"),
    (lambda m: m.update(sample_rate=0), "positive"),
    (lambda m: m.update(codec={"name": "linear", "bits": 12}), "4096 classes"),
])
def test_bad_audio_metadata_is_one_line(tmp_path, edit, message):
    save_pretrained(_sashimi(), tmp_path, metadata=audio_metadata(16000, make_codec("mulaw")))
    document = json.loads((tmp_path / CONFIG_NAME).read_text())
    edit(document["metadata"])
    (tmp_path / CONFIG_NAME).write_text(json.dumps(document))
    with pytest.raises(AudioInputError, match=message) as err:
        check_audio_model(tmp_path)
    assert "\n" not in str(err.value)
