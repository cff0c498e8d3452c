"""FASTA/BED access on files the tests write: plain, gzip, bgzip; read-only folders; bad input."""

from __future__ import annotations

import gzip
import os
import random
import stat

import pytest
from Bio import bgzf

from mambaseq.tasks.dna.fasta import DnaInputError, FastaCollection, read_bed


def write_fasta(path, records, width=60, opener=open):
    with opener(path, "wb") as handle:
        for name, seq in records.items():
            handle.write(f">{name} some description\n".encode())
            for i in range(0, len(seq), width):
                handle.write(seq[i:i + width].encode() + b"\n")
    return path


@pytest.fixture
def records():
    rng = random.Random(os.urandom(8))
    return {f"chr{i}": "".join(rng.choice("ACGTacgtN") for _ in range(rng.randint(50, 400))) for i in range(3)}


@pytest.mark.parametrize("kind", ["plain", "gzip", "bgzip"])
def test_random_access_matches_the_text(tmp_path, records, kind):
    opener = {"plain": open, "gzip": gzip.open, "bgzip": lambda p, m: bgzf.BgzfWriter(p, m)}[kind]
    path = write_fasta(tmp_path / f"x.fa{'' if kind == 'plain' else '.gz'}", records, opener=opener)
    fasta = FastaCollection([path], cache_dir=tmp_path / "cache")
    assert fasta.files[0].compression == kind
    assert [(r.name, r.length) for r in fasta.records] == [(n, len(s)) for n, s in records.items()]
    for name, seq in records.items():
        start = random.randint(0, len(seq) - 1)
        end = random.randint(start, len(seq))
        assert fasta.fetch(name, start, end) == seq[start:end]


def test_many_files_one_collection(tmp_path, records):
    a = write_fasta(tmp_path / "a.fa", {"a1": records["chr0"]})
    b = write_fasta(tmp_path / "b.fa", {"b1": records["chr1"]})
    fasta = FastaCollection([a, b], cache_dir=tmp_path / "cache")
    assert fasta.fetch("b1", 0, 10) == records["chr1"][:10]


def test_index_goes_to_cache_when_folder_is_read_only(tmp_path, records):
    folder = tmp_path / "ro"
    folder.mkdir()
    path = write_fasta(folder / "x.fa", records)
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user who can write anyway (root)")
        fasta = FastaCollection([path], cache_dir=tmp_path / "cache")
        assert fasta.fetch("chr1", 0, 5) == records["chr1"][:5]
        assert list((tmp_path / "cache").glob("*.fai"))
    finally:
        folder.chmod(stat.S_IRWXU)


def test_windows_line_endings(tmp_path):
    path = tmp_path / "crlf.fa"
    path.write_bytes(b">r1\r\nACGT\r\nGG\r\n")
    assert FastaCollection([path], cache_dir=tmp_path / "c").records[0].name == "r1"


@pytest.mark.parametrize("content,message", [
    (b"", "empty file"),
    (b"ACGT\n", "not FASTA"),
    (b">r1\nACGT\n>r1\nAC\n", "record 'r1', line 3: duplicate record name"),
    (b">r1\nAC\x00GT\n", "line 2: binary data"),
    (b">r1\nACGT\nACXT\n", "record 'r1', line 3, column 3: invalid character 'X'"),
])
def test_bad_fasta_gets_a_one_line_error(tmp_path, content, message):
    path = tmp_path / "bad.fa"
    path.write_bytes(content)
    with pytest.raises(DnaInputError, match=message) as err:
        FastaCollection([path], cache_dir=tmp_path / "c")
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_truncated_gzip(tmp_path, records):
    path = write_fasta(tmp_path / "x.fa.gz", records, opener=gzip.open)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DnaInputError, match="truncated"):
        FastaCollection([path], cache_dir=tmp_path / "c")


def test_missing_file(tmp_path):
    with pytest.raises(DnaInputError, match="no such file"):
        FastaCollection([tmp_path / "nope.fa"], cache_dir=tmp_path / "c")


def test_duplicate_names_across_files(tmp_path):
    a = write_fasta(tmp_path / "a.fa", {"r": "ACGT"})
    b = write_fasta(tmp_path / "b.fa", {"r": "GGGG"})
    with pytest.raises(DnaInputError, match="record 'r' also in"):
        FastaCollection([a, b], cache_dir=tmp_path / "c")


def test_bed_intervals_with_split_column(tmp_path, records):
    fasta = FastaCollection([write_fasta(tmp_path / "x.fa", records)], cache_dir=tmp_path / "c")
    bed = tmp_path / "r.bed"
    bed.write_text("# comment\nchr0\t0\t10\tgeneA\ttrain\nchr1\t5\t20\tgeneB\tvalid\n")
    intervals = read_bed(bed, fasta, split_column=4)
    assert [(i.name, i.start, i.end, i.split) for i in intervals] == [("chr0", 0, 10, "train"),
                                                                        ("chr1", 5, 20, "valid")]


@pytest.mark.parametrize("line,message", [
    ("chr0\t5\n", "needs 3 columns"),
    ("chr0\tfive\t9\n", "must be integers"),
    ("chrX\t0\t5\n", "record 'chrX' is in none"),
    ("chr0\t0\t100000\n", "outside the record"),
    ("chr0\t9\t3\n", "outside the record"),
])
def test_bad_bed_lines(tmp_path, records, line, message):
    fasta = FastaCollection([write_fasta(tmp_path / "x.fa", records)], cache_dir=tmp_path / "c")
    bed = tmp_path / "bad.bed"
    bed.write_text("chr0\t0\t5\n" + line)
    with pytest.raises(DnaInputError, match=f"line 2: .*{message}|{message}") as err:
        read_bed(bed, fasta)
    assert str(bed) in str(err.value)


def test_index_goes_to_cache_when_folder_is_not_writable(tmp_path, records, monkeypatch):
    # The same path as a read-only folder, for users (root in CI) whom chmod does not stop.
    import mambaseq.tasks.dna.fasta as fasta_module

    folder = tmp_path / "data"
    folder.mkdir()
    path = write_fasta(folder / "x.fa", records)
    monkeypatch.setattr(fasta_module, "_writable_dir", lambda p: p != folder)
    fasta = FastaCollection([path], cache_dir=tmp_path / "cache")
    assert fasta.fetch("chr2", 3, 9) == records["chr2"][3:9]
    assert not list(folder.glob("*.fai")) and list((tmp_path / "cache").glob("*.fai"))


def test_edited_file_is_checked_again(tmp_path):
    path = tmp_path / "x.fa"
    path.write_bytes(b">r1\nACGT\n")
    assert FastaCollection([path], cache_dir=tmp_path / "c").length("r1") == 4
    path.write_bytes(b">r1\nACGTACGTAC\nAC\n")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    fasta = FastaCollection([path], cache_dir=tmp_path / "c")
    assert fasta.length("r1") == 12 and fasta.fetch("r1", 8, 12) == "ACAC"


def test_bgzip_fetch_starting_on_a_block_boundary(tmp_path):
    # BgzfWriter cuts a block every 65,536 bytes. r1's text plus r2's header fill the first block
    # exactly, so r2's first base opens block 2; another block starts inside r2.
    rng = random.Random(os.urandom(8))
    header = len(">r1 some description\n")
    seq1 = "".join(rng.choice("ACGT") for _ in range(1073 * 60 + 40))
    seq2 = "".join(rng.choice("ACGT") for _ in range(140_000))
    text1 = header + len(seq1) + -(-len(seq1) // 60)
    assert text1 + header == 65536
    path = write_fasta(tmp_path / "x.fa.gz", {"r1": seq1, "r2": seq2},
                       opener=lambda p, m: bgzf.BgzfWriter(p, m))
    fasta = FastaCollection([path], cache_dir=tmp_path / "cache")
    assert fasta.files[0].compression == "bgzip"
    # Base i of r2 lies at byte 65536 + i // 60 * 61 + i % 60; the block at 131,072 starts at this i:
    inner = (131072 - 65536) // 61 * 60 + (131072 - 65536) % 61
    for start in (0, 1, inner - 1, inner, inner + 1):
        for length in (1, 50, 5000):
            assert fasta.fetch("r2", start, start + length) == seq2[start:start + length], (start, length)
    assert fasta.fetch("r1", len(seq1) - 10, len(seq1)) == seq1[-10:]
