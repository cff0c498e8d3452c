"""`generate_audio` and `mambaseq generate audio`: files, samples.json, determinism, prompts, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from mambaseq import MambaConfig, MambaLM
from mambaseq.checkpoint import save_pretrained
from mambaseq.cli.main import main
from mambaseq.models.sashimi import SashimiConfig, SashimiLM
from mambaseq.tasks.audio import AudioInputError, make_codec
from mambaseq.tasks.audio.generate import JSON_NAME, batch_sizes, generate_audio
from mambaseq.tasks.audio.model_dir import audio_metadata

RATE = 16000
SECONDS = 0.01  # 160 samples: several SashimiLM periods (16) and a partial chunk
N_NEW = 160
CODEC = make_codec("mulaw")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = SashimiLM(SashimiConfig.from_preset("sashimi-tiny"))
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # a peaked, not uniform, distribution over the 256 classes
    return save_pretrained(model, tmp_path_factory.mktemp("sashimi"), metadata=audio_metadata(RATE, CODEC))


@pytest.fixture(scope="module")
def prompt_wav(tmp_path_factory):
    t = np.arange(RATE // 50) / RATE  # 20 ms of a 440 Hz tone
    path = tmp_path_factory.mktemp("prompt") / "tone.wav"
    sf.write(path, 0.5 * np.sin(2 * np.pi * 440 * t), RATE, subtype="PCM_16")
    return path


def _ids(path):
    wave, rate = sf.read(path, dtype="float64")
    assert rate == RATE
    return CODEC.encode(wave)


def _generate(model_dir, out, **kwargs):
    return generate_audio(model_dir, out, **{**dict(n=2, seconds=SECONDS, device="cpu"), **kwargs})


def test_writes_one_pcm16_wav_per_clip_and_the_json(model_dir, tmp_path):
    records = _generate(model_dir, tmp_path, n=3)
    assert [r["path"] for r in records] == ["sample_000.wav", "sample_001.wav", "sample_002.wav"]
    for record in records:
        info = sf.info(tmp_path / record["path"])
        assert (info.samplerate, info.channels, info.subtype, info.frames) == (RATE, 1, "PCM_16", N_NEW)
    document = json.loads((tmp_path / JSON_NAME).read_text())
    assert document["sample_rate"] == RATE and document["codec"] == CODEC.to_dict()
    assert document["samples"] == records


def test_json_records_settings_seed_and_lengths(model_dir, tmp_path):
    record = _generate(model_dir, tmp_path, n=1, temperature=0.9, top_k=50, top_p=0.95, seed=7)[0]
    assert record["seed"] == 7 and record["prompt"] is None
    assert {k: record["settings"][k] for k in ("temperature", "top_k", "top_p")} == dict(
        temperature=0.9, top_k=50, top_p=0.95)
    assert record["seconds"] == record["generated_seconds"] == N_NEW / RATE


def test_log_likelihood_is_the_models_on_the_written_audio(model_dir, tmp_path):
    # Independent of the sampler: read the file back, quantize it, one forward from the silence start.
    records = _generate(model_dir, tmp_path, temperature=1.2)
    model = SashimiLM(SashimiConfig.from_preset("sashimi-tiny"))
    from mambaseq.checkpoint import load_weights

    load_weights(model, model_dir)
    model.eval()
    for record in records:
        ids = _ids(tmp_path / record["path"])
        sequence = torch.cat([torch.tensor([CODEC.silence_id]), ids])[None]
        with torch.no_grad():
            log_probs = torch.log_softmax(model(sequence)[0, :-1].double(), -1)
        expected = log_probs.gather(1, ids[:, None]).sum().item()
        assert record["log_likelihood_nats"] == pytest.approx(expected, rel=1e-5)
        assert record["bits_per_sample"] == pytest.approx(-expected / (N_NEW * math.log(2)), rel=1e-5)


def test_same_seed_same_files_other_seed_other_files(model_dir, tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        _generate(model_dir, tmp_path / name, seed=seed)
    read = {name: (tmp_path / name / "sample_001.wav").read_bytes() for name in "abc"}
    assert read["a"] == read["b"]
    assert read["a"] != read["c"]


def test_prompt_opens_every_clip(model_dir, prompt_wav, tmp_path):
    records = _generate(model_dir, tmp_path, prompt=prompt_wav, prompt_seconds=0.005)
    prompt_ids = _ids(prompt_wav)[: RATE // 200]  # 80 samples
    clips = [_ids(tmp_path / r["path"]) for r in records]
    for record, ids in zip(records, clips, strict=True):
        assert ids.numel() == 80 + N_NEW
        assert torch.equal(ids[:80], prompt_ids)
        assert record["prompt"] == {"path": str(prompt_wav), "seconds": 80 / RATE, "samples": 80}
        assert record["seconds"] == pytest.approx((80 + N_NEW) / RATE)
    assert not torch.equal(clips[0][80:], clips[1][80:])  # two streams, not one copied


def test_prompt_at_another_rate_is_resampled(model_dir, tmp_path):
    path = tmp_path / "stereo8k.wav"
    t = np.arange(400) / 8000
    sf.write(path, np.stack([np.sin(2 * np.pi * 300 * t), np.zeros_like(t)], 1) * 0.3, 8000)
    records = _generate(model_dir, tmp_path / "out", n=1, prompt=path, prompt_seconds=0.025)
    assert records[0]["prompt"]["samples"] == 400  # 0.025 s at the model's 16 kHz


def test_prompt_shorter_than_prompt_seconds_is_refused(model_dir, prompt_wav, tmp_path):
    with pytest.raises(AudioInputError, match="shorter than --prompt-seconds"):
        _generate(model_dir, tmp_path, prompt=prompt_wav, prompt_seconds=1.0)


def test_unreadable_prompt_is_refused(model_dir, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all" * 10)
    with pytest.raises(AudioInputError, match="cannot read audio"):
        _generate(model_dir, tmp_path / "out", prompt=bad)


def test_batches_give_every_clip_and_report_progress_along_them(model_dir, tmp_path):
    seen = []
    records = _generate(model_dir, tmp_path, n=3, batch_size=2, on_progress=seen.append)
    assert len(records) == 3 and batch_sizes(3, 2) == [2, 1]
    assert seen == sorted(seen) and seen[-1] == 2 * N_NEW and N_NEW in seen


def test_mamba_lm_audio_model_generates(tmp_path):
    model = MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=256))
    folder = save_pretrained(model, tmp_path / "model", metadata=audio_metadata(8000, make_codec("linear", 6)))
    records = generate_audio(folder, tmp_path / "out", n=1, seconds=0.005, device="cpu")
    wave, rate = sf.read(tmp_path / "out" / records[0]["path"])
    assert rate == 8000 and wave.shape == (40,)
    assert int(make_codec("linear", 6).encode(wave).max()) < 64


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(n=0), "--n"),
    (dict(seconds=0), "--seconds"),
    (dict(seconds=float("nan")), "--seconds"),
    (dict(prompt_seconds=-1), "--prompt-seconds"),
    (dict(batch_size=0), "--batch-size"),
])
def test_bad_arguments_are_refused(model_dir, tmp_path, kwargs, message):
    with pytest.raises(AudioInputError, match=message):
        _generate(model_dir, tmp_path, **kwargs)


def test_dna_model_is_refused(tmp_path):
    folder = save_pretrained(MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=12)), tmp_path / "dna",
                             metadata={"task": "dna-lm"})
    with pytest.raises(AudioInputError, match="not an audio model"):
        _generate(folder, tmp_path / "out")


# The command line.

def _cli(capsys, *argv):
    code = main(["generate", "audio", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_writes_the_clips(model_dir, tmp_path, capsys):
    code, out, err = _cli(capsys, "--model", str(model_dir), "--n", "2", "--seconds", str(SECONDS),
                          "--device", "cpu", "--seed", "1", "--out", str(tmp_path))
    assert code == 0, err
    assert "wrote 2 clips" in out and "bits/sample" in out
    assert {p.name for p in tmp_path.iterdir()} == {JSON_NAME, "sample_000.wav", "sample_001.wav"}


def test_cli_help_has_an_example(capsys):
    code, out, _ = _cli(capsys, "--help")
    assert code == 0 and "Example: mambaseq generate audio" in out


@pytest.mark.parametrize(("extra", "message"), [
    (["--temperature", "-1"], "temperature"),
    (["--top-p", "0"], "top_p"),
    (["--top-k", "-2"], "top_k"),
    (["--n", "0"], "--n"),
    (["--prompt", "missing.wav"], "no such file"),
    (["--prompt", "PROMPT", "--prompt-seconds", "5"], "shorter than --prompt-seconds"),
])
def test_cli_bad_input_is_one_line_exit_2(model_dir, prompt_wav, tmp_path, capsys, extra, message):
    extra = [str(prompt_wav) if arg == "PROMPT" else arg for arg in extra]
    code, _, err = _cli(capsys, "--model", str(model_dir), "--device", "cpu", "--out", str(tmp_path), *extra)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert message in lines[0]


@pytest.mark.parametrize("kind", ["dna", "missing"])
def test_cli_refuses_a_folder_that_is_not_an_audio_model(tmp_path, capsys, kind):
    folder = tmp_path / "model"
    if kind == "dna":
        save_pretrained(MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=12)), folder,
                        metadata={"task": "dna-lm"})
    code, _, err = _cli(capsys, "--model", str(folder), "--out", str(tmp_path / "out"))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert ("not an audio model" if kind == "dna" else "not a model directory") in lines[0]
