"""Optimizer and learning-rate schedule shared by every training task."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on matrices only; biases, norms, A_log and D (marked with
    `_no_weight_decay`) are never decayed, as in the seed paper's training setup."""
    decay, no_decay, seen = [], [], set()
    for param in model.parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))  # tied weights appear once
        decays = getattr(param, "_decays", None)
        (decay if (_decays(param) if decays is None else decays) else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _decays(param: nn.Parameter) -> bool:
    return param.dim() >= 2 and not getattr(param, "_no_weight_decay", False)


def mark_weight_decay(model: nn.Module) -> None:
    """Record on every parameter whether AdamW decays it, from its shape now. FSDP (which sets up
    the optimizer after wrapping) turns each parameter into a 1-D view of its rank's shard: the same
    Parameter object, attributes kept, but no longer the shape `parameter_groups` reads."""
    for param in model.parameters():
        param._decays = _decays(param)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.1,
                   betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.AdamW:
    return torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr, betas=betas)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    """Multiplier of the peak learning rate: linear warmup, then cosine decay to min_ratio."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                   min_ratio: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps, min_ratio))


def configure_optimizers(model: nn.Module, hparams: Any) -> dict:
    """A LightningModule's `configure_optimizers` result: AdamW stepped per step on warmup + cosine.

    `hparams` holds lr, weight_decay, betas, warmup_steps, total_steps and min_lr_ratio.
    """
    optimizer = make_optimizer(model, lr=hparams.lr, weight_decay=hparams.weight_decay, betas=tuple(hparams.betas))
    scheduler = make_scheduler(optimizer, hparams.warmup_steps, hparams.total_steps, hparams.min_lr_ratio)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
