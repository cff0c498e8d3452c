"""Small audio folders and one tiny trained model shared by the train and eval tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mambaseq.tasks.audio.train import AudioTrainConfig, AudioTrainResult, train_audio

RATE = 8000
SPEAKERS = 6
TAKES = 2
# A few steps of a tiny SaShiMi on 0.3 s clips at 8 kHz: seconds on a CPU. With split seed 4 the six
# speakers fall 3 / 1 / 2 into train / valid / test.
FAST = dict(sample_rate=RATE, seq_len=256, batch_size=2, max_steps=4, val_every=2, checkpoint_every=2,
            lr_warmup_steps=1, valid_fraction=0.3, test_fraction=0.3, group_pattern=r"^(spk\d+)_",
            split_seed=4, eval_windows=None, progress=False)


def write_speakers(folder: Path, rate: int = RATE, seconds: float = 0.3, speakers: int = SPEAKERS) -> list[Path]:
    """`spk<k>_take<j>.wav`: speaker k hums at its own pitch with a little noise; takes differ in phase."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    files = []
    for k in range(speakers):
        for j in range(TAKES):
            wave = 0.5 * np.sin(2 * np.pi * (150 + 60 * k) * t + j) + 0.02 * rng.standard_normal(len(t))
            files.append(folder / f"spk{k}_take{j}.wav")
            sf.write(files[-1], wave.astype(np.float32), rate, subtype="PCM_16")
    return files


@pytest.fixture
def fast() -> dict:
    """Recipe overrides for a run of seconds (a copy: tests may change it)."""
    return dict(FAST)


@pytest.fixture
def make_speakers():
    """`write_speakers` as a fixture, for tests in this folder."""
    return write_speakers


@pytest.fixture(scope="session")
def speakers_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("speakers")
    write_speakers(folder)
    return folder


@pytest.fixture(scope="session")
def trained(tmp_path_factory, speakers_dir) -> tuple[AudioTrainConfig, AudioTrainResult]:
    """One tiny run on `speakers_dir`, split by speaker (the config and its result)."""
    cfg = AudioTrainConfig.from_recipe("audio-tiny-cpu", data=str(speakers_dir),
                                       out=str(tmp_path_factory.mktemp("run")), **FAST)
    return cfg, train_audio(cfg)
