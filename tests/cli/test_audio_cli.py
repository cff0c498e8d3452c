"""`mambaseq train audio` and `mambaseq eval audio`: output, exit codes, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from helpers import exports_checkpoint, script_validation

from mambaseq import MambaConfig, MambaLM
from mambaseq.checkpoint import read_model_dir, save_pretrained
from mambaseq.cli.main import main
from mambaseq.training.audio_module import AudioLMModule

FAST = ["--seq-len", "128", "--batch-size", "2", "--max-steps", "2", "--set", "val_every=2",
        "--set", "checkpoint_every=2", "--set", "progress=false", "--set", "sample_rate=8000",
        "--set", "valid_fraction=0.25", "--set", "test_fraction=0.25", "--set", "eval_windows=4",
        "--set", "lr_warmup_steps=1"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Eight 0.2 s clips at 8 kHz (enough files that every split gets some with split seed 0)."""
    folder = tmp_path_factory.mktemp("clips")
    t = np.arange(1600) / 8000
    for k in range(8):
        sf.write(folder / f"c{k}.wav", (0.5 * np.sin(2 * np.pi * (200 + 50 * k) * t)).astype(np.float32), 8000)
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory, clips):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "audio", "--data", str(clips), "--out", str(out), *FAST]) == 0
    return out


def _one_line(err: str) -> str:
    """The error line of stderr: exactly one, no traceback (progress lines before it are fine)."""
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("mambaseq") and "Traceback" not in err, err
    return errors[0]


def test_train_prints_bits_per_sample_and_the_model_folder(tmp_path, clips, capsys):
    out = tmp_path / "run"
    assert main(["train", "audio", "--data", str(clips), "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "validation bits/sample:" in printed and f"model saved to: {out / 'model'}" in printed
    assert read_model_dir(out / "model")["metadata"]["task"] == "audio-lm"


def test_train_exports_the_weights_of_the_best_validation(tmp_path, clips, capsys, monkeypatch):
    script_validation(monkeypatch, AudioLMModule, "val/bits_per_sample", {2: 3.5, 4: 4.5})
    out, args = tmp_path / "run", list(FAST)
    args[args.index("--max-steps") + 1] = "4"  # validations at steps 2 and 4; step 2 scores best
    assert main(["train", "audio", "--data", str(clips), "--out", str(out), *args]) == 0
    assert "exported the best weights: step 2 of 4 (validation bits/sample: 3.5000)\n" in capsys.readouterr().out
    metadata = read_model_dir(out / "model")["metadata"]
    assert (metadata["steps"], metadata["trained_steps"], metadata["valid_bits_per_sample"]) == (2, 4, 3.5)
    assert exports_checkpoint(out / "model", out / "checkpoints" / "step0000002.ckpt")


def test_eval_json_reports_the_test_split(run, capsys):
    capsys.readouterr()
    assert main(["eval", "audio", "--model", str(run / "model"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    metadata = read_model_dir(run / "model")["metadata"]
    assert report["split"] == "test" and report["files"] == metadata["split"]["files"]["test"]
    assert report["bits_per_sample"] == pytest.approx(report["nats_per_sample"] / np.log(2))


def test_eval_writes_plots(run, clips, tmp_path, capsys):
    plots = tmp_path / "plots"
    assert main(["eval", "audio", "--model", str(run / "model"), "--data", str(clips), "--plots", str(plots)]) == 0
    out = capsys.readouterr().out
    assert "bits/sample" in out and "8 plots written" in out
    assert sorted(p.name for p in plots.iterdir()) == [f"c{k}.png" for k in range(8)]


@pytest.mark.parametrize(("args", "message"), [
    (["--data", "/no/such/folder"], "no such file or folder"),
    (["--recipe", "nope"], "unknown recipe"),
    (["--model", "gpt-5"], "unknown model"),
    (["--seq-len", "100000"], "longer than every training file"),
    (["--set", "bogus=1"], "unknown field"),
    (["--set", "codec=alaw"], "unknown codec"),
])
def test_train_bad_input_is_one_line_exit_2(tmp_path, clips, capsys, args, message):
    argv = ["train", "audio", "--data", str(clips), "--out", str(tmp_path / "run"), *FAST, *args]
    assert main(argv) == 2
    assert message in _one_line(capsys.readouterr().err)


# Two files cannot fill three splits: what matters to the user is still that neither is audio.
@pytest.mark.parametrize("count", [2, 4])
def test_train_on_a_folder_without_usable_audio_is_one_line(tmp_path, capsys, count):
    folder = tmp_path / "junk"
    folder.mkdir()
    for k in range(count):
        (folder / f"x{k}.wav").write_bytes(b"not audio at all")
    assert main(["train", "audio", "--data", str(folder), "--out", str(tmp_path / "run"), *FAST]) == 2
    assert "no usable audio" in _one_line(capsys.readouterr().err)


def test_each_skipped_file_is_one_warning_line(tmp_path, clips, capsys):
    folder = tmp_path / "some-junk"
    folder.mkdir()
    for path in clips.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "zz.wav").write_bytes(b"not audio at all")
    assert main(["train", "audio", "--data", str(folder), "--out", str(tmp_path / "run"), *FAST]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warned) == 1 and warned[0].startswith("mambaseq train audio: warning: skipped ")
    assert "zz.wav" in warned[0]


def test_eval_of_a_dna_model_is_one_line_exit_2(tmp_path, clips, capsys):
    save_pretrained(MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=12)), tmp_path / "dna",
                    metadata={"task": "dna-lm"})
    assert main(["eval", "audio", "--model", str(tmp_path / "dna"), "--data", str(clips)]) == 2
    assert "not an audio model" in _one_line(capsys.readouterr().err)


def test_eval_of_a_missing_folder_is_one_line_exit_2(tmp_path, capsys):
    assert main(["eval", "audio", "--model", str(tmp_path / "none")]) == 2
    _one_line(capsys.readouterr().err)

