"""Property-based tests of the audio readers (issue 7, item 3, audio half).

Whatever a file holds, `load_audio` either returns float32 mono samples in [-1, 1] of the length
resampling must give (checked against a plain numpy mixdown of what libsndfile decodes), or raises
AudioInputError with one line naming the file. `AudioCorpus` skips each bad file with one warning
and fails only when no file is usable. Nothing else escapes. Files stay small (at most a few
thousand frames), so no example can run long; the CLI is driven with a few nasty files at the end.
"""

from __future__ import annotations

import re
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mambaseq import MambaConfig, MambaLM
from mambaseq.checkpoint import save_pretrained
from mambaseq.cli.main import main
from mambaseq.tasks.audio.codec import MuLawCodec, make_codec
from mambaseq.tasks.audio.data import AudioCorpus, AudioInputError, SkippedAudioWarning, find_audio, load_audio
from mambaseq.tasks.audio.model_dir import audio_metadata

# Modest example counts and no example database on disk: CI has 2 cores and runs the whole suite.
PROPERTY = settings(max_examples=50, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TARGET = 16_000
SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
ODD_RATES = (1000, 8000, 11025, 16000, 22050, 44100, 48000, 96000, 192000)
rates = st.one_of(st.sampled_from(ODD_RATES), st.integers(1000, 192_000))
targets = st.sampled_from((8000, TARGET, 22050))


@contextmanager
def fresh_folder() -> Iterator[Path]:
    # One folder per example: tmp_path is shared by every example of a hypothesis test.
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


def assert_one_line_naming(err: Exception, path: Path | str) -> str:
    message = str(err)
    assert "\n" not in message and "\r" not in message, repr(message)
    assert str(path) in message, message
    assert len(message) < 600, f"an overlong message: {message[:200]}..."
    return message


def load_or_error(path: Path, rate: int) -> np.ndarray | AudioInputError:
    """load_audio's samples, checked to be float32 mono in [-1, 1]; or its AudioInputError, checked
    to be one line naming the file. Any other exception fails the test by escaping."""
    try:
        wave = load_audio(path, rate)
    except AudioInputError as err:
        assert_one_line_naming(err, path)
        return err
    assert isinstance(wave, np.ndarray) and wave.dtype == np.float32 and wave.ndim == 1
    assert len(wave) > 0, "an empty waveform must be an error, not a result"
    assert np.isfinite(wave).all() and np.abs(wave).max() <= 1.0
    return wave


def mixdown(path: Path) -> tuple[np.ndarray, int]:
    """The plain reading: every channel decoded in float64 by libsndfile, averaged, clipped."""
    data, rate = sf.read(path, dtype="float64", always_2d=True)
    return np.clip(data.mean(axis=1), -1.0, 1.0), rate


def check_length(wave: np.ndarray | AudioInputError, frames: int, source: int, target: int) -> None:
    """The resampled length is frames * target / source to within soxr's rounding (under one sample);
    a file that resamples to nothing must be an error."""
    exact = frames * target / source
    if isinstance(wave, AudioInputError):
        assert exact < 1, f"{frames} frames at {source} Hz should give {exact:.2f} samples, got {wave}"
        assert "no samples" in str(wave)
    else:
        assert abs(len(wave) - exact) < 1, (len(wave), exact)


# --- arbitrary bytes ---------------------------------------------------------------------------------


@PROPERTY
@given(data=st.binary(max_size=3000), suffix=st.sampled_from(SUFFIXES), target=targets)
@example(data=b"", suffix=".wav", target=TARGET)
@example(data=b"RIFF\x00\x00\x00\x00WAVE", suffix=".wav", target=TARGET)
@example(data=b"fLaC", suffix=".flac", target=TARGET)
@example(data=b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(200), suffix=".mp3", target=TARGET)
@example(data=b"\xff\xfb\x90\x00" + bytes(500), suffix=".mp3", target=TARGET)  # an MP3 frame header, then zeros
def test_any_bytes_load_or_fail_in_one_line(data: bytes, suffix: str, target: int) -> None:
    with fresh_folder() as folder:
        path = folder / f"x{suffix}"
        path.write_bytes(data)
        result = load_or_error(path, target)
        if not data:
            assert "empty file (0 bytes)" in str(result)


def test_a_corrupt_mp3_is_not_reported_missing(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    # libsndfile says "File does not exist or is not a regular file" for an MP3 it cannot parse, and
    # libmpg123 prints "Note: ..." lines on stderr past Python.
    path = tmp_path / "bad.mp3"
    path.write_bytes(b"\xff\xfb\x90\x00" + np.random.default_rng(3).bytes(3000))
    with pytest.raises(AudioInputError) as info:
        load_audio(path, TARGET)
    message = assert_one_line_naming(info.value, path)
    assert "does not exist" not in message and "cannot read audio" in message
    assert capfd.readouterr().err == ""


# --- valid files of any shape ------------------------------------------------------------------------

FORMATS = {".wav": ("PCM_16", "PCM_24", "FLOAT", "DOUBLE"), ".flac": ("PCM_16", "PCM_24")}


@st.composite
def valid_files(draw: st.DrawFn) -> tuple[str, str, int, np.ndarray]:
    suffix = draw(st.sampled_from(sorted(FORMATS)))
    subtype = draw(st.sampled_from(FORMATS[suffix]))
    frames = draw(st.one_of(st.sampled_from((0, 1, 2)), st.integers(0, 3000)))
    channels = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**32 - 1))
    wave = np.random.default_rng(seed).uniform(-1, 1, (frames, channels))
    rate = draw(rates)
    if suffix == ".flac" and rate > 65535:  # libFLAC's encoder refuses these rates (a writer limit)
        rate = draw(st.sampled_from((44100, 48000, 65535)))
    return suffix, subtype, rate, wave


@PROPERTY
@given(case=valid_files(), target=targets)
@example(case=(".wav", "FLOAT", 192_000, np.full((1, 3), 0.5)), target=TARGET)  # resamples to no sample
@example(case=(".wav", "PCM_16", 192_000, np.full((11, 2), 0.5)), target=TARGET)  # 0.92 samples
@example(case=(".flac", "PCM_24", 1000, np.full((1, 8), -0.25)), target=TARGET)  # upsampled one frame
@example(case=(".wav", "DOUBLE", TARGET, np.zeros((0, 1))), target=TARGET)
def test_valid_files_load_mono_at_the_target_rate(case: tuple[str, str, int, np.ndarray], target: int) -> None:
    suffix, subtype, rate, wave = case
    with fresh_folder() as folder:
        path = folder / f"x{suffix}"
        sf.write(path, wave, rate, subtype=subtype)
        result = load_or_error(path, target)
        if len(wave) == 0:  # libsndfile writes a FLAC of no frames as 0 bytes, a WAV as a bare header
            assert re.search(r"no samples \(zero-length audio\)|empty file \(0 bytes\)", str(result)), result
            return
        check_length(result, len(wave), rate, target)
        if rate == target:
            expected, _ = mixdown(path)
            np.testing.assert_allclose(result, expected, atol=1e-6)


# --- NaN, inf and huge values ------------------------------------------------------------------------

special = st.one_of(st.floats(-1, 1), st.sampled_from((np.nan, np.inf, -np.inf, 3e38, -3e38, 1e30, 1.5, -2.0)))


@PROPERTY
@given(rows=st.lists(st.lists(special, min_size=1, max_size=1), min_size=1, max_size=400),
       channels=st.integers(1, 4), rate=st.sampled_from((8000, TARGET, 44100)),
       subtype=st.sampled_from(("FLOAT", "DOUBLE")))
@example(rows=[[3e38]] * 100, channels=2, rate=TARGET, subtype="FLOAT")  # the float32 mean overflowed
@example(rows=[[3e38], [-3e38]] * 100, channels=1, rate=8000, subtype="FLOAT")  # soxr gave NaN
@example(rows=[[1e300]] * 10, channels=1, rate=TARGET, subtype="DOUBLE")  # inf when read as float32
@example(rows=[[0.5], [np.nan]], channels=3, rate=TARGET, subtype="FLOAT")
def test_non_finite_samples_are_refused_and_huge_ones_clipped(rows: list[list[float]], channels: int, rate: int,
                                                              subtype: str) -> None:
    # Each frame repeats its value on every channel but the last, which holds 0: a mixdown mixes.
    column = np.array([r[0] for r in rows], dtype=np.float64)
    wave = np.stack([column] * (channels - 1) + [np.zeros_like(column)], axis=1) if channels > 1 else column[:, None]
    if subtype == "FLOAT":
        wave = wave.astype(np.float32)  # as a FLOAT file holds it (1e300 becomes inf)
    with fresh_folder() as folder:
        path = folder / "x.wav"
        sf.write(path, wave, rate, subtype=subtype)
        result = load_or_error(path, TARGET)
        bad = ~np.isfinite(wave).all(axis=1)
        if bad.any():
            assert isinstance(result, AudioInputError)
            assert f"NaN or infinite samples (first at sample {int(bad.argmax())})" in str(result)
            return
        check_length(result, len(wave), rate, TARGET)
        if rate == TARGET:
            expected = np.clip(wave.astype(np.float64).mean(axis=1), -1, 1)
            np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-7)


# --- truncated files ---------------------------------------------------------------------------------


@st.composite
def truncated(draw: st.DrawFn) -> tuple[str, bytes, int]:
    suffix = draw(st.sampled_from(SUFFIXES))
    subtype = draw(st.sampled_from(FORMATS.get(suffix, (None,))))
    frames, channels = draw(st.integers(1, 2000)), draw(st.integers(1, 2 if suffix == ".mp3" else 4))
    wave = 0.5 * np.sin(np.arange(frames)[:, None] * (0.05 + 0.01 * np.arange(channels)))
    with fresh_folder() as folder:
        sf.write(folder / f"x{suffix}", wave, 8000, subtype=subtype)
        data = (folder / f"x{suffix}").read_bytes()
    return suffix, data, draw(st.integers(0, len(data) - 1))


@PROPERTY
@given(case=truncated())
def test_truncated_files_load_or_fail_in_one_line(case: tuple[str, bytes, int]) -> None:
    suffix, data, cut = case
    with fresh_folder() as folder:
        path = folder / f"x{suffix}"
        path.write_bytes(data[:cut])
        load_or_error(path, TARGET)


# --- odd names ----------------------------------------------------------------------------------------


def test_a_file_name_that_is_not_utf8_is_read(tmp_path: Path) -> None:
    # soundfile encodes a str path as UTF-8, which a Latin-1 name (undecodable bytes kept as surrogates)
    # cannot be; the file itself is fine.
    path = tmp_path / "\udce9t\udce9.wav"
    try:
        target = Path(str(path).encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape"))
        sf.write(tmp_path / "plain.wav", np.full(10, 0.25, dtype=np.float32), TARGET, subtype="FLOAT")
        (tmp_path / "plain.wav").rename(target)
    except (OSError, UnicodeError):
        pytest.skip("this file system does not take names that are not UTF-8")
    np.testing.assert_array_equal(load_audio(target, TARGET), np.full(10, 0.25, dtype=np.float32))


# --- manifests ---------------------------------------------------------------------------------------

line_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x00"), max_size=30)


MANIFEST_LINES = ("a.wav", "sub/b.flac", "../a.wav", "a.wav\tspk", "a.wav,spk", "# note", "", "gone.wav", "path")


@PROPERTY
@given(lines=st.lists(st.one_of(line_text, st.sampled_from(MANIFEST_LINES)), max_size=8),
       suffix=st.sampled_from((".txt", ".tsv", ".csv", ".lst")), encoding=st.sampled_from(("utf-8", "latin-1")))
def test_any_manifest_lists_files_or_fails_in_one_line(lines: list[str], suffix: str, encoding: str) -> None:
    with fresh_folder() as folder:
        (folder / "sub").mkdir()
        for name in ("a.wav", "sub/b.flac"):
            sf.write(folder / name, np.zeros(10), 8000)
        manifest = folder / f"m{suffix}"
        manifest.write_bytes("\n".join(lines).encode(encoding, "replace"))
        try:
            found = find_audio(manifest)
        except AudioInputError as err:
            assert_one_line_naming(err, manifest)
            return
        assert found and len(set(found)) == len(found)
        assert all(f.is_file() for f in found)


# --- corpora -----------------------------------------------------------------------------------------

KINDS = ("good", "garbage", "empty", "zero-length", "nan", "one-frame-at-192k")


def make(path: Path, kind: str) -> None:
    if kind == "good":
        sf.write(path, np.full(400, 0.1), 8000)
    elif kind == "garbage":
        path.write_bytes(b"not audio at all")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "zero-length":
        sf.write(path, np.zeros(0), 8000)
    elif kind == "nan":
        sf.write(path, np.array([0.0, np.nan]), 8000, subtype="FLOAT")
    else:
        sf.write(path, np.array([0.5]), 192_000)


@PROPERTY
@given(kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=6))
@example(kinds=["one-frame-at-192k", "good"])  # loaded as a file of no samples
def test_a_corpus_skips_each_bad_file_once_and_fails_only_with_none_usable(kinds: list[str]) -> None:
    with fresh_folder() as folder:
        files = [folder / f"{i}_{kind}.wav" for i, kind in enumerate(kinds)]
        for path, kind in zip(files, kinds, strict=True):
            make(path, kind)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                corpus = AudioCorpus(files, TARGET, MuLawCodec())
            except AudioInputError as err:
                assert "good" not in kinds
                assert re.match(rf"no usable audio in {re.escape(str(folder))}: {len(files)} files skipped", str(err))
                assert "\n" not in str(err)
            else:
                assert corpus.files == [f for f, k in zip(files, kinds, strict=True) if k == "good"]
                assert corpus.lengths.tolist() == [800] * len(corpus)  # 400 frames at 8 kHz
        bad = [f for f, k in zip(files, kinds, strict=True) if k != "good"]
        skipped = [w for w in caught if issubclass(w.category, SkippedAudioWarning)]
        assert [str(w.message).split(":")[0] for w in skipped] == [f"skipped {f}" for f in bad]
        assert all("\n" not in str(w.message) for w in skipped)
        assert len(caught) == len(skipped), [str(w.message) for w in caught]


# --- the commands ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def audio_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained audio LM: enough for eval and generate to read files with its rate and codec."""
    model = MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=256))
    folder = tmp_path_factory.mktemp("audio-model")
    save_pretrained(model, folder, metadata=audio_metadata(8000, make_codec("mulaw"), seq_len=64))
    return folder


def one_error_line(err: str) -> str:
    """Exactly one line on stderr, the error, with no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mambaseq"), err
    return lines[0]


NASTY = {"garbage.wav": b"not audio at all", "empty.flac": b"", "bad.mp3": b"\xff\xfb\x90\x00" + bytes(700),
         "cut.ogg": b"OggS\x00\x02" + bytes(40)}


def test_eval_on_a_folder_of_nasty_files_is_one_line(tmp_path: Path, audio_model: Path,
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    for name, data in NASTY.items():
        (tmp_path / name).write_bytes(data)
    code = main(["eval", "audio", "--model", str(audio_model), "--data", str(tmp_path)])
    err = capfd.readouterr().err
    assert code == 2
    # One warning line per skipped file, then the error.
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == len(NASTY) + 1, err
    assert all(line.startswith("mambaseq eval audio: warning: skipped ") for line in lines[:-1])
    assert re.match(rf"mambaseq: error: no usable audio in {re.escape(str(tmp_path))}: 4 files skipped",
                    lines[-1])


def test_eval_with_a_non_finite_file_alone_is_one_line(tmp_path: Path, audio_model: Path,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nan.wav"
    sf.write(path, np.array([0.0, np.inf, 0.0]), 8000, subtype="FLOAT")
    assert main(["eval", "audio", "--model", str(audio_model), "--data", str(path)]) == 2
    err = capfd.readouterr().err
    assert "NaN or infinite samples (first at sample 1)" in err and "Traceback" not in err


@pytest.mark.parametrize("name, data, message", [
    ("garbage.wav", b"not audio at all", "cannot read audio (Format not recognised.)"),
    ("empty.wav", b"", "empty file (0 bytes)"),
    ("bad.mp3", b"\xff\xfb\x90\x00" + bytes(700), "cannot read audio (not a valid audio file"),
    ("short.wav", None, "shorter than --prompt-seconds"),
    ("tiny.wav", "one-frame", "no samples left at 8000 Hz"),
])
def test_generate_with_a_bad_prompt_is_one_line(tmp_path: Path, audio_model: Path, capfd: pytest.CaptureFixture[str],
                                                name: str, data: bytes | str | None, message: str) -> None:
    path = tmp_path / name
    if data is None:
        sf.write(path, np.zeros(800), 8000)  # 0.1 s
    elif data == "one-frame":
        sf.write(path, np.zeros(1), 96_000)
    else:
        path.write_bytes(data)
    code = main(["generate", "audio", "--model", str(audio_model), "--prompt", str(path), "--n", "1",
                 "--seconds", "0.01", "--out", str(tmp_path / "out"), "--device", "cpu"])
    line = one_error_line(capfd.readouterr().err)
    assert code == 2
    assert f"error: {path}: " in line and message in line, line
