"""Tiny Lightning runs through TrainRecipe.fit on synthetic data (2 blocks x d_model 16, 32 tokens)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch

from mambaseq import MambaConfig
from mambaseq.training.classify_module import ClassifierModule
from mambaseq.training.data import StepStream
from mambaseq.training.lm_module import CausalLMModule
from mambaseq.training.trainer import Fitted, TrainRecipe, global_step

MODEL = MambaConfig(d_model=16, n_layer=2, vocab_size=12).to_dict()


class Tokens(StepStream):
    """LM batches (4, 33) of step s from (0, s); `crash_at` raises there, standing for a crash."""

    def __init__(self, first_step: Callable[[], int] = lambda: 0, crash_at: int | None = None,
                 labelled: bool = False) -> None:
        super().__init__(first_step)
        self.crash_at, self.labelled = crash_at, labelled

    def batch(self, step: int) -> Any:
        if step == self.crash_at:
            raise RuntimeError("simulated crash")
        ids = torch.from_numpy(np.random.default_rng([0, step]).integers(0, 4, (4, 33)))
        # Classifier batches: the class is a function of the window, so there is something to learn.
        return (ids[:, :32], ids[:, 0] % 2) if self.labelled else ids


def tiny_fit(out: Path, module_cls: type[L.LightningModule] = CausalLMModule, crash_at: int | None = None,
             module_kwargs: dict[str, Any] | None = None, metric: tuple[str, str] | None = None,
             **fields: Any) -> tuple[Fitted, L.LightningModule]:
    """Train `module_cls` (an LM or a classifier) for max_steps (default 6) with a checkpoint every 2
    steps and a validation at the end (unless `val_every` says otherwise), as the training commands do,
    selecting by `metric` (name, mode; default the module's own); returns what `fit` returns and the
    trained module."""
    fields = {"max_steps": 6, "checkpoint_every": 2, "lr_warmup_steps": 2, "progress": False, **fields}
    cfg = TrainRecipe(out=str(out), **{"val_every": fields["max_steps"], **fields})
    torch.manual_seed(0)  # the module's initial weights, as seed_everything in the training commands
    labelled = issubclass(module_cls, ClassifierModule)
    args = (MODEL, 2) if labelled else (MODEL,)
    module = module_cls(*args, **(module_kwargs or {}), **cfg.optimizer_kwargs())
    valid = [Tokens(labelled=labelled).batch(1000 + i) for i in range(2)]
    valid = [(ids[j], labels[j]) for ids, labels in valid for j in range(4)] if labelled else torch.cat(valid)
    stream = Tokens(global_step(module), crash_at, labelled)
    name, mode = metric or (("val/acc", "max") if labelled else ("val/bits_per_base", "min"))
    return cfg.fit(module, stream, valid, 4, name, mode), module


def tiny_run(out: Path, *args: Any, **kwargs: Any) -> tuple[L.Trainer, L.LightningModule]:
    """`tiny_fit`'s trainer and trained module."""
    fitted, module = tiny_fit(out, *args, **kwargs)
    return fitted.trainer, module


@pytest.fixture
def tiny() -> Callable[..., tuple[L.Trainer, L.LightningModule]]:
    """`tiny_run` as a fixture, for tests in this folder."""
    return tiny_run


@pytest.fixture
def tiny_fitted() -> Callable[..., tuple[Fitted, L.LightningModule]]:
    """`tiny_fit` as a fixture, for tests in this folder."""
    return tiny_fit
