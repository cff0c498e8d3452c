"""`mambaseq train dna`: nucleotide-level Mamba LM pretraining on FASTA files, as a Python function.

    from mambaseq.tasks.dna.train import DnaTrainConfig, train_dna
    result = train_dna(DnaTrainConfig.from_recipe("tiny-cpu", fasta=["genome.fa.gz"], out="runs/x"))
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from torch.utils.data import DataLoader

from ...checkpoint import save_pretrained
from ...config import MambaConfig
from ...training.checkpoint_io import AtomicCheckpointIO
from ...training.lm_module import CausalLMModule
from .fasta import DnaInputError, FastaCollection, read_bed
from .tokenizer import VOCAB_SIZE, DnaTokenizer
from .windows import TrainBatches, ValidWindows, WindowSampler, length_schedule, split_regions

RECIPES = ("tiny-cpu", "hg38-1.4m", "hg38-7m")


def bundled_genome() -> list[str]:
    """The three yeast chromosome I sequences shipped in the package (see data/SOURCE.md)."""
    folder = resources.files("mambaseq.tasks.dna") / "data"
    return sorted(str(p) for p in folder.iterdir() if p.name.endswith(".fna.gz"))


@dataclass
class DnaTrainConfig:
    """Every field can be set in a recipe YAML and overridden from the command line."""

    model: str = "tiny"  # a MambaConfig preset
    model_overrides: dict[str, Any] = field(default_factory=dict)
    fasta: list[str] | None = None  # None: the bundled yeast genome
    bed: str | None = None
    bed_split_column: int | None = None
    out: str = "runs/dna"
    seq_len: int = 1024
    warmup_start_len: int | None = None  # sequence-length warmup from this length, doubling
    warmup_stage_steps: int = 100
    batch_size: int = 8  # windows per step at the full length (tokens per step stay constant)
    max_steps: int = 300
    lr: float = 8e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    lr_warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    checkpoint_activations: bool = False  # recompute each block in backward (long contexts)
    split: str = "region"
    valid_fraction: float = 0.05
    valid_records: list[str] = field(default_factory=list)
    max_n_frac: float = 0.1
    rc_augment: bool = True
    soft_mask: str = "base"
    val_every: int = 100
    max_val_windows: int | None = 64
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    precision: str = "auto"  # bf16-mixed on GPU, 32-true on CPU
    accelerator: str = "auto"
    devices: int | str = "auto"
    seed: int = 0
    resume: bool = False
    progress: bool = True

    @classmethod
    def from_recipe(cls, recipe: str | Path, **overrides: Any) -> DnaTrainConfig:
        path = Path(recipe)
        if not path.suffix:
            if recipe not in RECIPES:
                raise DnaInputError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)} or a YAML file")
            text = (resources.files("mambaseq.tasks.dna") / "recipes" / f"{recipe}.yaml").read_text()
        else:
            if not path.is_file():
                raise DnaInputError(f"{path}: recipe file not found")
            text = path.read_text()
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise DnaInputError(f"{recipe}: invalid YAML ({' '.join(str(err).split())})") from None
        return cls.from_dict({**values, **{k: v for k, v in overrides.items() if v is not None}}, str(recipe))

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> DnaTrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise DnaInputError(f"{where}: unknown field(s) {', '.join(unknown)}")
        return cls(**values)

    def model_config(self) -> MambaConfig:
        return MambaConfig.from_preset(self.model, **{"vocab_size": VOCAB_SIZE, **self.model_overrides})


@dataclass
class DnaTrainResult:
    valid_bits_per_base: float
    model_dir: Path
    run_dir: Path
    steps: int


def _precision(cfg: DnaTrainConfig) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16-mixed" if torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda") else "32-true"


def train_dna(cfg: DnaTrainConfig, log: Callable[[str], None] | None = None) -> DnaTrainResult:
    """Train (or resume) a DNA LM as `cfg` says; returns validation bits/base and the model folder.

    `log` receives a one-line summary once the data is checked and training starts.
    """
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    fasta_paths = cfg.fasta or bundled_genome()
    fasta = FastaCollection(fasta_paths)
    intervals = read_bed(cfg.bed, fasta, cfg.bed_split_column) if cfg.bed else None
    regions = split_regions(fasta, intervals, cfg.split, cfg.valid_fraction, cfg.valid_records)
    model_config = cfg.model_config()
    module = CausalLMModule(model_config.to_dict(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas,
                            warmup_steps=cfg.lr_warmup_steps, total_steps=cfg.max_steps, min_lr_ratio=cfg.min_lr_ratio,
                            checkpoint_activations=cfg.checkpoint_activations)
    sampler = WindowSampler(fasta, regions.train, cfg.max_n_frac, cfg.rc_augment, cfg.soft_mask)
    schedule = length_schedule(cfg.seq_len, cfg.warmup_start_len, cfg.warmup_stage_steps)
    train_batches = TrainBatches(sampler, schedule, cfg.batch_size * cfg.seq_len, cfg.seed,
                                 first_step=lambda: module.trainer.global_step if module._trainer else 0)
    valid = ValidWindows(fasta, regions.valid, cfg.seq_len, cfg.max_val_windows, cfg.max_n_frac, cfg.soft_mask,
                         cfg.seed)
    if log is not None:
        data = ", ".join(map(str, cfg.fasta)) if cfg.fasta else "bundled yeast chromosome I (3 species)"
        log(f"{describe(cfg)}; {len(fasta.records)} records from {data}; {len(valid)} validation windows")
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2, default=str) + "\n")
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="step{step:07d}", auto_insert_metric_name=False,
        every_n_train_steps=cfg.checkpoint_every, save_top_k=cfg.keep_checkpoints, monitor="step", mode="max",
        save_last=True)
    callbacks = [checkpoints, L.pytorch.callbacks.LearningRateMonitor("step")]
    if cfg.progress:
        callbacks.append(L.pytorch.callbacks.RichProgressBar(leave=True))
    loggers = [L.pytorch.loggers.CSVLogger(run_dir, name="logs", version="")]
    if importlib.util.find_spec("tensorboardX") or importlib.util.find_spec("tensorboard"):
        loggers.append(L.pytorch.loggers.TensorBoardLogger(run_dir, name="tensorboard", version=""))
    trainer = L.Trainer(
        max_steps=cfg.max_steps, val_check_interval=min(cfg.val_every, cfg.max_steps), check_val_every_n_epoch=None,
        precision=_precision(cfg), accelerator=cfg.accelerator, devices=cfg.devices,
        gradient_clip_val=cfg.grad_clip, callbacks=callbacks, logger=loggers, plugins=[AtomicCheckpointIO()],
        enable_progress_bar=cfg.progress, enable_model_summary=False, log_every_n_steps=10, num_sanity_val_steps=0,
        default_root_dir=run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt_path = str(last) if cfg.resume and last.exists() else None
    if cfg.resume and ckpt_path is None:
        raise DnaInputError(f"--resume: no checkpoint at {last}")
    trainer.fit(module, train_dataloaders=DataLoader(train_batches, batch_size=None),
                val_dataloaders=DataLoader(valid, batch_size=max(1, cfg.batch_size)), ckpt_path=ckpt_path)
    bits = trainer.callback_metrics.get("val/bits_per_base")
    if bits is None or trainer.global_step % max(1, cfg.val_every):
        trainer.validate(module, DataLoader(valid, batch_size=max(1, cfg.batch_size)), verbose=False)
        bits = trainer.callback_metrics["val/bits_per_base"]
    metadata = {"task": "dna-lm", **DnaTokenizer(cfg.soft_mask).to_dict(), "seq_len": cfg.seq_len,
                "fasta": [str(p) for p in fasta_paths], "steps": trainer.global_step,
                "valid_bits_per_base": float(bits)}
    model_dir = save_pretrained(module.model.cpu(), run_dir / "model", metadata=metadata)
    return DnaTrainResult(float(bits), model_dir, run_dir, trainer.global_step)


def describe(cfg: DnaTrainConfig) -> str:
    mc = cfg.model_config()
    return (f"{cfg.model} ({mc.n_layer} x {mc.d_model}), seq_len {cfg.seq_len}, batch {cfg.batch_size}, "
            f"{cfg.max_steps} steps, {math.ceil(cfg.max_steps * cfg.batch_size * cfg.seq_len / 1e6)}M tokens")
