"""`mambaseq score dna`: streamed log-likelihoods equal one forward; variant deltas; input checks."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest
import torch

from mambaseq import MambaConfig, MambaLM, from_pretrained
from mambaseq.checkpoint import save_pretrained
from mambaseq.cli.main import main
from mambaseq.tasks.dna.fasta import DnaInputError
from mambaseq.tasks.dna.score import score_dna, score_variants
from mambaseq.tasks.dna.tokenizer import N, encode


@pytest.fixture
def model_dir(tmp_path, seed):
    config = MambaConfig(d_model=16, n_layer=2, vocab_size=12, d_state=4)
    return save_pretrained(MambaLM(config), tmp_path / "model", metadata={"task": "dna-lm", "soft_mask": "base"})


@pytest.fixture
def genome(tmp_path):
    rng = np.random.default_rng()
    lengths = {"long": 90, "mid": 37, "short": 5, "tiny": 1, "empty": 0}
    seqs = {name: "".join(rng.choice(list("ACGTacgtN"), n)) for name, n in lengths.items()}
    # Ns at fixed places too (one just after a 16-base chunk boundary), so every run has some.
    seqs["long"] = seqs["long"][:17] + "N" + seqs["long"][18:40] + "NN" + seqs["long"][42:]
    path = tmp_path / "g.fa"
    path.write_text("".join(f">{name}\n{seq}\n" for name, seq in seqs.items()))
    return path, seqs


def one_shot_ll(model_dir, seq: str) -> tuple[float, int]:
    """(log-likelihood in nats, scored bases) of `seq` from one forward over the whole sequence."""
    if len(seq) < 2:
        return 0.0, 0
    model = from_pretrained(model_dir).eval()
    ids = torch.from_numpy(encode(seq)).unsqueeze(0)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(ids)[..., :12].double(), -1)[0, :-1]
    targets = ids[0, 1:]
    per_base = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    keep = targets != N
    return per_base[keep].sum().item(), int(keep.sum())


def read_tsv(path) -> tuple[list[str], list[list[str]]]:
    header, *rows = path.read_text().splitlines()
    return header.split("\t"), [row.split("\t") for row in rows]


def test_streamed_score_equals_one_forward(tmp_path, model_dir, genome):
    path, seqs = genome
    out = tmp_path / "s.tsv"
    # Chunks of 16 bases and batches of 3 mixed lengths: state and last hidden carried, padding masked.
    summary = score_dna(model_dir, [str(path)], out, chunk_len=16, batch_size=3)
    header, rows = read_tsv(out)
    assert header == ["name", "start", "end", "scored_bases", "log_likelihood", "bits_per_base"]
    assert [r[:3] for r in rows] == [[name, "0", str(len(seq))] for name, seq in seqs.items()]
    total_ll = total_scored = 0
    for row, seq in zip(rows, seqs.values(), strict=True):
        want_ll, want_scored = one_shot_ll(model_dir, seq)
        scored, ll, bits = int(row[3]), float(row[4]), float(row[5])
        assert scored == want_scored == sum(b != "N" for b in seq[1:])
        assert ll == pytest.approx(want_ll, rel=1e-5, abs=1e-4)
        if scored:
            assert bits == pytest.approx(-ll / scored / math.log(2), rel=1e-5)
        else:
            assert math.isnan(bits)
        total_ll, total_scored = total_ll + want_ll, total_scored + want_scored
    assert summary["rows"] == len(seqs) and summary["bases"] == sum(map(len, seqs.values()))
    assert summary["scored_bases"] == total_scored
    assert summary["n_targets"] == sum(seq[1:].count("N") for seq in seqs.values())
    assert summary["bits_per_base"] == pytest.approx(-total_ll / total_scored / math.log(2), rel=1e-5)


def test_bed_scores_the_interval_only(tmp_path, model_dir, genome):
    path, seqs = genome
    bed = tmp_path / "x.bed"
    bed.write_text("long\t10\t60\nmid\t3\t37\n")
    out = tmp_path / "s.tsv"
    score_dna(model_dir, [str(path)], out, bed=str(bed), chunk_len=8, batch_size=2)
    _, rows = read_tsv(out)
    assert [r[:3] for r in rows] == [["long", "10", "60"], ["mid", "3", "37"]]
    for row, seq in zip(rows, [seqs["long"][10:60], seqs["mid"][3:37]], strict=True):
        want_ll, want_scored = one_shot_ll(model_dir, seq)
        assert int(row[3]) == want_scored
        assert float(row[4]) == pytest.approx(want_ll, rel=1e-5, abs=1e-4)


@pytest.fixture
def variant_genome(tmp_path):
    rng = np.random.default_rng()
    seqs = {"chrA": "".join(rng.choice(list("ACGTacgt"), 90)), "chrB": "".join(rng.choice(list("ACGT"), 30))}
    seqs["chrA"] = seqs["chrA"][:40] + "N" + seqs["chrA"][41:]  # inside the SNV's window
    path = tmp_path / "v.fa"
    path.write_text("".join(f">{name}\n{seq}\n" for name, seq in seqs.items()))
    return path, seqs


def other_base(base: str) -> str:
    return next(b for b in "ACGT" if b != base.upper())


def expected_window(pos: int, ref: str, length: int, window: int) -> tuple[int, int]:
    # Centred on the middle of REF, then cut at the record's ends.
    centre = pos - 1 + len(ref) // 2
    return max(0, centre - window // 2), min(length, centre - window // 2 + window)


def test_variant_delta_equals_independent_windows(tmp_path, model_dir, variant_genome):
    path, seqs = variant_genome
    a, b = seqs["chrA"], seqs["chrB"]
    cases = [  # (chrom, 1-based pos, ref, alt)
        ("chrA", 45, a[44].upper(), other_base(a[44])),          # SNV
        ("chrA", 30, a[29].upper(), a[29].upper() + "GTT"),      # insertion
        ("chrA", 60, a[59:62].upper(), a[59].upper()),           # deletion
        ("chrA", 89, a[88].upper(), other_base(a[88])),          # near the end: window clamped
        ("chrB", 2, b[1:3], b[1]),                               # deletion near the start
    ]
    variants = tmp_path / "variants.tsv"
    variants.write_text("chrom\tpos\tref\talt\n\n" + "".join(f"{c}\t{p}\t{r}\t{x}\n" for c, p, r, x in cases))
    out = tmp_path / "v.tsv"
    window = 24
    assert score_variants(model_dir, [str(path)], str(variants), out, window=window, batch_size=3)["rows"] == 5
    header, rows = read_tsv(out)
    assert header == ["chrom", "pos", "ref", "alt", "window_start", "window_end", "ll_ref", "ll_alt", "delta_ll"]
    for row, (chrom, pos, ref, alt) in zip(rows, cases, strict=True):
        seq = seqs[chrom]
        start, end = expected_window(pos, ref, len(seq), window)
        assert row[:6] == [chrom, str(pos), ref, alt, str(start), str(end)]
        ref_seq = seq[start:end]
        alt_seq = seq[start:pos - 1] + alt + seq[pos - 1 + len(ref):end]
        ll_ref, _ = one_shot_ll(model_dir, ref_seq)
        ll_alt, _ = one_shot_ll(model_dir, alt_seq)
        assert float(row[6]) == pytest.approx(ll_ref, rel=1e-5, abs=1e-4)
        assert float(row[7]) == pytest.approx(ll_alt, rel=1e-5, abs=1e-4)
        assert float(row[8]) == pytest.approx(ll_alt - ll_ref, rel=1e-5, abs=2e-4)
    assert rows[3][5] == "90" and int(rows[3][5]) - int(rows[3][4]) < window
    assert rows[4][4] == "0"


@pytest.mark.parametrize("suffix", [".vcf", ".vcf.gz"])
def test_vcf_with_two_alts_gives_two_rows(tmp_path, model_dir, variant_genome, suffix):
    path, seqs = variant_genome
    ref = seqs["chrB"][9]
    alts = [b for b in "ACGT" if b != ref][:2]
    text = ("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
            f"chrB\t10\trs1\t{ref}\t{','.join(alts)}\t.\tPASS\t.\n")
    variants = tmp_path / f"v{suffix}"
    if suffix.endswith(".gz"):
        variants.write_bytes(gzip.compress(text.encode()))
    else:
        variants.write_text(text)
    out = tmp_path / "v.tsv"
    assert score_variants(model_dir, [str(path)], str(variants), out, window=16)["rows"] == 2
    _, rows = read_tsv(out)
    assert [r[:4] for r in rows] == [["chrB", "10", ref, alt] for alt in alts]
    assert rows[0][6] == rows[1][6]  # the same reference window
    for row, alt in zip(rows, alts, strict=True):
        want = one_shot_ll(model_dir, seqs["chrB"][1:9] + alt + seqs["chrB"][10:17])[0]
        assert float(row[7]) == pytest.approx(want, rel=1e-5, abs=1e-4)


@pytest.mark.parametrize("line,message", [
    ("chrB\t5\t{wrong}\tA", "line 3: REF '{wrong}' does not match the genome ('{base}' at chrB:5)"),
    ("chrZ\t5\tA\tC", "line 3: chromosome 'chrZ' is in none of the FASTA files"),
    ("chrB\t31\tA\tC", "line 3: position 31"),
    ("chrB\t0\tA\tC", "line 3: position 0"),
    ("chrB\t30\tAC\tA", "line 3: position 30"),  # REF runs past the end
    ("chrB\t5\t{base}\t-", "line 3: ALT must be A/C/G/T"),
])
def test_bad_variant_names_file_and_line(tmp_path, model_dir, variant_genome, line, message):
    path, seqs = variant_genome
    base = seqs["chrB"][4]
    wrong = other_base(base)
    variants = tmp_path / "variants.tsv"
    good = f"chrB\t3\t{seqs['chrB'][2]}\tA"
    variants.write_text(f"#comment\n{good}\n{line.format(wrong=wrong, base=base)}\n")
    with pytest.raises(DnaInputError) as err:
        score_variants(model_dir, [str(path)], str(variants), tmp_path / "v.tsv")
    text = str(err.value)
    assert f"variants.tsv {message.format(wrong=wrong, base=base)}" in text and "\n" not in text
    assert not (tmp_path / "v.tsv").exists()


@pytest.mark.parametrize("kwargs,message", [
    ({"out": "s.csv"}, "output must end in .tsv"),
    ({"chunk_len": 0}, "--chunk-len and --batch-size must be >= 1"),
    ({"batch_size": 0}, "--chunk-len and --batch-size must be >= 1"),
])
def test_bad_record_arguments(tmp_path, model_dir, genome, kwargs, message):
    path, _ = genome
    kwargs = {"out": tmp_path / "s.tsv", **kwargs}
    kwargs["out"] = tmp_path / kwargs["out"]
    with pytest.raises(DnaInputError, match=message):
        score_dna(model_dir, [str(path)], **kwargs)


@pytest.mark.parametrize("kwargs,message", [
    ({"window": 1}, "--window must be >= 2"),
    ({"out": "v.txt"}, "output must end in .tsv"),
])
def test_bad_variant_arguments(tmp_path, model_dir, variant_genome, kwargs, message):
    path, _ = variant_genome
    variants = tmp_path / "variants.tsv"
    variants.write_text("chrB\t3\tA\tC\n")
    kwargs = {"out": tmp_path / "v.tsv", **kwargs}
    kwargs["out"] = tmp_path / kwargs["out"]
    with pytest.raises(DnaInputError, match=message):
        score_variants(model_dir, [str(path)], str(variants), **kwargs)


def test_cli_bad_variant_is_one_line_exit_2(tmp_path, model_dir, variant_genome, capsys):
    path, _ = variant_genome
    variants = tmp_path / "variants.tsv"
    variants.write_text("chrom\tpos\tref\talt\nchrQ\t3\tA\tC\n")
    code = main(["score", "dna", "--model", str(model_dir), "--fasta", str(path), "--variants", str(variants),
                 "--out", str(tmp_path / "v.tsv")])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "variants.tsv line 2: chromosome 'chrQ'" in err


def test_cli_writes_scores(tmp_path, model_dir, genome, capsys):
    path, seqs = genome
    out = tmp_path / "s.tsv"
    args = ["score", "dna", "--model", str(model_dir), "--fasta", str(path), "--out", str(out), "--chunk-len", "32"]
    assert main(args) == 0
    _, rows = read_tsv(out)
    assert [r[0] for r in rows] == list(seqs)
    stdout = capsys.readouterr().out
    assert f"scored {len(seqs)} records" in stdout and "bits/base" in stdout and str(out) in stdout
    assert main([*args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == len(seqs) and summary["out"] == str(out)


def test_cli_scores_variants(tmp_path, model_dir, variant_genome, capsys):
    path, seqs = variant_genome
    variants = tmp_path / "variants.tsv"
    variants.write_text(f"chrB\t7\t{seqs['chrB'][6]}\t{other_base(seqs['chrB'][6])}\n")
    out = tmp_path / "v.tsv"
    assert main(["score", "dna", "--model", str(model_dir), "--fasta", str(path), "--variants", str(variants),
                 "--window", "10", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"rows": 1, "out": str(out)}
    _, rows = read_tsv(out)
    assert rows[0][4:6] == ["1", "11"]
