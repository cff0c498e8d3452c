"""FASTA and BED access: many files, many records, random access through pyfaidx indexes.

Plain, gzip and bgzip FASTA are accepted. bgzip files are read in place (pyfaidx with a .gzi
index); a plain gzip file cannot be randomly accessed, so it is decompressed once into the cache
folder and indexed there, and the user never has to recompress. Indexes go next to the file, or
into the cache folder when that folder is read-only. Every file is checked once (the result is
remembered beside its index) and bad input raises `DnaInputError` with a one-line message naming
the file, the record and the line.
"""

from __future__ import annotations

import bisect
import fcntl
import gzip
import hashlib
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import pyfaidx

from ...fileio import atomic_write

IUPAC = b"ACGTNURYSWKMBDHVacgtnuryswkmbdhv"
_SEQUENCE_EXTRA = b"-*."  # gaps and stop marks, tolerated (the tokenizer reads them as [UNK])
# Part of every check stamp: a stamp written by a laxer check of an older release is not trusted.
_CHECK_VERSION = 2
# The empty block that ends every complete BGZF file (SAM/BAM specification, "End-of-file marker").
_BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")


class DnaInputError(ValueError):
    """Bad DNA input; the message is one line naming file, record and line."""


@dataclass(frozen=True)
class Record:
    path: Path
    name: str
    length: int


@dataclass(frozen=True)
class Interval:
    """A half-open, 0-based region of a record (BED convention), with an optional split label."""

    name: str
    start: int
    end: int
    split: str | None = None

    @property
    def length(self) -> int:
        return self.end - self.start


def default_cache_dir() -> Path:
    root = os.environ.get("MAMBASEQ_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mambaseq")
    return Path(root) / "fasta"


def _compression(path: Path, head: bytes) -> str:
    if head[:2] != b"\x1f\x8b":
        return "plain"
    # bgzip = gzip members carrying a 'BC' extra subfield (SAM/BAM specification, BGZF section).
    if len(head) >= 18 and head[3] & 4 and head[12:14] == b"BC":
        return "bgzip"
    return "gzip"


def _show(text: str, limit: int = 80) -> str:
    """`text` quoted for a one-line message: control characters escaped, a long text cut short."""
    shown = repr(text)
    return shown if len(shown) <= limit else f"{shown[:limit]}..."


def _open_text(path: Path, compression: str):
    return gzip.open(path, "rb") if compression != "plain" else open(path, "rb")


def _validate(path: Path, compression: str) -> list[tuple[str, int]]:
    """Scan the whole file once: FASTA shape, characters, names, line layout. Returns [(name, length)].

    The layout rules are those of a samtools/pyfaidx index, checked here so that a file pyfaidx
    would index wrongly (and then return bases of the wrong place) or fail on with a traceback is
    refused with the record and line: every sequence line of a record but the last has the length
    and line end of the first, the last is no longer, and one blank line at most ends a record.
    """
    if compression == "bgzip":
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - len(_BGZF_EOF)))
            if handle.read() != _BGZF_EOF:
                raise DnaInputError(f"{path}: truncated bgzip file (no end-of-file block); download or "
                                    f"compress it again")
    records: list[tuple[str, int]] = []
    seen: dict[str, int] = {}
    name, length, line_no = None, 0, 0
    width = span = 0  # bases and bytes (line end included) of the record's first sequence line
    short = blank = 0  # line number of a line shorter than the first / of a blank line, in this record
    valid = IUPAC + _SEQUENCE_EXTRA
    try:
        with _open_text(path, compression) as handle:
            for line_no, line in enumerate(handle, start=1):
                if b"\x00" in line:
                    raise DnaInputError(f"{path}: line {line_no}: binary data (NUL byte); not a FASTA file")
                if line.startswith(b">"):
                    if name is not None:
                        records.append((name, length))
                    try:
                        header = line[1:].decode("utf-8")
                    except UnicodeDecodeError as err:
                        # pyfaidx reads headers as UTF-8 and fails on anything else.
                        raise DnaInputError(f"{path}: line {line_no}, column {err.start + 2}: header is not UTF-8 "
                                            f"text (byte 0x{line[err.start + 1]:02x})") from None
                    if "\r" in header.rstrip("\r\n"):
                        # Old Mac line ends (CR only) would make the whole file one header line.
                        column = line.index(b"\r") + 1
                        raise DnaInputError(f"{path}: line {line_no}, column {column}: a carriage return inside a "
                                            f"header line (old Mac line ends?); use \\n or \\r\\n line ends")
                    words = header.split()
                    name = words[0] if words else ""
                    if not name:
                        raise DnaInputError(f"{path}: line {line_no}: header without a record name")
                    if name in seen:
                        raise DnaInputError(f"{path}: record {_show(name)}, line {line_no}: duplicate record name "
                                            f"(first at line {seen[name]})")
                    seen[name], length, width, span, short, blank = line_no, 0, 0, 0, 0, 0
                    continue
                text = line.rstrip(b"\r\n")
                if not text:
                    if name is not None and blank:
                        raise DnaInputError(f"{path}: record {_show(name)}, line {line_no}: a second blank line; "
                                            f"one blank line at most may end a record")
                    blank = line_no if name is not None else 0
                    continue
                if name is None:
                    raise DnaInputError(f"{path}: line {line_no}: not FASTA (expected a '>' header first)")
                bad = text.translate(None, valid)
                if bad:
                    column = text.index(bad[:1]) + 1
                    hint = " (a carriage return inside a line: old Mac line ends?)" if bad[:1] == b"\r" else ""
                    raise DnaInputError(f"{path}: record {_show(name)}, line {line_no}, column {column}: invalid "
                                        f"character {bad[:1].decode('latin-1')!r} in a DNA sequence{hint}")
                where = f"{path}: record {_show(name)}, line {line_no}"
                if blank:
                    raise DnaInputError(f"{where}: sequence after the blank line {blank}; a blank line may only "
                                        f"end a record")
                if short:
                    raise DnaInputError(f"{where}: line {short} before it is shorter than the record's first "
                                        f"line; every line of a record but its last must have one length and line "
                                        f"end (rewrap it, e.g. seqkit seq -w 60)")
                if not width:
                    width, span = len(text), len(line)
                elif len(text) > width:
                    raise DnaInputError(f"{where}: {len(text)} bases, more than the record's first line "
                                        f"({width}); every line of a record but its last must have one length "
                                        f"(rewrap it, e.g. seqkit seq -w 60)")
                elif len(line) != span:
                    short = line_no  # fine as the record's last line, an error before another
                length += len(text)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise DnaInputError(f"{path}: line {line_no + 1}: corrupt or truncated gzip data ({err})") from None
    if name is None:
        raise DnaInputError(f"{path}: empty file (no FASTA records)")
    records.append((name, length))
    return records


def _cannot_write(path: Path, folder: Path, err: OSError) -> DnaInputError:
    return DnaInputError(f"{path}: cannot write its index to {folder} ({err.strerror or err}); set MAMBASEQ_CACHE "
                         f"to a writable folder with free space")


def _writable_dir(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


class FastaFile:
    """One FASTA file, checked and indexed; `fetch(name, start, end)` returns upper/lower-case text."""

    def __init__(self, path: str | Path, cache_dir: str | Path | None = None) -> None:
        self.path = Path(path)
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        if not self.path.exists():
            raise DnaInputError(f"{self.path}: no such file")
        if not self.path.is_file() or not os.access(self.path, os.R_OK):
            raise DnaInputError(f"{self.path}: unreadable file (not a regular file or no read permission)")
        with open(self.path, "rb") as handle:
            head = handle.read(32)
        if not head:
            raise DnaInputError(f"{self.path}: empty file (no FASTA records)")
        self.compression = _compression(self.path, head)
        stat = self.path.stat()
        # fsencode: a file name that is not UTF-8 (surrogate escapes) still hashes.
        key = hashlib.sha1(os.fsencode(f"{self.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")).hexdigest()[:16]
        if self.compression == "gzip":
            # Plain gzip has no random access: decompress once into the cache and index it there.
            readable = cache / f"{key}-{self.path.name.removesuffix('.gz')}"
            index_dir, stem = cache, readable.name
        else:
            readable = self.path
            index_dir = readable.parent if _writable_dir(readable.parent) else cache
            stem = readable.name if index_dir == readable.parent else f"{key}-{readable.name}"
        try:
            index_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise _cannot_write(self.path, index_dir, err) from None
        self._stamp = index_dir / f"{stem}.mambaseq-ok"
        # Checked before anything is decompressed, so bad input never reaches the cache.
        self.records = [Record(self.path, name, length) for name, length in self._check_and_remember(self._stamp)]
        if self.compression == "gzip" and not readable.exists():
            try:
                atomic_write(readable, self._decompress)
            except OSError as err:  # the input was read once already; this is the cache (full disk, say)
                raise _cannot_write(self.path, index_dir, err) from None
        self._open_args = (str(readable), str(index_dir / f"{stem}.fai"),
                           str(index_dir / f"{stem}.gzi") if self.compression == "bgzip" else None)
        try:
            # Ranks started together (torchrun, SLURM) open the same files at once: one of them builds a
            # missing index while the others wait, rather than read it half-written. The lock is on the
            # sequence file itself (advisory: reads go on), so no lock file is left behind.
            with open(readable, "rb") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self.reopen()
        except (pyfaidx.FastaIndexingError, OSError, ValueError) as err:
            raise DnaInputError(f"{self.path}: cannot index ({' '.join(str(err).split())})") from None
        self._lengths = {r.name: r.length for r in self.records}
        self._bgzf_index: tuple[dict, list[tuple[int, int]]] | None = None

    def reopen(self) -> None:
        """Open the file afresh. A forked data-loader worker must: a file handle inherited across
        fork shares its read position with the parent, so concurrent reads would interleave."""
        readable, index, gzi = self._open_args
        self._fasta = pyfaidx.Fasta(readable, indexname=index, gzi_indexname=gzi, sequence_always_upper=False,
                                    as_raw=True, rebuild=True)

    def _decompress(self, target: str) -> None:
        with gzip.open(self.path, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)

    def _check_and_remember(self, stamp: Path) -> list[tuple[str, int]]:
        # The stamp remembers a successful check for this exact file version (size, mtime) by this check.
        stat = self.path.stat()
        version = f"{stat.st_size} {stat.st_mtime_ns} check {_CHECK_VERSION}"
        if stamp.exists():
            first, *lines = stamp.read_text().splitlines()
            if first == version:
                return [(n, int(length)) for n, length in (line.rsplit("\t", 1) for line in lines)]
        records = _validate(self.path, self.compression)
        text = version + "\n" + "".join(f"{n}\t{length}\n" for n, length in records)
        try:
            atomic_write(stamp, lambda tmp: Path(tmp).write_text(text))
        except OSError as err:
            raise _cannot_write(self.path, stamp.parent, err) from None
        return records

    def length(self, name: str) -> int:
        return self._lengths[name]

    def fetch(self, name: str, start: int, end: int) -> str:
        """Bases [start, end) of record `name`, 0-based half-open, case preserved."""
        if name not in self._lengths:
            raise DnaInputError(f"{self.path}: no record named {_show(name)}")
        if not 0 <= start <= end <= self._lengths[name]:
            raise DnaInputError(f"{self.path}: record {_show(name)}: region {start}-{end} outside "
                                f"0-{self._lengths[name]}")
        if end == start:
            return ""
        try:
            return self._fasta[name][start:end]
        except ValueError:
            if self.compression != "bgzip":
                raise
            return self._read_bgzf(name, start, end)

    def _read_bgzf(self, name: str, start: int, end: int) -> str:
        """Bases [start, end) read through the .fai and .gzi indexes with Bio.bgzf.

        pyfaidx 0.9 seeks one block too early when a fetch starts on the first byte of a BGZF block
        (its bisect picks the previous block and asks for offset 65536), which fails for about one
        start position in 65,536. Both index formats are documented (samtools faidx, htslib bgzip).
        """
        from Bio import bgzf

        readable, index, gzi = self._open_args
        if self._bgzf_index is None:
            fai = {}
            for line in Path(index).read_text().splitlines():
                fields = line.split("\t")
                fai[fields[0]] = tuple(int(x) for x in fields[1:5])
            data = Path(gzi).read_bytes()
            count = int.from_bytes(data[:8], "little")
            pairs = [(0, 0)] + [(int.from_bytes(data[8 + 16 * i:16 + 16 * i], "little"),
                                 int.from_bytes(data[16 + 16 * i:24 + 16 * i], "little")) for i in range(count)]
            self._bgzf_index = (fai, pairs)
        fai, pairs = self._bgzf_index
        _, offset, line_bases, line_width = fai[name]

        def byte(pos: int) -> int:
            return offset + pos // line_bases * line_width + pos % line_bases

        first, last = byte(start), byte(end - 1) + 1
        block = bisect.bisect_right([u for _, u in pairs], first) - 1
        with bgzf.BgzfReader(readable, "rb") as reader:
            reader.seek(bgzf.make_virtual_offset(pairs[block][0], first - pairs[block][1]))
            raw = reader.read(last - first)
        return raw.decode("ascii").replace("\n", "").replace("\r", "")


class FastaCollection:
    """Several FASTA files seen as one set of uniquely named records."""

    def __init__(self, paths: list[str | Path] | str | Path, cache_dir: str | Path | None = None) -> None:
        if isinstance(paths, (str, Path)):
            paths = [paths]
        if not paths:
            raise DnaInputError("no FASTA files given")
        self.files = [FastaFile(p, cache_dir) for p in paths]
        self._by_name: dict[str, FastaFile] = {}
        for fasta in self.files:
            for record in fasta.records:
                if record.name in self._by_name:
                    raise DnaInputError(f"{fasta.path}: record {_show(record.name)} also in "
                                        f"{self._by_name[record.name].path}; record names must be unique")
                self._by_name[record.name] = fasta

    @property
    def records(self) -> list[Record]:
        return [r for f in self.files for r in f.records]

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def length(self, name: str) -> int:
        return self._file(name).length(name)

    def fetch(self, name: str, start: int, end: int) -> str:
        return self._file(name).fetch(name, start, end)

    def reopen(self) -> None:
        """Open every file afresh (in a forked data-loader worker; see `FastaFile.reopen`)."""
        for fasta in self.files:
            fasta.reopen()

    def _file(self, name: str) -> FastaFile:
        if name not in self._by_name:
            raise DnaInputError(f"no record named {_show(name)} in {', '.join(str(f.path) for f in self.files)}")
        return self._by_name[name]


def read_bed(path: str | Path, fasta: FastaCollection, split_column: int | None = None) -> list[Interval]:
    """Intervals of a BED file (3+ columns, 0-based half-open), checked against `fasta`.

    `split_column` (0-based, >= 3) names a column holding a split label such as train/valid/test.
    """
    path = Path(path)
    if not path.is_file() or not os.access(path, os.R_OK):
        raise DnaInputError(f"{path}: unreadable BED file")
    intervals = []
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            line = raw.decode("utf-8", errors="replace").strip()
            fields = line.split("\t") if "\t" in line else line.split()
            # Header lines are the words track and browser, not any name starting so (a record 'track7').
            if not line or line.startswith("#") or line.split()[0] in ("track", "browser"):
                continue
            if len(fields) < 3:
                raise DnaInputError(f"{path}: line {line_no}: a BED line needs 3 columns (chrom, start, end), "
                                    f"got {len(fields)}")
            name = fields[0]
            try:
                start, end = int(fields[1]), int(fields[2])
            except ValueError:
                raise DnaInputError(f"{path}: line {line_no}: start and end must be integers, got "
                                    f"{_show(fields[1])} and {_show(fields[2])}") from None
            if name not in fasta:
                raise DnaInputError(f"{path}: line {line_no}: record {_show(name)} is in none of the FASTA files")
            length = fasta.length(name)
            if not 0 <= start < end <= length:
                raise DnaInputError(f"{path}: line {line_no}: interval {name}:{start}-{end} lies outside the "
                                    f"record (length {length}) or is empty")
            split = None
            if split_column is not None:
                if split_column >= len(fields):
                    raise DnaInputError(f"{path}: line {line_no}: no column {split_column + 1} for the split label")
                split = fields[split_column]
            intervals.append(Interval(name, start, end, split))
    if not intervals:
        raise DnaInputError(f"{path}: no intervals")
    return intervals


def regions_of(fasta: FastaCollection, bed: str | Path | None = None) -> list[Interval]:
    """The intervals of `bed` (checked against `fasta`), or every record whole when there is no BED."""
    if bed:
        return read_bed(bed, fasta)
    return [Interval(r.name, 0, r.length) for r in fasta.records]
