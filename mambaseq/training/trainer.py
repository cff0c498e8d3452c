"""What every training command shares: the recipe fields, and one Lightning run built from them
(step-based validation, atomic checkpoints keeping the last k plus last.ckpt for --resume, per-step
seeding so a resumed run matches an uninterrupted one, a guard against NaN/inf losses and gradients,
CSV and TensorBoard logs, a Rich progress bar), on one device or several (devices x num_nodes ranks,
the global batch shared out between ranks and accumulated micro-steps, see StepStream).
"""

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
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from ..recipe import Recipe
from .checkpoint_io import AtomicCheckpointIO
from .chunked import valid_chunk_tokens
from .data import EvenSplit, StepStream
from .guards import NONFINITE_MODES, NonFiniteGuard, StepSeed
from .optim import mark_weight_decay

# Lightning strategies a recipe may name. "ddp" launches one process per device from the command
# (or joins the processes torchrun or SLURM started); spawn-based strategies are left out: they pickle
# the module and data streams, whose step callbacks are closures.
STRATEGIES = ("auto", "ddp", "fsdp")


@dataclass
class ChunkedTraining:
    """The recipe field of the language-model trainings that can run in chunks (training/chunked.py)."""

    # Train at most this many tokens at a time (windows cut along the sequence with the states
    # carried, or a few windows at a time): the exact gradients in one chunk's memory. None: the
    # whole micro-batch at once.
    chunk_tokens: int | None = None

    def check_chunk_tokens(self) -> None:
        """A one-line input error (the command's error type) for a value the modules would refuse."""
        if not valid_chunk_tokens(self.chunk_tokens):
            raise self.input_error(f"chunk_tokens must be a positive integer (tokens per chunk), "
                                   f"got {self.chunk_tokens!r}")

    def chunk_description(self) -> str:
        return f" in chunks of {self.chunk_tokens} tokens" if self.chunk_tokens else ""


@dataclass
class TrainRecipe(Recipe):
    """The fields every training command shares: model, schedule, optimizer, trainer, run folder."""

    model: str = "tiny"  # a MambaConfig preset
    model_overrides: dict[str, Any] = field(default_factory=dict)
    out: str = "runs/run"
    seq_len: int = 1024
    warmup_start_len: int | None = None  # sequence-length warmup from this length, doubling
    warmup_stage_steps: int = 100
    batch_size: int = 8  # windows per optimizer step at the full length, over all devices (global batch)
    micro_batch_size: int | None = None  # windows per device per micro-step; default batch_size / devices
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
    # Per machine: a count, -1 or "auto" (all), or GPU ids such as "0,1". One unless asked: several
    # devices share out batch_size, which must then split evenly (see split_batch).
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp (Lightning strategies)
    log_every: int = 10  # steps between rows of logs/metrics.csv
    seed: int = 0
    on_nonfinite: str = "stop"  # a NaN/inf loss or gradient: stop the run (naming the step), or "skip" the step
    resume: bool = False
    progress: bool = True

    def optimizer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the Lightning modules' optimizer and schedule."""
        return {"lr": self.lr, "weight_decay": self.weight_decay, "betas": self.betas,
                "warmup_steps": self.lr_warmup_steps, "total_steps": self.max_steps,
                "min_lr_ratio": self.min_lr_ratio, "checkpoint_activations": self.checkpoint_activations}

    def check_distributed(self) -> None:
        """One-line errors for devices, num_nodes, strategy and micro_batch_size, before any process starts."""
        if self.strategy not in STRATEGIES:
            raise self.input_error(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        devices = self.devices
        if isinstance(devices, bool):
            devices_ok = False
        elif isinstance(devices, int):
            devices_ok = devices >= 1 or devices == -1
        else:  # "auto", or GPU ids such as "0,1" (Lightning's syntax)
            ids = [d.strip() for d in str(devices).split(",") if d.strip()]
            devices_ok = devices == "auto" or (bool(ids) and all(d.isdigit() for d in ids))
        if not devices_ok:
            raise self.input_error(f"devices must be a count >= 1, -1 (all), 'auto' or GPU ids like '0,1'; "
                                   f"got {self.devices!r}")
        if isinstance(self.num_nodes, bool) or not isinstance(self.num_nodes, int) or self.num_nodes < 1:
            raise self.input_error(f"num_nodes must be an integer >= 1, got {self.num_nodes!r}")
        if self.micro_batch_size is not None and (isinstance(self.micro_batch_size, bool)
                                                  or not isinstance(self.micro_batch_size, int)
                                                  or self.micro_batch_size < 1):
            raise self.input_error(f"micro_batch_size must be an integer >= 1, got {self.micro_batch_size!r}")
        if self.log_every < 1:
            raise self.input_error(f"log_every must be >= 1, got {self.log_every}")

    def split_batch(self, world: int) -> tuple[int, int]:
        """(windows per rank per micro-step at the full length, micro-steps accumulated per optimizer
        step) for `world` ranks: batch_size = world * micro * accumulate windows per optimizer step, so
        tokens per optimizer step do not change with the number of devices. One-line error otherwise."""
        micro = self.micro_batch_size or self.batch_size // world
        if self.batch_size < world or self.batch_size % (world * micro):
            if self.micro_batch_size:
                fits = [m for m in range(1, self.batch_size // world + 1) if self.batch_size % (world * m) == 0]
                hint = (f"micro_batch_size must divide batch_size / {world}: one of {', '.join(map(str, fits))}"
                        if fits else f"use a batch_size that is a multiple of {world * self.micro_batch_size}")
                raise self.input_error(f"batch_size {self.batch_size} does not split into micro-batches of "
                                       f"{self.micro_batch_size} on {world} devices; {hint}")
            raise self.input_error(f"batch_size {self.batch_size} (windows per optimizer step over all devices) "
                                   f"does not split over {world} devices; use a multiple of {world} "
                                   f"({world}, {2 * world}, ...)")
        accumulate = self.batch_size // (world * micro)
        parts = world * accumulate
        # A length warmup changes windows per step (tokens per step stay constant): each stage's windows
        # must split into the same equal shares. Stages double from warmup_start_len, as length_schedule.
        length = self.warmup_start_len
        while length and length < self.seq_len:
            windows = max(1, self.batch_size * self.seq_len // length)
            if windows % parts:
                raise self.input_error(
                    f"at warmup length {length} a step has {windows} windows (batch_size x seq_len / length), "
                    f"which do not split into {parts} equal shares ({world} devices x {accumulate} micro-steps); "
                    "choose a warmup_start_len that divides seq_len by a power of two")
            length *= 2
        return micro, accumulate

    def trainer(self, run_dir: Path) -> L.Trainer:
        self.check_distributed()
        checkpoints = L.pytorch.callbacks.ModelCheckpoint(
            dirpath=run_dir / "checkpoints", filename="step{step:07d}", auto_insert_metric_name=False,
            every_n_train_steps=self.checkpoint_every, save_top_k=self.keep_checkpoints, monitor="step", mode="max",
            save_last=True)
        callbacks = [checkpoints, L.pytorch.callbacks.LearningRateMonitor("step"), StepSeed(self.seed),
                     NonFiniteGuard(self.on_nonfinite)]
        sharded = self.strategy == "fsdp"
        if sharded and self.grad_clip:
            callbacks.append(ShardedClip(self.grad_clip))
        if self.progress:
            callbacks.append(L.pytorch.callbacks.RichProgressBar(leave=True))
        loggers = [L.pytorch.loggers.CSVLogger(run_dir, name="logs", version="")]
        if importlib.util.find_spec("tensorboardX") or importlib.util.find_spec("tensorboard"):
            loggers.append(L.pytorch.loggers.TensorBoardLogger(run_dir, name="tensorboard", version=""))
        trainer = L.Trainer(
            max_steps=self.max_steps, val_check_interval=min(self.val_every, self.max_steps),
            max_time=None if self.max_minutes is None else timedelta(minutes=self.max_minutes),
            check_val_every_n_epoch=None, precision=resolve_precision(self.precision, self.accelerator),
            accelerator=self.accelerator, devices=self.devices, num_nodes=self.num_nodes, strategy=self.strategy,
            # SyncBatchNorm (the classifier head's statistics over the global batch) needs GPUs; on the CPU
            # each rank normalizes over its own share.
            sync_batchnorm=uses_gpu(self.accelerator),
            # Validation data is split by EvenSplit (padding not counted), not by Lightning's
            # DistributedSampler, which pads with repeated windows that would count twice.
            use_distributed_sampler=False,
            gradient_clip_val=None if sharded else self.grad_clip, callbacks=callbacks,
            logger=loggers, plugins=[AtomicCheckpointIO()], enable_progress_bar=self.progress,
            enable_model_summary=False, log_every_n_steps=self.log_every, num_sanity_val_steps=0,
            default_root_dir=run_dir)
        # The number of ranks is known once Lightning has read devices, num_nodes and the cluster
        # environment (torchrun, SLURM); accumulation follows from it. Lightning counts validation
        # intervals in batches (micro-steps), hence the product.
        _, accumulate = self.split_batch(trainer.world_size)
        trainer.accumulate_grad_batches = accumulate
        trainer.val_check_interval = min(self.val_every, self.max_steps) * accumulate
        return trainer

    def fit(self, module: L.LightningModule, train_data: StepStream, valid_data: Dataset,
            valid_batch_size: int | None, metric: str) -> tuple[L.Trainer, float]:
        """Train `module` in the run folder `out` (train_config.json written there; resumed from
        last.ckpt when `resume`), then return the trainer and the validation `metric` at the last step
        (one more validation pass when the last step was not a validation step).

        On several ranks every rank calls this and gets the same metric (reduced over ranks); files
        in the run folder are written by rank 0 only (`trainer.is_global_zero`). `valid_batch_size` is
        per rank; None: the training rows per rank and micro-step (batch_size on one device).
        """
        if self.on_nonfinite not in NONFINITE_MODES:
            raise self.input_error(f"on_nonfinite must be one of {', '.join(NONFINITE_MODES)}, "
                                   f"got {self.on_nonfinite!r}")
        run_dir = Path(self.out)
        run_dir.mkdir(parents=True, exist_ok=True)
        last = run_dir / "checkpoints" / "last.ckpt"
        if self.resume and not last.exists():
            raise self.input_error(f"--resume: no checkpoint at {last}")
        trainer = self.trainer(run_dir)
        micro, accumulate = self.split_batch(trainer.world_size)
        if trainer.is_global_zero:
            resolved = {"world_size": trainer.world_size, "accumulate_grad_batches": accumulate}
            (run_dir / "train_config.json").write_text(
                json.dumps({**dataclasses.asdict(self), **resolved}, indent=2, default=str) + "\n")
            if self.resume:
                keep_earlier_logs(run_dir / "logs" / "metrics.csv")
                for partial in last.parent.glob(".*.tmp"):  # a checkpoint write the crash cut short
                    partial.unlink()
        if trainer.world_size > 1 and not uses_gpu(self.accelerator) and any(
                isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules()):
            rank_zero_warn("on the CPU, batch norm statistics are per rank (SyncBatchNorm needs GPUs)")
        # Modules that take (batch, keep) validation batches (VALIDATION_KEEP) leave padding out; for
        # others, padding windows count (at most one per rank, and only on several ranks).
        valid = EvenSplit(valid_data, mark_padding=getattr(module, "VALIDATION_KEEP", False))
        # Each process learns its rank once its distributed environment is set up (Shard, below).
        trainer.callbacks.append(Shard(train_data, valid, accumulate))
        mark_weight_decay(module)
        full_weights = FullWeights() if self.strategy == "fsdp" else None
        if full_weights is not None:
            trainer.callbacks.append(full_weights)
        valid_loader = DataLoader(valid, batch_size=valid_batch_size or micro)
        with warnings.catch_warnings():
            if self.resume:  # expected then; and keep_earlier_logs moved the log Lightning warns it deletes
                warnings.filterwarnings("ignore", r"(Experiment logs|Checkpoint) directory .* exists and is not empty")
            trainer.fit(module, train_dataloaders=DataLoader(train_data, batch_size=None,
                                                             num_workers=self.num_workers),
                        val_dataloaders=valid_loader, ckpt_path=str(last) if self.resume else None)
        if full_weights is not None:
            full_weights.restore(module)
        value = trainer.callback_metrics.get(metric)
        # A run stopped by max_minutes ends between validations: validate the weights it ends with.
        if value is None or trainer.global_step % max(1, min(self.val_every, self.max_steps)):
            trainer.validate(module, valid_loader, verbose=False)
            value = trainer.callback_metrics[metric]
            if full_weights is not None:  # validate wrapped (and so sharded) the module again
                full_weights.restore(module)
        return trainer, float(value)


class Shard(L.Callback):
    """Tell the training stream and the validation split this process's rank, the number of ranks and
    the micro-steps per optimizer step. In `setup`: it runs in every process after Lightning has set up
    the distributed environment and before any data loader is iterated."""

    def __init__(self, train_data: StepStream, valid_data: EvenSplit, accumulate: int) -> None:
        self.train_data, self.valid_data, self.accumulate = train_data, valid_data, accumulate

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if isinstance(self.train_data, StepStream):
            self.train_data.shard(trainer.global_rank, trainer.world_size, self.accumulate)
        elif trainer.world_size > 1 or self.accumulate > 1:
            raise TypeError(f"training data must be a StepStream to be shared out between ranks and micro-steps, "
                            f"got {type(self.train_data).__name__}")
        self.valid_data.shard(trainer.global_rank, trainer.world_size)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A run resumed with another accumulation (another number of devices): Lightning's batch
        # counters, which place accumulation and validation boundaries (and give batch_idx), go on from
        # the old count (global_step x old accumulation, restored from the checkpoint); shift them to
        # global_step micro-steps of the new one. The data needs nothing: step s's batch does not
        # depend on the number of devices.
        progress = trainer.fit_loop.epoch_loop.batch_progress
        shift = trainer.global_step * self.accumulate - progress.total.ready
        if shift:
            for counter in (progress.total, progress.current):
                counter.ready += shift
                counter.started += shift
                counter.processed += shift
                counter.completed += shift


class ShardedClip(L.Callback):
    """Gradient clipping by the global norm under FSDP, where Lightning's own clipping refuses ("norm"
    is not supported for FSDPPrecision): FSDP's clip_grad_norm_ takes the norm over every rank's shards
    (a collective). It runs after NonFiniteGuard (callbacks run in order) and before the optimizer step."""

    def __init__(self, max_norm: float) -> None:
        self.max_norm = max_norm

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        trainer.strategy.model.clip_grad_norm_(self.max_norm)


class FullWeights(L.Callback):
    """Under FSDP each rank keeps a shard of every weight, the module's own parameters included (as
    1-D views of its shard). At the end of training gather the full weights on every rank (a
    collective) and, with `restore`, put them back into the module: rank 0 then exports as after a
    one-device run, and a later `trainer.validate`, which wraps the module in FSDP again, shards whole
    weights rather than the old shards.
    Tested on two GPUs (tests/training/test_fsdp.py); Lightning runs FSDP on GPUs only, so CI skips it."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] | None = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(trainer.strategy.model, writeback=False):
            self.state = {name: param.detach().clone() for name, param in pl_module.named_parameters()}

    @torch.no_grad()
    def restore(self, module: L.LightningModule) -> None:
        assert self.state is not None
        for name, param in module.named_parameters():
            param.data = self.state[name].to(param.device, param.dtype)


def is_global_zero() -> bool:
    """Whether this process is rank 0 (or the only one): for printing once. Lightning sets the rank
    when a Trainer is made; before that it is read from RANK, LOCAL_RANK or SLURM_PROCID."""
    return getattr(rank_zero_only, "rank", 0) == 0


def uses_gpu(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


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
