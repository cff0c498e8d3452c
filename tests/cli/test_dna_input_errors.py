"""Nasty DNA inputs through the CLI (issue 7, item 3): exit code 2 and one line on stderr naming the
file, never a traceback. `eval dna` reads FASTA and BED before it runs the model, so it is quick."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from Bio import bgzf

from mambaseq import MambaConfig, MambaLM
from mambaseq.checkpoint import save_pretrained
from mambaseq.cli.main import main

GOOD = b">chr1 first\nACGTACGTAC\nACGTACGTAC\nACG\n>chr2\nTTTTGGGGCC\n"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAMBASEQ_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    config = MambaConfig(d_model=16, n_layer=2, vocab_size=12, d_state=4)
    return save_pretrained(MambaLM(config), tmp_path / "model",
                           metadata={"task": "dna-lm", "soft_mask": "base", "seq_len": 8})


def _bgzip(path: Path, data: bytes) -> None:
    with bgzf.BgzfWriter(str(path), "wb") as writer:
        writer.write(data)


def _cut(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


# name -> (file name, how to write it, a piece of the message)
FASTA_CASES: dict[str, tuple[str, Callable[[Path], object], str]] = {
    "arbitrary bytes": ("x.fa", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00"), "line 1: not FASTA"),
    "empty file": ("x.fa", lambda p: p.write_bytes(b""), "empty file"),
    "truncated gzip": ("x.fa.gz", lambda p: (p.write_bytes(gzip.compress(GOOD)), _cut(p, 30)),
                       "corrupt or truncated gzip data"),
    "truncated bgzip": ("x.fa.gz", lambda p: (_bgzip(p, GOOD), _cut(p, p.stat().st_size - 10)),
                        "truncated bgzip file"),
    "non-UTF-8 header": ("x.fa", lambda p: p.write_bytes(b">chr1 caf\xe9\nACGT\n"), "header is not UTF-8 text"),
    "two blank lines": ("x.fa", lambda p: p.write_bytes(b">a\nACGT\n\n\n>b\nAC\n"), "a second blank line"),
    "ragged lines": ("x.fa", lambda p: p.write_bytes(b">a\nAC\nAC\nACGTAA\n>b\nAC\n"), "more than the record's first"),
    "old Mac line ends": ("x.fa", lambda p: p.write_bytes(b">a\rACGT\rACGT\r"), "carriage return inside a header"),
    "space in sequence": ("x.fa", lambda p: p.write_bytes(b">a\nACGT \nACGT\n"), "invalid character ' '"),
    "duplicate names": ("x.fa", lambda p: p.write_bytes(b">a\nAC\n>a\nAC\n"), "duplicate record name"),
}


def _eval(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["eval", "dna", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("case", list(FASTA_CASES))
def test_nasty_fasta_is_one_line_and_exit_code_2(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                model_dir: Path, case: str) -> None:
    name, make, message = FASTA_CASES[case]
    path = tmp_path / name
    make(path)
    code, out, err = _eval(capsys, "--model", str(model_dir), "--fasta", str(path))
    line = _one_error_line(err)
    assert code == 2 and out == ""
    assert message in line and str(path) in line, line


def test_crlf_fasta_evaluates_like_lf(capsys: pytest.CaptureFixture[str], tmp_path: Path, model_dir: Path) -> None:
    results = []
    for name, data in (("lf.fa", GOOD), ("crlf.fa", GOOD.replace(b"\n", b"\r\n"))):
        (tmp_path / name).write_bytes(data)
        code, out, err = _eval(capsys, "--model", str(model_dir), "--fasta", str(tmp_path / name), "--json")
        assert code == 0, err
        results.append(json.loads(out))
    assert results[0] == results[1]


@pytest.mark.parametrize("bed,message", [
    (b"chrX\t0\t5\n", "line 1: record 'chrX' is in none of the FASTA files"),
    (b"chr1\t0\t5\r\nchr1\t9\t3\r\n", "line 2: interval chr1:9-3 lies outside the record (length 23) or is empty"),
    (b"chr1\t-5\t5\n", "interval chr1:-5-5 lies outside the record"),
    (b"chr1 zero five\n", "line 1: start and end must be integers, got 'zero' and 'five'"),
    (b"\xff\xfe\x00garbage\n", "line 1: a BED line needs 3 columns"),
    (b"# nothing\n", "no intervals"),
])
def test_nasty_bed_is_one_line_and_exit_code_2(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                              model_dir: Path, bed: bytes, message: str) -> None:
    (tmp_path / "g.fa").write_bytes(GOOD)
    (tmp_path / "r.bed").write_bytes(bed)
    code, out, err = _eval(capsys, "--model", str(model_dir), "--fasta", str(tmp_path / "g.fa"),
                           "--bed", str(tmp_path / "r.bed"))
    line = _one_error_line(err)
    assert code == 2 and out == ""
    assert message in line and str(tmp_path / "r.bed") in line, line


def test_missing_and_foreign_model_folders(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "g.fa").write_bytes(GOOD)
    audio = save_pretrained(MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=256, d_state=4)), tmp_path / "audio")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    for folder, message in ((tmp_path / "nope", "not a model directory (no such folder)"),
                            (tmp_path, "not a model directory (no config.json)"),
                            (broken, "config.json: not valid JSON"),
                            (audio, "not a DNA language model (a MambaLM with vocab_size 256")):
        code, out, err = _eval(capsys, "--model", str(folder), "--fasta", str(tmp_path / "g.fa"))
        line = _one_error_line(err)
        assert code == 2 and out == "" and message in line and str(folder) in line, line


def test_seq_len_longer_than_the_records(capsys: pytest.CaptureFixture[str], tmp_path: Path, model_dir: Path) -> None:
    (tmp_path / "g.fa").write_bytes(GOOD)
    code, _, err = _eval(capsys, "--model", str(model_dir), "--fasta", str(tmp_path / "g.fa"), "--seq-len", "1000")
    line = _one_error_line(err)
    assert code == 2 and "shorter than one window of 1001 bases (longest: 23)" in line, line
    # eval has no valid_fraction to raise: the advice is its own flag.
    assert line.endswith("lower --seq-len"), line


def test_a_real_process_prints_one_line(tmp_path: Path, model_dir: Path) -> None:
    path = tmp_path / "x.fa.gz"
    path.write_bytes(gzip.compress(GOOD)[:30])
    env = {**os.environ, "MAMBASEQ_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "mambaseq", "eval", "dna", "--model", str(model_dir),
                           "--fasta", str(path)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "corrupt or truncated gzip data" in _one_error_line(done.stderr)


@pytest.mark.parametrize(("flag", "value"), [("--seq-len", "0"), ("--batch-size", "0"), ("--max-windows", "0")])
def test_a_zero_count_for_eval_is_one_line_naming_it(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                     model_dir: Path, flag: str, value: str) -> None:
    (tmp_path / "good.fa").write_bytes(GOOD)
    code, _, err = _eval(capsys, "--model", str(model_dir), "--fasta", str(tmp_path / "good.fa"), flag, value)
    assert code == 2
    assert "must be >= 1" in _one_error_line(err)
