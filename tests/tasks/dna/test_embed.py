"""`mambaseq embed dna`: streamed embeddings equal one forward, pooling, batching, output files."""

from __future__ import annotations

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from mambaseq import MambaConfig, MambaLM, from_pretrained
from mambaseq.checkpoint import save_pretrained
from mambaseq.cli.main import main
from mambaseq.tasks.dna.embed import embed_dna
from mambaseq.tasks.dna.tokenizer import encode


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    config = MambaConfig(d_model=16, n_layer=2, vocab_size=12, d_state=4)
    return save_pretrained(MambaLM(config), tmp_path / "model", metadata={"task": "dna-lm", "soft_mask": "base"})


@pytest.fixture
def genome(tmp_path):
    rng = np.random.default_rng()
    lengths = {"long": 300, "mid": 77, "short": 5, "tiny": 1}
    seqs = {name: "".join(rng.choice(list("ACGTacgtN"), n)) for name, n in lengths.items()}
    path = tmp_path / "g.fa"
    path.write_text("".join(f">{name}\n{seq}\n" for name, seq in seqs.items()))
    return path, seqs


def one_shot(model_dir, seq):
    model = from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model.hidden_states(torch.from_numpy(encode(seq)).unsqueeze(0))[0].numpy()


@pytest.mark.parametrize("pool", ["mean", "max", "first", "last"])
def test_pooled_streamed_equals_one_forward(tmp_path, model_dir, genome, pool):
    path, seqs = genome
    out = tmp_path / "e.npy"
    # Chunks of 16 bases and batches of 3 mixed lengths: state carried, padding left out.
    embed_dna(model_dir, [str(path)], out, pool=pool, chunk_len=16, batch_size=3)
    got = np.load(out)
    for row, seq in enumerate(seqs.values()):
        hidden = one_shot(model_dir, seq)
        want = {"mean": hidden.mean(0), "max": hidden.max(0), "first": hidden[0], "last": hidden[-1]}[pool]
        np.testing.assert_allclose(got[row], want, rtol=1e-4, atol=1e-5)


def test_per_base_h5_equals_one_forward(tmp_path, model_dir, genome):
    path, seqs = genome
    out = tmp_path / "e.h5"
    embed_dna(model_dir, [str(path)], out, pool="none", chunk_len=32, batch_size=2)
    with h5py.File(out) as f:
        assert [n.decode() for n in f["name"][:]] == list(seqs)
        for row, seq in enumerate(seqs.values()):
            data = f["per_base"][str(row)]
            assert data.shape == (len(seq), 16) and data.attrs["name"] == list(seqs)[row]
            np.testing.assert_allclose(data[:], one_shot(model_dir, seq), rtol=1e-4, atol=1e-5)


def test_index_and_formats_agree(tmp_path, model_dir, genome):
    path, _ = genome
    bed = tmp_path / "x.bed"
    bed.write_text("long\t10\t250\nmid\t0\t40\n")
    embed_dna(model_dir, [str(path)], tmp_path / "e.npy", bed=str(bed))
    embed_dna(model_dir, [str(path)], tmp_path / "e.parquet", bed=str(bed))
    embed_dna(model_dir, [str(path)], tmp_path / "e.h5", bed=str(bed))
    index = (tmp_path / "e.tsv").read_text().splitlines()
    assert index == ["row\tname\tstart\tend", "0\tlong\t10\t250", "1\tmid\t0\t40"]
    table = pq.read_table(tmp_path / "e.parquet").to_pydict()
    assert table["name"] == ["long", "mid"] and table["start"] == [10, 0] and table["end"] == [250, 40]
    npy = np.load(tmp_path / "e.npy")
    np.testing.assert_allclose(np.array(table["embedding"]), npy)
    with h5py.File(tmp_path / "e.h5") as f:
        np.testing.assert_allclose(f["embedding"][:], npy)


@pytest.mark.parametrize("args,message", [
    (["--pool", "none", "--out", "e.npy"], "use a .h5 file"),
    (["--pool", "median", "--out", "e.npy"], "--pool must be one of"),
    (["--out", "e.csv"], "output must end in"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, model_dir, genome, capsys, args, message):
    path, _ = genome
    args = [a if not a.startswith("e.") else str(tmp_path / a) for a in args]
    assert main(["embed", "dna", "--model", str(model_dir), "--fasta", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_cli_writes_embeddings(tmp_path, model_dir, genome, capsys):
    path, seqs = genome
    out = tmp_path / "e.npy"
    assert main(["embed", "dna", "--model", str(model_dir), "--fasta", str(path), "--out", str(out)]) == 0
    assert np.load(out).shape == (len(seqs), 16)
    assert str(out) in capsys.readouterr().out


def test_empty_records_get_no_row_and_are_named(tmp_path, model_dir, capsys):
    path = tmp_path / "g.fa"
    path.write_text(">empty1\n>full\nACGTACGTAC\n>empty2\n")
    out = tmp_path / "e.npy"
    assert main(["embed", "dna", "--model", str(model_dir), "--fasta", str(path), "--out", str(out)]) == 0
    assert np.load(out).shape == (1, 16)
    captured = capsys.readouterr()
    assert "wrote 1 embeddings" in captured.out
    assert "skipped 2 empty record(s) with no bases to embed: empty1, empty2" in captured.err
