"""Audio files in, quantized sample arrays out: finding files, reading, splitting, an in-memory corpus.

Reading is soundfile (libsndfile: WAV, FLAC, OGG/Vorbis/Opus, MP3 and the rest libsndfile knows),
mono by averaging channels, resampling with soxr. A corpus keeps every file already quantized
(uint8 for up to 8 bits, uint16 above), so an SC09-size set (about 20k one-second clips, 5.6 hours
at 16 kHz) takes about 330 MB. Bad files are skipped with a warning each, never silently.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .codec import Codec

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
MANIFEST_EXTENSIONS = (".txt", ".tsv", ".csv", ".lst")
SPLITS = ("train", "valid", "test")
_ENCODE_CHUNK = 1 << 20  # samples quantized at a time: the float64 intermediates of an hour-long file stay small


class AudioInputError(ValueError):
    """Bad audio input; the message is one line naming the file and what is wrong with it."""


class SkippedAudioWarning(UserWarning):
    """A file left out of a corpus (the message names it and says why)."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def find_audio(path: str | Path) -> list[Path]:
    """Audio files under a folder, or listed in a manifest.

    Folder: every file with an extension in AUDIO_EXTENSIONS (any case), searched recursively and
    sorted by relative path; hidden files and folders (name starting with '.', such as macOS '._x.wav'
    resource forks) are left out. Manifest (.txt/.tsv/.csv/.lst): one file per line, its path in the
    first column (comma-separated for .csv; otherwise up to the first tab, so paths may hold spaces),
    relative to the manifest's folder; blank lines and '#' comments are skipped, and so is a
    header line 1 whose first field is neither an existing file nor an audio file name. Manifest order
    is kept, repeats dropped.
    """
    path = Path(path)
    if not path.exists():
        raise AudioInputError(f"{path}: no such file or folder")
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()
                 and not any(part.startswith(".") for part in p.relative_to(path).parts)]
        if not files:
            raise AudioInputError(f"{path}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this folder or below")
        return sorted(files, key=lambda p: p.relative_to(path).as_posix())
    if path.suffix.lower() in MANIFEST_EXTENSIONS:
        return _read_manifest(path)
    raise AudioInputError(f"{path}: expected a folder of audio files or a manifest "
                          f"({', '.join(MANIFEST_EXTENSIONS)}), got a {path.suffix or 'extensionless'} file")


def _read_manifest(path: Path) -> list[Path]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise AudioInputError(f"{path}: manifest is not UTF-8 text ({err.reason} at byte {err.start})") from None
    suffix = path.suffix.lower()
    files: dict[Path, None] = {}
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if suffix == ".csv":
            first = next(csv.reader([line]))[0].strip()
        elif suffix == ".tsv" or "\t" in line:
            first = line.split("\t")[0].strip()
        else:
            first = line
        file = Path(os.path.abspath(path.parent / first))  # abspath also folds "..", so repeats are found
        if not file.is_file():
            if line_no == 1 and Path(first).suffix.lower() not in AUDIO_EXTENSIONS:
                continue  # a header such as "path,label"
            raise AudioInputError(f"{path}: line {line_no}: no such file: {file}")
        files[file] = None
    if not files:
        raise AudioInputError(f"{path}: manifest lists no audio files")
    return list(files)


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """One file as mono float32 samples (n,) in [-1, 1] at `sample_rate`.

    Channels are averaged (in float64) and clipped to [-1, 1]; a file at another rate is then resampled
    with soxr (its default high quality) and clipped again, since resampling can overshoot a full-scale
    signal. MP3 is read by libsndfile (1.1 or later), including any encoder delay or padding the file's
    decoder emits. Raises AudioInputError for a missing, empty, unreadable or corrupt file, no samples
    (also none left after resampling, as for 1 frame at 96 kHz read at 8 kHz), or NaN/inf.
    """
    path = Path(path)
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    if not path.is_file():
        raise AudioInputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioInputError(f"{path}: empty file (0 bytes)")
    try:
        with _quiet_stderr(path.suffix.lower() == ".mp3"):
            # Bytes, not str: soundfile encodes a str path as UTF-8, which fails for a name that is not
            # (os.fsencode gives back the file system's own bytes). DOUBLE is read as float64: finite
            # samples beyond float32's range would otherwise turn into inf.
            file = os.fsencode(path)
            dtype = "float64" if sf.info(file).subtype == "DOUBLE" else "float32"
            data, rate = sf.read(file, dtype=dtype, always_2d=True)
    except sf.LibsndfileError as err:
        raise AudioInputError(f"{path}: cannot read audio ({_libsndfile_reason(err)})") from None
    except (RuntimeError, OSError, ValueError) as err:
        raise AudioInputError(f"{path}: cannot read audio ({_one_line(err)})") from None
    if data.shape[0] == 0:
        raise AudioInputError(f"{path}: no samples (zero-length audio)")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).any(axis=1).argmax())
        raise AudioInputError(f"{path}: NaN or infinite samples (first at sample {bad})")
    # The mean in float64, so channels near float32's limit do not overflow to inf; clipping before
    # resampling too, since soxr turns samples near float32's limit into NaN.
    mono = data.mean(axis=1, dtype=np.float64) if data.shape[1] > 1 else data[:, 0]
    mono = np.clip(mono, -1.0, 1.0).astype(np.float32, copy=False)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate)
        if mono.shape[0] == 0:
            raise AudioInputError(f"{path}: no samples left at {sample_rate} Hz ({data.shape[0]} frames at "
                                  f"{rate} Hz resample to none)")
    return np.clip(mono, -1.0, 1.0).astype(np.float32, copy=False)


def _libsndfile_reason(err: sf.LibsndfileError) -> str:
    reason = _one_line(err.error_string)
    # libsndfile reports an MP3 that mpg123 cannot parse as a missing file; the file was found.
    if "does not exist" in reason:
        return "not a valid audio file: corrupt, or a format libsndfile does not know"
    return reason


@contextmanager
def _quiet_stderr(enabled: bool) -> Iterator[None]:
    """Process-level stderr (fd 2) sent to /dev/null: libmpg123 prints notes such as "Note: Illegal
    Audio-MPEG-Header" straight to fd 2 for a damaged MP3, past Python; the error is raised anyway."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@dataclass
class CorpusSummary:
    """What loading found: files kept, files skipped with the reason, audio seconds kept."""

    loaded: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0

    def __str__(self) -> str:
        text = f"{self.loaded} files, {self.seconds / 3600:.2f} h of audio"
        if self.skipped:
            path, reason = self.skipped[0]
            text += f"; {len(self.skipped)} skipped (first: {path}: {reason})"
        return text


def _common_folder(files: Sequence[Path]) -> Path:
    try:
        return Path(os.path.commonpath([str(Path(f).absolute().parent) for f in files]))
    except ValueError:  # paths on different drives
        return Path(files[0]).parent


class AudioCorpus:
    """Audio files in memory as quantized ids, each `ids[i]` (n_i,) uint8 (bits <= 8) or uint16.

    Files that cannot be used are skipped, each with one SkippedAudioWarning naming the file and the
    reason, and listed in `summary.skipped`. `on_file(1)` is called after each file (read or skipped),
    so a progress bar's `advance` fits. Raises AudioInputError when no file is usable.
    """

    def __init__(self, files: Iterable[str | Path], sample_rate: int, codec: Codec,
                 on_file: Callable[[int], None] | None = None) -> None:
        files = [Path(f) for f in files]
        if not files:
            raise AudioInputError("no audio files given")
        self.sample_rate, self.codec = sample_rate, codec
        self.dtype = np.uint8 if codec.bits <= 8 else np.uint16
        self.files: list[Path] = []
        self.ids: list[np.ndarray] = []
        self.summary = CorpusSummary()
        for path in files:
            try:
                wave = load_audio(path, sample_rate)
            except AudioInputError as err:
                reason = str(err).removeprefix(f"{path}: ")
                self.summary.skipped.append((path, reason))
                warnings.warn(f"skipped {path}: {reason}", SkippedAudioWarning, stacklevel=2)
            else:
                self.files.append(path)
                self.ids.append(self._quantize(wave))
                self.summary.seconds += len(wave) / sample_rate
            if on_file is not None:
                on_file(1)
        self.summary.loaded = len(self.files)
        if not self.files:
            first, reason = self.summary.skipped[0]
            raise AudioInputError(f"no usable audio in {_common_folder(files)}: {len(files)} files skipped "
                                  f"(first: {first}: {reason})")
        self._index = {path: i for i, path in enumerate(self.files)}
        self._skipped = {path for path, _ in self.summary.skipped}

    def _quantize(self, wave: np.ndarray) -> np.ndarray:
        out = np.empty(len(wave), dtype=self.dtype)
        for start in range(0, len(wave), _ENCODE_CHUNK):
            chunk = wave[start:start + _ENCODE_CHUNK]
            out[start:start + len(chunk)] = self.codec.encode(chunk).numpy()
        return out

    def __len__(self) -> int:
        return len(self.files)

    @property
    def lengths(self) -> np.ndarray:
        """Samples per loaded file, (len(self),) int64."""
        return np.array([len(ids) for ids in self.ids], dtype=np.int64)

    def indices(self, files: Iterable[str | Path] | None = None) -> list[int]:
        """Positions of `files` among the loaded files (all when None); files skipped on loading are
        left out (they were warned about). Raises AudioInputError for a file never given to the corpus."""
        if files is None:
            return list(range(len(self.files)))
        found = []
        for path in map(Path, files):
            if path in self._index:
                found.append(self._index[path])
            elif path not in self._skipped:
                raise AudioInputError(f"{path}: not part of this corpus (it was not among the files loaded)")
        return found


def _unit_hash(seed: int, key: str) -> float:
    # sha1, not hash(): Python salts str hashes per process, and the split must be the same everywhere.
    digest = hashlib.sha1(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def split_files(files: Sequence[str | Path], valid_fraction: float = 0.1, test_fraction: float = 0.1,
                group_pattern: str | None = None, seed: int = 0,
                root: str | Path | None = None) -> dict[str, list[Path]]:
    """Train / valid / test files, in input order; the same for the same files, fractions and seed.

    Each group of files lands in one split by u = the first 8 bytes of sha1(f"{seed}\\0{key}"), read
    big-endian, over 2**64 (so u is in [0, 1), the same on every machine and Python version): below
    test_fraction -> test, below test_fraction + valid_fraction -> valid, else train. Because the
    hash depends only on the key, adding files never moves other groups. Without `group_pattern`
    every file is its own group, keyed by its path relative to `root`. With it, the key is the first
    group of `re.search(group_pattern, relative path)` (posix separators), or the whole match when the
    pattern has no group: for example r"([^/]+)_nohash_" keys SC09's "zero/0a2b400e_nohash_1.wav" by
    speaker 0a2b400e, so no speaker is in two splits. Every file must give a key. `root` defaults to
    the folder holding all files; give it when files may be added outside that folder, or relative
    paths (and so keys) would change. Fractions are of groups, not files or seconds.
    """
    for name, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if valid_fraction + test_fraction >= 1:
        raise ValueError(f"valid_fraction + test_fraction must be below 1, got {valid_fraction} + {test_fraction}")
    files = [Path(f) for f in files]
    if not files:
        raise AudioInputError("split: no files to split")
    base = Path(root).absolute() if root is not None else _common_folder(files)
    relative = []
    for f in files:
        try:
            relative.append(f.absolute().relative_to(base).as_posix())
        except ValueError:
            raise AudioInputError(f"{f}: not under the split root {base}") from None
    if group_pattern is None:
        keys = relative
    else:
        keys = _group_keys(group_pattern, files, relative)
    unit = {key: _unit_hash(seed, key) for key in dict.fromkeys(keys)}
    parts: dict[str, list[Path]] = {s: [] for s in SPLITS}
    for f, key in zip(files, keys, strict=True):
        u = unit[key]
        parts["test" if u < test_fraction else "valid" if u < test_fraction + valid_fraction else "train"].append(f)
    groups = "groups" if group_pattern is not None else "files"
    wanted = {"train": True, "valid": valid_fraction > 0, "test": test_fraction > 0}
    needed = sum(wanted.values())
    for part in SPLITS:
        if wanted[part] and not parts[part]:
            if len(unit) < needed:
                raise AudioInputError(f"split: {len(unit)} {groups} cannot fill {needed} splits; no {part} "
                                      f"{groups} (set the fraction of an unwanted split to 0)")
            raise AudioInputError(f"split: no {part} {groups} among {len(unit)}: each {groups[:-1]} is placed by a "
                                  f"hash of (seed {seed}, key), and none fell in {part}; try another seed or a "
                                  "larger fraction")
    return parts


def _group_keys(pattern: str, files: list[Path], relative: list[str]) -> list[str]:
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise AudioInputError(f"split: group pattern {pattern!r} does not compile ({err})") from None
    keys, unmatched = [], []
    for f, rel in zip(files, relative, strict=True):
        match = regex.search(rel)
        key = None if match is None else (match.group(1) if regex.groups else match.group(0))
        if key is None:  # no match, or an optional first group that did not take part
            unmatched.append(f)
        keys.append(key)
    if len(unmatched) == len(files):
        raise AudioInputError(f"split: group pattern {pattern!r} matches no file (first relative path: "
                              f"{relative[0]})")
    if unmatched:
        raise AudioInputError(f"split: group pattern {pattern!r} gives no group for {len(unmatched)} of "
                              f"{len(files)} files (first: {unmatched[0]})")
    return keys
