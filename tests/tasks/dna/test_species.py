"""Species data: specs and manifests, train/valid/test regions, sampled and fixed windows."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mambaseq.tasks.dna.fasta import DnaInputError
from mambaseq.tasks.dna.species import (
    ClassifyBatches,
    SpeciesGenomes,
    parse_species,
    read_manifest,
)
from mambaseq.tasks.dna.tokenizer import decode, reverse_complement
from mambaseq.training.data import length_schedule


def _write(path, records):
    path.write_text("".join(f">{name}\n{seq}\n" for name, seq in records.items()))
    return path


@pytest.fixture
def three_species(tmp_path):
    rng = np.random.default_rng()
    seqs = {}
    for sp in ("a", "b", "c"):
        seqs[sp] = {f"{sp}1": "".join(rng.choice(list("ACGT"), 2000)), f"{sp}2": "".join(rng.choice(list("ACGT"), 700))}
        _write(tmp_path / f"{sp}.fa", seqs[sp])
    species = parse_species([f"{sp}={tmp_path / f'{sp}.fa'}" for sp in seqs])
    return species, seqs


def test_parse_species_keeps_order_and_files(tmp_path):
    a, b = _write(tmp_path / "a.fa", {"r": "ACGT"}), _write(tmp_path / "b.fa", {"s": "ACGT"})
    species = parse_species([f"y={a},{b}", f"x={b}"])
    assert [s.name for s in species] == ["y", "x"]
    assert species[0].fasta == (str(a.resolve()), str(b.resolve()))


@pytest.mark.parametrize("specs,message", [
    (["noequals"], "NAME=FASTA"),
    (["a={a}", "a={a}"], "more than once"),
    (["a={a}", "b=/no/such.fa"], "not found: /no/such.fa"),
    (["a={a}"], "at least 2 species"),
])
def test_bad_species_specs(tmp_path, specs, message):
    a = _write(tmp_path / "a.fa", {"r": "ACGT"})
    with pytest.raises(DnaInputError, match=message):
        parse_species([s.format(a=a) for s in specs])


def test_manifest_relative_paths_and_several_lines_per_species(tmp_path):
    _write(tmp_path / "a1.fa", {"r1": "ACGT"})
    _write(tmp_path / "a2.fa", {"r2": "ACGT"})
    _write(tmp_path / "b.fa", {"s": "ACGT"})
    manifest = tmp_path / "species.tsv"
    manifest.write_text("species\tfasta\n# comment\na\ta1.fa\nb\tb.fa\na\ta2.fa\n")
    species = read_manifest(manifest)
    assert [s.name for s in species] == ["a", "b"] and len(species[0].fasta) == 2


def test_manifest_missing_file_names_the_line(tmp_path):
    manifest = tmp_path / "m.tsv"
    manifest.write_text("a\tmissing.fa\n")
    with pytest.raises(DnaInputError, match=r"m.tsv: line 1: FASTA file not found"):
        read_manifest(manifest)


def test_region_split_partitions_every_record(three_species):
    species, seqs = three_species
    genomes = SpeciesGenomes(species, "region", valid_fraction=0.1, test_fraction=0.2)
    for parts, records in zip(genomes.regions, seqs.values(), strict=True):
        for name, seq in records.items():
            pieces = sorted((r.start, r.end, part) for part in ("train", "valid", "test")
                            for r in parts[part] if r.name == name)
            assert [p[2] for p in pieces] == ["train", "valid", "test"]
            assert pieces[0][0] == 0 and pieces[-1][1] == len(seq)
            assert all(x[1] == y[0] for x, y in itertools.pairwise(pieces))
            assert pieces[2][1] - pieces[2][0] == round(0.2 * len(seq))


def test_record_split_holds_out_named_records(three_species):
    species, _ = three_species
    with pytest.raises(DnaInputError, match="no train records"):
        SpeciesGenomes(species, "record", valid_records=["a2", "b2", "c2"], test_records=["a1", "b1", "c1"])
    with pytest.raises(DnaInputError, match="found in no species: zz"):
        SpeciesGenomes(species, "record", valid_records=["zz"])
    genomes = SpeciesGenomes(species, "all")
    assert {r.name for r in genomes.regions[0]["test"]} == {"a1", "a2"}


def test_windows_come_from_the_train_regions_of_the_labelled_species(three_species):
    species, seqs = three_species
    genomes = SpeciesGenomes(species, "region", valid_fraction=0.1, test_fraction=0.1)
    rng = np.random.default_rng()
    labels = []
    for _ in range(150):
        ids, label = genomes.sample(rng, 40, rc_augment=True)
        text = decode(ids)
        train_text = [seqs[genomes.names[label]][r.name][r.start:r.end] for r in genomes.regions[label]["train"]]
        assert any(text in t or decode(reverse_complement(ids)) in t for t in train_text)
        labels.append(label)
    assert np.bincount(labels, minlength=3).min() > 20  # species drawn uniformly


def test_no_window_crosses_a_record_end(three_species):
    species, _ = three_species
    genomes = SpeciesGenomes(species, "all")
    rng = np.random.default_rng()
    # 1000-base windows fit only the 2000-base records: a window over a record end would have
    # to come from the 700-base ones.
    for _ in range(30):
        ids, label = genomes.sample(rng, 1000)
        assert len(ids) == 1000
        assert decode(ids) in genomes.collections[label].fetch(f"{genomes.names[label]}1", 0, 2000)


def test_check_length_names_the_species_and_split(three_species):
    species, _ = three_species
    genomes = SpeciesGenomes(species, "region", valid_fraction=0.1, test_fraction=0.1)
    genomes.check_length(200)
    genomes.check_length(1600, ("train",))
    with pytest.raises(DnaInputError, match=r"species a: a window of 201 bases is longer than every valid region "
                                            r"\(longest 200\)"):
        genomes.check_length(201)


def test_fixed_windows_are_reproducible_balanced_and_inside_the_split(three_species):
    species, _ = three_species
    genomes = SpeciesGenomes(species, "region", valid_fraction=0.3, test_fraction=0.3)
    first = genomes.fixed_windows("test", 50, per_species=5, seed=3)
    assert first == genomes.fixed_windows("test", 50, per_species=5, seed=3)
    assert first != genomes.fixed_windows("test", 50, per_species=5, seed=4)
    assert np.bincount([w.label for w in first]).tolist() == [5, 5, 5]
    for w in first:
        assert any(r.name == w.name and r.start <= w.start and w.end <= r.end
                   for r in genomes.regions[w.label]["test"])
        assert w.end - w.start == 50


def test_fixed_windows_overlap_when_the_split_is_short(three_species):
    species, _ = three_species
    genomes = SpeciesGenomes(species, "region", valid_fraction=0.1, test_fraction=0.1)
    # test regions: 200 and 70 bases; 150-base windows: one fits, without overlap.
    windows = genomes.fixed_windows("test", 150, per_species=4)
    assert np.bincount([w.label for w in windows]).tolist() == [4, 4, 4]
    assert len({(w.label, w.start) for w in windows}) == 12


@pytest.mark.parametrize("length,per_species", [(100, 5), (400, 6)])  # enough tiles / overlapping spread
def test_windows_with_too_many_n_are_replaced(tmp_path, length, per_species):
    rng = np.random.default_rng()
    _write(tmp_path / "a.fa", {"a1": "N" * 500 + "".join(rng.choice(list("ACGT"), 1000))})
    _write(tmp_path / "b.fa", {"b1": "".join(rng.choice(list("ACGT"), 1500))})
    genomes = SpeciesGenomes(parse_species([f"a={tmp_path / 'a.fa'}", f"b={tmp_path / 'b.fa'}"]), "all")
    windows = genomes.fixed_windows("test", length, per_species=per_species, max_n_frac=0.1)
    assert np.bincount([w.label for w in windows]).tolist() == [per_species, per_species]
    for w in windows:
        assert (decode(genomes.fetch_ids(w.label, w.name, w.start, w.end)).count("N") <= 0.1 * length)


def test_batches_are_a_function_of_the_step_with_constant_tokens(three_species):
    species, _ = three_species
    genomes = SpeciesGenomes(species, "region", valid_fraction=0.1, test_fraction=0.1)
    batches = ClassifyBatches(genomes, length_schedule(128, 32, 2), tokens_per_step=512, seed=7)
    ids, labels = batches.batch(0)
    assert ids.shape == (16, 32) and labels.shape == (16,)
    assert ids.shape[0] * ids.shape[1] == batches.batch(6)[0].numel() == 512
    again_ids, again_labels = batches.batch(0)
    assert (ids == again_ids).all() and (labels == again_labels).all()


def test_record_split_with_shared_chromosome_names(tmp_path):
    rng = np.random.default_rng()
    specs = []
    for sp in ("a", "b"):
        _write(tmp_path / f"{sp}.fa", {f"chr{i}": "".join(rng.choice(list("ACGT"), 300)) for i in (1, 2, 3)})
        specs.append(f"{sp}={tmp_path / f'{sp}.fa'}")
    genomes = SpeciesGenomes(parse_species(specs), "record", valid_records=["chr2"], test_records=["chr3"])
    for parts in genomes.regions:
        assert [(r.name, r.start, r.end) for r in parts["train"]] == [("chr1", 0, 300)]
        assert [r.name for r in parts["valid"]] == ["chr2"] and [r.name for r in parts["test"]] == ["chr3"]


@pytest.mark.parametrize("workers", [2, 3])
def test_loader_workers_give_the_same_batches_in_order(three_species, workers):
    from torch.utils.data import DataLoader

    species, _ = three_species
    genomes = SpeciesGenomes(species, "region", valid_fraction=0.1, test_fraction=0.1)
    batches = ClassifyBatches(genomes, length_schedule(64, None, 1), tokens_per_step=256, seed=3,
                              first_step=lambda: 5)
    loader = iter(DataLoader(batches, batch_size=None, num_workers=workers))
    for step in range(5, 12):
        ids, labels = next(loader)
        want_ids, want_labels = batches.batch(step)
        assert (ids == want_ids).all() and (labels == want_labels).all(), step
