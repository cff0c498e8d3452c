"""The Lightning Trainer every training command uses: step-based validation, atomic checkpoints
(keep the last k, plus last.ckpt for --resume), CSV and TensorBoard logs, a Rich progress bar."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

from ..recipe import Recipe
from .checkpoint_io import AtomicCheckpointIO


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
    resume: bool = False
    progress: bool = True

    def optimizer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the Lightning modules' optimizer and schedule."""
        return {"lr": self.lr, "weight_decay": self.weight_decay, "betas": self.betas,
                "warmup_steps": self.lr_warmup_steps, "total_steps": self.max_steps,
                "min_lr_ratio": self.min_lr_ratio, "checkpoint_activations": self.checkpoint_activations}

    def trainer(self, run_dir: Path) -> L.Trainer:
        return make_trainer(run_dir, self.max_steps, self.val_every, self.checkpoint_every, self.keep_checkpoints,
                            self.precision, self.accelerator, self.devices, self.grad_clip, self.progress)


def resolve_precision(precision: str, accelerator: str) -> str:
    """"auto": bf16-mixed on a GPU, 32-true on the CPU."""
    if precision != "auto":
        return precision
    return "bf16-mixed" if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda") else "32-true"


def make_trainer(run_dir: Path, max_steps: int, val_every: int, checkpoint_every: int, keep_checkpoints: int,
                 precision: str = "auto", accelerator: str = "auto", devices: int | str = "auto",
                 grad_clip: float = 1.0, progress: bool = True) -> L.Trainer:
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="step{step:07d}", auto_insert_metric_name=False,
        every_n_train_steps=checkpoint_every, save_top_k=keep_checkpoints, monitor="step", mode="max",
        save_last=True)
    callbacks = [checkpoints, L.pytorch.callbacks.LearningRateMonitor("step")]
    if progress:
        callbacks.append(L.pytorch.callbacks.RichProgressBar(leave=True))
    loggers = [L.pytorch.loggers.CSVLogger(run_dir, name="logs", version="")]
    if importlib.util.find_spec("tensorboardX") or importlib.util.find_spec("tensorboard"):
        loggers.append(L.pytorch.loggers.TensorBoardLogger(run_dir, name="tensorboard", version=""))
    return L.Trainer(
        max_steps=max_steps, val_check_interval=min(val_every, max_steps), check_val_every_n_epoch=None,
        precision=resolve_precision(precision, accelerator), accelerator=accelerator, devices=devices,
        gradient_clip_val=grad_clip, callbacks=callbacks, logger=loggers, plugins=[AtomicCheckpointIO()],
        enable_progress_bar=progress, enable_model_summary=False, log_every_n_steps=10, num_sanity_val_steps=0,
        default_root_dir=run_dir)


def resume_path(run_dir: Path, resume: bool, error: type[Exception] = ValueError) -> str | None:
    """RUN_DIR/checkpoints/last.ckpt when resuming (an error if there is none), else None."""
    if not resume:
        return None
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.exists():
        raise error(f"--resume: no checkpoint at {last}")
    return str(last)
