"""Lightning module for sequence classification on a MambaClassifier."""

from __future__ import annotations

import time

import lightning as L
import torch
import torch.nn.functional as F

from ..config import MambaConfig
from ..models import MambaClassifier
from .lm_module import checkpoint_blocks
from .optim import configure_optimizers


class ClassifierModule(L.LightningModule):
    """Batches are (ids (batch, L), labels (batch,)); cross-entropy over the classes.

    Validation reports loss and accuracy over all validation windows (not a mean of batch means).
    """

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
        self._tic: float | None = None
        self._val = torch.zeros(3, dtype=torch.float64)  # summed loss, correct, windows

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        ids, labels = batch
        logits = self.model(ids).float()
        loss = F.cross_entropy(logits, labels)
        now = time.perf_counter()
        if self._tic is not None:
            self.log("tok/s", ids.numel() / max(now - self._tic, 1e-9), prog_bar=True, on_step=True)
        self._tic = now
        self.log("train/loss", loss, prog_bar=True, on_step=True)
        self.log("train/acc", (logits.argmax(-1) == labels).float().mean(), prog_bar=True, on_step=True)
        self.log("seq_len", float(ids.shape[1]), on_step=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val.zero_()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        ids, labels = batch
        logits = self.model(ids).float()
        self._val += torch.tensor([F.cross_entropy(logits, labels, reduction="sum").item(),
                                   (logits.argmax(-1) == labels).sum().item(), len(labels)], dtype=torch.float64)

    def on_validation_epoch_end(self) -> None:
        if self._val[2]:
            loss, correct, count = self._val.tolist()
            self.log("val/loss", loss / count, sync_dist=True)
            self.log("val/acc", correct / count, prog_bar=True, sync_dist=True)
        self._tic = None  # validation time is not training throughput

    def configure_optimizers(self):
        return configure_optimizers(self.model, self.hparams)
