"""`train audio` on several ranks (2 CPU processes, gloo, from the CLI) reaches what one process reaches
with the same global batch, and so do accumulated micro-batches; files shorter than the window make
rows with different numbers of counted samples, so the loss must weight shares by counted samples.

Tolerance: relative 1e-5 on every step's training loss, on validation bits/sample and on the final
weights, as in test_distributed.py: the runs differ only in summation order (about 1e-7 relative in
fp32 after 6 steps). A plain mean of per-share means changes step 0's gradient, and so step 1's loss
by about 1e-3 relative (checked: the 2-process and accumulation tests then fail); counting the
validation padding window fails the bits/sample comparison.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from mambaseq.checkpoint import read_model_dir
from mambaseq.cli.main import main
from mambaseq.tasks.audio.codec import make_codec
from mambaseq.tasks.audio.data import AudioCorpus
from mambaseq.tasks.audio.train import AudioTrainConfig, load_data, train_audio
from mambaseq.tasks.audio.windows import AudioBatches, FixedWindows

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-5
RATE = 8000
# Samples per file: several shorter than the 65-sample window (padded rows), the rest with a partial
# last tile; file k gets LENGTHS[k % 6].
LENGTHS = (20, 300, 40, 150, 30, 500)
FIELDS = dict(sample_rate=RATE, seq_len=64, batch_size=4, max_steps=6, val_every=3, checkpoint_every=3,
              lr_warmup_steps=1, valid_fraction=0.25, test_fraction=0.1, eval_windows=5, split_seed=0,
              progress=False, log_every=1, accelerator="cpu", precision="32-true",
              model_overrides={"d_model": 8})


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30)).item()


def step_losses(run: Path) -> dict[int, float]:
    rows = csv.DictReader(open(run / "logs" / "metrics.csv"))
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


def assert_same_run(run: Path, reference: Path) -> None:
    """Per-step losses, validation bits/sample and final weights within TOLERANCE of the reference run."""
    losses, expected = step_losses(run), step_losses(reference)
    assert sorted(losses) == sorted(expected) == list(range(FIELDS["max_steps"]))
    for step, loss in expected.items():
        assert abs(losses[step] - loss) <= TOLERANCE * loss, (step, losses[step], loss)
    got, want = (read_model_dir(r / "model")["metadata"]["valid_bits_per_sample"] for r in (run, reference))
    assert abs(got - want) <= TOLERANCE * want, (got, want)
    weights, reference_weights = (load_file(r / "model" / "model.safetensors") for r in (run, reference))
    assert weights.keys() == reference_weights.keys()
    for name, tensor in reference_weights.items():
        assert rel(weights[name], tensor) <= TOLERANCE, name


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    for k in range(12):
        t = np.arange(LENGTHS[k % 6]) / RATE
        wave = 0.5 * np.sin(2 * np.pi * (200 + 50 * k) * t) + 0.05 * rng.standard_normal(len(t))
        sf.write(folder / f"clip{k:02d}.wav", wave.astype(np.float32), RATE, subtype="PCM_16")
    return folder


@pytest.fixture(scope="module")
def one_process(clips, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one")
    train_audio(AudioTrainConfig.from_recipe("audio-tiny-cpu", data=str(clips), out=str(out), **FIELDS))
    return out


def test_the_fixture_makes_padding_matter(clips):
    """Guards the tests below against data where shares hold equal counts or validation splits evenly."""
    cfg = AudioTrainConfig.from_recipe("audio-tiny-cpu", data=str(clips), **FIELDS)
    data = load_data(cfg)
    valid = FixedWindows(data.corpus, data.splits["valid"], cfg.seq_len + 1, cfg.eval_windows, cfg.split_seed)
    assert len(valid) % 2 == 1  # one padding window on 2 ranks
    stream = AudioBatches(data.corpus, cfg.seq_len + 1, cfg.batch_size * cfg.seq_len, cfg.seed,
                          data.splits["train"], extra=1)
    _, mask = stream.batch(0)
    per_half = mask[:, 1:].reshape(2, -1).sum(1)
    assert per_half[0] != per_half[1], per_half  # halves of step 0 hold different counted samples


def test_two_processes_from_the_cli_match_one_process(clips, one_process, tmp_path):
    out = tmp_path / "two"
    sets = [arg for key, value in FIELDS.items() if key not in ("seq_len", "batch_size", "max_steps")
            for arg in ("--set", f"{key}={json.dumps(value)}")]
    done = subprocess.run([sys.executable, "-m", "mambaseq", "train", "audio", "--data", str(clips), "--out", str(out),
                           "--seq-len", "64", "--batch-size", "4", "--max-steps", "6", "--devices", "2",
                           "--strategy", "ddp", *sets], env=env(), cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("model saved to") == 1  # rank 0 alone reports
    assert done.stderr.count("validation windows") == 1
    assert_same_run(out, one_process)
    resolved = json.loads((out / "train_config.json").read_text())
    assert resolved["world_size"] == 2 and resolved["accumulate_grad_batches"] == 1


def test_accumulated_micro_batches_match_the_whole_batch(clips, one_process, tmp_path):
    out = tmp_path / "accumulated"
    train_audio(AudioTrainConfig.from_recipe("audio-tiny-cpu", data=str(clips), out=str(out),
                                             **{**FIELDS, "micro_batch_size": 2}))
    assert json.loads((out / "train_config.json").read_text())["accumulate_grad_batches"] == 2
    assert_same_run(out, one_process)


def test_shares_slice_ids_and_masks_together_and_carry_the_global_count(clips):
    corpus = AudioCorpus(sorted(clips.glob("*.wav")), RATE, make_codec("mulaw", 8))
    whole = AudioBatches(corpus, 65, 8 * 64, seed=3, extra=1)
    ids, mask = whole.batch(2)
    assert len(ids) == 8  # tokens_per_step / (65 - extra)
    shares = []
    for rank in range(2):
        stream = AudioBatches(corpus, 65, 8 * 64, seed=3, first_step=lambda: 2, extra=1)
        stream.shard(rank, 2, accumulate=2)
        it = iter(stream)
        shares.append([next(it) for _ in range(2)])
    ordered = [shares[r][k] for k in range(2) for r in range(2)]
    assert torch.equal(torch.cat([s[0] for s in ordered]), ids)
    assert torch.equal(torch.cat([s[1] for s in ordered]), mask)
    assert all(int(s[2]) == int(mask[:, 1:].sum()) for s in ordered)


def test_warmup_stages_have_the_windows_split_batch_checks(clips):
    corpus = AudioCorpus(sorted(clips.glob("*.wav")), RATE, make_codec("mulaw", 8))
    # batch 4 at seq_len 64, warmup from 16: 16 windows of 17 samples (not 4 x 65 // 17 = 15).
    assert len(AudioBatches(corpus, 17, 4 * 64, seed=0, extra=1).batch(0)[0]) == 16


def test_cli_distributed_flags_are_checked_before_loading(tmp_path, capsys):
    assert main(["train", "audio", "--data", str(tmp_path / "none"), "--strategy", "ddp_spawn"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "mambaseq: error: strategy must be one of auto, ddp, fsdp, got 'ddp_spawn'"
