"""Callbacks every training run gets: per-step seeding (exact resume) and the non-finite guard."""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import numpy as np
import torch

log = logging.getLogger(__name__)

NONFINITE_MODES = ("stop", "skip")
ADVICE = ("try a lower lr, precision=32-true instead of bf16-mixed, a smaller grad_clip, or "
          "--set on_nonfinite=skip to skip such steps")


class NonFiniteError(RuntimeError):
    """Training met a non-finite loss, gradient or weight; the message names the step and what to try."""


class StepSeed(L.Callback):
    """Seed torch's global RNG (dropout, ...) from (seed, step, rank, micro-step) before every training step.

    Step s then draws the same random numbers whether the run went straight through or resumed from
    a checkpoint, as its data batch depends only on (seed, s). Saving the RNG state in checkpoints
    would not be enough: between a checkpoint and the next step, an uninterrupted run validates and
    a resumed one builds a new data-loader iterator, and both draw from the global RNG.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        entropy = [self.seed, trainer.global_step, trainer.global_rank]
        micro = batch_idx % trainer.accumulate_grad_batches
        if micro:  # accumulated micro-steps draw different numbers (one micro-step: seeds as before)
            entropy.append(micro)
        torch.manual_seed(int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]))


def newest_checkpoint(trainer: L.Trainer) -> str:
    path = getattr(trainer.checkpoint_callback, "last_model_path", "")
    return f"the newest checkpoint is {path}" if path else "no checkpoint was written yet"


class NonFiniteGuard(L.Callback):
    """Check the loss and the gradient norm of every step before the optimizer applies it.

    mode "stop": raise NonFiniteError naming the step; the weights were not updated with the bad
    gradients and no checkpoint is written, so the newest checkpoint holds the last good weights.
    mode "skip": drop the gradients (the optimizer then leaves weights and moments as they were; the
    step still counts, so data and schedule stay aligned with the step number), log the running count
    as train/skipped_steps, and stop after `max_consecutive_skips` skips in a row.
    Checkpoints holding non-finite weights are refused in both modes.
    """

    def __init__(self, mode: str = "stop", max_consecutive_skips: int = 20) -> None:
        if mode not in NONFINITE_MODES:
            raise ValueError(f"on_nonfinite must be one of {', '.join(NONFINITE_MODES)}, got {mode!r}")
        self.mode, self.max_consecutive_skips = mode, max_consecutive_skips
        self.skipped = 0
        self.consecutive = 0
        self._loss: torch.Tensor | None = None

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        self._loss = loss.detach()

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        # A training_step that returned None had no backward: no loss to check for this step.
        loss, self._loss = (self._loss if self._loss is not None else torch.zeros(())), None
        # With fp16's GradScaler, inf gradients are part of finding the scale: the scaler skips those
        # steps itself, so only the loss is checked then.
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        norm = (torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
                if grads and scaler is None else torch.zeros(()))
        # One host sync per step for both figures. Over several ranks, their mean: a non-finite value on
        # any rank makes it non-finite on all, so they stop or skip the step together (a rank stopping
        # alone would leave the others waiting for it).
        figures = torch.stack([loss.float().reshape(()).to(pl_module.device), norm.float().to(pl_module.device)])
        loss_value, norm_value = trainer.strategy.reduce(figures, reduce_op="mean").tolist()
        step = trainer.global_step
        if math.isfinite(loss_value) and math.isfinite(norm_value):
            self.consecutive = 0
        else:
            what = (f"loss is {loss_value}" if not math.isfinite(loss_value)
                    else f"gradient norm is {norm_value} (loss {loss_value:.4g})")
            if self.mode == "stop":
                raise NonFiniteError(f"training stopped at step {step}: the {what}; nothing was saved from this "
                                     f"step ({newest_checkpoint(trainer)}); {ADVICE}")
            optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
            self.consecutive += 1
            log.warning("step %d: the %s; step skipped (%d so far)", step, what, self.skipped)
            if self.consecutive >= self.max_consecutive_skips:
                raise NonFiniteError(f"training stopped at step {step}: {self.consecutive} steps in a row had a "
                                     f"non-finite loss or gradient (the last: {what}); try a lower lr, "
                                     "precision=32-true instead of bf16-mixed, or a smaller grad_clip")
        if self.mode == "skip":
            pl_module.log("train/skipped_steps", float(self.skipped), on_step=True, on_epoch=False)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        # Runs before the checkpoint file is written: raising here keeps the last good one newest.
        weights = [v for v in checkpoint["state_dict"].values() if v.is_floating_point()]
        if weights and not torch.stack([torch.isfinite(v).all() for v in weights]).all():
            raise NonFiniteError(f"training stopped at step {trainer.global_step}: the weights are not finite; "
                                 f"not saving them over the last good checkpoint; {ADVICE}")

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.skipped, self.consecutive = state_dict["skipped"], state_dict["consecutive"]
