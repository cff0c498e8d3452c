"""Species-classification data: species -> FASTA files, train/valid/test regions, windows.

Sampling follows the seed paper's Great Apes task: a species uniformly at random, then a region of
that species (weighted by how many windows it holds, i.e. a uniform position), then a window that
lies wholly inside the region, so no window crosses a record end and none is padded with N (the
amount of padding would tell the species apart). Validation and test windows are a fixed,
seeded set with the same number per species (fewer only where a species lacks N-free windows).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ...training.data import StepStream
from .fasta import DnaInputError, FastaCollection, Interval
from .tokenizer import N, encode, reverse_complement

SPLITS = ("train", "valid", "test")
# Validation and test windows of one seed are drawn apart, so a region held out for both (split
# "all") gives each its own windows.
SPLIT_SEED = {"valid": 0, "test": 1, "train": 2}


@dataclass(frozen=True)
class Species:
    name: str
    fasta: tuple[str, ...]


def _checked_files(files: list[str], where: str) -> tuple[str, ...]:
    for path in files:
        if not os.path.isfile(path):
            raise DnaInputError(f"{where}: FASTA file not found: {path}")
    return tuple(str(Path(p).resolve()) for p in files)


def _merge(pairs: list[tuple[str, list[str], str]]) -> list[Species]:
    files: dict[str, list[str]] = {}
    for name, paths, where in pairs:
        if not name or any(c.isspace() for c in name):
            raise DnaInputError(f"{where}: species name {name!r} must be non-empty without spaces")
        files.setdefault(name, []).extend(_checked_files(paths, where))
    if len(files) < 2:
        raise DnaInputError(f"species classification needs at least 2 species, got {len(files)}")
    return [Species(name, tuple(dict.fromkeys(paths))) for name, paths in files.items()]


def parse_species(specs: list[str]) -> list[Species]:
    """`["human=hg38.fa.gz", "chimp=a.fa,b.fa"]` -> species in the given order (the class order)."""
    pairs = []
    for spec in specs:
        name, sep, files = spec.partition("=")
        if not sep or not files.strip():
            raise DnaInputError(f"--species expects NAME=FASTA[,FASTA...], got {spec!r}")
        pairs.append((name.strip(), [f.strip() for f in files.split(",") if f.strip()], f"--species {spec}"))
    names = [p[0] for p in pairs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DnaInputError(f"--species: {', '.join(repeated)} given more than once; list all files of a species "
                            "in one NAME=FASTA,FASTA")
    return _merge(pairs)


def read_manifest(path: str | Path) -> list[Species]:
    """A TSV of `species<TAB>fasta` lines (several lines per species allowed; relative paths are
    relative to the manifest; `#` comments and a `species` header line are skipped)."""
    path = Path(path)
    if not path.is_file():
        raise DnaInputError(f"{path}: manifest not found")
    pairs = []
    for line_no, raw in enumerate(path.read_bytes().decode("utf-8", errors="replace").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#") or (line_no == 1 and line.lower().split()[0] == "species"):
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) < 2:
            raise DnaInputError(f"{path}: line {line_no}: expected species<TAB>fasta, got {line!r}")
        file = fields[1] if os.path.isabs(fields[1]) else str(path.parent / fields[1])
        pairs.append((fields[0], [file], f"{path}: line {line_no}"))
    return _merge(pairs)


@dataclass(frozen=True)
class Window:
    label: int
    name: str
    start: int
    end: int


class SpeciesGenomes:
    """Every species' FASTA files and its train/valid/test regions.

    split="region": each record is cut into train | valid | test, the last two `valid_fraction`
    and `test_fraction` long. split="record": records named in `valid_records` / `test_records` are
    held out whole (a name may occur in several species). split="all": every record is in every
    split (evaluating a trained model on new genomes).
    """

    def __init__(self, species: list[Species], split: str = "region", valid_fraction: float = 0.1,
                 test_fraction: float = 0.1, valid_records: list[str] | None = None,
                 test_records: list[str] | None = None) -> None:
        self.species = species
        self.names = [s.name for s in species]
        self.collections = [FastaCollection(list(s.fasta)) for s in species]
        self.regions: list[dict[str, list[Interval]]] = []
        if split == "region":
            if not (valid_fraction > 0 and test_fraction > 0 and valid_fraction + test_fraction < 1):
                raise DnaInputError("valid_fraction and test_fraction must be > 0 with a sum below 1, got "
                                    f"{valid_fraction} and {test_fraction}")
            for fasta in self.collections:
                self.regions.append(_cut_records(fasta, valid_fraction, test_fraction))
        elif split == "record":
            held = {"valid": set(valid_records or []), "test": set(test_records or [])}
            both = held["valid"] & held["test"]
            if both:
                raise DnaInputError(f"records both in validation and test: {', '.join(sorted(both))}")
            everywhere = {r.name for fasta in self.collections for r in fasta.records}
            missing = (held["valid"] | held["test"]) - everywhere
            if missing:
                raise DnaInputError(f"held-out records found in no species: {', '.join(sorted(missing))}")
            for fasta in self.collections:
                parts: dict[str, list[Interval]] = {s: [] for s in SPLITS}
                for r in fasta.records:
                    where = "valid" if r.name in held["valid"] else "test" if r.name in held["test"] else "train"
                    parts[where].append(Interval(r.name, 0, r.length))
                self.regions.append(parts)
        elif split == "all":
            for fasta in self.collections:
                whole = [Interval(r.name, 0, r.length) for r in fasta.records if r.length]
                self.regions.append({s: whole for s in SPLITS})
        else:
            raise DnaInputError(f"split must be 'region', 'record' or 'all', got {split!r}")
        for name, parts in zip(self.names, self.regions, strict=True):
            for part in SPLITS:
                if not parts[part]:
                    raise DnaInputError(f"species {name}: no {part} records (split {split!r})")

    def check_length(self, length: int, splits: tuple[str, ...] = SPLITS) -> None:
        """A one-line error when some species has no region that holds a window of `length` bases."""
        for name, parts in zip(self.names, self.regions, strict=True):
            for part in splits:
                longest = max(r.length for r in parts[part])
                if longest < length:
                    raise DnaInputError(f"species {name}: a window of {length:,} bases is longer than every {part} "
                                        f"region (longest {longest:,}); lower --seq-len")

    def fetch_ids(self, label: int, name: str, start: int, end: int, soft_mask: str = "base") -> np.ndarray:
        return encode(self.collections[label].fetch(name, start, end), soft_mask)

    def sample(self, rng: np.random.Generator, length: int, max_n_frac: float = 0.1, rc_augment: bool = False,
               soft_mask: str = "base") -> tuple[np.ndarray, int]:
        """One training window: (ids (length,), species index)."""
        label = int(rng.integers(len(self.names)))
        regions = self.regions[label]["train"]
        room = np.array([max(0, r.length - length + 1) for r in regions], dtype=np.float64)
        for _ in range(100):
            region = regions[rng.choice(len(regions), p=room / room.sum())]
            start = region.start + int(rng.integers(0, region.length - length + 1))
            ids = self.fetch_ids(label, region.name, start, start + length, soft_mask)
            if (ids == N).mean() <= max_n_frac:
                if rc_augment and rng.random() < 0.5:
                    ids = reverse_complement(ids)
                return ids, label
        raise DnaInputError(f"species {self.names[label]}: 100 random windows of {length} bases all had more than "
                            f"{max_n_frac:.0%} N")

    def fixed_windows(self, split: str, length: int, per_species: int, seed: int = 0, max_n_frac: float = 0.1,
                      soft_mask: str = "base") -> list[Window]:
        """`per_species` windows of each species in `split`, the same for the same arguments (the
        windows training validated and tested on are rebuilt from the run's seed).

        Non-overlapping tiles in a seeded random order when a species has enough of them; otherwise
        evenly spaced windows that overlap (a short held-out region still gives `per_species`).
        Windows with more than `max_n_frac` N are replaced by the next candidates; a species runs
        short only when it has too few N-free windows.
        """
        windows = []
        for label, parts in enumerate(self.regions):
            regions = [r for r in parts[split] if r.length >= length]
            tiles = [(r.name, s) for r in regions for s in range(r.start, r.end - length + 1, length)]
            if len(tiles) >= per_species:
                order = np.random.default_rng([seed + SPLIT_SEED[split], label]).permutation(len(tiles))
                candidates = [tiles[i] for i in order]
            else:
                candidates = _spread(regions, length, per_species)
                # A denser spread stands in for windows lost to N, still evenly spaced.
                candidates += [c for c in _spread(regions, length, 4 * per_species) if c not in candidates]
            chosen = []
            for name, start in candidates:
                ids = self.fetch_ids(label, name, start, start + length, soft_mask)
                if (ids == N).mean() <= max_n_frac:
                    chosen.append(Window(label, name, start, start + length))
                    if len(chosen) == per_species:
                        break
            if not chosen:
                raise DnaInputError(f"species {self.names[label]}: every {split} window has more than "
                                    f"{max_n_frac:.0%} N")
            windows += sorted(chosen, key=lambda w: (w.name, w.start))
        return windows


def _cut_records(fasta: FastaCollection, valid_fraction: float, test_fraction: float) -> dict[str, list[Interval]]:
    parts: dict[str, list[Interval]] = {s: [] for s in SPLITS}
    for r in fasta.records:
        test_start = r.length - round(r.length * test_fraction)
        valid_start = test_start - round(r.length * valid_fraction)
        for part, start, end in (("train", 0, valid_start), ("valid", valid_start, test_start),
                                 ("test", test_start, r.length)):
            if end > start:
                parts[part].append(Interval(r.name, start, end))
    return parts


def _spread(regions: list[Interval], length: int, count: int) -> list[tuple[str, int]]:
    room = np.array([r.length - length for r in regions], dtype=np.float64)
    # Windows shared out in proportion to each region's room, at least one per region, evenly spaced.
    shares = np.maximum(1, np.round(count * (room + 1) / (room + 1).sum())).astype(int)
    starts = []
    for region, share in zip(regions, shares, strict=True):
        for offset in np.linspace(0, region.length - length, share).round().astype(int):
            starts.append((region.name, region.start + int(offset)))
    unique = sorted(set(starts))
    if len(unique) <= count:
        return unique
    return [unique[i] for i in np.linspace(0, len(unique) - 1, count).round().astype(int)]


class ClassifyBatches(StepStream):
    """Infinite stream of (ids (batch, L), labels (batch,)); step s depends only on (seed, s).

    `schedule(step)` gives L (sequence-length warmup); batch = tokens_per_step // L.
    """

    def __init__(self, genomes: SpeciesGenomes, schedule: Callable[[int], int], tokens_per_step: int, seed: int,
                 max_n_frac: float = 0.1, rc_augment: bool = True, soft_mask: str = "base",
                 first_step: Callable[[], int] = lambda: 0) -> None:
        super().__init__(first_step)
        self.genomes, self.schedule, self.tokens_per_step, self.seed = genomes, schedule, tokens_per_step, seed
        self.max_n_frac, self.rc_augment, self.soft_mask = max_n_frac, rc_augment, soft_mask

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        length = self.schedule(step)
        rng = np.random.default_rng([self.seed, step])
        drawn = [self.genomes.sample(rng, length, self.max_n_frac, self.rc_augment, self.soft_mask)
                 for _ in range(max(1, self.tokens_per_step // length))]
        return torch.from_numpy(np.stack([ids for ids, _ in drawn])), torch.tensor([label for _, label in drawn])

    def reopen(self) -> None:
        for fasta in self.genomes.collections:
            fasta.reopen()


class WindowSet(Dataset):
    """Fixed windows as (ids (L,), label) items, read from the FASTA files when asked for."""

    def __init__(self, genomes: SpeciesGenomes, windows: list[Window], soft_mask: str = "base") -> None:
        self.genomes, self.windows, self.soft_mask = genomes, windows, soft_mask

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        w = self.windows[index]
        return torch.from_numpy(self.genomes.fetch_ids(w.label, w.name, w.start, w.end, self.soft_mask)), w.label
