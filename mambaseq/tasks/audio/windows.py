"""Windows of quantized audio: an endless training stream and fixed validation windows.

Both give `(ids, mask)`: ids int64, mask bool, False on padding. A file shorter than the window is
right-padded with the codec's silence id, so the padding is valid model input but must never count
in a loss or a metric. For next-sample prediction ask for seq_len + 1 samples, as the DNA windows do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ...training.data import StepStream
from .data import AudioCorpus, AudioInputError


def _window(corpus: AudioCorpus, index: int, start: int, length: int) -> tuple[np.ndarray, int]:
    """(ids (length,) int64, real samples) from file `index` at `start`, padded with silence."""
    real = corpus.ids[index][start:start + length]
    ids = np.full(length, corpus.codec.silence_id, dtype=np.int64)
    ids[:len(real)] = real
    return ids, len(real)


def _selected(corpus: AudioCorpus, files: Iterable[str | Path] | None, what: str) -> np.ndarray:
    chosen = corpus.indices(files)
    if not chosen:
        raise AudioInputError(f"no usable {what} audio: every file of the split was skipped on loading")
    return np.array(chosen, dtype=np.int64)


class AudioBatches(StepStream):
    """Endless `(ids (batch, L) int64, mask (batch, L) bool)`; step s depends only on (seed, s).

    L = `schedule(step)` (or a fixed int), batch = max(1, tokens_per_step // (L - extra)): `extra` samples
    of a window are context only (1 for next-sample prediction, where L + 1 samples give L predictions),
    so the rows of a length-warmup stage are batch_size x seq_len / stage length, as TrainRecipe.split_batch
    expects when it checks that every stage splits over ranks and micro-steps. Each row: a file drawn
    with probability proportional to max(n, L), n its samples, then a window start uniform over
    [0, n - L] (0 when n < L: the whole file, right-padded). Weighting a short file as L rather than n
    gives every real sample about the same chance per row, L / W with W = sum(max(n, L)): a long file
    is drawn with chance n / W and then holds a given sample with chance about L / n, a short file is
    drawn with chance L / W and holds all of its samples (edge samples of long files are the exception:
    fewer windows hold them). `files` restricts the stream to a split (default: the whole corpus).

    A rank's share of a step (see StepStream) is `(ids, mask, counted)`: counted is the number of
    counted next-sample targets (mask[:, 1:]) in the whole global batch, which AudioLMModule divides
    its summed loss by, so that the shares' losses add up to the one-device loss of the step.
    """

    def __init__(self, corpus: AudioCorpus, schedule: int | Callable[[int], int], tokens_per_step: int, seed: int,
                 files: Iterable[str | Path] | None = None, first_step: Callable[[], int] = lambda: 0,
                 extra: int = 0) -> None:
        super().__init__(first_step)
        self.corpus, self.tokens_per_step, self.seed, self.extra = corpus, tokens_per_step, seed, extra
        self.schedule = schedule if callable(schedule) else (lambda step, length=int(schedule): length)
        self.chosen = _selected(corpus, files, "training")
        self.lengths = corpus.lengths[self.chosen]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        length = int(self.schedule(step))
        if length < 1:
            raise ValueError(f"window length must be positive, got {length} at step {step}")
        rng = np.random.default_rng([self.seed, step])
        size = max(1, self.tokens_per_step // max(1, length - self.extra))
        weight = np.maximum(self.lengths, length).astype(np.float64)
        rows = rng.choice(len(self.chosen), size=size, p=weight / weight.sum())
        starts = rng.integers(0, np.maximum(self.lengths[rows] - length, 0) + 1)
        ids = np.empty((size, length), dtype=np.int64)
        mask = np.zeros((size, length), dtype=bool)
        for r, (row, start) in enumerate(zip(rows, starts, strict=True)):
            ids[r], real = _window(self.corpus, int(self.chosen[row]), int(start), length)
            mask[r, :real] = True
        return torch.from_numpy(ids), torch.from_numpy(mask)

    def part(self, batch: tuple[torch.Tensor, torch.Tensor], index: int,
             parts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Share `index` of `parts` (ids and mask rows sliced together), with the global batch's count of
        counted targets: a share alone cannot tell how many the other ranks and micro-steps hold."""
        ids, mask = super().part(batch, index, parts)
        return ids, mask, batch[1][:, 1:].sum()

    # reopen(): nothing to do; the corpus is in memory, and forked workers share its arrays copy-on-write.


class FixedWindows(Dataset):
    """Validation or test windows, the same every time: item i is `(ids (L,) int64, mask (L,) bool)`.

    Each file is tiled from its start into non-overlapping windows of L; the last, partial tile (and a
    file shorter than L) is right-padded with silence and masked, so every held-out sample is scored
    exactly once. With `max_windows`, a seeded random subset of the tiles is kept, in file order.
    """

    def __init__(self, corpus: AudioCorpus, files: Iterable[str | Path] | None, length: int,
                 max_windows: int | None = None, seed: int = 0) -> None:
        if length < 1:
            raise ValueError(f"window length must be positive, got {length}")
        self.corpus, self.length = corpus, length
        chosen = _selected(corpus, files, "held-out")
        self.tiles = [(int(i), start) for i in chosen for start in range(0, len(corpus.ids[i]), length)]
        if max_windows is not None and len(self.tiles) > max_windows:
            keep = np.random.default_rng(seed).choice(len(self.tiles), size=max_windows, replace=False)
            self.tiles = [self.tiles[k] for k in sorted(keep)]

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        file, start = self.tiles[index]
        ids, real = _window(self.corpus, file, start, self.length)
        mask = np.zeros(self.length, dtype=bool)
        mask[:real] = True
        return torch.from_numpy(ids), torch.from_numpy(mask)


def fixed_windows(corpus: AudioCorpus, files: Iterable[str | Path] | None, length: int,
                  max_windows: int | None = None, seed: int = 0) -> FixedWindows:
    """`FixedWindows(corpus, files, length, max_windows, seed)`: the held-out windows of a split."""
    return FixedWindows(corpus, files, length, max_windows, seed)
