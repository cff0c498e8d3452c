"""Pretraining windows from FASTA: train/validation regions, random and fixed windows, length warmup.

Every training batch is a pure function of (seed, step): a resumed run, or one rank of several,
draws exactly the batches it would have drawn anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ...training.data import StepStream
from .fasta import DnaInputError, FastaCollection, Interval
from .tokenizer import N, encode, reverse_complement


@dataclass(frozen=True)
class Regions:
    train: list[Interval]
    valid: list[Interval]


def split_regions(fasta: FastaCollection, intervals: list[Interval] | None = None, split: str = "region",
                  valid_fraction: float = 0.05, valid_records: list[str] | None = None) -> Regions:
    """Train and validation regions.

    split="region": the last `valid_fraction` of every record (or BED interval) is validation.
    split="record": the records named in `valid_records` are validation, the rest train.
    BED intervals with a split label (train/valid/validation/val/test) go where the label says.
    """
    if intervals is None:
        intervals = [Interval(r.name, 0, r.length) for r in fasta.records if r.length > 0]
    train, valid = [], []
    labelled = [i for i in intervals if i.split is not None]
    for interval in labelled:
        label = interval.split.lower()
        if label in ("train", "training"):
            train.append(interval)
        elif label in ("valid", "validation", "val", "dev"):
            valid.append(interval)
    unlabelled = [i for i in intervals if i.split is None]
    if split == "record":
        wanted = set(valid_records or [])
        missing = wanted - {i.name for i in unlabelled}
        if missing:
            raise DnaInputError(f"validation records not found: {', '.join(sorted(missing))}")
        for interval in unlabelled:
            (valid if interval.name in wanted else train).append(interval)
    elif split == "region":
        if not 0 < valid_fraction < 1:
            raise DnaInputError(f"valid_fraction must be between 0 and 1, got {valid_fraction}")
        for i in unlabelled:
            cut = i.end - round(i.length * valid_fraction)
            if cut > i.start:
                train.append(Interval(i.name, i.start, cut))
            if cut < i.end:
                valid.append(Interval(i.name, cut, i.end))
    else:
        raise DnaInputError(f"split must be 'region' or 'record', got {split!r}")
    if not train:
        raise DnaInputError("no training regions (all records are validation or empty)")
    if not valid:
        raise DnaInputError("no validation regions; set a valid_fraction or valid_records")
    return Regions(train, valid)


class WindowSampler:
    """Random windows of `length` tokens from `regions`, chosen with probability proportional to the
    room each region has, skipping windows with more than `max_n_frac` N."""

    def __init__(self, fasta: FastaCollection, regions: list[Interval], max_n_frac: float = 0.1,
                 rc_augment: bool = False, soft_mask: str = "base") -> None:
        self.fasta, self.regions = fasta, regions
        self.max_n_frac, self.rc_augment, self.soft_mask = max_n_frac, rc_augment, soft_mask

    def sample(self, rng: np.random.Generator, length: int) -> np.ndarray:
        room = np.array([max(0, r.length - length + 1) for r in self.regions], dtype=np.float64)
        if room.sum() == 0:
            longest = max(r.length for r in self.regions)
            raise DnaInputError(f"no training region holds a window of {length} bases (longest: {longest})")
        for _ in range(100):
            region = self.regions[rng.choice(len(self.regions), p=room / room.sum())]
            start = region.start + int(rng.integers(0, region.length - length + 1))
            ids = encode(self.fasta.fetch(region.name, start, start + length), self.soft_mask)
            if (ids == N).mean() <= self.max_n_frac:
                if self.rc_augment and rng.random() < 0.5:
                    ids = reverse_complement(ids)
                return ids
        raise DnaInputError(f"100 random windows of {length} bases all had more than {self.max_n_frac:.0%} N; "
                            "raise max_n_frac or restrict the regions with a BED file")


class TrainBatches(StepStream):
    """Infinite stream of LM batches (batch, L + 1); the batch of step s depends only on (seed, s).

    Tokens per step stay constant through the length warmup: batch = tokens_per_step // L.
    """

    def __init__(self, sampler: WindowSampler, schedule: Callable[[int], int], tokens_per_step: int, seed: int,
                 first_step: Callable[[], int] = lambda: 0) -> None:
        super().__init__(first_step)
        self.sampler, self.schedule, self.tokens_per_step, self.seed = sampler, schedule, tokens_per_step, seed

    def batch(self, step: int) -> torch.Tensor:
        length = self.schedule(step)
        rng = np.random.default_rng([self.seed, step])
        size = max(1, self.tokens_per_step // length)
        return torch.from_numpy(np.stack([self.sampler.sample(rng, length + 1) for _ in range(size)]))

    def reopen(self) -> None:
        self.sampler.fasta.reopen()


class ValidWindows(Dataset):
    """Fixed validation windows (L + 1 tokens) tiling the validation regions; the same every epoch."""

    def __init__(self, fasta: FastaCollection, regions: list[Interval], seq_len: int, max_windows: int | None = None,
                 max_n_frac: float = 0.1, soft_mask: str = "base", seed: int = 0,
                 too_short: str = "lower seq_len or raise valid_fraction") -> None:
        self.fasta, self.soft_mask = fasta, soft_mask
        width = seq_len + 1
        starts = [(r.name, s) for r in regions for s in range(r.start, r.end - width + 1, width)]
        if not starts:
            longest = max(r.length for r in regions)
            raise DnaInputError(f"validation regions are shorter than one window of {width} bases (longest: "
                                f"{longest}); {too_short}")
        if max_windows is not None and len(starts) > max_windows:
            keep = np.random.default_rng(seed).choice(len(starts), size=max_windows, replace=False)
            starts = [starts[i] for i in sorted(keep)]
        self.windows = []
        for name, start in starts:
            ids = encode(fasta.fetch(name, start, start + width), soft_mask)
            if (ids == N).mean() <= max_n_frac:
                self.windows.append(torch.from_numpy(ids))
        if not self.windows:
            raise DnaInputError(f"every validation window has more than {max_n_frac:.0%} N")

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.windows[index]

