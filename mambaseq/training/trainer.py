"""What every training command shares: the recipe fields, and one Lightning run built from them
(step-based validation, atomic checkpoints keeping the last k plus last.ckpt for --resume, per-step
seeding so a resumed run matches an uninterrupted one, a guard against NaN/inf losses and gradients,
CSV and TensorBoard logs, a Rich progress bar)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ..recipe import Recipe
from .checkpoint_io import AtomicCheckpointIO
from .guards import NONFINITE_MODES, NonFiniteGuard, StepSeed


@dataclass
class TrainRecipe(Recipe):
    """The fields every training command shares: model, schedule, optimizer, trainer, run folder."""

    model: str = "tiny"  # a MambaConfig preset
    model_overrides: dict[str, Any] = field(default_factory=dict)
    out: str = "runs/run"
    seq_len: int = 1024
    warmup_start_len: int | None = None  # sequence-length warmup from this length, doubling
    warmup_stage_steps: int = 100
    batch_size: int = 8  # windows per step at the full length (tokens per step stay constant)
    max_steps: int = 300
    max_minutes: float | None = None  # wall-clock limit: stop there (then validate and export as at max_steps)
    lr: float = 8e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    lr_warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    checkpoint_activations: bool = False  # recompute each block in backward (long contexts)
    num_workers: int = 0  # data-loader processes making training batches (the same batches for any number)
    val_every: int = 100
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    precision: str = "auto"  # bf16-mixed on GPU, 32-true on CPU
    accelerator: str = "auto"
    devices: int | str = "auto"
    seed: int = 0
    on_nonfinite: str = "stop"  # a NaN/inf loss or gradient: stop the run (naming the step), or "skip" the step
    resume: bool = False
    progress: bool = True

    def optimizer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the Lightning modules' optimizer and schedule."""
        return {"lr": self.lr, "weight_decay": self.weight_decay, "betas": self.betas,
                "warmup_steps": self.lr_warmup_steps, "total_steps": self.max_steps,
                "min_lr_ratio": self.min_lr_ratio, "checkpoint_activations": self.checkpoint_activations}

    def trainer(self, run_dir: Path) -> L.Trainer:
        checkpoints = L.pytorch.callbacks.ModelCheckpoint(
            dirpath=run_dir / "checkpoints", filename="step{step:07d}", auto_insert_metric_name=False,
            every_n_train_steps=self.checkpoint_every, save_top_k=self.keep_checkpoints, monitor="step", mode="max",
            save_last=True)
        callbacks = [checkpoints, L.pytorch.callbacks.LearningRateMonitor("step"), StepSeed(self.seed),
                     NonFiniteGuard(self.on_nonfinite)]
        if self.progress:
            callbacks.append(L.pytorch.callbacks.RichProgressBar(leave=True))
        loggers = [L.pytorch.loggers.CSVLogger(run_dir, name="logs", version="")]
        if importlib.util.find_spec("tensorboardX") or importlib.util.find_spec("tensorboard"):
            loggers.append(L.pytorch.loggers.TensorBoardLogger(run_dir, name="tensorboard", version=""))
        return L.Trainer(
            max_steps=self.max_steps, val_check_interval=min(self.val_every, self.max_steps),
            max_time=None if self.max_minutes is None else timedelta(minutes=self.max_minutes),
            check_val_every_n_epoch=None, precision=resolve_precision(self.precision, self.accelerator),
            accelerator=self.accelerator, devices=self.devices, gradient_clip_val=self.grad_clip, callbacks=callbacks,
            logger=loggers, plugins=[AtomicCheckpointIO()], enable_progress_bar=self.progress,
            enable_model_summary=False, log_every_n_steps=10, num_sanity_val_steps=0, default_root_dir=run_dir)

    def fit(self, module: L.LightningModule, train_data: Dataset, valid_data: Dataset, valid_batch_size: int,
            metric: str) -> tuple[L.Trainer, float]:
        """Train `module` in the run folder `out` (train_config.json written there; resumed from
        last.ckpt when `resume`), then return the trainer and the validation `metric` at the last step
        (one more validation pass when the last step was not a validation step)."""
        if self.on_nonfinite not in NONFINITE_MODES:
            raise self.input_error(f"on_nonfinite must be one of {', '.join(NONFINITE_MODES)}, "
                                   f"got {self.on_nonfinite!r}")
        run_dir = Path(self.out)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "train_config.json").write_text(
            json.dumps(dataclasses.asdict(self), indent=2, default=str) + "\n")
        last = run_dir / "checkpoints" / "last.ckpt"
        if self.resume and not last.exists():
            raise self.input_error(f"--resume: no checkpoint at {last}")
        if self.resume:
            keep_earlier_logs(run_dir / "logs" / "metrics.csv")
            for partial in last.parent.glob(".*.tmp"):  # a checkpoint write the crash cut short
                partial.unlink()
        trainer = self.trainer(run_dir)
        valid_loader = DataLoader(valid_data, batch_size=valid_batch_size)
        with warnings.catch_warnings():
            if self.resume:  # expected then; and keep_earlier_logs moved the log Lightning warns it deletes
                warnings.filterwarnings("ignore", r"(Experiment logs|Checkpoint) directory .* exists and is not empty")
            trainer.fit(module, train_dataloaders=DataLoader(train_data, batch_size=None,
                                                             num_workers=self.num_workers),
                        val_dataloaders=valid_loader, ckpt_path=str(last) if self.resume else None)
        value = trainer.callback_metrics.get(metric)
        if value is None or trainer.global_step % max(1, self.val_every):
            trainer.validate(module, valid_loader, verbose=False)
            value = trainer.callback_metrics[metric]
        return trainer, float(value)


def keep_earlier_logs(metrics: Path) -> None:
    """Lightning's CSV logger deletes an existing metrics.csv: keep it as metrics.N.csv (first free N)."""
    if metrics.exists():
        n = 1
        while metrics.with_suffix(f".{n}.csv").exists():
            n += 1
        metrics.rename(metrics.with_suffix(f".{n}.csv"))


def resolve_precision(precision: str, accelerator: str) -> str:
    """"auto": bf16-mixed on a GPU, 32-true on the CPU."""
    if precision != "auto":
        return precision
    return "bf16-mixed" if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda") else "32-true"


def global_step(module: L.LightningModule) -> Callable[[], int]:
    """The step a run starts (or resumes) at, read when the training stream begins."""
    return lambda: module.trainer.global_step if module._trainer else 0
