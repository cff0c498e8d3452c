from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mambaseq import __version__
from mambaseq.cli.main import main
from mambaseq.kernels import ENV_VAR, OPS


@pytest.fixture(autouse=True)
def _default_backend(monkeypatch):
    # The outcome of `info` must not depend on the caller's environment.
    monkeypatch.delenv(ENV_VAR, raising=False)


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err):
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_version(capsys):
    code, out, _ = _run(capsys, "--version")
    assert code == 0
    assert out.strip() == f"mambaseq {__version__}"


@pytest.mark.parametrize("argv", [[], ["--help"], ["-h"]])
def test_usage(capsys, argv):
    code, out, err = _run(capsys, *argv)
    assert code == 0
    assert "Usage" in out and "mambaseq" in out
    assert "info" in out
    assert "Traceback" not in out + err


def test_info_help(capsys):
    code, out, _ = _run(capsys, "info", "--help")
    assert code == 0
    assert "Usage" in out and "--json" in out


def test_info_lists_ops_and_torch_version(capsys):
    code, out, err = _run(capsys, "info")
    assert code == 0, err
    for op in ("selective_scan", "causal_conv1d", "causal_conv1d_update", "selective_state_update",
               "mamba_stack_step"):
        assert op in out
    assert torch.__version__ in out
    assert __version__ in out


def test_info_json(capsys):
    code, out, err = _run(capsys, "info", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert {"python", "torch", "triton", "devices", "kernels"} <= set(report)
    assert report["torch"] == torch.__version__
    assert report["python"] == sys.version.split()[0]
    assert report["devices"][0]["name"] == "cpu"
    assert set(report["kernels"]["cpu"]) == set(OPS)
    assert set(report["kernels"]["cpu"].values()) == {"reference"}
    assert set(report["kernels"]) == {d["name"] for d in report["devices"]}


@pytest.mark.parametrize("backend", ["reference", "auto", " Reference "])
def test_info_json_with_valid_backend_env(capsys, monkeypatch, backend):
    monkeypatch.setenv(ENV_VAR, backend)
    code, out, err = _run(capsys, "info", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["kernels"]["cpu"] == dict.fromkeys(OPS, "reference")
    assert report["kernel_backend_requested"] == f"{ENV_VAR}={backend.strip().lower()}"


@pytest.mark.parametrize("argv", [["--bogus"], ["info", "--bogus"], ["info", "--json", "extra"]])
def test_unknown_option(capsys, argv):
    code, out, err = _run(capsys, *argv)
    assert code == 2
    _one_error_line(err)
    assert out == ""


def test_unknown_command(capsys):
    code, out, err = _run(capsys, "frobnicate")
    assert code == 2
    assert "frobnicate" in _one_error_line(err)
    assert out == ""


def test_bad_kernel_env(capsys, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "bogus")
    code, out, err = _run(capsys, "info")
    assert code == 2
    line = _one_error_line(err)
    assert "MAMBASEQ_KERNELS" in line and "bogus" in line
    assert out == ""


def test_bad_kernel_env_json(capsys, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "bogus")
    code, _, err = _run(capsys, "info", "--json")
    assert code == 2
    assert "MAMBASEQ_KERNELS" in _one_error_line(err)


def _subprocess(*argv, env=None):
    environment = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "mambaseq.cli.main", *argv], capture_output=True,
                          text=True, env=environment, timeout=120)


def test_subprocess_version():
    done = _subprocess("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"mambaseq {__version__}"


def test_subprocess_unknown_command():
    done = _subprocess("frobnicate")
    assert done.returncode == 2
    assert "frobnicate" in _one_error_line(done.stderr)


def test_subprocess_bad_kernel_env():
    done = _subprocess("info", env={ENV_VAR: "bogus"})
    assert done.returncode == 2
    assert "MAMBASEQ_KERNELS" in _one_error_line(done.stderr)


@pytest.mark.parametrize("args,want", [
    (["train", "dna", "--fasta", "a.fa", "b.fa", "--out", "x"], ["train", "dna", "--fasta", "a.fa", "--fasta", "b.fa",
                                                                 "--out", "x"]),
    (["classify", "train", "--species", "a=x.fa", "b=y.fa,z.fa"],
     ["classify", "train", "--species", "a=x.fa", "--species", "b=y.fa,z.fa"]),
    (["eval", "dna", "--fasta", "a.fa", "--fasta", "b.fa"], ["eval", "dna", "--fasta", "a.fa", "--fasta", "b.fa"]),
    (["eval", "dna", "--model", "m", "--fasta", "a.fa"], ["eval", "dna", "--model", "m", "--fasta", "a.fa"]),
])
def test_several_values_after_one_flag(args, want):
    from mambaseq.cli.main import expand_multi_value

    assert expand_multi_value(args) == want


def test_an_error_naming_a_non_utf8_file_prints_as_one_line(tmp_path, capfdbinary):
    import os

    from mambaseq import MambaConfig, MambaLM, save_pretrained
    from mambaseq.cli.main import main

    save_pretrained(MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=12)), tmp_path / "m",
                    metadata={"task": "dna-lm"})
    bad = os.path.join(os.fsencode(tmp_path), b"\xe9t\xe9.fa")
    with open(bad, "wb") as handle:
        handle.write(b"not FASTA at all\n")
    assert main(["eval", "dna", "--model", str(tmp_path / "m"), "--fasta", os.fsdecode(bad)]) == 2
    err = capfdbinary.readouterr().err.decode("utf-8")
    assert len(err.strip().splitlines()) == 1 and "\\udce9t\\udce9.fa" in err and "Traceback" not in err
