"""Lightning module for causal language modeling (DNA or quantized audio) on a MambaLM."""

from __future__ import annotations

import math
import time

import lightning as L
import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from ..config import MambaConfig
from ..models import MambaClassifier, MambaLM
from .optim import configure_optimizers


def checkpoint_blocks(model: MambaLM | MambaClassifier) -> None:
    """Activation checkpointing per block: keep only each block's input, recompute the rest in
    backward (memory per layer falls to one residual stream; compute grows by one forward)."""
    for block in model.backbone.layers:
        forward = block.forward

        def checkpointed(residual, state=None, forward=forward):
            if state is not None or not torch.is_grad_enabled():
                return forward(residual, state)
            return torch.utils.checkpoint.checkpoint(forward, residual, use_reentrant=False)

        block.forward = checkpointed


class CausalLMModule(L.LightningModule):
    """Batches are token ids (batch, L + 1): predict positions 1..L from 0..L-1.

    Logs loss, bits per token (loss / ln 2) and tokens per second; validation reports bits per token
    over all validation tokens (not a mean of batch means).
    """

    def __init__(self, model_config: dict, lr: float = 8e-3, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 100, total_steps: int = 1000,
                 min_lr_ratio: float = 0.1, checkpoint_activations: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = MambaLM(MambaConfig.from_dict(model_config))
        if checkpoint_activations:
            checkpoint_blocks(self.model)
        self._tic: float | None = None
        self._val_nll = 0.0
        self._val_tokens = 0

    def _nll(self, batch: torch.Tensor) -> tuple[torch.Tensor, int]:
        logits = self.model(batch[:, :-1])[..., : self.model.config.vocab_size]
        targets = batch[:, 1:]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="sum")
        return loss, targets.numel()

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        nll, tokens = self._nll(batch)
        loss = nll / tokens
        now = time.perf_counter()
        if self._tic is not None:
            self.log("tok/s", tokens / max(now - self._tic, 1e-9), prog_bar=True, on_step=True)
        self._tic = now
        self.log("train/loss", loss, prog_bar=False, on_step=True)
        self.log("bits/base", loss / math.log(2), prog_bar=True, on_step=True)
        self.log("seq_len", float(batch.shape[1] - 1), on_step=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_nll, self._val_tokens = 0.0, 0

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        nll, tokens = self._nll(batch)
        self._val_nll += nll.item()
        self._val_tokens += tokens

    def on_validation_epoch_end(self) -> None:
        if self._val_tokens:
            bits = self._val_nll / self._val_tokens / math.log(2)
            self.log("val/bits_per_base", bits, prog_bar=True, sync_dist=True)
        self._tic = None  # validation time is not training throughput

    def configure_optimizers(self):
        return configure_optimizers(self.model, self.hparams)
