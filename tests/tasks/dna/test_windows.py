"""Training/validation regions, window sampling, length warmup, batch determinism."""

from __future__ import annotations

import numpy as np
import pytest

from mambaseq.tasks.dna.fasta import DnaInputError, FastaCollection, Interval
from mambaseq.tasks.dna.tokenizer import N
from mambaseq.tasks.dna.windows import (
    TrainBatches,
    ValidWindows,
    WindowSampler,
    split_regions,
)
from mambaseq.training.data import length_schedule


@pytest.fixture
def fasta(tmp_path):
    rng = np.random.default_rng()
    path = tmp_path / "g.fa"
    seqs = {"a": "".join(rng.choice(list("ACGT"), 2000)), "b": "N" * 500 + "".join(rng.choice(list("ACGT"), 1500))}
    path.write_text("".join(f">{k}\n{v}\n" for k, v in seqs.items()))
    return FastaCollection([path], cache_dir=tmp_path / "c")


def test_region_split_holds_out_the_end_of_each_record(fasta):
    regions = split_regions(fasta, valid_fraction=0.1)
    assert Interval("a", 0, 1800) in regions.train and Interval("a", 1800, 2000) in regions.valid
    assert Interval("b", 1800, 2000) in regions.valid


def test_record_split(fasta):
    regions = split_regions(fasta, split="record", valid_records=["b"])
    assert [r.name for r in regions.train] == ["a"] and [r.name for r in regions.valid] == ["b"]


def test_unknown_validation_record(fasta):
    with pytest.raises(DnaInputError, match="not found: zz"):
        split_regions(fasta, split="record", valid_records=["zz"])


def test_windows_skip_mostly_n_regions(fasta):
    sampler = WindowSampler(fasta, [Interval("b", 0, 2000)], max_n_frac=0.0)
    rng = np.random.default_rng()
    for _ in range(20):
        assert not (sampler.sample(rng, 100) == N).any()


def test_all_n_region_is_a_clear_error(fasta):
    sampler = WindowSampler(fasta, [Interval("b", 0, 400)], max_n_frac=0.1)
    with pytest.raises(DnaInputError, match="N"):
        sampler.sample(np.random.default_rng(), 100)


def test_length_warmup_doubles_then_holds():
    schedule = length_schedule(1024, 256, stage_steps=10)
    assert [schedule(s) for s in (0, 9, 10, 19, 20, 1000)] == [256, 256, 512, 512, 1024, 1024]


def test_batches_depend_only_on_seed_and_step(fasta):
    sampler = WindowSampler(fasta, split_regions(fasta).train, rc_augment=True)
    one = TrainBatches(sampler, length_schedule(128, 32, 2), tokens_per_step=512, seed=7)
    two = TrainBatches(sampler, length_schedule(128, 32, 2), tokens_per_step=512, seed=7)
    assert np.array_equal(one.batch(5), two.batch(5))
    assert not np.array_equal(one.batch(5), one.batch(6))
    assert one.batch(0).shape == (16, 33) and one.batch(10).shape == (4, 129)  # constant tokens per step


def test_validation_windows_are_fixed(fasta):
    regions = split_regions(fasta, valid_fraction=0.2)
    first = ValidWindows(fasta, regions.valid, 64, max_windows=5, seed=1)
    second = ValidWindows(fasta, regions.valid, 64, max_windows=5, seed=1)
    assert len(first) == 5 and all(np.array_equal(a, b) for a, b in zip(first.windows, second.windows, strict=True))


def test_train_batches_with_loader_workers_match_steps(tmp_path):
    import numpy as np
    from torch.utils.data import DataLoader

    from mambaseq.tasks.dna.fasta import FastaCollection
    from mambaseq.tasks.dna.windows import TrainBatches, WindowSampler, split_regions

    rng = np.random.default_rng()
    path = tmp_path / "g.fa"
    path.write_text("".join(f">r{i}\n{''.join(rng.choice(list('ACGT'), 2000))}\n" for i in range(3)))
    fasta = FastaCollection([path])
    sampler = WindowSampler(fasta, split_regions(fasta).train)
    batches = TrainBatches(sampler, length_schedule(32, None, 1), tokens_per_step=128, seed=1)
    loader = iter(DataLoader(batches, batch_size=None, num_workers=2))
    for step in range(6):
        assert (next(loader) == batches.batch(step)).all(), step
