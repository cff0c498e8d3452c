"""Crash-safe runs: a run killed with SIGKILL (mid-run, or mid-checkpoint-write) and resumed ends with
the same weights as an uninterrupted run, bit for bit.

Bitwise, not within a tolerance: on the CPU in fp32 with the same thread count the same operations
in the same order give the same bits, so any difference means resume changed the data, the
optimizer or schedule state, or a random draw (dropout) - exactly what these tests are for.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mambaseq.tasks.dna.train import DnaTrainConfig, train_dna
from mambaseq.training.checkpoint_io import AtomicCheckpointIO
from mambaseq.training.classify_module import ClassifierModule

ROOT = Path(__file__).resolve().parents[2]

# The killed run: train_dna in a child process, each batch slowed down so that the test can kill it
# mid-run (no effect on what the batches are).
SLOW_RUN = """
import json, sys, time
from mambaseq.tasks.dna import windows
from mambaseq.tasks.dna.train import DnaTrainConfig, train_dna
batch = windows.TrainBatches.batch
windows.TrainBatches.batch = lambda self, step: time.sleep(0.25) or batch(self, step)
train_dna(DnaTrainConfig.from_recipe("tiny-cpu", **json.loads(sys.argv[1])))
"""

# The run killed during a write: the write of last.ckpt at step 4 stops halfway and the process is
# SIGKILLed there, as a kill at that moment would leave it.
KILLED_IN_A_WRITE = """
import json, os, signal, sys
from pathlib import Path
from lightning.pytorch.plugins.io import TorchCheckpointIO
from mambaseq.tasks.dna.train import DnaTrainConfig, train_dna
write = TorchCheckpointIO.save_checkpoint
def cut_short(self, checkpoint, path, storage_options=None):
    write(self, checkpoint, path, storage_options)
    if checkpoint["global_step"] == 4 and "last.ckpt" in Path(path).name:  # the file, or its temporary
        os.truncate(path, os.path.getsize(path) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
TorchCheckpointIO.save_checkpoint = cut_short
train_dna(DnaTrainConfig.from_recipe("tiny-cpu", **json.loads(sys.argv[1])))
"""


@pytest.fixture(scope="module")
def run_fields(tmp_path_factory) -> dict:
    genome = tmp_path_factory.mktemp("genome") / "g.fa"
    rng = np.random.default_rng(0)
    genome.write_text("".join(f">r{i}\n{''.join(rng.choice(list('ACGT'), 3000))}\n" for i in range(2)))
    return dict(fasta=[str(genome)], model_overrides={"d_model": 16}, seq_len=64, batch_size=4, max_steps=8,
                lr_warmup_steps=2, val_every=8, checkpoint_every=2, progress=False, max_val_windows=4)


@pytest.fixture(scope="module")
def uninterrupted(run_fields, tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("uninterrupted")
    return load_file(train_dna(DnaTrainConfig.from_recipe("tiny-cpu", out=str(out), **run_fields)).model_dir
                     / "model.safetensors")


def start(script: str, fields: dict, stderr: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(stderr, "w") as err:
        return subprocess.Popen([sys.executable, "-c", script, json.dumps(fields)], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=err)


def resume(fields: dict) -> dict[str, torch.Tensor]:
    result = train_dna(DnaTrainConfig.from_recipe("tiny-cpu", resume=True, **fields))
    assert result.steps == fields["max_steps"]
    return load_file(result.model_dir / "model.safetensors")


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigkill_mid_run_then_resume_gives_the_same_weights(tmp_path, run_fields, uninterrupted):
    fields = {**run_fields, "out": str(tmp_path / "run")}
    child = start(SLOW_RUN, fields, tmp_path / "stderr")
    deadline = time.monotonic() + 120
    # last.ckpt is written after the step's own checkpoint file: once it is there, a resume can start.
    while not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists():
        assert child.poll() is None, (tmp_path / "stderr").read_text()
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.05)
    assert child.poll() is None  # still training: the kill lands mid-run
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL and not (tmp_path / "run" / "model").exists()
    assert same(resume(fields), uninterrupted)


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one(tmp_path, run_fields, uninterrupted):
    fields = {**run_fields, "out": str(tmp_path / "run")}
    child = start(KILLED_IN_A_WRITE, fields, tmp_path / "stderr")
    assert child.wait(timeout=120) == -signal.SIGKILL, (tmp_path / "stderr").read_text()
    checkpoints = tmp_path / "run" / "checkpoints"
    assert AtomicCheckpointIO().load_checkpoint(checkpoints / "last.ckpt")["global_step"] == 2
    assert list(checkpoints.glob(".last.ckpt.*.tmp"))  # the half-written file
    assert same(resume(fields), uninterrupted)
    assert not list(checkpoints.glob(".*.tmp"))  # resume cleared the partial file away


def test_dropout_draws_the_same_after_resume(tmp_path, tiny):
    dropout = {"dropout": 0.5}
    _, straight = tiny(tmp_path / "a", ClassifierModule, module_kwargs=dropout)
    with pytest.raises(RuntimeError, match="simulated crash"):
        tiny(tmp_path / "b", ClassifierModule, module_kwargs=dropout, crash_at=3)
    _, resumed = tiny(tmp_path / "b", ClassifierModule, module_kwargs=dropout, resume=True)
    assert same(resumed.state_dict(), straight.state_dict())


def test_resume_keeps_the_earlier_metrics_log(tmp_path, tiny):
    tiny(tmp_path, max_steps=2)
    before = (tmp_path / "logs" / "metrics.csv").read_text()
    tiny(tmp_path, max_steps=4, resume=True)
    assert (tmp_path / "logs" / "metrics.1.csv").read_text() == before
    assert (tmp_path / "logs" / "metrics.csv").exists()
