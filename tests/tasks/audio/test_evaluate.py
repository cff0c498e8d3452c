"""`evaluate_audio` and `plot_audio`: bits per sample on held-out files, and the PNGs."""

from __future__ import annotations

import math

import matplotlib.image
import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from mambaseq import MambaConfig, MambaLM
from mambaseq.checkpoint import save_pretrained
from mambaseq.tasks.audio import AudioInputError, make_codec
from mambaseq.tasks.audio.evaluate import evaluate_audio, plot_audio
from mambaseq.tasks.audio.model_dir import audio_metadata, load_audio_model


def nll_by_hand(model_dir, wave: np.ndarray) -> tuple[float, int]:
    """Summed NLL (nats) of one waveform at the model's rate, as one sequence, and the samples scored."""
    model, codec, _, _ = load_audio_model(model_dir)
    ids = codec.encode(torch.from_numpy(wave))[None]
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[:, :-1])[0, :, : codec.num_classes].double(), dim=-1)
    return -logp.gather(1, ids[0, 1:, None]).sum().item(), ids.shape[1] - 1


def test_default_is_the_test_split_of_the_training_data(trained):
    _, result = trained
    report = evaluate_audio(result.model_dir, device="cpu")
    assert report["split"] == "test" and report["files"] == result.files["test"]
    assert {row["file"].rsplit("/", 1)[-1][:4] for row in report["per_file"]} == {"spk1", "spk3"}


def test_one_file_shorter_than_a_window_scores_as_by_hand(trained, tmp_path):
    _, result = trained
    path = tmp_path / "hum.wav"
    wave = (0.4 * np.sin(np.arange(200) / 5)).astype(np.float32)
    sf.write(path, wave, 8000, subtype="FLOAT")
    report = evaluate_audio(result.model_dir, data=path, device="cpu")
    nll, samples = nll_by_hand(result.model_dir, wave)
    assert (report["split"], report["windows"], report["samples"]) == ("all", 1, samples)
    assert report["nats_per_sample"] == pytest.approx(nll / samples, rel=1e-5)
    assert report["bits_per_sample"] == pytest.approx(nll / samples / math.log(2), rel=1e-5)


def test_files_are_resampled_to_the_models_rate(trained, tmp_path):
    _, result = trained
    path = tmp_path / "hum16k.wav"
    wave = (0.4 * np.sin(np.arange(400) / 10)).astype(np.float32)
    sf.write(path, wave, 16000, subtype="FLOAT")
    report = evaluate_audio(result.model_dir, data=path, device="cpu")
    nll, samples = nll_by_hand(result.model_dir, np.clip(soxr.resample(wave, 16000, 8000), -1, 1))
    assert samples == 199 and report["samples"] == samples
    assert report["nats_per_sample"] == pytest.approx(nll / samples, rel=1e-5)


def test_windows_tile_the_files_and_per_file_figures_add_up(trained, speakers_dir):
    _, result = trained
    report = evaluate_audio(result.model_dir, data=speakers_dir, device="cpu", batch_size=3)
    # 12 files of 2400 samples in windows of 257: 10 windows each (9 full, one of 87), each scoring
    # all its samples but the first.
    assert (report["files"], report["windows"], report["samples"]) == (12, 120, 12 * (2400 - 10))
    bits = sum(row["bits_per_sample"] * row["samples"] for row in report["per_file"]) / report["samples"]
    assert bits == pytest.approx(report["bits_per_sample"], rel=1e-9)


def test_max_windows_evaluates_a_fixed_subset(trained, speakers_dir):
    _, result = trained
    one, two = (evaluate_audio(result.model_dir, data=speakers_dir, max_windows=7, device="cpu") for _ in range(2))
    assert one["windows"] == 7 and one["bits_per_sample"] == two["bits_per_sample"]


def test_a_dna_model_is_refused_in_one_line(tmp_path):
    save_pretrained(MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=12)), tmp_path, metadata={"task": "dna-lm"})
    with pytest.raises(AudioInputError, match="not an audio model") as err:
        evaluate_audio(tmp_path, data=tmp_path)
    assert "\n" not in str(err.value)


def test_a_folder_without_recorded_data_needs_data(tmp_path):
    model = MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=256))
    save_pretrained(model, tmp_path, metadata=audio_metadata(8000, make_codec("mulaw")))
    with pytest.raises(AudioInputError, match="give --data"):
        evaluate_audio(tmp_path)


def test_unknown_split_is_refused(trained):
    with pytest.raises(AudioInputError, match="unknown split"):
        evaluate_audio(trained[1].model_dir, split="dev")


def test_plots_are_written_for_files_and_waves(tmp_path):
    rate = 8000
    t = np.arange(rate // 2) / rate
    path = tmp_path / "tone.wav"
    sf.write(path, (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)
    written = plot_audio([path, np.zeros(300, dtype=np.float32), torch.rand(400) - 0.5], tmp_path / "plots",
                         sample_rate=rate)
    assert [p.name for p in written] == ["tone.png", "wave_1.png", "wave_2.png"]
    image = matplotlib.image.imread(written[0])
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_repeated_names_do_not_overwrite_each_other(tmp_path):
    written = plot_audio({"a": np.zeros(100), "a ": np.ones(100) * 0.1}, tmp_path, sample_rate=8000)
    assert len({p.name for p in written}) == 2 and all(p.is_file() for p in written)


def test_waves_without_a_rate_are_refused(tmp_path):
    with pytest.raises(ValueError, match="sample_rate"):
        plot_audio([np.zeros(100)], tmp_path)
