"""What every training command shares: the recipe fields, and one Lightning run built from them
(step-based validation, atomic checkpoints keeping the last k plus last.ckpt for --resume and
best.ckpt, the best validation's weights, for the export; optional early stopping; per-step seeding
so a resumed run matches an uninterrupted one, a guard against NaN/inf losses and gradients, CSV and
TensorBoard logs, a Rich progress bar), on one device or several (devices x num_nodes ranks, the
global batch shared out between ranks and accumulated micro-steps, see StepStream).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
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

# Which way a validation metric improves: "min" (bits) or "max" (accuracy).
METRIC_MODES = ("min", "max")


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


@contextlib.contextmanager
def _torch_flags_kept() -> Iterator[None]:
    """Restore on exit the process-wide settings a Trainer built with `deterministic` changes, so a run
    leaves the caller's process (a notebook, the next test) as it found it."""
    algorithms = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas


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
    # Export the weights of the validation with the best metric (checkpoints/best.ckpt; a tie goes to the
    # later step) rather than the last ones.
    export_best: bool = True
    # Stop after this many validations in a row without an improvement of the metric; None: never.
    early_stop_patience: int | None = None
    precision: str = "auto"  # bf16-mixed on GPU, 32-true on CPU
    accelerator: str = "auto"
    # Per machine: a count, -1 or "auto" (all), or GPU ids such as "0,1". One unless asked: several
    # devices share out batch_size, which must then split evenly (see split_batch).
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp (Lightning strategies)
    log_every: int = 10  # steps between rows of logs/metrics.csv
    seed: int = 0
    # Deterministic PyTorch algorithms (Lightning's deterministic=True) for bitwise-repeatable runs on
    # the GPU: slower, and an op that has no deterministic version raises. Our Triton kernels are
    # deterministic either way (tests/kernels/test_determinism.py); without this, same-seed GPU runs
    # differ (0.03 bits/base after 500 steps in benchmarks/RESULTS.md).
    deterministic: bool = False
    on_nonfinite: str = "stop"  # a NaN/inf loss or gradient: stop the run (naming the step), or "skip" the step
    resume: bool = False
    progress: bool = True

    def optimizer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the Lightning modules' optimizer and schedule."""
        return {"lr": self.lr, "weight_decay": self.weight_decay, "betas": self.betas,
                "warmup_steps": self.lr_warmup_steps, "total_steps": self.max_steps,
                "min_lr_ratio": self.min_lr_ratio, "checkpoint_activations": self.checkpoint_activations}

    def check_common(self) -> None:
        """One-line errors for the shared fields no run can use (schedule, optimizer, devices), before
        any data is read."""
        positive = ("seq_len", "batch_size", "max_steps", "val_every", "checkpoint_every", "warmup_stage_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise self.input_error(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.warmup_start_len is not None and self.warmup_start_len < 1:
            raise self.input_error(f"warmup_start_len must be a positive integer or null, "
                                   f"got {self.warmup_start_len!r}")
        for name in ("lr", "weight_decay", "grad_clip", "lr_warmup_steps", "num_workers"):
            if getattr(self, name) < 0:
                raise self.input_error(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise self.input_error(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if len(self.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas):
            raise self.input_error(f"betas must be two numbers in [0, 1), got {list(self.betas)!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise self.input_error(f"max_minutes must be > 0 or null, got {self.max_minutes!r}")
        self.check_distributed()

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
        if self.num_nodes < 1:
            raise self.input_error(f"num_nodes must be an integer >= 1, got {self.num_nodes!r}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
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

    def trainer(self, run_dir: Path, metric: str, mode: str = "min") -> L.Trainer:
        """The Lightning Trainer of a run in `run_dir` that validates (keeps the best weights, stops
        early) by `metric`, which improves downwards (mode "min") or upwards ("max")."""
        self.check_distributed()
        if mode not in METRIC_MODES:
            raise ValueError(f"mode must be one of {', '.join(METRIC_MODES)}, got {mode!r}")
        validate_every = min(self.val_every, self.max_steps)
        # The best before the steps: Lightning keeps the order of checkpoint callbacks, and last.ckpt,
        # written after a validation, must hold the best that validation found.
        checkpoints = [BestCheckpoint(run_dir / "checkpoints", metric, mode)] if self.export_best else []
        checkpoints.append(StepCheckpoints(
            validate_every, dirpath=run_dir / "checkpoints", filename="step{step:07d}", auto_insert_metric_name=False,
            every_n_train_steps=self.checkpoint_every, save_top_k=self.keep_checkpoints, monitor="step", mode="max",
            save_last=True))
        callbacks = [*checkpoints, L.pytorch.callbacks.LearningRateMonitor("step"), StepSeed(self.seed),
                     NonFiniteGuard(self.on_nonfinite)]
        if self.early_stop_patience is not None:
            callbacks.append(EarlyStopping(metric, mode=mode, patience=self.early_stop_patience,
                                           check_on_train_epoch_end=False))
        sharded = self.strategy == "fsdp"
        if sharded and self.grad_clip:
            callbacks.append(ShardedClip(self.grad_clip))
        if self.progress:
            callbacks.append(L.pytorch.callbacks.RichProgressBar(leave=True))
        loggers = [L.pytorch.loggers.CSVLogger(run_dir, name="logs", version="")]
        if importlib.util.find_spec("tensorboardX") or importlib.util.find_spec("tensorboard"):
            loggers.append(L.pytorch.loggers.TensorBoardLogger(run_dir, name="tensorboard", version=""))
        trainer = L.Trainer(
            max_steps=self.max_steps, val_check_interval=validate_every,
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
            # None, not False, when off: False would switch off a caller's own torch setting.
            deterministic=True if self.deterministic else None, default_root_dir=run_dir)
        # The number of ranks is known once Lightning has read devices, num_nodes and the cluster
        # environment (torchrun, SLURM); accumulation follows from it. Lightning counts validation
        # intervals in batches (micro-steps), hence the product.
        _, accumulate = self.split_batch(trainer.world_size)
        trainer.accumulate_grad_batches = accumulate
        trainer.val_check_interval = validate_every * accumulate
        return trainer

    @_torch_flags_kept()  # Lightning sets process-wide flags for `deterministic`
    def fit(self, module: L.LightningModule, train_data: StepStream, valid_data: Dataset,
            valid_batch_size: int | None, metric: str, mode: str = "min") -> Fitted:
        """Train `module` in the run folder `out` (train_config.json written there; resumed from
        last.ckpt when `resume`), and leave in it the weights to export: with `export_best`, those of
        the validation with the best `metric` (lowest for mode "min", highest for "max"; a tie goes to
        the later step), else the last ones. Returns the trainer, and the step those weights come
        from with their validation `metric` (one more validation pass when the last step was not a
        validation step).

        On several ranks every rank calls this and gets the same step and metric (reduced over
        ranks); rank 0's module holds the weights to export, and files in the run folder are written
        by rank 0 only (`trainer.is_global_zero`). `valid_batch_size` is per rank; None: the training
        rows per rank and micro-step (batch_size on one device).
        """
        if self.on_nonfinite not in NONFINITE_MODES:
            raise self.input_error(f"on_nonfinite must be one of {', '.join(NONFINITE_MODES)}, "
                                   f"got {self.on_nonfinite!r}")
        patience = self.early_stop_patience
        if patience is not None and patience < 1:
            raise self.input_error(f"early_stop_patience must be a positive integer (validations) or null, "
                                   f"got {patience!r}")
        run_dir = Path(self.out)
        run_dir.mkdir(parents=True, exist_ok=True)
        last = run_dir / "checkpoints" / "last.ckpt"
        if self.resume and not last.exists():
            raise self.input_error(f"--resume: no checkpoint at {last}")
        trainer = self.trainer(run_dir, metric, mode)
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
        best = next((c for c in trainer.checkpoint_callbacks if isinstance(c, BestCheckpoint)), None)
        if best is None or not best.beats(float(value)):
            return Fitted(trainer, trainer.global_step, float(value))
        # Rank 0 alone exports, and alone surely sees the file (checkpoints need no shared filesystem
        # unless a run resumes); best.ckpt holds whole weights under FSDP too (Lightning's "full" state).
        if trainer.is_global_zero:
            module.load_state_dict(AtomicCheckpointIO().load_checkpoint(best.path)["state_dict"])
        return Fitted(trainer, best.best_step, float(best.best_model_score))


@dataclass
class Fitted:
    """What `TrainRecipe.fit` returns: the trainer, and the step and validation metric of the weights
    the module holds (to export)."""

    trainer: L.Trainer
    step: int
    metric: float

    @property
    def steps(self) -> int:
        """Optimizer steps the run trained (the exported weights may be of an earlier step)."""
        return self.trainer.global_step

    def metadata(self) -> dict[str, int]:
        """The model folder's record of the exported weights' step (and of the run's, where later)."""
        return {"steps": self.step, **({"trained_steps": self.steps} if self.steps != self.step else {})}


class BestCheckpoint(ModelCheckpoint):
    """checkpoints/best.ckpt: a full checkpoint (written atomically, as the others) of the validation
    with the best `metric` so far, and in its state the step it is from. A tie goes to the later
    step: the same score from weights trained longer."""

    def __init__(self, dirpath: Path, metric: str, mode: str) -> None:
        # Saved when a validation ends, never at an epoch end (a run is one endless epoch); one file,
        # overwritten in place, so no version counter.
        super().__init__(dirpath=dirpath, filename="best", monitor=metric, mode=mode, save_top_k=1,
                         save_on_train_epoch_end=False, enable_version_counter=False)
        self.best_step: int | None = None

    @property
    def path(self) -> Path:
        return Path(self.dirpath) / f"best{self.FILE_EXTENSION}"

    def beats(self, value: float) -> bool:
        """Whether the kept best is strictly better than `value` (ties go to the later, `value`'s, step)."""
        if self.best_model_score is None or math.isnan(value):
            return self.best_model_score is not None
        best = float(self.best_model_score)
        return best < value if self.mode == "min" else best > value

    def check_monitor_top_k(self, trainer: L.Trainer, current: torch.Tensor | None = None) -> bool:
        # Lightning keeps the first of equal scores; we keep the later one.
        better = current is not None and not torch.isnan(current) and (
            self.best_model_score is None or not self.beats(float(current)))
        return trainer.strategy.reduce_boolean_decision(bool(better))

    def _update_best_and_save(self, current: torch.Tensor, trainer: L.Trainer,
                              monitor_candidates: dict[str, torch.Tensor]) -> None:
        self.best_step = trainer.global_step  # before the save: the file's own state names its step
        super()._update_best_and_save(current, trainer, monitor_candidates)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best_step": self.best_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_step = state_dict.get("best_step")
        if self.best_step is None:
            return
        # The state is last.ckpt's, but best.ckpt can be newer: a validation after that checkpoint, in
        # the run that crashed, found a better score and overwrote it. The resumed run replays those
        # steps; where the replay is not bit-exact (GPUs) it need not find that score again, and the
        # weights best.ckpt holds are validated weights all the same: they stay the best, with their own
        # score and step, read from the file (which also follows a run folder that was moved).
        own = None
        if self.path.exists():
            saved = AtomicCheckpointIO().load_checkpoint(self.path)
            own = saved.get("callbacks", {}).get(self.state_key)
        if own is None or own.get("best_step") is None:
            rank_zero_warn(f"{self.path} is gone (or holds no best): best weights are kept again from the "
                           "next validation on")
            self.best_step, self.best_model_score, self.best_model_path = None, None, ""
            self.best_k_models, self.kth_best_model_path = {}, ""
            return
        path, score = str(self.path), own["best_model_score"]
        self.best_step, self.best_model_score, self.best_model_path = own["best_step"], score, path
        self.best_k_models, self.kth_best_model_path, self.kth_value = {path: score}, path, score


class StepCheckpoints(ModelCheckpoint):
    """stepNNNNNNN.ckpt every `every_n_train_steps` steps (the last `save_top_k` kept) and last.ckpt.
    A step that is also validated is saved after its validation: a resumed run does not validate that
    step again, so the checkpoint must hold what the validation changed (the best weights' step and
    score, early stopping's count)."""

    def __init__(self, validate_every: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validate_every = validate_every
        self._after_validation = False

    @property
    def state_key(self) -> str:
        # A plain ModelCheckpoint's key: last.ckpt files written before this class resume with their
        # list of step files (the ones to delete later).
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        # should_stop here is a time limit (Lightning's Timer runs before checkpoint callbacks), and
        # Lightning validates the batch a run stops at.
        validates = step % self.validate_every == 0 or trainer.should_stop
        if (validates and self._every_n_train_steps and step % self._every_n_train_steps == 0
                and not self._should_skip_saving_checkpoint(trainer)):
            self._after_validation = True
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_after_validation(trainer)
        super().on_validation_end(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_after_validation(trainer)  # in case the validation it waited for never came
        super().on_train_end(trainer, pl_module)

    def _save_after_validation(self, trainer: L.Trainer) -> None:
        if self._after_validation:
            self._after_validation = False
            if not self._should_skip_saving_checkpoint(trainer):
                candidates = self._monitor_candidates(trainer)
                self._save_topk_checkpoint(trainer, candidates)
                self._save_last_checkpoint(trainer, candidates)


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
