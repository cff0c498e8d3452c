"""`mambaseq train dna`: nucleotide-level Mamba LM pretraining on FASTA files, as a Python function.

    from mambaseq.tasks.dna.train import DnaTrainConfig, train_dna
    result = train_dna(DnaTrainConfig.from_recipe("tiny-cpu", fasta=["genome.fa.gz"], out="runs/x"))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import ClassVar

import lightning as L

from ...checkpoint import save_pretrained
from ...config import MambaConfig
from ...training.data import length_schedule
from ...training.lm_module import CausalLMModule
from ...training.trainer import ChunkedTraining, TrainRecipe, global_step, is_global_zero
from .fasta import DnaInputError, FastaCollection, read_bed
from .tokenizer import VOCAB_SIZE, DnaTokenizer
from .windows import TrainBatches, ValidWindows, WindowSampler, split_regions


def bundled_genome() -> list[str]:
    """The three yeast chromosome I sequences shipped in the package (see data/SOURCE.md)."""
    folder = resources.files("mambaseq.tasks.dna") / "data"
    return sorted(str(p) for p in folder.iterdir() if p.name.endswith(".fna.gz"))


@dataclass
class DnaTrainConfig(ChunkedTraining, TrainRecipe):
    """Every field can be set in a recipe YAML and overridden from the command line."""

    RECIPES: ClassVar[tuple[str, ...]] = ("tiny-cpu", "hg38-1.4m", "hg38-7m")
    RECIPE_PACKAGE: ClassVar[str] = "mambaseq.tasks.dna"
    input_error: ClassVar[type[Exception]] = DnaInputError

    fasta: list[str] | None = None  # None: the bundled yeast genome
    bed: str | None = None
    bed_split_column: int | None = None
    out: str = "runs/dna"
    split: str = "region"
    valid_fraction: float = 0.05
    valid_records: list[str] = field(default_factory=list)
    max_n_frac: float = 0.1
    rc_augment: bool = True
    soft_mask: str = "base"
    max_val_windows: int | None = 64
    def model_config(self) -> MambaConfig:
        return MambaConfig.from_preset(self.model, **{"vocab_size": VOCAB_SIZE, **self.model_overrides})


@dataclass
class DnaTrainResult:
    valid_bits_per_base: float  # of the exported weights
    model_dir: Path
    run_dir: Path
    steps: int  # steps trained
    exported_step: int  # the step the exported weights are from (the best validation's, or the last)


def train_dna(cfg: DnaTrainConfig, log: Callable[[str], None] | None = None) -> DnaTrainResult:
    """Train (or resume) a DNA LM as `cfg` says; returns validation bits/base and the model folder.

    `log` receives a one-line summary once the data is checked and training starts.
    On several devices every rank runs this; rank 0 alone logs and writes the model folder, the other
    ranks return the same figures once training ends.
    """
    cfg.check_common()  # before reading any data
    cfg.check_chunk_tokens()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    fasta_paths = cfg.fasta or bundled_genome()
    fasta = FastaCollection(fasta_paths)
    intervals = read_bed(cfg.bed, fasta, cfg.bed_split_column) if cfg.bed else None
    regions = split_regions(fasta, intervals, cfg.split, cfg.valid_fraction, cfg.valid_records)
    model_config = cfg.model_config()
    module = CausalLMModule(model_config.to_dict(), **cfg.optimizer_kwargs(), chunk_tokens=cfg.chunk_tokens)
    sampler = WindowSampler(fasta, regions.train, cfg.max_n_frac, cfg.rc_augment, cfg.soft_mask)
    schedule = length_schedule(cfg.seq_len, cfg.warmup_start_len, cfg.warmup_stage_steps)
    train_batches = TrainBatches(sampler, schedule, cfg.batch_size * cfg.seq_len, cfg.seed,
                                 first_step=global_step(module))
    valid = ValidWindows(fasta, regions.valid, cfg.seq_len, cfg.max_val_windows, cfg.max_n_frac, cfg.soft_mask,
                         cfg.seed)
    if log is not None and is_global_zero():
        data = ", ".join(map(str, cfg.fasta)) if cfg.fasta else "bundled yeast chromosome I (3 species)"
        log(f"{describe(cfg)}; {len(fasta.records)} records from {data}; {len(valid)} validation windows")
    fitted = cfg.fit(module, train_batches, valid, None, "val/bits_per_base")
    run_dir = Path(cfg.out)
    if not fitted.trainer.is_global_zero:
        return DnaTrainResult(fitted.metric, run_dir / "model", run_dir, fitted.steps, fitted.step)
    metadata = {"task": "dna-lm", **DnaTokenizer(cfg.soft_mask).to_dict(), "seq_len": cfg.seq_len,
                "fasta": [str(p) for p in fasta_paths], **fitted.metadata(),
                "valid_bits_per_base": fitted.metric}
    model_dir = save_pretrained(module.model.cpu(), run_dir / "model", metadata=metadata)
    return DnaTrainResult(fitted.metric, model_dir, run_dir, fitted.steps, fitted.step)


def describe(cfg: DnaTrainConfig) -> str:
    mc = cfg.model_config()
    devices = "" if cfg.devices == 1 and cfg.num_nodes == 1 else \
        f" over {cfg.devices} devices x {cfg.num_nodes} nodes"
    return (f"{cfg.model} ({mc.n_layer} x {mc.d_model}), seq_len {cfg.seq_len}{cfg.chunk_description()}, "
            f"batch {cfg.batch_size}{devices}, "
            f"{cfg.max_steps} steps, {math.ceil(cfg.max_steps * cfg.batch_size * cfg.seq_len / 1e6)}M tokens")
