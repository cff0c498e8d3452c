"""Property-based tests of the FASTA and BED readers (issue 7, item 3).

Whatever the bytes, opening a file and reading every record either returns exactly what an
independent parse of the file finds, or raises DnaInputError with one line naming the file.
Nothing else may escape. Inputs stay small (a few kilobytes), so no example can run long; the one
huge line is a single plain test.
"""

from __future__ import annotations

import gzip
import random
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from Bio import bgzf
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mambaseq.tasks.dna.fasta import DnaInputError, FastaCollection, Interval, read_bed, regions_of

# Modest example counts and no example database on disk: CI has 2 cores and runs the whole suite.
PROPERTY = settings(max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
KINDS = ("plain", "gzip", "bgzip")


@contextmanager
def fresh_folder() -> Iterator[Path]:
    # One folder per example: a check stamp is keyed by size and mtime, which two examples written
    # to one path within a clock tick could share.
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


def write(folder: Path, data: bytes, kind: str) -> Path:
    path = folder / ("x.fa" if kind == "plain" else "x.fa.gz")
    if kind == "plain":
        path.write_bytes(data)
    elif kind == "gzip":
        path.write_bytes(gzip.compress(data))
    else:
        with bgzf.BgzfWriter(str(path), "wb") as writer:
            writer.write(data)
    return path


def assert_one_line_naming(err: Exception, path: Path | str) -> str:
    message = str(err)
    assert len(message.splitlines()) == 1 and "\n" not in message and "\r" not in message, repr(message)
    assert str(path) in message, message
    assert len(message) < 600, f"an overlong message: {message[:200]}..."
    return message


def parse_fasta(data: bytes) -> dict[str, str]:
    """What a file says, read the plain way: '>' lines name records, the other lines are bases."""
    records: dict[str, str] = {}
    name = None
    for line in data.split(b"\n"):
        line = line.rstrip(b"\r")
        if line.startswith(b">"):
            name = line[1:].decode("utf-8").split()[0]
            records[name] = ""
        elif line:
            records[name] += line.decode("latin-1")
    return records


def read_or_error(path: Path, cache: Path, rng: random.Random) -> dict[str, str] | DnaInputError:
    """Every record read whole and in random pieces; or the DnaInputError, checked to be one line."""
    try:
        for _ in range(2):  # the second opening trusts the check stamp the first one wrote
            fasta = FastaCollection([path], cache_dir=cache)
        seqs = {r.name: fasta.fetch(r.name, 0, r.length) for r in fasta.records}
    except DnaInputError as err:
        assert_one_line_naming(err, path)
        return err
    assert regions_of(fasta) == [Interval(name, 0, len(seq)) for name, seq in seqs.items()]
    for name, seq in seqs.items():
        assert fasta.length(name) == len(seq)
        for _ in range(3):
            start = rng.randint(0, len(seq))
            end = rng.randint(start, len(seq))
            assert fasta.fetch(name, start, end) == seq[start:end], (name, start, end)
        with pytest.raises(DnaInputError):
            fasta.fetch(name, 0, len(seq) + 1)
    return seqs


# FASTA-like bytes: headers, base lines with the odd foreign byte, blank lines, line ends of every
# kind. Base lines draw from a pool weighted towards bases, so some files are valid.
HEADER = st.builds(lambda name, rest: b">" + name + rest,
                   st.sampled_from([b"a", b"b", b"chr1", b"", b" ", b"r|1", "é".encode(), b"\xff", b"\x1b"]),
                   st.sampled_from([b"", b" description", b"\tx y", b" \xff\xfe", b"\x0c", b"\r", b" >"]))
BASE = st.sampled_from([*b"ACGTACGTNacgtnRYkm-*.", *b" \t\r\x00\xff>X;\x0c"]).map(lambda b: bytes([b]))
BASE_LINE = st.lists(BASE, max_size=12).map(b"".join)
FASTA_LIKE = st.builds(
    lambda lines, ends, last: b"".join(line + ends[i % len(ends)] for i, line in enumerate(lines)) + last,
    st.lists(st.one_of(HEADER, BASE_LINE, BASE_LINE, st.just(b"")), max_size=12),
    st.sampled_from([(b"\n",), (b"\r\n",), (b"\n", b"\r\n"), (b"\r",), (b"\n", b"\n", b"\r")]),
    st.sampled_from([b"", b"ACGT", b">z"]))


@PROPERTY
@given(data=st.one_of(FASTA_LIKE, st.binary(max_size=200)), kind=st.sampled_from(KINDS), rng=st.randoms())
@example(data=b">a\nACGT \nACGT\n", kind="plain", rng=random.Random(0))  # a space pyfaidx read as a base
@example(data=b">a\nAC\nAC\nACGTAA\n>b\nAC\n", kind="plain", rng=random.Random(0))  # read into '>b'
@example(data=b">a\nACGT\n\n\n>b\nAC\n", kind="plain", rng=random.Random(0))  # RuntimeError in pyfaidx
@example(data=b">a\nAC\rGT\nAC\rGT\n", kind="plain", rng=random.Random(0))  # 10 bases counted, 8 read
@example(data=b">a\rACGT\rACGT\r", kind="plain", rng=random.Random(0))  # old Mac line ends: empty record
@example(data=b">a\n>b\nACGT", kind="gzip", rng=random.Random(0))
def test_any_bytes_read_right_or_fail_in_one_line(data: bytes, kind: str, rng: random.Random) -> None:
    with fresh_folder() as folder:
        got = read_or_error(write(folder, data, kind), folder / "cache", rng)
    if not isinstance(got, DnaInputError):
        assert got == parse_fasta(data)
        assert list(got) == list(parse_fasta(data))  # and in file order


# Well-formed files: every record's lines of one width, the usual line ends. These must be read.
NAME = st.text("abcXYZ019_.|:-", min_size=1, max_size=8)
SEQ = st.text("ACGTNacgtnRYSWKMBDHVryswkmbdhvUu-*.", max_size=150)


@st.composite
def well_formed(draw: st.DrawFn) -> tuple[dict[str, str], bytes, bytes]:
    """(records, the file with \\n line ends, the same file with \\r\\n line ends)."""
    records = draw(st.dictionaries(NAME, SEQ, min_size=1, max_size=5))
    width = draw(st.integers(1, 70))
    blank_after = draw(st.booleans())  # one blank line after each record (LF files only; see below)
    final_end = draw(st.booleans())
    files = []
    for end in ("\n", "\r\n"):
        lines = []
        for name, seq in records.items():
            lines.append(f">{name} some description")
            lines += [seq[i:i + width] for i in range(0, len(seq), width)]
            if blank_after and end == "\n":
                lines.append("")
        text = end.join(lines) + (end if final_end else "")
        files.append(text.encode())
    return records, files[0], files[1]


@PROPERTY
@given(case=well_formed(), kind=st.sampled_from(KINDS), rng=st.randoms())
@example(case=({"a": "", "b": "ACGT"}, b">a\n>b\nACGT", b">a\r\n>b\r\nACGT"), kind="plain", rng=random.Random(0))
def test_well_formed_files_read_the_same_with_either_line_end(case: tuple[dict[str, str], bytes, bytes], kind: str,
                                                              rng: random.Random) -> None:
    records, lf, crlf = case
    for data in (lf, crlf):
        with fresh_folder() as folder:
            got = read_or_error(write(folder, data, kind), folder / "cache", rng)
        assert got == records, got


@PROPERTY
@given(case=well_formed(), kind=st.sampled_from(["gzip", "bgzip"]), cut=st.floats(0, 1, exclude_max=True))
def test_truncated_compressed_files_fail_in_one_line(case: tuple[dict[str, str], bytes, bytes], kind: str,
                                                     cut: float) -> None:
    with fresh_folder() as folder:
        path = write(folder, case[1], kind)
        whole = path.read_bytes()
        path.write_bytes(whole[:int(cut * len(whole))])
        with pytest.raises(DnaInputError) as err:
            FastaCollection([path], cache_dir=folder / "cache")
        assert_one_line_naming(err.value, path)


@PROPERTY
@given(records=st.dictionaries(NAME, SEQ, min_size=1, max_size=4), data=st.data())
def test_a_duplicate_name_is_refused_with_both_lines(records: dict[str, str], data: st.DataObject) -> None:
    items = list(records.items())
    twin = data.draw(st.sampled_from(items))
    items.insert(data.draw(st.integers(items.index(twin) + 1, len(items))), twin)
    text = "".join(f">{name}\n{seq}\n" if seq else f">{name}\n" for name, seq in items)
    first = 1 + sum(1 + bool(seq) for _, seq in items[:items.index(twin)])
    with fresh_folder() as folder:
        path = write(folder, text.encode(), "plain")
        with pytest.raises(DnaInputError, match=f"duplicate record name \\(first at line {first}\\)") as err:
            FastaCollection([path], cache_dir=folder / "cache")
        assert_one_line_naming(err.value, path)


@pytest.mark.parametrize("content,message", [
    (b">a\nACGT \nACGT\n", r"record 'a', line 2, column 5: invalid character ' '"),
    (b">a\n ACGT\nACGT\n", r"record 'a', line 2, column 1: invalid character ' '"),
    (b">a\nACG\x0c\nACG\x0c\n", r"record 'a', line 2, column 4: invalid character '\\x0c'"),
    (b">a\nAC\nAC\nACGTAA\n>b\nAC\n", r"record 'a', line 4: 6 bases, more than the record's first line \(2\)"),
    (b">a\nACGT\nAC\nACGT\n", r"record 'a', line 4: line 3 before it is shorter than the record's first line"),
    (b">a\nACGT\r\nACGT\nAC\n", r"record 'a', line 4: line 3 before it is shorter"),  # mixed line ends
    (b">a\nACGT\n\nACGT\n", r"record 'a', line 4: sequence after the blank line 3"),
    (b">a\nACGT\n\n\n>b\nAC\n", r"record 'a', line 4: a second blank line"),
    (b">a\nAC\rGT\n", r"record 'a', line 2, column 3: invalid character '\\r' .*old Mac line ends"),
    (b">a\rACGT\rACGT\r", r"line 1, column 3: a carriage return inside a header line"),
    (b">a\xff b\nACGT\n", r"line 1, column 3: header is not UTF-8 text \(byte 0xff\)"),
    (b">\x1b[31mred\nAC\n>\x1b[31mred\nAC\n", r"record '\\x1b\[31mred', line 3: duplicate record name"),
    (b">" + b"n" * 100_000 + b"\nAC\n>" + b"n" * 100_000 + b"\nAC\n", r"record 'nnnn.*\.\.\., line 3: duplicate"),
    (b"\x89PNG\r\n\x1a\n", r"line 1: not FASTA"),
])
def test_nasty_fasta_gets_its_one_line_message(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.fa"
    path.write_bytes(content)
    with pytest.raises(DnaInputError, match=message) as err:
        FastaCollection([path], cache_dir=tmp_path / "cache")
    assert_one_line_naming(err.value, path)


@pytest.mark.parametrize("content,lengths", [
    (b">a\n>b\nACGT", {"a": 0, "b": 4}),  # empty records are records
    (b">a\nACGT\n>b\n", {"a": 4, "b": 0}),
    (b"\n\n>a\nAC\n", {"a": 2}),  # blank lines before the first header
    (b">a\r\nACGT\r\n\r\n>b\r\nAC\r\n", {"a": 4, "b": 2}),
    (">é x\nAC\n".encode(), {"é": 2}),
])
def test_odd_but_valid_fasta_is_read(tmp_path: Path, content: bytes, lengths: dict[str, int]) -> None:
    path = tmp_path / "odd.fa"
    path.write_bytes(content)
    fasta = FastaCollection([path], cache_dir=tmp_path / "cache")
    assert {r.name: r.length for r in fasta.records} == lengths
    assert {name: fasta.fetch(name, 0, n) for name, n in lengths.items()} == parse_fasta(content)


def test_crlf_with_a_short_last_line_and_a_blank_line_is_refused_in_one_line(tmp_path: Path) -> None:
    # pyfaidx's indexer refuses this layout (its LF twin is fine); the refusal must stay one line.
    path = tmp_path / "x.fa"
    path.write_bytes(b">a\r\nACGT\r\nAC\r\n\r\n>b\r\nAC\r\n")
    with pytest.raises(DnaInputError, match=r"cannot index .*>a at line 3") as err:
        FastaCollection([path], cache_dir=tmp_path / "cache")
    assert_one_line_naming(err.value, path)


def test_a_stamp_from_an_older_laxer_check_is_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "x.fa"
    path.write_bytes(b">a\nACGT \nACGT\n")
    stat = path.stat()
    (tmp_path / "x.fa.mambaseq-ok").write_text(f"{stat.st_size} {stat.st_mtime_ns}\na\t8\n")  # the old format
    with pytest.raises(DnaInputError, match="invalid character ' '"):
        FastaCollection([path], cache_dir=tmp_path / "cache")


def test_an_unwritable_cache_is_a_one_line_error(tmp_path: Path) -> None:
    path = write(tmp_path, b">a\nACGT\n", "gzip")  # plain gzip is decompressed into the cache
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DnaInputError, match=r"cannot write its index to .*MAMBASEQ_CACHE") as err:
        FastaCollection([path], cache_dir=blocker / "cache")
    assert_one_line_naming(err.value, path)


def test_a_huge_single_line(tmp_path: Path) -> None:
    rng = random.Random()
    seq = "".join(rng.choices("ACGTacgtN", k=3_000_000))
    path = tmp_path / "huge.fa"
    path.write_bytes(b">chr1\n" + seq.encode() + b"\n")
    began = time.perf_counter()
    fasta = FastaCollection([path], cache_dir=tmp_path / "cache")
    assert fasta.length("chr1") == len(seq)
    for _ in range(20):
        start = rng.randrange(len(seq))
        end = min(len(seq), start + rng.randrange(1, 100_000))
        assert fasta.fetch("chr1", start, end) == seq[start:end]
    assert time.perf_counter() - began < 30  # seconds; a quadratic scan of the line would blow this


# BED: a fixed small genome; lines whose verdict each generator knows.
GENOME = {"chr0": 50, "chr1": 10, "track7": 20}


@pytest.fixture(scope="module")
def genome(tmp_path_factory: pytest.TempPathFactory) -> FastaCollection:
    folder = tmp_path_factory.mktemp("genome")
    path = folder / "g.fa"
    path.write_text("".join(f">{name}\n{'ACGT' * (n // 4)}{'A' * (n % 4)}\n" for name, n in GENOME.items()))
    return FastaCollection([path], cache_dir=folder / "cache")


@st.composite
def bed_line(draw: st.DrawFn) -> tuple[str, str, Interval | None]:
    """(verdict, line, interval): verdict is good, skip, or the message a bad line must get."""
    verdict = draw(st.sampled_from(["good", "good", "good", "skip", "columns", "integers", "none", "outside"]))
    sep = draw(st.sampled_from(["\t", " ", "  "]))
    name = draw(st.sampled_from(sorted(GENOME)))
    start = draw(st.integers(0, GENOME[name] - 1))
    end = draw(st.integers(start + 1, GENOME[name]))
    extra = draw(st.lists(st.sampled_from(["gene1", "0", "+", "train"]), max_size=3))
    if verdict == "skip":
        return verdict, draw(st.sampled_from(["", "   ", "# note", "track name=x", "browser position chr0:1-5"])), None
    if verdict == "columns":
        return "a BED line needs 3 columns", sep.join([name, str(start)][:draw(st.integers(1, 2))]), None
    if verdict == "integers":
        bad = draw(st.sampled_from(["five", "1.5", "1e3", "0x10", "--1", "9" * 5000] + ([""] if sep == "\t" else [])))
        fields = [name, bad, str(end)] if draw(st.booleans()) else [name, str(start), bad]
        return "start and end must be integers", sep.join(fields + extra), None
    if verdict == "none":
        # A form feed is whitespace: inside a name only where tabs separate the columns.
        unknown = draw(st.sampled_from(["chrX", "Chr0", "chr00", "tracks"] + (["chr0\x0c"] if sep == "\t" else [])))
        return "is in none of the FASTA files", sep.join([unknown, str(start), str(end), *extra]), None
    if verdict == "outside":
        start, end = draw(st.sampled_from([(-1, end), (start, GENOME[name] + 1), (end, start), (start, start)]))
        return "lies outside the record", sep.join([name, str(start), str(end), *extra]), None
    return verdict, sep.join([name, str(start), str(end), *extra]), Interval(name, start, end)


@PROPERTY
@given(lines=st.lists(bed_line(), max_size=8), end=st.sampled_from(["\n", "\r\n"]))
@example(lines=[("good", "track7\t0\t5", Interval("track7", 0, 5))], end="\n")  # was taken for a track line
def test_bed_lines_get_their_verdict(genome: FastaCollection, lines: list[tuple[str, str, Interval | None]],
                                     end: str) -> None:
    with fresh_folder() as folder:
        path = folder / "r.bed"
        path.write_bytes(end.join(line for _, line, _ in lines).encode())
        bad = [(number, verdict) for number, (verdict, _, _) in enumerate(lines, start=1)
               if verdict not in ("good", "skip")]
        good = [interval for verdict, _, interval in lines if verdict == "good"]
        if bad or not good:
            number, verdict = bad[0] if bad else (None, "no intervals")
            where = f"line {number}: .*" if number else ""
            with pytest.raises(DnaInputError, match=f"{where}{re.escape(verdict)}") as err:
                read_bed(path, genome)
            assert_one_line_naming(err.value, path)
        else:
            assert read_bed(path, genome) == good


@PROPERTY
@given(data=st.binary(max_size=300) | st.lists(st.sampled_from(
    [b"chr0", b"chr1", b"track7", b"-3", b"0", b"7", b"50", b"\t", b" ", b"\n", b"\r\n", b"#", b"\xff", b"\x00"]),
    max_size=30).map(b"".join))
def test_any_bed_bytes_give_intervals_or_one_line(genome: FastaCollection, data: bytes) -> None:
    with fresh_folder() as folder:
        path = folder / "r.bed"
        path.write_bytes(data)
        try:
            intervals = read_bed(path, genome)
        except DnaInputError as err:
            assert_one_line_naming(err, path)
            return
    assert intervals and all(0 <= i.start < i.end <= GENOME[i.name] for i in intervals)


def test_bed_problems_name_the_file(tmp_path: Path, genome: FastaCollection) -> None:
    with pytest.raises(DnaInputError, match="unreadable BED file") as err:
        read_bed(tmp_path / "missing.bed", genome)
    assert_one_line_naming(err.value, tmp_path / "missing.bed")
    with pytest.raises(DnaInputError, match="unreadable BED file"):
        read_bed(tmp_path, genome)
