"""`mambaseq classify train | eval | predict` end to end on small genomes, on the CPU."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from helpers import exports_checkpoint, script_validation

from mambaseq import MambaConfig, MambaLM, from_pretrained
from mambaseq.checkpoint import read_model_dir, save_pretrained
from mambaseq.cli.main import main
from mambaseq.tasks.dna.classify import ClassifyConfig, evaluate_classifier, predict_species, train_classifier
from mambaseq.tasks.dna.fasta import DnaInputError
from mambaseq.tasks.dna.tokenizer import encode, reverse_complement
from mambaseq.training.classify_module import ClassifierModule

FAST = dict(seq_len=64, batch_size=16, max_steps=4, val_every=2, checkpoint_every=2, eval_windows=4, progress=False)
CLI_FAST = ["--seq-len", "128", "--batch-size", "8", "--max-steps", "2", "--set", "val_every=2",
            "--set", "checkpoint_every=2", "--set", "eval_windows=2", "--set", "progress=false"]


def _genome(path, rng, probs, records=(("r1", 3000), ("r2", 1500))):
    path.write_text("".join(f">{path.stem}_{name}\n{''.join(rng.choice(list('ACGT'), n, p=probs))}\n"
                            for name, n in records))
    return str(path)


@pytest.fixture
def two_species(tmp_path):
    """A GC-rich and an AT-rich genome: composition alone tells them apart."""
    rng = np.random.default_rng()
    gc = _genome(tmp_path / "gc.fa", rng, [0.1, 0.4, 0.4, 0.1])
    at = _genome(tmp_path / "at.fa", rng, [0.4, 0.1, 0.1, 0.4])
    return [f"gc={gc}", f"at={at}"]


@pytest.fixture
def trained(tmp_path, two_species):
    cfg = ClassifyConfig.from_recipe("classify-tiny-cpu", species=two_species, out=str(tmp_path / "run"), **FAST)
    return train_classifier(cfg)


def test_learns_an_easy_task(tmp_path, two_species):
    cfg = ClassifyConfig.from_recipe("classify-tiny-cpu", species=two_species, out=str(tmp_path / "run"),
                                     **{**FAST, "max_steps": 40, "eval_windows": 8, "lr": 5e-3})
    result = train_classifier(cfg)
    assert result.test["accuracy"] >= 0.9 and result.test["windows"] == 16


def test_exports_model_report_and_metadata(trained):
    document = read_model_dir(trained.model_dir)
    assert document["architecture"] == "MambaClassifier"
    metadata = document["metadata"]
    assert metadata["task"] == "dna-classify" and metadata["classes"] == ["gc", "at"]
    assert metadata["test_accuracy"] == trained.test["accuracy"]
    saved = json.loads((trained.run_dir / "test" / "metrics.json").read_text())
    assert saved["confusion_matrix"] == trained.test["confusion_matrix"]
    assert (trained.run_dir / "test" / "confusion_matrix.png").stat().st_size > 1000


def test_the_best_validation_accuracy_is_exported_and_tested(tmp_path, two_species, monkeypatch):
    # Validations at steps 2 and 4; step 2 scores highest.
    script_validation(monkeypatch, ClassifierModule, "val/acc", {2: 0.75, 4: 0.5})
    cfg = ClassifyConfig.from_recipe("classify-tiny-cpu", species=two_species, out=str(tmp_path / "run"), **FAST)
    result = train_classifier(cfg)
    assert (result.exported_step, result.steps, result.valid_accuracy) == (2, 4, 0.75)
    metadata = read_model_dir(result.model_dir)["metadata"]
    assert (metadata["steps"], metadata["trained_steps"], metadata["valid_accuracy"]) == (2, 4, 0.75)
    assert exports_checkpoint(result.model_dir, result.run_dir / "checkpoints" / "step0000002.ckpt")
    # The test report is of the exported weights.
    assert evaluate_classifier(result.model_dir)["accuracy"] == result.test["accuracy"]


def test_eval_rebuilds_the_training_test_windows(trained, tmp_path):
    report = evaluate_classifier(trained.model_dir, out=tmp_path / "eval")
    assert report["confusion_matrix"] == trained.test["confusion_matrix"]
    assert report["split"] == "test" and (tmp_path / "eval" / "confusion_matrix.json").exists()


def test_eval_on_given_files_maps_species_to_the_model_classes(trained, two_species):
    # Only one species, given under its name: rows and columns stay in the model's class order.
    report = evaluate_classifier(trained.model_dir, species=[two_species[1], "gc=" + two_species[0][3:]],
                                 windows_per_species=3)
    assert report["split"] == "all" and report["classes"] == ["gc", "at"] and report["windows"] == 6


def test_eval_rejects_unknown_species(trained, two_species):
    with pytest.raises(DnaInputError, match="unknown species zz, gc2; the model's classes are gc, at"):
        evaluate_classifier(trained.model_dir, species=["zz=" + two_species[0][3:], "gc2=" + two_species[1][3:]])


def _read_tsv(path):
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_predict_windows_cover_each_record_and_match_the_model(trained, two_species, tmp_path):
    fasta = two_species[0][3:]
    out = tmp_path / "p.tsv"
    predict_species(trained.model_dir, [fasta], out, window=1000, stride=1000)
    rows = _read_tsv(out)
    r1 = [(int(r["start"]), int(r["end"])) for r in rows if r["name"] == "gc_r1"]
    r2 = [(int(r["start"]), int(r["end"])) for r in rows if r["name"] == "gc_r2"]
    assert r1 == [(0, 1000), (1000, 2000), (2000, 3000)]
    assert r2 == [(0, 1000), (500, 1500)]  # the last window flush with the record end
    model = from_pretrained(trained.model_dir)
    seq = open(fasta).read().split("\n")[1]
    with torch.no_grad():
        want = model(torch.from_numpy(encode(seq[1000:2000]))[None]).softmax(-1)[0]
    row = next(r for r in rows if r["name"] == "gc_r1" and r["start"] == "1000")
    got = torch.tensor([float(row["p_gc"]), float(row["p_at"])])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert row["predicted"] == ["gc", "at"][int(want.argmax())]


def test_predict_per_interval_averages_its_windows(trained, two_species, tmp_path):
    fasta = two_species[1][3:]
    bed = tmp_path / "x.bed"
    bed.write_text("at_r1\t100\t2600\nat_r2\t0\t300\n")
    predict_species(trained.model_dir, [fasta], tmp_path / "w.tsv", bed=str(bed), window=1000, per="window")
    predict_species(trained.model_dir, [fasta], tmp_path / "i.tsv", bed=str(bed), window=1000)
    windows, intervals = _read_tsv(tmp_path / "w.tsv"), _read_tsv(tmp_path / "i.tsv")
    assert [(r["start"], r["end"], r["windows"]) for r in intervals] == [("100", "2600", "3"), ("0", "300", "1")]
    first = [float(r["p_gc"]) for r in windows if r["name"] == "at_r1"]
    assert len(first) == 3 and float(intervals[0]["p_gc"]) == pytest.approx(np.mean(first), rel=1e-4)
    assert [(r["start"], r["end"]) for r in windows if r["name"] == "at_r2"] == [("0", "300")]  # short: one window


def test_predict_rc_average(trained, two_species, tmp_path):
    fasta = two_species[0][3:]
    predict_species(trained.model_dir, [fasta], tmp_path / "rc.tsv", window=500, rc_average=True)
    row = _read_tsv(tmp_path / "rc.tsv")[0]
    model = from_pretrained(trained.model_dir)
    ids = torch.from_numpy(encode(open(fasta).read().split("\n")[1][:500]))[None]
    with torch.no_grad():
        want = (model(ids).softmax(-1) + model(reverse_complement(ids)).softmax(-1))[0] / 2
    torch.testing.assert_close(torch.tensor([float(row["p_gc"]), float(row["p_at"])]), want, rtol=1e-4, atol=1e-5)


def test_init_from_a_pretrained_lm_starts_from_its_backbone(tmp_path, two_species):
    torch.manual_seed(0)
    lm = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=12, d_state=4))
    lm_dir = save_pretrained(lm, tmp_path / "lm", metadata={"task": "dna-lm", "soft_mask": "base"})
    # lr 0: training leaves the weights as they started.
    cfg = ClassifyConfig.from_recipe("classify-tiny-cpu", species=two_species, out=str(tmp_path / "run"),
                                     init_from=str(lm_dir), **{**FAST, "lr": 0.0, "max_steps": 2})
    result = train_classifier(cfg)
    classifier = from_pretrained(result.model_dir)
    assert classifier.config == lm.config
    for key, value in lm.backbone.state_dict().items():
        assert torch.equal(classifier.backbone.state_dict()[key], value), key


def test_resume_after_a_crash_gives_the_same_weights(tmp_path, two_species, monkeypatch):
    from safetensors.torch import load_file

    from mambaseq.tasks.dna import species

    kw = dict(species=two_species, **FAST)
    train_classifier(ClassifyConfig.from_recipe("classify-tiny-cpu", out=str(tmp_path / "a"), **kw))
    original = species.ClassifyBatches.batch

    def crash_at_step_3(self, step):
        if step == 3:
            raise RuntimeError("simulated crash")
        return original(self, step)

    monkeypatch.setattr(species.ClassifyBatches, "batch", crash_at_step_3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_classifier(ClassifyConfig.from_recipe("classify-tiny-cpu", out=str(tmp_path / "b"), **kw))
    monkeypatch.setattr(species.ClassifyBatches, "batch", original)
    train_classifier(ClassifyConfig.from_recipe("classify-tiny-cpu", out=str(tmp_path / "b"), resume=True, **kw))
    a = load_file(tmp_path / "a" / "model" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_train_eval_predict_on_the_bundled_yeasts(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["classify", "train", "--out", str(run), *CLI_FAST]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy:" in printed and str(run / "model") in printed
    assert read_model_dir(run / "model")["metadata"]["classes"] == ["Scer", "Skud", "Smik"]
    assert main(["classify", "eval", "--model", str(run / "model"), "--json", "--out", str(tmp_path / "e")]) == 0
    assert json.loads(capsys.readouterr().out)["windows"] == 6
    fasta = read_model_dir(run / "model")["metadata"]["species"]["Skud"][0]
    out = tmp_path / "pred.tsv"
    assert main(["classify", "predict", "--model", str(run / "model"), "--fasta", fasta, "--window", "50000",
                 "--out", str(out), "--rc"]) == 0
    assert len(_read_tsv(out)) == 5  # Skud chromosome I: ~200 kb in windows of 50 kb


@pytest.mark.parametrize("args,message", [
    (["train", "--species", "a=/no/such.fa", "--species", "b=/no/such.fa"], "FASTA file not found"),
    (["train", "--species", "onlyone"], "NAME=FASTA"),
    (["train", "--seq-len", "10000000"], "longer than every train region"),
    (["train", "--set", "pooling=median"], "pooling must be one of"),
    (["train", "--manifest", "/no/manifest.tsv"], "manifest not found"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, message):
    assert main(["classify", args[0], "--out", str(tmp_path / "run"), *CLI_FAST, *args[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_commands_refuse_a_model_of_the_other_task(tmp_path, trained, two_species, capsys):
    lm_dir = save_pretrained(MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=12, d_state=4)), tmp_path / "lm",
                             metadata={"task": "dna-lm"})
    fasta = two_species[0][3:]
    assert main(["classify", "predict", "--model", str(lm_dir), "--fasta", fasta, "--out",
                 str(tmp_path / "p.tsv")]) == 2
    assert "not a DNA species classifier" in capsys.readouterr().err
    assert main(["embed", "dna", "--model", str(trained.model_dir), "--fasta", fasta, "--out",
                 str(tmp_path / "e.npy")]) == 2
    assert "not a DNA language model (task 'dna-classify'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ClassifyConfig.RECIPES)
def test_every_bundled_recipe_loads_by_name(name):
    assert ClassifyConfig.from_recipe(name).model_config().vocab_size == 12


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_test_pass_runs_on_the_gpu(tmp_path, two_species, monkeypatch):
    # Lightning hands the module back on the CPU after fit; the test windows must not be run there.
    import mambaseq.tasks.dna.classify as classify

    seen = []
    original = classify._report

    def spy(model, *args, **kwargs):
        seen.append(next(model.parameters()).device.type)
        return original(model, *args, **kwargs)

    monkeypatch.setattr(classify, "_report", spy)
    train_classifier(ClassifyConfig.from_recipe("classify-tiny-cpu", species=two_species, out=str(tmp_path / "r"),
                                                **FAST))
    assert seen == ["cuda"]


def test_loader_workers_do_not_change_the_trained_weights(tmp_path, two_species):
    from safetensors.torch import load_file

    for workers in (0, 2):
        train_classifier(ClassifyConfig.from_recipe("classify-tiny-cpu", species=two_species, num_workers=workers,
                                                    out=str(tmp_path / f"w{workers}"), **FAST))
    a = load_file(tmp_path / "w0" / "model" / "model.safetensors")
    b = load_file(tmp_path / "w2" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
