"""Training batches and fixed validation windows of quantized audio."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from mambaseq.tasks.audio.codec import LinearCodec, MuLawCodec
from mambaseq.tasks.audio.data import AudioCorpus, AudioInputError, SkippedAudioWarning
from mambaseq.tasks.audio.windows import AudioBatches, FixedWindows, fixed_windows

SR = 16_000
L = 100


def corpus_of(tmp_path, lengths, codec=None, constant=False):
    """A corpus of float WAVs with `lengths` samples: random noise, or file k held at one level."""
    rng = np.random.default_rng()
    files = []
    for k, n in enumerate(lengths):
        wave = np.full(n, -0.9 + 0.3 * k) if constant else rng.uniform(-1, 1, n)
        files.append(tmp_path / f"f{k}.wav")
        sf.write(files[-1], wave.astype(np.float32), SR, subtype="FLOAT")
    return AudioCorpus(files, SR, codec or MuLawCodec())


def occurs_in(window: np.ndarray, ids: np.ndarray) -> bool:
    n = len(window)
    return any(np.array_equal(ids[s:s + n], window) for s in range(len(ids) - n + 1))


@pytest.fixture
def mixed(tmp_path):
    return corpus_of(tmp_path, [30, 250, 100, 70, 400])


@pytest.mark.parametrize("codec", [MuLawCodec(8), LinearCodec(12)])
def test_batches_have_the_promised_shapes_and_types(tmp_path, codec):
    corpus = corpus_of(tmp_path, [30, 250], codec)
    ids, mask = AudioBatches(corpus, L, tokens_per_step=8 * L, seed=0).batch(0)
    assert ids.shape == mask.shape == (8, L) and ids.dtype == torch.int64 and mask.dtype == torch.bool
    assert 0 <= ids.min() and ids.max() < codec.num_classes


def test_batches_depend_only_on_seed_and_step(mixed):
    one = AudioBatches(mixed, L, 16 * L, seed=7)
    two = AudioBatches(mixed, L, 16 * L, seed=7)
    for step in (0, 5, 123):
        assert all(torch.equal(a, b) for a, b in zip(one.batch(step), two.batch(step), strict=True))
    assert not torch.equal(one.batch(5)[0], one.batch(6)[0])
    assert not torch.equal(one.batch(5)[0], AudioBatches(mixed, L, 16 * L, seed=8).batch(5)[0])


def test_a_step_does_not_depend_on_the_steps_before(mixed):
    stream = AudioBatches(mixed, L, 16 * L, seed=1)
    later = stream.batch(9)
    for step in range(9):
        stream.batch(step)
    assert torch.equal(stream.batch(9)[0], later[0])


def test_iteration_starts_at_first_step(mixed):
    stream = AudioBatches(mixed, L, 4 * L, seed=3, first_step=lambda: 40)
    ids, mask = next(iter(stream))
    assert torch.equal(ids, stream.batch(40)[0]) and torch.equal(mask, stream.batch(40)[1])


def test_length_schedule_sets_window_and_batch_size(mixed):
    stream = AudioBatches(mixed, lambda step: 50 if step < 10 else 200, tokens_per_step=800, seed=0)
    assert stream.batch(0)[0].shape == (16, 50) and stream.batch(10)[0].shape == (4, 200)


def test_short_file_is_padded_with_silence_and_masked_where_it_ends(tmp_path):
    corpus = corpus_of(tmp_path, [37])
    ids, mask = AudioBatches(corpus, L, 4 * L, seed=0).batch(0)
    expected = torch.from_numpy(corpus.ids[0].astype(np.int64))
    for row in range(4):
        assert torch.equal(ids[row, :37], expected)
        assert (ids[row, 37:] == MuLawCodec().silence_id).all()
        assert mask[row, :37].all() and not mask[row, 37:].any()


def test_mask_sum_equals_the_real_samples_of_each_row(mixed):
    ids, mask = AudioBatches(mixed, L, 64 * L, seed=2).batch(0)
    files = [f.astype(np.int64) for f in mixed.ids]
    for row_ids, row_mask in zip(ids.numpy(), mask.numpy(), strict=True):
        real = int(row_mask.sum())
        assert row_mask[:real].all()  # real samples first, then padding
        if real < L:  # a whole short file, nothing else
            assert any(len(f) == real and np.array_equal(row_ids[:real], f) for f in files)
        else:  # a window lying wholly inside one long enough file
            assert any(len(f) >= L and occurs_in(row_ids, f) for f in files)


def test_files_are_drawn_in_proportion_to_max_of_length_and_window(tmp_path):
    # Lengths 25, 100, 300 with L = 100 weigh 100 : 100 : 300.
    corpus = corpus_of(tmp_path, [25, 100, 300], constant=True)
    first = [corpus.ids[k][0] for k in range(3)]
    stream = AudioBatches(corpus, L, 200 * L, seed=0)
    drawn = np.concatenate([stream.batch(step)[0][:, 0].numpy() for step in range(20)])
    freq = [np.mean(drawn == f) for f in first]
    np.testing.assert_allclose(freq, [0.2, 0.2, 0.6], atol=0.03)


def test_window_starts_cover_a_long_file_uniformly(tmp_path):
    corpus = corpus_of(tmp_path, [L + 4], codec=LinearCodec(16))
    ids = AudioBatches(corpus, L, 500 * L, seed=0).batch(0)[0].numpy()
    whole = corpus.ids[0].astype(np.int64)
    starts = [next(s for s in range(5) if np.array_equal(whole[s:s + L], row)) for row in ids]
    assert np.bincount(starts, minlength=5).min() > 60  # 5 starts, 500 draws: about 100 each


def test_batches_keep_to_the_given_files(mixed):
    chosen = [mixed.files[1], mixed.files[4]]
    ids, _ = AudioBatches(mixed, L, 32 * L, seed=0, files=chosen).batch(0)
    allowed = [mixed.ids[1].astype(np.int64), mixed.ids[4].astype(np.int64)]
    assert all(any(occurs_in(row, f) for f in allowed) for row in ids.numpy())


def test_a_split_whose_files_were_all_skipped_is_an_error(tmp_path):
    good, bad = tmp_path / "g.wav", tmp_path / "b.wav"
    sf.write(good, np.zeros(200, dtype=np.float32), SR)
    bad.write_bytes(b"")
    with pytest.warns(SkippedAudioWarning):
        corpus = AudioCorpus([good, bad], SR, MuLawCodec())
    with pytest.raises(AudioInputError, match="no usable training audio"):
        AudioBatches(corpus, L, 4 * L, seed=0, files=[bad])


# --- fixed windows ----------------------------------------------------------------------------------


def test_fixed_windows_tile_every_sample_exactly_once(mixed):
    windows = FixedWindows(mixed, None, L)
    assert len(windows) == sum(-(-len(f) // L) for f in mixed.ids)  # ceil(n / L) tiles per file
    rebuilt: list[list[np.ndarray]] = [[] for _ in mixed.ids]
    for (file, _), (ids, mask) in zip(windows.tiles, (windows[i] for i in range(len(windows))), strict=True):
        assert mask.numpy()[: int(mask.sum())].all()
        assert (ids[~mask] == MuLawCodec().silence_id).all()
        rebuilt[file].append(ids[mask].numpy())
    for f, parts in zip(mixed.ids, rebuilt, strict=True):
        np.testing.assert_array_equal(np.concatenate(parts), f)


def test_fixed_windows_are_the_same_every_time(mixed):
    one = fixed_windows(mixed, mixed.files[1:], L, max_windows=4, seed=5)
    two = fixed_windows(mixed, mixed.files[1:], L, max_windows=4, seed=5)
    assert len(one) == 4 and one.tiles == two.tiles
    assert all(torch.equal(one[i][0], two[i][0]) for i in range(4))
    assert one.tiles == sorted(one.tiles)  # file order


def test_fixed_windows_batch_through_a_data_loader(mixed):
    ids, mask = next(iter(DataLoader(FixedWindows(mixed, [mixed.files[0]], L), batch_size=2)))
    assert ids.shape == mask.shape == (1, L) and int(mask.sum()) == 30
