"""`mambaseq train dna` end to end on a small FASTA: exported model, one-line errors, exact resume."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import exports_checkpoint, script_validation
from safetensors.torch import load_file

from mambaseq import from_pretrained
from mambaseq.checkpoint import read_model_dir
from mambaseq.cli.main import main
from mambaseq.tasks.dna import windows
from mambaseq.tasks.dna.train import DnaTrainConfig, train_dna
from mambaseq.training.lm_module import CausalLMModule

FAST = ["--seq-len", "64", "--batch-size", "4", "--max-steps", "4", "--set", "val_every=2",
        "--set", "checkpoint_every=2", "--set", "progress=false", "--set", "max_val_windows=4"]


@pytest.fixture
def genome(tmp_path):
    rng = np.random.default_rng()
    path = tmp_path / "g.fa"
    path.write_text("".join(f">r{i}\n{''.join(rng.choice(list('ACGT'), 3000))}\n" for i in range(2)))
    return path


def test_cli_trains_and_exports_a_model(tmp_path, genome, capsys):
    out = tmp_path / "run"
    assert main(["train", "dna", "--fasta", str(genome), "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "validation bits/base:" in printed and str(out / "model") in printed
    model = from_pretrained(out / "model")
    assert model.config.vocab_size == 12
    assert (out / "checkpoints" / "last.ckpt").exists() and (out / "logs" / "metrics.csv").exists()


@pytest.mark.parametrize("more", [[], ["--max-steps", "6", "--set", "early_stop_patience=1"]],
                         ids=["to-the-end", "stopped-early"])
def test_cli_exports_the_weights_of_the_best_validation(tmp_path, genome, capsys, monkeypatch, more):
    # Validations at steps 2, 4 (and 6): step 2 scores best, so with a patience of 1 the run stops at 4.
    script_validation(monkeypatch, CausalLMModule, "val/bits_per_base", {2: 1.5, 4: 2.5, 6: 3.0})
    out = tmp_path / "run"
    assert main(["train", "dna", "--fasta", str(genome), "--out", str(out), *FAST, *more]) == 0
    assert "exported the best weights: step 2 of 4 (validation bits/base: 1.5000)\n" in capsys.readouterr().out
    metadata = read_model_dir(out / "model")["metadata"]
    assert (metadata["steps"], metadata["trained_steps"], metadata["valid_bits_per_base"]) == (2, 4, 1.5)
    assert exports_checkpoint(out / "model", out / "checkpoints" / "step0000002.ckpt")
    assert not exports_checkpoint(out / "model", out / "checkpoints" / "last.ckpt")


def test_cli_trains_in_chunks(tmp_path, genome, capsys, monkeypatch):
    # The same run as whole batches (chunked gradients are exact; tests/training/test_chunked.py),
    # so the exported weights agree closely; and the chunked path did run.
    from mambaseq.training import lm_module
    pieces = []
    chunked_nll = lm_module.chunked_nll
    monkeypatch.setattr(lm_module, "chunked_nll", lambda *a, **k: pieces.append(a[3]) or chunked_nll(*a, **k))
    for name, extra in (("whole", []), ("chunked", ["--chunk-tokens", "16"])):
        assert main(["train", "dna", "--fasta", str(genome), "--out", str(tmp_path / name), *FAST, *extra]) == 0
    assert pieces and set(pieces) == {16}
    assert "in chunks of 16 tokens" in " ".join(capsys.readouterr().err.split())  # the summary line; Rich wraps it
    whole, chunked = (load_file(tmp_path / name / "model" / "model.safetensors") for name in ("whole", "chunked"))
    for key in whole:
        assert torch.allclose(chunked[key], whole[key], rtol=1e-3, atol=1e-5), key


def test_bundled_genome_is_the_default(tmp_path):
    assert main(["train", "dna", "--out", str(tmp_path / "run"), *FAST]) == 0
    metadata = read_model_dir(tmp_path / "run" / "model")["metadata"]
    assert any(path.endswith("ScerR64_I_GCF_000146045.2_R64_genomic.fna.gz") for path in metadata["fasta"])


@pytest.mark.parametrize("args,message", [
    (["--fasta", "/no/such.fa"], "no such file"),
    (["--recipe", "nope"], "unknown recipe"),
    (["--set", "bogus=1"], "unknown field"),
    (["--set", "novalue"], "KEY=VALUE"),
    (["--chunk-tokens", "0"], "chunk_tokens must be a positive integer"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, message):
    assert main(["train", "dna", "--out", str(tmp_path / "run"), *FAST, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_diverging_run_stops_with_one_line_naming_the_step(tmp_path, genome, capsys):
    # An absurd learning rate blows the weights up in the first step: the next loss is NaN.
    out = tmp_path / "run"
    assert main(["train", "dna", "--fasta", str(genome), "--out", str(out), *FAST, "--lr", "1e38"]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"mambaseq: error: training stopped at step \d+: the (loss|gradient norm) is .*",
                        err.strip().splitlines()[-1])
    assert "Traceback" not in err and not (out / "model").exists()


def test_resume_after_a_crash_gives_the_same_weights(tmp_path, genome, monkeypatch):
    kw = dict(fasta=[str(genome)], seq_len=64, batch_size=4, max_steps=8, val_every=4, checkpoint_every=4,
              progress=False, max_val_windows=4)
    train_dna(DnaTrainConfig.from_recipe("tiny-cpu", out=str(tmp_path / "a"), **kw))
    original = windows.TrainBatches.batch

    def crash_at_step_5(self, step):
        if step == 5:
            raise RuntimeError("simulated crash")
        return original(self, step)

    monkeypatch.setattr(windows.TrainBatches, "batch", crash_at_step_5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_dna(DnaTrainConfig.from_recipe("tiny-cpu", out=str(tmp_path / "b"), **kw))
    monkeypatch.setattr(windows.TrainBatches, "batch", original)
    train_dna(DnaTrainConfig.from_recipe("tiny-cpu", out=str(tmp_path / "b"), resume=True, **kw))
    a = load_file(tmp_path / "a" / "model" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model" / "model.safetensors")
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_eval_reports_bits_per_base_as_json(tmp_path, genome, capsys):
    import json

    out = tmp_path / "run"
    assert main(["train", "dna", "--fasta", str(genome), "--out", str(out), *FAST]) == 0
    capsys.readouterr()
    assert main(["eval", "dna", "--model", str(out / "model"), "--fasta", str(genome), "--json",
                 "--max-windows", "5"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["windows"] == 5 and result["tokens"] == 5 * 64
    assert 0.0 < result["bits_per_base"] < 8.0  # a 4-step model on random bases: a few bits
    assert result["perplexity"] == pytest.approx(2 ** result["bits_per_base"], rel=1e-6)


def test_eval_by_position_bands_add_up_to_the_whole(tmp_path, genome, capsys):
    import json

    out = tmp_path / "run"
    assert main(["train", "dna", "--fasta", str(genome), "--out", str(out), *FAST]) == 0
    capsys.readouterr()
    assert main(["eval", "dna", "--model", str(out / "model"), "--fasta", str(genome), "--json",
                 "--max-windows", "5", "--by-position"]) == 0
    result = json.loads(capsys.readouterr().out)
    bands = result["by_position"]
    assert [(b["context_from"], b["context_to"]) for b in bands] == [
        (1, 1), (2, 3), (4, 7), (8, 15), (16, 31), (32, 63), (64, 64)]
    assert sum(b["tokens"] for b in bands) == result["tokens"]
    weighted = sum(b["bits_per_base"] * b["tokens"] for b in bands) / result["tokens"]
    assert weighted == pytest.approx(result["bits_per_base"], rel=1e-6)
    assert main(["eval", "dna", "--model", str(out / "model"), "--fasta", str(genome), "--max-windows", "5",
                 "--by-position"]) == 0
    assert capsys.readouterr().out.count("context") == len(bands)


def test_eval_of_a_missing_model_is_one_line(tmp_path, genome, capsys):
    assert main(["eval", "dna", "--model", str(tmp_path / "none"), "--fasta", str(genome)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_flag_and_set_of_the_same_field_do_not_clash(tmp_path):
    # --set seq_len=32 names a field a flag also sets: the flag wins, no crash.
    assert main(["train", "dna", "--out", str(tmp_path / "run"), *FAST, "--set", "seq_len=32"]) == 0
    assert read_model_dir(tmp_path / "run" / "model")["metadata"]["seq_len"] == 64


@pytest.mark.parametrize("name", DnaTrainConfig.RECIPES)
def test_every_bundled_recipe_loads_by_name(name):
    # Names such as hg38-1.4m carry a dot: they must not be taken for file paths.
    assert DnaTrainConfig.from_recipe(name).model_config().vocab_size == 12


def test_a_yaml_recipe_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("seq_len: 128\nlr: 1.0e-3\n")
    cfg = DnaTrainConfig.from_recipe(str(path), lr=2e-3)
    assert (cfg.seq_len, cfg.lr) == (128, 2e-3)


@pytest.mark.parametrize(("content", "message"), [
    (lambda path: torch.save({"state_dict": {}, "where": Path(".")}, path), "refused to load"),
    (lambda path: path.write_bytes(b"garbage"), "not a readable checkpoint"),
])
def test_resume_from_an_unsafe_or_damaged_checkpoint_is_one_line(tmp_path, genome, capsys, content, message):
    out = tmp_path / "run"
    assert main(["train", "dna", "--fasta", str(genome), "--out", str(out), *FAST]) == 0
    content(out / "checkpoints" / "last.ckpt")
    capsys.readouterr()
    assert main(["train", "dna", "--fasta", str(genome), "--out", str(out), *FAST, "--resume"]) == 2
    err = capsys.readouterr().err
    assert message in err.strip().splitlines()[-1] and "Traceback" not in err


def test_a_time_limit_stops_early_and_still_exports(tmp_path, genome, monkeypatch):
    original = windows.TrainBatches.batch

    def slow(self, step):
        time.sleep(0.5)
        return original(self, step)

    monkeypatch.setattr(windows.TrainBatches, "batch", slow)
    result = train_dna(DnaTrainConfig.from_recipe(
        "tiny-cpu", fasta=[str(genome)], out=str(tmp_path / "run"), seq_len=64, batch_size=4, max_steps=1000,
        val_every=1000, checkpoint_every=1000, progress=False, max_val_windows=4, max_minutes=0.05))
    assert 0 < result.steps < 1000
    assert np.isfinite(result.valid_bits_per_base) and (result.model_dir / "model.safetensors").exists()
