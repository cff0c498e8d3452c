"""FSDP on two GPUs: the run matches a one-GPU run with the same global batch, exports the same
model folder as one device does, and resumes from its own checkpoint to the uninterrupted result.

Needs two CUDA devices (the GPU machine of kind nvidia-h200-x2): `pytest -m gpu tests/training/test_fsdp.py`.
Lightning runs FSDP on GPUs only, so CI (CPU) skips it.

Tolerance: relative 1e-4 on losses and weights, in fp32 (`precision="32-true"`). FSDP reduce-scatters
the gradient where DDP all-reduces it and one device sums it whole: the same sums in another order,
about 1e-6 relative after 8 steps; a shard left out of the export, or weights gathered from a stale
copy, is off by far more from the first step on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import exports_checkpoint, script_validation
from safetensors.torch import load_file

from mambaseq.checkpoint import read_model_dir
from mambaseq.tasks.dna.train import DnaTrainConfig, train_dna
from mambaseq.training.lm_module import CausalLMModule

from .test_distributed import SCRIPTED, env, rel, step_losses

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")]

TOLERANCE = 1e-4

# Lightning's launcher starts rank 1 by running the same command again, so the run lives in a script.
# CRASH_AT_STEP makes the run die while reading that step's batch, after the checkpoint before it.
FSDP_RUN = SCRIPTED + """
from mambaseq.tasks.dna.train import DnaTrainConfig, train_dna
from mambaseq.tasks.dna.windows import TrainBatches
crash_at = int(os.environ.get("CRASH_AT_STEP", -1))
original = TrainBatches.batch
def batch(self, step):
    if step == crash_at:
        raise RuntimeError("simulated crash")
    return original(self, step)
TrainBatches.batch = batch
result = train_dna(DnaTrainConfig.from_recipe("tiny-cpu", **json.loads(sys.argv[1])))
print("returned", result.steps, flush=True)
"""


@pytest.fixture(scope="module")
def fields(tmp_path_factory) -> dict:
    import numpy as np

    genome = tmp_path_factory.mktemp("genome") / "g.fa"
    rng = np.random.default_rng(0)
    genome.write_text("".join(f">r{i}\n{''.join(rng.choice(list('ACGT'), 6000))}\n" for i in range(2)))
    return dict(fasta=[str(genome)], model_overrides={"d_model": 32}, seq_len=256, batch_size=4, max_steps=8,
                lr_warmup_steps=2, val_every=4, checkpoint_every=4, progress=False, valid_fraction=0.1,
                max_val_windows=4, log_every=1, accelerator="gpu", precision="32-true", num_workers=0)


@pytest.fixture(scope="module")
def one_gpu(fields, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one")
    train_dna(DnaTrainConfig.from_recipe("tiny-cpu", out=str(out), **fields))
    return out


def run_fsdp(fields: dict, tmp_path: Path, crash_at_step: int = -1, script: dict[int, float] | None = None,
             **extra) -> subprocess.CompletedProcess:
    program = tmp_path / "fsdp_run.py"
    program.write_text(FSDP_RUN)
    config = json.dumps({**fields, "devices": 2, "strategy": "fsdp", **extra})
    return subprocess.run([sys.executable, str(program), config],
                          env={**env(script), "CRASH_AT_STEP": str(crash_at_step)}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)


def assert_same_weights(run: Path, reference: Path) -> None:
    weights = load_file(run / "model" / "model.safetensors")
    expected = load_file(reference / "model" / "model.safetensors")
    assert weights.keys() == expected.keys()
    for name, tensor in expected.items():
        assert weights[name].dtype == tensor.dtype and weights[name].shape == tensor.shape, name
        assert rel(weights[name], tensor) <= TOLERANCE, (name, rel(weights[name], tensor))


def test_fsdp_run_matches_one_gpu_and_exports_the_same_folder(fields, one_gpu, tmp_path):
    out = tmp_path / "fsdp"
    done = run_fsdp(fields, tmp_path, out=str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    losses, expected = step_losses(out), step_losses(one_gpu)
    assert sorted(losses) == sorted(expected) == list(range(8))
    for step, loss in expected.items():
        assert abs(losses[step] - loss) <= TOLERANCE * loss, (step, losses[step], loss)
    assert sorted(p.name for p in (out / "model").iterdir()) == sorted(p.name for p in (one_gpu / "model").iterdir())
    got, want = read_model_dir(out / "model"), read_model_dir(one_gpu / "model")
    assert got["config"] == want["config"] and got["architecture"] == want["architecture"]
    assert_same_weights(out, one_gpu)


def test_fsdp_run_resumes_from_its_checkpoint(fields, one_gpu, tmp_path):
    out = tmp_path / "resumed"
    first = run_fsdp(fields, tmp_path, crash_at_step=5, out=str(out))
    assert first.returncode != 0 and "simulated crash" in first.stderr
    assert (out / "checkpoints" / "last.ckpt").exists()
    second = run_fsdp(fields, tmp_path, out=str(out), resume=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert sorted(step_losses(out)) == list(range(8))
    assert_same_weights(out, one_gpu)


def test_fsdp_exports_the_best_validation_as_one_gpu_does(fields, tmp_path, monkeypatch):
    # Validations at steps 4 and 8; step 4 scores best: its whole weights (best.ckpt, gathered on rank 0)
    # are exported, as on one GPU.
    script = {4: 1.5, 8: 2.5}
    script_validation(monkeypatch, CausalLMModule, "val/bits_per_base", script)
    one = tmp_path / "one"
    train_dna(DnaTrainConfig.from_recipe("tiny-cpu", out=str(one), **fields))
    out = tmp_path / "fsdp"
    done = run_fsdp(fields, tmp_path, script=script, out=str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    for run in (one, out):
        metadata = read_model_dir(run / "model")["metadata"]
        assert (metadata["steps"], metadata["trained_steps"], metadata["valid_bits_per_base"]) == (4, 8, 1.5)
        assert exports_checkpoint(run / "model", run / "checkpoints" / "step0000004.ckpt")
    assert_same_weights(out, one)
