"""`mambaseq generate dna`: FASTA out, bases only, reproducible from the seed, prompts honoured."""

from __future__ import annotations

import pytest
import torch
from Bio import SeqIO

from mambaseq import MambaConfig, MambaLM
from mambaseq.checkpoint import save_pretrained
from mambaseq.cli.main import main
from mambaseq.generation import SamplingConfig
from mambaseq.tasks.dna.generate import generate_dna


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    config = MambaConfig(d_model=16, n_layer=2, vocab_size=12, d_state=4)
    return save_pretrained(MambaLM(config), tmp_path / "model", metadata={"task": "dna-lm", "soft_mask": "base"})


def read(path):
    return [(r.description, str(r.seq)) for r in SeqIO.parse(path, "fasta")]


def test_writes_fasta_of_bases_with_settings(tmp_path, model_dir):
    out = tmp_path / "g.fa"
    generate_dna(model_dir, out, length=150, n=3, sampling=SamplingConfig(temperature=1.3, top_k=3), seed=4)
    records = read(out)
    assert len(records) == 3
    for header, seq in records:
        assert len(seq) == 150 and set(seq) <= set("ACGT")
        assert "temperature=1.3" in header and "top_k=3" in header and "seed=4" in header


def test_same_seed_same_output_other_seed_differs(tmp_path, model_dir):
    outs = []
    for seed in (1, 1, 2):
        out = tmp_path / f"g{len(outs)}.fa"
        generate_dna(model_dir, out, length=200, n=2, seed=seed)
        outs.append(read(out))
    assert outs[0] == outs[1] and outs[0] != outs[2]


def test_prompt_fasta_gives_n_samples_per_record(tmp_path, model_dir):
    prompts = tmp_path / "p.fa"
    prompts.write_text(">a\nACGTACGT\n>b\nGGGG\n")
    records = generate_dna(model_dir, tmp_path / "g.fa", length=10, n=2, prompt_fasta=str(prompts))
    assert [r["prompt"] for r in records] == ["a", "a", "b", "b"]
    assert all("prompt_len=8" in r["settings"] for r in records[:2])


def test_greedy_continuation_is_the_models_argmax(tmp_path, model_dir):
    from mambaseq import from_pretrained
    from mambaseq.tasks.dna.tokenizer import A, T, decode, encode

    prompt = "ACGTTTGA" * 4
    got = generate_dna(model_dir, tmp_path / "g.fa", length=5, prompt=prompt,
                       sampling=SamplingConfig(temperature=0))[0]["sequence"]
    # The same greedy choice made with full forwards over the growing sequence.
    model = from_pretrained(model_dir).eval()
    ids = torch.from_numpy(encode(prompt)).unsqueeze(0)
    for _ in range(5):
        with torch.no_grad():
            logits = model(ids)[0, -1, A:T + 1]
        ids = torch.cat([ids, torch.tensor([[A + int(logits.argmax())]])], dim=1)
    assert got == decode(ids[0, len(prompt):])


@pytest.mark.parametrize("args,message", [
    (["--prompt", "ACGXZ"], "not a DNA sequence"),
    (["--length", "0"], "must be >= 1"),
    (["--top-p", "1.5"], "top_p"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, model_dir, capsys, args, message):
    code = main(["generate", "dna", "--model", str(model_dir), "--out", str(tmp_path / "g.fa"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_cli_generates(tmp_path, model_dir, capsys):
    out = tmp_path / "g.fa"
    assert main(["generate", "dna", "--model", str(model_dir), "--length", "50", "--n", "2", "--seed", "3",
                 "--out", str(out)]) == 0
    assert len(read(out)) == 2 and str(out) in capsys.readouterr().out
