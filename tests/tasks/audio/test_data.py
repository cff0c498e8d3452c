"""Finding, reading, loading and splitting audio files (tiny files written with soundfile)."""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from mambaseq.tasks.audio import data as data_module
from mambaseq.tasks.audio.codec import LinearCodec, MuLawCodec
from mambaseq.tasks.audio.data import (
    AudioCorpus,
    AudioInputError,
    SkippedAudioWarning,
    find_audio,
    load_audio,
    split_files,
)

SR = 16_000


def sine(freq: float, rate: int, seconds: float = 0.25, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write(path: Path, wave: np.ndarray, rate: int = SR, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, rate, **kwargs)
    return path


def peak_frequency(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


# --- find_audio -------------------------------------------------------------------------------------


def test_folder_search_is_recursive_sorted_and_ignores_other_files(tmp_path):
    for name in ["b/2.wav", "a/x/1.FLAC", "a/0.ogg", "c.mp3", "notes.txt", "a/.hidden.wav", ".cache/z.wav"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in find_audio(tmp_path)]
    assert found == ["a/0.ogg", "a/x/1.FLAC", "b/2.wav", "c.mp3"]


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(AudioInputError, match="no such file or folder"):
        find_audio(tmp_path / "nowhere")


def test_folder_without_audio_is_an_error(tmp_path):
    (tmp_path / "readme.md").write_text("no audio here")
    with pytest.raises(AudioInputError, match=f"{re.escape(str(tmp_path))}: no audio files"):
        find_audio(tmp_path)


@pytest.mark.parametrize("suffix, line", [(".txt", "{}"), (".lst", "{}"), (".tsv", "{}\tspeaker1"),
                                          (".csv", "{},speaker1")])
def test_manifest_lists_paths_relative_to_itself(tmp_path, suffix, line):
    one = write(tmp_path / "audio" / "one.wav", sine(440, SR))
    two = write(tmp_path / "audio" / "sub dir" / "two.flac", sine(440, SR))
    manifest = tmp_path / "lists" / f"m{suffix}"
    manifest.parent.mkdir()
    header = "path,label" if suffix == ".csv" else "path"
    rows = [header, "# a comment", line.format("../audio/sub dir/two.flac"), "", line.format(str(one)),
            line.format("../audio/one.wav")]
    manifest.write_text("\n".join(rows) + "\n")
    found = find_audio(manifest)
    assert [p.resolve() for p in found] == [two.resolve(), one.resolve()]


def test_manifest_naming_a_missing_file_is_an_error_naming_the_line(tmp_path):
    write(tmp_path / "a.wav", sine(440, SR))
    manifest = tmp_path / "m.txt"
    manifest.write_text("a.wav\nb.wav\n")
    with pytest.raises(AudioInputError, match=r"m.txt: line 2: no such file: .*b.wav"):
        find_audio(manifest)


def test_empty_manifest_is_an_error(tmp_path):
    (tmp_path / "m.txt").write_text("# nothing\n")
    with pytest.raises(AudioInputError, match="lists no audio files"):
        find_audio(tmp_path / "m.txt")


def test_a_lone_audio_file_is_not_a_manifest(tmp_path):
    with pytest.raises(AudioInputError, match="expected a folder of audio files or a manifest"):
        find_audio(write(tmp_path / "a.wav", sine(440, SR)))


# --- load_audio -------------------------------------------------------------------------------------


def test_stereo_is_averaged_to_mono(tmp_path):
    left, right = sine(440, SR), sine(1000, SR, amplitude=0.25)
    path = write(tmp_path / "s.wav", np.stack([left, right], axis=1), subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path, SR), (left.astype(np.float64) + right) / 2, atol=1e-7)


@pytest.mark.parametrize("rate", [8000, 22050, 44100])
def test_resampling_gives_the_right_length_and_keeps_the_frequency(tmp_path, rate):
    wave = sine(1000, rate, seconds=0.25)
    out = load_audio(write(tmp_path / "r.wav", wave, rate, subtype="FLOAT"), SR)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - len(wave) * SR / rate) <= 1
    assert abs(peak_frequency(out, SR) - 1000) <= SR / len(out)  # one FFT bin
    # Away from the edges the resampled sine matches the ideal one at the new rate.
    ideal = sine(1000, SR, seconds=len(out) / SR)
    np.testing.assert_allclose(out[400:-400], ideal[400:len(out) - 400], atol=2e-3)


def test_a_file_at_the_target_rate_is_read_unchanged(tmp_path):
    wave = sine(440, SR)
    np.testing.assert_array_equal(load_audio(write(tmp_path / "a.wav", wave, subtype="FLOAT"), SR), wave)


def test_flac_is_read_exactly(tmp_path):
    pcm = (sine(440, SR) * 32767).astype(np.int16)
    out = load_audio(write(tmp_path / "a.flac", pcm), SR)
    np.testing.assert_array_equal(out, pcm.astype(np.float32) / 32768)


@pytest.mark.parametrize("suffix", [".ogg", ".mp3"])
def test_lossy_formats_are_read(tmp_path, suffix):
    wave = sine(1000, SR, seconds=0.5)
    out = load_audio(write(tmp_path / f"a{suffix}", wave), SR)
    assert abs(len(out) - len(wave)) <= 0.1 * len(wave)  # mp3 frames may pad the end
    assert abs(peak_frequency(out, SR) - 1000) <= 2 * SR / len(out)


def test_samples_beyond_full_scale_are_clipped(tmp_path):
    wave = np.array([0.5, 1.5, -3.0, 0.0] * 100, dtype=np.float32)
    out = load_audio(write(tmp_path / "loud.wav", wave, subtype="FLOAT"), SR)
    np.testing.assert_array_equal(out[:4], [0.5, 1.0, -1.0, 0.0])


def test_resampling_overshoot_is_clipped(tmp_path):
    square = np.sign(sine(500, 44100)).astype(np.float32)  # full scale: resampling rings past +-1
    out = load_audio(write(tmp_path / "sq.wav", square, 44100, subtype="FLOAT"), SR)
    assert np.abs(out).max() == 1.0


def _corrupt(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).bytes(2000))
    return path


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _zero_length(path: Path) -> Path:
    return write(path, np.zeros(0, dtype=np.float32))


def _nan(path: Path) -> Path:
    wave = sine(440, SR)
    wave[100] = np.nan
    return write(path, wave, subtype="FLOAT")


def _inf(path: Path) -> Path:
    wave = sine(440, SR)
    wave[7] = -np.inf
    return write(path, wave, subtype="FLOAT")


BAD_FILES = {"corrupt": (_corrupt, "cannot read audio"), "empty": (_empty, "empty file"),
             "zero-length": (_zero_length, "no samples"), "nan": (_nan, "NaN or infinite samples .first at "
                                                                        "sample 100"),
             "inf": (_inf, "NaN or infinite samples .first at sample 7")}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_files_raise_a_one_line_error_naming_the_file(tmp_path, kind):
    make, reason = BAD_FILES[kind]
    path = make(tmp_path / f"{kind}.wav")
    with pytest.raises(AudioInputError, match=f"{re.escape(str(path))}: {reason}") as info:
        load_audio(path, SR)
    assert "\n" not in str(info.value)


def test_missing_file_raises(tmp_path):
    with pytest.raises(AudioInputError, match="no such file"):
        load_audio(tmp_path / "gone.wav", SR)


# --- AudioCorpus ------------------------------------------------------------------------------------


def test_corpus_skips_each_bad_file_with_a_warning_naming_it(tmp_path):
    good = [write(tmp_path / f"good{i}.wav", sine(440, SR, seconds=0.1 * (i + 1))) for i in range(2)]
    bad = [make(tmp_path / f"{kind}.wav") for kind, (make, _) in BAD_FILES.items()]
    with pytest.warns(SkippedAudioWarning) as caught:
        corpus = AudioCorpus(good + bad, SR, MuLawCodec())
    messages = [str(w.message) for w in caught if issubclass(w.category, SkippedAudioWarning)]
    assert len(messages) == len(bad)
    for path, (_, reason), message in zip(bad, BAD_FILES.values(), messages, strict=True):
        assert re.search(f"{re.escape(str(path))}: {reason}", message)
    assert corpus.files == good and corpus.summary.loaded == 2
    assert [p for p, _ in corpus.summary.skipped] == bad
    assert corpus.summary.seconds == pytest.approx(0.3)


def test_corpus_of_only_bad_files_is_an_error(tmp_path):
    bad = [make(tmp_path / f"{kind}.wav") for kind, (make, _) in BAD_FILES.items()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedAudioWarning)
        with pytest.raises(AudioInputError, match=rf"no usable audio in {re.escape(str(tmp_path))}: 5 files skipped "
                                                  rf"\(first: {re.escape(str(bad[0]))}: cannot read"):
            AudioCorpus(bad, SR, MuLawCodec())


@pytest.mark.parametrize("codec, dtype", [(MuLawCodec(8), np.uint8), (LinearCodec(4), np.uint8),
                                          (MuLawCodec(10), np.uint16), (LinearCodec(16), np.uint16)])
def test_corpus_holds_quantized_ids_in_a_small_dtype(tmp_path, monkeypatch, codec, dtype):
    monkeypatch.setattr(data_module, "_ENCODE_CHUNK", 1000)  # several chunks per file
    wave = np.random.default_rng().uniform(-1, 1, 4321).astype(np.float32)
    path = write(tmp_path / "a.wav", wave, subtype="FLOAT")
    corpus = AudioCorpus([path], SR, codec)
    assert corpus.ids[0].dtype == dtype
    # Independent of the codec class: bins of the (companded) sample, in float64.
    mu = 2.0 ** codec.bits - 1
    y = np.sign(wave) * np.log(1 + mu * np.abs(wave)) / np.log(1 + mu) if codec.name == "mulaw" else wave
    expected = np.minimum(np.floor((y.astype(np.float64) + 1) / 2 * 2 ** codec.bits), 2 ** codec.bits - 1)
    assert np.abs(corpus.ids[0].astype(np.int64) - expected).max() <= 1  # 1 only on a bin edge
    assert np.mean(corpus.ids[0] == expected) > 0.999


def test_corpus_reports_progress_once_per_file(tmp_path):
    files = [write(tmp_path / f"{i}.wav", sine(440, SR, seconds=0.05)) for i in range(3)] + [_empty(tmp_path / "e.wav")]
    calls = []
    with pytest.warns(SkippedAudioWarning):
        AudioCorpus(files, SR, MuLawCodec(), on_file=calls.append)
    assert calls == [1, 1, 1, 1]


def test_corpus_indices_leave_out_skipped_files_and_refuse_strangers(tmp_path):
    files = [write(tmp_path / f"{i}.wav", sine(440, SR, seconds=0.05)) for i in range(3)]
    bad = _empty(tmp_path / "e.wav")
    with pytest.warns(SkippedAudioWarning):
        corpus = AudioCorpus([files[0], bad, files[1], files[2]], SR, MuLawCodec())
    assert corpus.indices([files[2], bad, files[0]]) == [2, 0]
    with pytest.raises(AudioInputError, match="not part of this corpus"):
        corpus.indices([tmp_path / "other.wav"])


def test_corpus_lengths_follow_resampling(tmp_path):
    path = write(tmp_path / "a.wav", sine(440, 8000, seconds=0.1), 8000)
    assert AudioCorpus([path], SR, MuLawCodec()).lengths.tolist() == [1600]


# --- split_files ------------------------------------------------------------------------------------

ROOT = Path("/data/sc09")
SPEAKER = r"([^/]+)_nohash_"


def sc09_like(n_speakers: int, words=("zero", "one", "two"), takes: int = 2) -> list[Path]:
    return [ROOT / word / f"spk{s:03d}_nohash_{t}.wav" for word in words for s in range(n_speakers)
            for t in range(takes)]


def test_split_is_deterministic_and_covers_every_file_once():
    files = sc09_like(40, takes=1)
    parts = split_files(files, 0.1, 0.1, seed=3)
    assert parts == split_files(list(files), 0.1, 0.1, seed=3)
    assert sorted(p for part in parts.values() for p in part) == sorted(files)
    assert all(parts[s] == [f for f in files if f in set(parts[s])] for s in parts)  # input order kept


def test_split_follows_the_documented_hash():
    # The rule is a contract (a later run must find the same held-out files): restated here, not imported.
    files = sc09_like(30)
    parts = split_files(files, 0.2, 0.1, group_pattern=SPEAKER, seed=11)
    for f in files:
        speaker = f.name.split("_nohash_")[0]
        u = int.from_bytes(hashlib.sha1(f"11\0{speaker}".encode()).digest()[:8], "big") / 2**64
        assert f in parts["test" if u < 0.1 else "valid" if u < 0.3 else "train"]


def test_split_fractions_are_roughly_met():
    parts = split_files([ROOT / f"{i}.wav" for i in range(4000)], 0.1, 0.2)
    assert len(parts["valid"]) == pytest.approx(400, abs=80) and len(parts["test"]) == pytest.approx(800, abs=110)


def test_split_depends_on_the_seed():
    files = [ROOT / f"{i}.wav" for i in range(200)]
    assert split_files(files, seed=0) != split_files(files, seed=1)


def test_relative_paths_start_at_the_root():
    files = sc09_like(30, words=("one",))
    anchored = r"^one/([^_]+)_"  # the common folder would be .../one without the explicit root
    assert split_files(files, group_pattern=anchored, root=ROOT) == split_files(files, group_pattern=SPEAKER)


@settings(max_examples=40, deadline=None)
@given(n_speakers=st.integers(3, 40), seed=st.integers(0, 2**31), valid=st.floats(0.05, 0.4),
       test=st.floats(0.05, 0.4))
def test_group_split_keeps_every_speaker_in_exactly_one_split(n_speakers, seed, valid, test):
    files = sc09_like(n_speakers)
    try:
        parts = split_files(files, valid, test, group_pattern=SPEAKER, seed=seed)
    except AudioInputError as err:  # few speakers: a split may stay empty, which must be said
        assert "no valid" in str(err) or "no test" in str(err) or "no train" in str(err)
        return
    for s in range(n_speakers):
        where = {name for name, part in parts.items() for f in part if f"spk{s:03d}_" in f.name}
        assert len(where) == 1, f"speaker {s} in {where}"


def test_whole_match_is_the_key_when_the_pattern_has_no_group():
    files = sc09_like(50)
    parts = split_files(files, group_pattern=r"spk\d+", seed=5)
    for part in parts.values():
        for f in part:
            twins = [g for g in files if g.name.split("_")[0] == f.name.split("_")[0]]
            assert set(twins) <= set(part)


def test_adding_files_moves_no_other_file():
    files = sc09_like(60, takes=1)
    before = split_files(files, 0.1, 0.1, seed=2)
    after = split_files([*files, ROOT / "one" / "new_nohash_0.wav"], 0.1, 0.1, seed=2)
    for name in before:
        assert set(before[name]) <= set(after[name])


def test_adding_a_speaker_moves_no_other_speaker():
    files = sc09_like(60)
    before = split_files(files, group_pattern=SPEAKER, seed=2)
    after = split_files([*files, ROOT / "two" / "newcomer_nohash_0.wav"], group_pattern=SPEAKER, seed=2)
    for name in before:
        assert set(before[name]) <= set(after[name])


def test_pattern_that_does_not_compile():
    with pytest.raises(AudioInputError, match=r"group pattern '\(oops' does not compile"):
        split_files(sc09_like(10), group_pattern="(oops")


def test_pattern_that_matches_no_file():
    with pytest.raises(AudioInputError, match=r"matches no file .first relative path: spk000_nohash_0.wav"):
        split_files(sc09_like(10, words=("one",)), group_pattern=r"^speaker-(\d+)/")


def test_pattern_that_misses_some_files():
    files = [*sc09_like(10), ROOT / "_background_noise_" / "noise.wav"]
    with pytest.raises(AudioInputError, match=r"no group for 1 of 61 files .first: .*noise.wav"):
        split_files(files, group_pattern=SPEAKER)


def test_an_empty_split_among_enough_groups_is_explained():
    # With 3 speakers at 5% each, some split is empty for almost every seed.
    with pytest.raises(AudioInputError, match=r"no (valid|test) groups among 3: .*try another seed"):
        split_files(sc09_like(3), 0.05, 0.05, group_pattern=SPEAKER, seed=0)


def test_too_few_groups_for_the_splits():
    with pytest.raises(AudioInputError, match="2 groups cannot fill 3 splits"):
        split_files(sc09_like(2), 0.3, 0.3, group_pattern=SPEAKER, seed=0)


def test_a_zero_fraction_split_may_be_empty():
    parts = split_files(sc09_like(20), 0.2, 0.0, group_pattern=SPEAKER)
    assert parts["test"] == [] and parts["valid"] and parts["train"]


@pytest.mark.parametrize("valid, test", [(-0.1, 0.1), (1.0, 0.0), (0.6, 0.5), (0.1, float("nan"))])
def test_invalid_fractions(valid, test):
    with pytest.raises(ValueError, match="fraction"):
        split_files(sc09_like(10), valid, test)


def test_files_outside_the_root_are_refused():
    with pytest.raises(AudioInputError, match="not under the split root"):
        split_files([Path("/elsewhere/a.wav")], root=ROOT)

