"""Training on several ranks (2 CPU processes, gloo) reaches what one process reaches with the same
global batch; ranks and micro-steps share out each step's batch exactly; files are written once.

Tolerance of the run comparisons: relative 1e-5 on every step's training loss, on the validation
figures and on the final weights. The two runs do the same arithmetic on the same windows except
for summation order (the all-reduce adds two half-batch gradients; accumulation adds two micro-batch
gradients), which in fp32 moves results by about 1e-7 relative after 8 steps; a window read twice
or not at all, or a per-rank mean of means, moves them by 1e-3 or more from the first step on.
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
import torch
from helpers import exports_checkpoint
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from mambaseq.checkpoint import read_model_dir
from mambaseq.cli.main import main
from mambaseq.tasks.dna.classify import ClassifyConfig, train_classifier
from mambaseq.tasks.dna.fasta import DnaInputError, FastaCollection
from mambaseq.tasks.dna.train import DnaTrainConfig, train_dna
from mambaseq.tasks.dna.windows import TrainBatches, WindowSampler, split_regions
from mambaseq.training.data import EvenSplit, StepStream

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-5

# With SCRIPT in the environment ({step: bits}), validation reports those bits/base (on every rank), so
# a test knows which step is the best (helpers.script_validation).
SCRIPTED = """
import json, os, sys
if os.environ.get("SCRIPT"):
    import pytest
    sys.path.insert(0, os.environ["TESTS"])
    from helpers import script_validation
    from mambaseq.training.lm_module import CausalLMModule
    script = {int(step): bits for step, bits in json.loads(os.environ["SCRIPT"]).items()}
    script_validation(pytest.MonkeyPatch(), CausalLMModule, "val/bits_per_base", script)
"""

# train_dna in a script file: Lightning's ddp launcher starts rank 1 by running the same command again.
# Every checkpoint write is recorded (rank, file name) to show that only rank 0 writes.
DDP_RUN = SCRIPTED + """
from mambaseq.tasks.dna.train import DnaTrainConfig, train_dna
from mambaseq.training.checkpoint_io import AtomicCheckpointIO
write = AtomicCheckpointIO.save_checkpoint
def recorded(self, checkpoint, path, storage_options=None):
    with open(os.environ["WRITES_LOG"], "a") as log:
        log.write(f"{os.environ.get('LOCAL_RANK', '0')} {checkpoint['global_step']} {os.path.basename(path)}\\n")
    write(self, checkpoint, path, storage_options)
AtomicCheckpointIO.save_checkpoint = recorded
result = train_dna(DnaTrainConfig.from_recipe("tiny-cpu", **json.loads(sys.argv[1])))
print("rank", os.environ.get("LOCAL_RANK", "0"), "returned", result.steps, flush=True)
print("exported by rank", os.environ.get("LOCAL_RANK", "0"), result.exported_step, result.valid_bits_per_base,
      flush=True)
"""


def env(script: dict[int, float] | None = None) -> dict[str, str]:
    """The environment of a run in a child process; `script`: its validation figures (SCRIPTED)."""
    # ROOT first; packages installed with --target (the GPU machine's) stay reachable after it.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    scripted = {"SCRIPT": json.dumps(script), "TESTS": str(ROOT / "tests")} if script else {}
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **scripted}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30)).item()


def step_losses(run: Path) -> dict[int, float]:
    """Training loss per step, from logs/metrics.csv and the logs a resumed run kept (metrics.N.csv)."""
    losses = {}
    for log in sorted((run / "logs").glob("metrics*.csv"), reverse=True):  # metrics.csv, the newest, last
        rows = csv.DictReader(open(log))
        losses.update({int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")})
    return losses


def assert_same_run(run: Path, reference: Path) -> None:
    """Per-step losses, validation bits/base and final weights within TOLERANCE of the reference run."""
    losses, expected = step_losses(run), step_losses(reference)
    assert sorted(losses) == sorted(expected) == list(range(8))
    for step, loss in expected.items():
        assert abs(losses[step] - loss) <= TOLERANCE * loss, (step, losses[step], loss)
    got, want = read_model_dir(run / "model")["metadata"], read_model_dir(reference / "model")["metadata"]
    assert abs(got["valid_bits_per_base"] - want["valid_bits_per_base"]) <= TOLERANCE * want["valid_bits_per_base"]
    weights, reference_weights = load_file(run / "model" / "model.safetensors"), load_file(
        reference / "model" / "model.safetensors")
    assert weights.keys() == reference_weights.keys()
    for name, tensor in reference_weights.items():
        assert weights[name].dtype == tensor.dtype and weights[name].shape == tensor.shape
        assert rel(weights[name], tensor) <= TOLERANCE, name


@pytest.fixture(scope="module")
def fields(tmp_path_factory) -> dict:
    genome = tmp_path_factory.mktemp("genome") / "g.fa"
    rng = np.random.default_rng(0)
    genome.write_text("".join(f">r{i}\n{''.join(rng.choice(list('ACGT'), 3000))}\n" for i in range(2)))
    # 5 validation windows (of 8): on 2 ranks one of them is padding, which must not count.
    return dict(fasta=[str(genome)], model_overrides={"d_model": 16}, seq_len=64, batch_size=4, max_steps=8,
                lr_warmup_steps=2, val_every=4, checkpoint_every=4, progress=False, valid_fraction=0.1,
                max_val_windows=5,
                log_every=1, accelerator="cpu", precision="32-true")


@pytest.fixture(scope="module")
def one_process(fields, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one")
    train_dna(DnaTrainConfig.from_recipe("tiny-cpu", out=str(out), **fields))
    return out


def test_two_processes_match_one_process(fields, one_process, tmp_path):
    out, writes = tmp_path / "two", tmp_path / "writes.log"
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_RUN)
    done = subprocess.run([sys.executable, str(script), json.dumps({**fields, "out": str(out), "devices": 2,
                                                                    "strategy": "ddp"})],
                          env={**env(), "WRITES_LOG": str(writes)}, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(line for line in done.stdout.splitlines() if line.startswith("rank")) == [
        "rank 0 returned 8", "rank 1 returned 8"]
    assert_same_run(out, one_process)
    # Checkpoints: each file written once, by rank 0 (the temporary file of an atomic write).
    written = writes.read_text().split("\n")[:-1]
    assert written and all(line.startswith("0 ") for line in written)
    assert len(written) == len(set(written))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == sorted(
        p.name for p in (one_process / "checkpoints").iterdir())
    # The exported folder: the same files, and the same config and metadata but for the figures.
    assert sorted(p.name for p in (out / "model").iterdir()) == sorted(
        p.name for p in (one_process / "model").iterdir())
    got, want = read_model_dir(out / "model"), read_model_dir(one_process / "model")
    assert got["config"] == want["config"] and got["architecture"] == want["architecture"]
    assert {**got["metadata"], "valid_bits_per_base": 0} == {**want["metadata"], "valid_bits_per_base": 0}
    resolved = json.loads((out / "train_config.json").read_text())
    assert resolved["world_size"] == 2 and resolved["accumulate_grad_batches"] == 1


def test_two_processes_training_in_chunks_match_one_process(fields, one_process, tmp_path):
    # chunk_tokens 32: each rank's 2 windows of 64 run in pieces of 32 positions with the states
    # carried (training/chunked.py) under DDP's gradient hooks; exact gradients, so the run is the
    # one-process whole-window run up to summation order.
    out = tmp_path / "chunked"
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_RUN)
    done = subprocess.run([sys.executable, str(script), json.dumps({**fields, "out": str(out), "devices": 2,
                                                                    "strategy": "ddp", "chunk_tokens": 32})],
                          env={**env(), "WRITES_LOG": str(tmp_path / "writes.log")}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "train_config.json").read_text())["chunk_tokens"] == 32
    assert_same_run(out, one_process)


def test_two_processes_export_the_best_validation(fields, tmp_path):
    # Validations at steps 4 and 8; step 4 scores best. Rank 0 exports it; both ranks report it.
    out, script = tmp_path / "two", tmp_path / "ddp_run.py"
    script.write_text(DDP_RUN)
    done = subprocess.run([sys.executable, str(script), json.dumps({**fields, "out": str(out), "devices": 2,
                                                                    "strategy": "ddp"})],
                          env={**env({4: 1.5, 8: 2.5}), "WRITES_LOG": str(tmp_path / "writes.log")}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(line for line in done.stdout.splitlines() if line.startswith("exported")) == [
        "exported by rank 0 4 1.5", "exported by rank 1 4 1.5"]
    metadata = read_model_dir(out / "model")["metadata"]
    assert (metadata["steps"], metadata["trained_steps"], metadata["valid_bits_per_base"]) == (4, 8, 1.5)
    assert exports_checkpoint(out / "model", out / "checkpoints" / "step0000004.ckpt")


def test_accumulated_micro_batches_match_the_whole_batch(fields, one_process, tmp_path):
    out = tmp_path / "accumulated"
    train_dna(DnaTrainConfig.from_recipe("tiny-cpu", out=str(out), **{**fields, "micro_batch_size": 2}))
    assert json.loads((out / "train_config.json").read_text())["accumulate_grad_batches"] == 2
    assert_same_run(out, one_process)


def test_resuming_with_another_accumulation_ends_where_the_uninterrupted_run_ends(fields, one_process, tmp_path,
                                                                                 monkeypatch):
    """As when a run resumes on another number of devices: a crash after the checkpoint at step 3 of a
    run without accumulation, resumed with 2 micro-steps per step."""
    out = tmp_path / "resumed"
    run_fields = {**fields, "checkpoint_every": 3, "val_every": 3, "out": str(out)}
    original = TrainBatches.batch

    def crash_at_step_4(self, step):
        if step == 4:
            raise RuntimeError("simulated crash")
        return original(self, step)

    monkeypatch.setattr(TrainBatches, "batch", crash_at_step_4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_dna(DnaTrainConfig.from_recipe("tiny-cpu", **run_fields))
    monkeypatch.setattr(TrainBatches, "batch", original)
    train_dna(DnaTrainConfig.from_recipe("tiny-cpu", **run_fields, resume=True, micro_batch_size=2))
    assert_same_run(out, one_process)


class Numbered(StepStream):
    """Step s's batch: 12 rows (ids, labels) numbered 100 s .. 100 s + 11, so every row says where it is from."""

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.arange(12) + 100 * step
        return rows[:, None].repeat(1, 3), rows


def take(stream: StepStream, count: int, workers: int = 0) -> list:
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    items = []
    for item in loader:
        items.append(item)
        if len(items) == count:
            return items
    raise AssertionError("stream ended")


@pytest.mark.parametrize("world,accumulate", [(1, 1), (2, 1), (1, 2), (2, 2), (3, 2)])
def test_ranks_and_micro_steps_share_out_each_step_exactly(world, accumulate):
    steps, first = 3, 2  # from step 2 on: a resumed run
    shares = {r: take(Numbered(lambda: first, rank=r, world=world, accumulate=accumulate), steps * accumulate)
              for r in range(world)}
    for s in range(steps):
        # In order p = micro-step * world + rank, the shares are the global batch, each row once.
        ordered = [shares[r][s * accumulate + k] for k in range(accumulate) for r in range(world)]
        ids, labels = torch.cat([share[0] for share in ordered]), torch.cat([share[1] for share in ordered])
        global_ids, global_labels = Numbered().batch(first + s)
        assert torch.equal(ids, global_ids) and torch.equal(labels, global_labels)
        assert all(len(share[1]) == 12 // (world * accumulate) for share in ordered)


def test_loader_workers_do_not_change_a_ranks_shares():
    stream = Numbered(rank=1, world=2, accumulate=2)
    alone = take(stream, 8)
    with_workers = take(stream, 8, workers=2)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(alone, with_workers, strict=True))


def test_fasta_windows_of_all_ranks_are_the_one_device_batch(fields):
    fasta = FastaCollection(fields["fasta"])
    sampler = WindowSampler(fasta, split_regions(fasta).train, rc_augment=True)
    whole = TrainBatches(sampler, lambda step: 64, 8 * 64, seed=3)
    shares = []
    for rank in range(4):
        stream = TrainBatches(sampler, lambda step: 64, 8 * 64, seed=3)
        stream.shard(rank, 4)
        shares.append(take(stream, 2))
    for step in range(2):
        assert torch.equal(torch.cat([shares[r][step] for r in range(4)]), whole.batch(step))


@pytest.mark.parametrize("n,world", [(5, 2), (6, 2), (2, 3), (7, 3)])
def test_even_split_gives_equal_batches_and_counts_each_item_once(n, world):
    splits = [EvenSplit(list(range(n)), rank=r, world=world) for r in range(world)]
    assert len({len(s) for s in splits}) == 1
    kept = sorted(item for s in splits for item, keep in (s[i] for i in range(len(s))) if keep)
    assert kept == list(range(n))
    bare = EvenSplit(list(range(n)), mark_padding=False, rank=0, world=world)
    assert [bare[i] for i in range(len(bare))] == list(range(0, n, world))


@pytest.mark.parametrize("values,message", [
    (dict(batch_size=6, devices=4), "batch_size 6 (windows per optimizer step over all devices) does not split "
                                    "over 4 devices; use a multiple of 4"),
    (dict(batch_size=8, devices=2, micro_batch_size=3), "micro_batch_size must divide batch_size / 2: one of 1, 2, 4"),
    (dict(batch_size=2, devices=2, seq_len=1000, warmup_start_len=300), "at warmup length 600 a step has 3 windows"),
    (dict(strategy="deepspeed"), "strategy must be one of auto, ddp, fsdp"),
    (dict(devices="two"), "devices must be a count"),
    (dict(num_nodes=0), "num_nodes must be an integer >= 1"),
])
def test_a_batch_that_does_not_split_is_a_one_line_error(values, message):
    cfg = DnaTrainConfig(**values)
    world = values.get("devices") if isinstance(values.get("devices"), int) else 1
    with pytest.raises(DnaInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cfg.check_distributed()
        cfg.split_batch(world)
    assert DnaTrainConfig(batch_size=8).split_batch(2) == (4, 1)
    assert DnaTrainConfig(batch_size=8, micro_batch_size=2).split_batch(2) == (2, 2)


def test_cli_flags_reach_the_trainer_and_errors_are_one_line(tmp_path, capsys):
    fast = ["--seq-len", "64", "--max-steps", "2", "--set", "accelerator=cpu", "--set", "progress=false"]
    assert main(["train", "dna", "--out", str(tmp_path / "a"), *fast, "--strategy", "ddp_spawn"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "mambaseq: error: strategy must be one of auto, ddp, fsdp, got 'ddp_spawn'"
    assert main(["train", "dna", "--out", str(tmp_path / "a"), *fast, "--batch-size", "3", "--devices", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # the run's summary line, then the error
    assert "does not split over 2 devices" in err[-1] and "Traceback" not in "".join(err)
    # fsdp is passed to Lightning, which runs it on GPUs only: on the CPU its refusal is the error line.
    assert main(["classify", "train", "--out", str(tmp_path / "b"), *fast, "--devices", "2",
                 "--strategy", "fsdp"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mambaseq: error: The strategy `fsdp` requires a GPU accelerator")
    assert "Traceback" not in "".join(err)


def test_classifier_on_two_processes_from_the_cli(tmp_path):
    """`mambaseq classify train --devices 2`: validation as in one process, rank 0 alone reports and
    writes the test report and the model folder, rank 1 returns cleanly."""
    rng = np.random.default_rng(1)
    species = []
    for name, probs in (("gc", [0.1, 0.4, 0.4, 0.1]), ("at", [0.4, 0.1, 0.1, 0.4]), ("even", [0.25] * 4)):
        path = tmp_path / f"{name}.fa"
        path.write_text("".join(f">{name}{i}\n{''.join(rng.choice(list('ACGT'), 2000, p=probs))}\n" for i in range(2)))
        species.append(f"{name}={path}")
    # head_norm none: batch norm statistics are per rank on the CPU (SyncBatchNorm needs GPUs).
    fields = dict(seq_len=64, batch_size=4, max_steps=4, val_every=2, checkpoint_every=2, eval_windows=3,
                  progress=False, lr_warmup_steps=1, head_norm="none", accelerator="cpu", precision="32-true",
                  model_overrides={"d_model": 16})
    sets = [arg for key in ("val_every", "checkpoint_every", "eval_windows", "progress", "lr_warmup_steps",
                            "head_norm", "accelerator", "precision", "model_overrides")
            for arg in ("--set", f"{key}={json.dumps(fields[key])}")]
    out = tmp_path / "two"
    done = subprocess.run([sys.executable, "-m", "mambaseq", "classify", "train", *[a for s in species for a in (
        "--species", s)], "--out", str(out), "--seq-len", "64", "--batch-size", "4", "--max-steps", "4",
        "--devices", "2", "--strategy", "ddp", *sets], env=env(), cwd=tmp_path, capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("model saved to") == 1 and done.stdout.count("test report") == 1
    one = train_classifier(ClassifyConfig.from_recipe("classify-tiny-cpu", species=species, out=str(tmp_path / "one"),
                                                      **fields))
    metadata = read_model_dir(out / "model")["metadata"]
    # 9 validation windows (3 per species) over 2 ranks, one of them padding; accuracy is a count, so exact.
    assert metadata["valid_accuracy"] == one.valid_accuracy
    assert metadata["test_accuracy"] == one.test["accuracy"]
    losses = [{int(r["step"]): float(r["val/loss"]) for r in csv.DictReader(open(run / "logs" / "metrics.csv"))
               if r.get("val/loss")} for run in (out, one.run_dir)]
    assert losses[0].keys() == losses[1].keys() == {1, 3}
    assert all(abs(losses[0][s] - losses[1][s]) <= TOLERANCE * losses[1][s] for s in losses[1])
    assert json.loads((out / "test" / "metrics.json").read_text())["windows"] == 9
