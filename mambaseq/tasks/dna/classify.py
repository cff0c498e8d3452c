"""`mambaseq classify train | eval | predict`: species classification of DNA windows, as Python functions.

    from mambaseq.tasks.dna.classify import ClassifyConfig, train_classifier, evaluate_classifier
    result = train_classifier(ClassifyConfig.from_recipe("classify-tiny-cpu", species=["a=a.fa", "b=b.fa"]))
    report = evaluate_classifier(result.model_dir, out="eval/")
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from ...checkpoint import from_pretrained, save_pretrained
from ...config import MambaConfig
from ...fileio import atomic_write
from ...metrics import classification_report, write_report
from ...models import HEAD_NORMS, POOLINGS, MambaClassifier
from ...sysinfo import default_device
from ...training.classify_module import ClassifierModule
from ...training.data import length_schedule
from ...training.trainer import TrainRecipe, global_step, is_global_zero
from .fasta import DnaInputError, FastaCollection, Interval, regions_of
from .model_dir import check_dna_model, load_dna_model
from .species import ClassifyBatches, Species, SpeciesGenomes, WindowSet, parse_species, read_manifest
from .tokenizer import VOCAB_SIZE, encode, reverse_complement
from .train import bundled_genome


def bundled_species() -> list[Species]:
    """The three bundled yeast chromosome I sequences as species Scer, Skud and Smik."""
    return [Species(Path(path).name[:4], (path,)) for path in bundled_genome()]


@dataclass
class ClassifyConfig(TrainRecipe):
    """Every field can be set in a recipe YAML and overridden from the command line."""

    RECIPES: ClassVar[tuple[str, ...]] = ("classify-tiny-cpu", "classify-1.4m")
    RECIPE_PACKAGE: ClassVar[str] = "mambaseq.tasks.dna"
    input_error: ClassVar[type[Exception]] = DnaInputError

    species: list[str] | None = None  # NAME=FASTA[,FASTA...]; with no manifest either: the bundled yeasts
    manifest: str | None = None  # TSV of species<TAB>fasta
    init_from: str | None = None  # a pretrained DNA LM folder whose backbone (and config) to start from
    pooling: str = "mean"
    head_norm: str = "batch"  # batch: pooled features standardized before the linear layer | none
    dropout: float = 0.0
    out: str = "runs/classify"
    batch_size: int = 16
    lr: float = 2e-3
    split: str = "region"  # region | record
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    valid_records: list[str] = field(default_factory=list)
    test_records: list[str] = field(default_factory=list)
    eval_windows: int = 32  # fixed validation and test windows per species
    eval_batch_size: int | None = None  # windows per forward in evaluation; default: batch_size (per device)
    max_n_frac: float = 0.1
    rc_augment: bool = True
    soft_mask: str = "base"

    def load_species(self) -> list[Species]:
        if self.species and self.manifest:
            raise DnaInputError("give --species or --manifest, not both")
        if self.manifest:
            return read_manifest(self.manifest)
        return parse_species(self.species) if self.species else bundled_species()

    def model_config(self) -> MambaConfig:
        if self.init_from:
            return check_dna_model(self.init_from, "dna-lm")["config"]
        return MambaConfig.from_preset(self.model, **{"vocab_size": VOCAB_SIZE, **self.model_overrides})

    def split_kwargs(self) -> dict[str, Any]:
        return {"split": self.split, "valid_fraction": self.valid_fraction, "test_fraction": self.test_fraction,
                "valid_records": list(self.valid_records), "test_records": list(self.test_records)}


@dataclass
class ClassifyTrainResult:
    valid_accuracy: float  # of the exported weights
    test: dict  # classification_report of the test windows
    model_dir: Path
    run_dir: Path
    steps: int  # steps trained
    exported_step: int  # the step the exported weights are from (the best validation's, or the last)


def train_classifier(cfg: ClassifyConfig, log: Callable[[str], None] | None = None) -> ClassifyTrainResult:
    """Train (or resume) a species classifier as `cfg` says, then report on the fixed test windows
    (RUN_DIR/test/: metrics.json, confusion_matrix.json and .png) and export RUN_DIR/model.

    On several devices every rank trains; rank 0 alone logs, runs the test pass and writes the files,
    the other ranks return once training ends (validation accuracy as rank 0, `test` empty).
    """
    if cfg.pooling not in POOLINGS:
        raise DnaInputError(f"pooling must be one of {', '.join(POOLINGS)}, got {cfg.pooling!r}")
    if cfg.head_norm not in HEAD_NORMS:
        raise DnaInputError(f"head_norm must be one of {', '.join(HEAD_NORMS)}, got {cfg.head_norm!r}")
    cfg.check_common()  # before reading any data
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    species = cfg.load_species()
    genomes = SpeciesGenomes(species, **cfg.split_kwargs())
    genomes.check_length(cfg.seq_len)
    model_config = cfg.model_config()
    module = ClassifierModule(model_config.to_dict(), len(species), cfg.pooling, cfg.dropout, cfg.head_norm,
                              **cfg.optimizer_kwargs())
    if cfg.init_from:
        module.model.backbone.load_state_dict(from_pretrained(cfg.init_from).backbone.state_dict())
    schedule = length_schedule(cfg.seq_len, cfg.warmup_start_len, cfg.warmup_stage_steps)
    batches = ClassifyBatches(genomes, schedule, cfg.batch_size * cfg.seq_len, cfg.seed, cfg.max_n_frac,
                              cfg.rc_augment, cfg.soft_mask,
                              first_step=global_step(module))
    valid = WindowSet(genomes, genomes.fixed_windows("valid", cfg.seq_len, cfg.eval_windows, cfg.seed,
                                                     cfg.max_n_frac, cfg.soft_mask), cfg.soft_mask)
    eval_batch = cfg.eval_batch_size or cfg.batch_size
    if log is not None and is_global_zero():
        origin = f"from {cfg.init_from}" if cfg.init_from else f"{cfg.model}, from scratch"
        log(f"{len(species)} species ({', '.join(genomes.names)}); {origin} ({model_config.n_layer} x "
            f"{model_config.d_model}); seq_len {cfg.seq_len}, batch {cfg.batch_size}, {cfg.max_steps} steps; "
            f"{len(valid)} validation windows")
    fitted = cfg.fit(module, batches, valid, cfg.eval_batch_size, "val/acc", mode="max")
    run_dir = Path(cfg.out)
    if not fitted.trainer.is_global_zero:
        return ClassifyTrainResult(fitted.metric, {}, run_dir / "model", run_dir, fitted.steps, fitted.step)
    # Lightning hands the module back on the CPU after fit: the test pass goes back to the accelerator.
    device = torch.device(fitted.trainer.strategy.root_device)
    model = module.model.to(device).eval()
    test_windows = genomes.fixed_windows("test", cfg.seq_len, cfg.eval_windows, cfg.seed, cfg.max_n_frac,
                                         cfg.soft_mask)
    report = _report(model, WindowSet(genomes, test_windows, cfg.soft_mask), genomes.names, eval_batch, device)
    write_report(report, run_dir / "test")
    metadata = {"task": "dna-classify", "classes": genomes.names, "soft_mask": cfg.soft_mask,
                "seq_len": cfg.seq_len, "species": {s.name: list(s.fasta) for s in species}, **cfg.split_kwargs(),
                "eval_windows": cfg.eval_windows, "max_n_frac": cfg.max_n_frac, "seed": cfg.seed,
                "init_from": cfg.init_from, **fitted.metadata(), "valid_accuracy": fitted.metric,
                "test_accuracy": report["accuracy"]}
    model_dir = save_pretrained(model.cpu(), run_dir / "model", metadata=metadata)
    return ClassifyTrainResult(fitted.metric, report, model_dir, run_dir, fitted.steps, fitted.step)


@torch.no_grad()
def predict_proba(model: MambaClassifier, ids: torch.Tensor, rc_average: bool = False) -> torch.Tensor:
    """ids: (batch, L) on the model's device -> class probabilities (batch, num_classes), float32.

    With `rc_average`, the mean of the probabilities of the window and of its reverse complement.
    """
    device_type = ids.device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=device_type == "cuda"):
        probs = model(ids).float().softmax(-1)
        if rc_average:
            probs = (probs + model(reverse_complement(ids)).float().softmax(-1)) / 2
    return probs


def _report(model: MambaClassifier, windows: WindowSet, classes: list[str], batch_size: int,
            device: torch.device, rc_average: bool = False, label_map: list[int] | None = None) -> dict:
    labels, predicted = [], []
    for ids, label in DataLoader(windows, batch_size=batch_size):
        predicted.append(predict_proba(model, ids.to(device), rc_average).argmax(-1).cpu())
        labels.append(label if label_map is None else torch.tensor(label_map)[label])
    return classification_report(torch.cat(labels), torch.cat(predicted), classes)


def _metadata_species(model_dir: str | Path, metadata: dict) -> list[Species]:
    listed = metadata.get("species") or {}
    for name, files in listed.items():
        for path in files:
            if not Path(path).is_file():
                raise DnaInputError(f"{model_dir}: species {name}'s training file {path} is gone; pass --species "
                                    "or --manifest")
    if not listed:
        raise DnaInputError(f"{model_dir}: the model does not list its training files; pass --species or --manifest")
    return [Species(name, tuple(files)) for name, files in listed.items()]


def evaluate_classifier(model_dir: str | Path, species: list[str] | None = None, manifest: str | None = None,
                        split: str | None = None, seq_len: int | None = None, windows_per_species: int | None = None,
                        rc_average: bool = False, batch_size: int = 8, out: str | Path | None = None,
                        device: str | None = None) -> dict:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix on fixed windows.

    Without `species`/`manifest`: the model's own training files and its test split (the very
    windows training reported on). With files: every record (`split` "all"), unless `split` says
    otherwise; species names must be among the model's classes. `out`: a folder for metrics.json,
    confusion_matrix.json and confusion_matrix.png.
    """
    model, metadata = load_dna_model(model_dir, "dna-classify", device or default_device())
    classes = list(metadata.get("classes") or [])
    if len(classes) != model.num_classes:
        raise DnaInputError(f"{model_dir}: metadata names {len(classes)} classes, the model has {model.num_classes}")
    if species and manifest:
        raise DnaInputError("give --species or --manifest, not both")
    given = read_manifest(manifest) if manifest else parse_species(species) if species else None
    chosen = given or _metadata_species(model_dir, metadata)
    unknown = [s.name for s in chosen if s.name not in classes]
    if unknown:
        raise DnaInputError(f"unknown species {', '.join(unknown)}; the model's classes are {', '.join(classes)}")
    split = split or ("all" if given else "test")
    if split not in ("train", "valid", "test", "all"):
        raise DnaInputError(f"--split must be train, valid, test or all, got {split!r}")
    kwargs = {k: metadata[k] for k in ("valid_fraction", "test_fraction", "valid_records", "test_records")
              if k in metadata}
    genomes = SpeciesGenomes(chosen, "all" if split == "all" else metadata.get("split", "region"), **kwargs)
    part = "test" if split == "all" else split
    seq_len = int(metadata.get("seq_len", 1024)) if seq_len is None else seq_len
    if seq_len < 1:
        raise DnaInputError(f"--seq-len must be >= 1, got {seq_len}")
    genomes.check_length(seq_len, (part,))
    count = windows_per_species or int(metadata.get("eval_windows", 32))
    seed = int(metadata.get("seed", 0))
    soft_mask = metadata.get("soft_mask", "base")
    windows = genomes.fixed_windows(part, seq_len, count, seed, float(metadata.get("max_n_frac", 0.1)), soft_mask)
    label_map = [classes.index(name) for name in genomes.names]
    device_ = next(model.parameters()).device
    report = _report(model, WindowSet(genomes, windows, soft_mask), classes, batch_size, device_, rc_average,
                     label_map)
    report.update(split=split, seq_len=seq_len, rc_average=rc_average)
    if out is not None:
        report["files"] = [str(p) for p in write_report(report, out)]
    return report


def _tiles(region: Interval, window: int, stride: int) -> list[Interval]:
    """Windows covering `region`: every `stride` bases, plus one flush with the end if bases are left
    over; a region shorter than `window` is one (shorter) window."""
    if region.length <= window:
        return [region]
    starts = list(range(region.start, region.end - window + 1, stride))
    if starts[-1] + window < region.end:
        starts.append(region.end - window)
    return [Interval(region.name, s, s + window) for s in starts]


def _batched(lengths: list[int], batch_size: int) -> Iterable[list[int]]:
    """Indices grouped into batches of equal length: no padding, which a pooled head would see."""
    batch: list[int] = []
    for k in sorted(range(len(lengths)), key=lambda k: (lengths[k], k)):
        if batch and (len(batch) == batch_size or lengths[batch[0]] != lengths[k]):
            yield batch
            batch = []
        batch.append(k)
    if batch:
        yield batch


def predict_species(model_dir: str | Path, fasta: list[str], out: str | Path, bed: str | None = None,
                    window: int | None = None, stride: int | None = None, per: str = "auto",
                    rc_average: bool = False, batch_size: int = 8, device: str | None = None,
                    on_window: Callable[[int], None] | None = None) -> dict:
    """Species probabilities for windows of every record (or BED interval), written as a TSV.

    Columns: name, start, end (0-based, half-open), windows, predicted, then p_<species> for every
    class. per="window": one row per window (`window` bases, default the training length, every
    `stride` bases, default `window`). per="interval": one row per record or interval with the
    window probabilities averaged. "auto": per interval with a BED file, per window without.
    """
    out = Path(out)
    if out.suffix != ".tsv":
        raise DnaInputError(f"{out}: predictions are written as TSV: use a .tsv file")
    per = ("interval" if bed else "window") if per == "auto" else per
    if per not in ("window", "interval"):
        raise DnaInputError(f"--per must be window, interval or auto, got {per!r}")
    model, metadata = load_dna_model(model_dir, "dna-classify", device or default_device())
    classes = list(metadata.get("classes") or [f"class{i}" for i in range(model.num_classes)])
    window = window or int(metadata.get("seq_len", 1024))
    stride = stride or window
    if window < 1 or stride < 1 or batch_size < 1:
        raise DnaInputError(f"--window, --stride and --batch-size must be >= 1 (got {window}, {stride}, {batch_size})")
    collection = FastaCollection(fasta)
    regions = regions_of(collection, bed)
    regions = [r for r in regions if r.length > 0]
    if not regions:
        raise DnaInputError(f"{bed or 'FASTA'}: no non-empty records or intervals")
    soft_mask = metadata.get("soft_mask", "base")
    items = [(i, tile) for i, region in enumerate(regions) for tile in _tiles(region, window, stride)]
    probs = torch.zeros(len(items), len(classes))
    device_ = next(model.parameters()).device
    for batch in _batched([tile.length for _, tile in items], batch_size):
        tiles = [items[k][1] for k in batch]
        ids = np.stack([encode(collection.fetch(t.name, t.start, t.end), soft_mask) for t in tiles])
        probs[batch] = predict_proba(model, torch.from_numpy(ids).to(device_), rc_average).cpu()
        if on_window:
            on_window(len(batch))
    if per == "interval":
        owner = torch.tensor([i for i, _ in items])
        summed = torch.zeros(len(regions), len(classes)).index_add_(0, owner, probs)
        counts = torch.bincount(owner, minlength=len(regions))
        rows = [(r, int(counts[i]), summed[i] / counts[i]) for i, r in enumerate(regions)]
    else:
        rows = [(tile, 1, probs[k]) for k, (_, tile) in enumerate(items)]

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("\t".join(["name", "start", "end", "windows", "predicted", *(f"p_{c}" for c in classes)]) + "\n")
            for region, n, p in rows:
                f.write("\t".join([region.name, str(region.start), str(region.end), str(n),
                                   classes[int(p.argmax())], *(f"{v:.6g}" for v in p.tolist())]) + "\n")

    atomic_write(out, write)
    return {"rows": len(rows), "windows": len(items), "per": per, "window": window, "classes": classes,
            "out": str(out), "rc_average": rc_average}
