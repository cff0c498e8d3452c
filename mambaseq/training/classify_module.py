"""Lightning module for sequence classification on a MambaClassifier."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from ..config import MambaConfig
from ..models import MambaClassifier
from .data import kept
from .lm_module import StepSums, checkpoint_blocks, reduce_sum
from .optim import configure_optimizers


class ClassifierModule(L.LightningModule):
    """Batches are (ids (batch, L), labels (batch,)); cross-entropy over the classes.

    Training logs loss and accuracy of the global batch (all ranks and micro-batches of the step).
    Validation reports loss and accuracy over all validation windows of all ranks (sums reduced, then
    divided: not a mean of batch or rank means); validation batches are `((ids, labels), keep)` with
    padding rows (keep False, see EvenSplit) run but not counted.
    """

    VALIDATION_KEEP = True  # validation batches are (batch, keep): see EvenSplit

    def __init__(self, model_config: dict, num_classes: int, pooling: str = "mean", dropout: float = 0.0,
                 head_norm: str = "batch", lr: float = 2e-3, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.95),
                 warmup_steps: int = 100, total_steps: int = 1000, min_lr_ratio: float = 0.1,
                 checkpoint_activations: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = MambaClassifier(MambaConfig.from_dict(model_config), num_classes, pooling, dropout, head_norm)
        if checkpoint_activations:
            checkpoint_blocks(self.model)
        self._val = torch.zeros(3, dtype=torch.float64)  # summed loss, correct, windows
        self._step = StepSums()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        ids, labels = batch
        logits = self.model(ids).float()
        # A mean over this share's rows; shares have equal rows, so DDP's mean over ranks and the
        # division by accumulated micro-steps give the mean over the global batch.
        nll = F.cross_entropy(logits, labels, reduction="sum")
        loss = nll / len(labels)
        correct = (logits.argmax(-1) == labels).sum()
        sums = self._step.add(self, batch_idx, [nll, correct, torch.tensor(float(ids.numel())),
                                                torch.tensor(float(len(labels)))])
        if sums is not None:
            rate = self._step.per_second(sums[2])
            if rate is not None:
                self.log("tok/s", rate, prog_bar=True, on_step=True)
            self.log("train/loss", (sums[0] / sums[3]).float(), prog_bar=True, on_step=True)
            self.log("train/acc", (sums[1] / sums[3]).float(), prog_bar=True, on_step=True)
            self.log("seq_len", float(ids.shape[1]), on_step=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val.zero_()

    def validation_step(self, batch: tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor], batch_idx: int) -> None:
        (ids, labels), keep = batch
        logits = kept(self.model(ids).float(), keep)  # every row runs (see EvenSplit); padding is not counted
        labels = kept(labels, keep)
        self._val += torch.tensor([F.cross_entropy(logits, labels, reduction="sum").item(),
                                   (logits.argmax(-1) == labels).sum().item(), len(labels)], dtype=torch.float64)

    def on_validation_epoch_end(self) -> None:
        # Every rank takes part in the sum, also one whose windows were all padding.
        loss, correct, count = reduce_sum(self, list(self._val)).tolist()
        if count:
            # The same values on every rank already; sync_dist only keeps Lightning from warning.
            self.log("val/loss", loss / count, sync_dist=True)
            self.log("val/acc", correct / count, prog_bar=True, sync_dist=True)
        self._step.pause()  # validation time is not training throughput

    def configure_optimizers(self):
        return configure_optimizers(self.model, self.hparams)
