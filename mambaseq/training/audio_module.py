"""Lightning module for next-sample prediction on quantized audio, with a SashimiLM or a MambaLM."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from ..config import MambaConfig
from ..models import MambaLM, SashimiConfig, SashimiLM
from .chunked import check_chunk_tokens, chunked_nll, wants_chunks
from .lm_module import StepSums, checkpoint_blocks, reduce_sum
from .optim import configure_optimizers

# Architecture name (as config.json's "architecture") -> (config class, model class).
AUDIO_ARCHITECTURES: dict[str, tuple[type, type[nn.Module]]] = {
    "MambaLM": (MambaConfig, MambaLM),
    "SashimiLM": (SashimiConfig, SashimiLM),
}


def build_audio_lm(architecture: str, model_config: dict[str, Any]) -> MambaLM | SashimiLM:
    """An untrained MambaLM or SashimiLM from its architecture name and config dict."""
    if architecture not in AUDIO_ARCHITECTURES:
        raise ValueError(f"unknown audio architecture {architecture!r}; choose one of "
                         f"{', '.join(AUDIO_ARCHITECTURES)}")
    config_cls, model_cls = AUDIO_ARCHITECTURES[architecture]
    return model_cls(config_cls.from_dict(model_config))


def masked_nll(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(summed next-sample NLL in nats, number of predicted samples) of windows `ids` (batch, L + 1).

    Logits of ids[:, :-1] predict ids[:, 1:]; only targets where `mask[:, 1:]` is True count, so the
    silence a short window is padded with never enters the loss. Windows are real samples followed by
    padding, and the model is causal, so the padding does not change any counted logit either.
    """
    logits = model(ids[:, :-1])[..., : model.config.vocab_size]
    keep = mask[:, 1:]
    nll = F.cross_entropy(logits[keep].float(), ids[:, 1:][keep], reduction="sum")
    return nll, int(keep.sum())


class AudioLMModule(L.LightningModule):
    """Batches are `(ids (batch, L + 1) int64, mask (batch, L + 1) bool)` windows of quantized samples;
    training batches may carry a third item, the counted samples of the whole global batch they are
    a share of (AudioBatches adds it on several ranks or micro-steps).

    Logs the training loss (nats per predicted sample), bits per sample and samples per second of the
    global batch (all ranks and micro-batches of the step, weighted by counted samples); validation
    reports val/bits_per_sample over all counted samples of all validation windows of all ranks (summed
    NLL over summed samples, not a mean of batch or rank means). Validation batches are
    `((ids, mask), keep)` (see EvenSplit): rows with keep False are padding, run but not counted.
    """

    VALIDATION_KEEP = True  # validation batches are (batch, keep): see EvenSplit

    def __init__(self, architecture: str, model_config: dict, lr: float = 2e-3, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 100, total_steps: int = 1000,
                 min_lr_ratio: float = 0.1, checkpoint_activations: bool = False, chunk_tokens: int | None = None,
                 ) -> None:
        super().__init__()
        check_chunk_tokens(chunk_tokens)
        self.save_hyperparameters()
        self.model = build_audio_lm(architecture, model_config)
        self.chunk_tokens = chunk_tokens
        if checkpoint_activations:
            checkpoint_blocks(self.model)
        self._val = torch.zeros(2, dtype=torch.float64)  # summed NLL (nats), counted samples
        self._step = StepSums()

    def _train_nll(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
        """`masked_nll`, in chunks of `chunk_tokens` (training/chunked.py) when the batch holds more."""
        if wants_chunks(self.chunk_tokens, ids[:, 1:]):
            keep = mask[:, 1:]
            return chunked_nll(self.model, ids[:, :-1], ids[:, 1:], self.chunk_tokens, mask=keep), int(keep.sum())
        return masked_nll(self.model, ids, mask)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        ids, mask = batch[0], batch[1]
        nll, samples = self._train_nll(ids, mask)
        # The one-device loss of a step is the NLL summed over the global batch over its counted samples
        # N. Shares of it hold different numbers of counted samples (short files are padded), so a mean
        # per share, averaged by DDP over ranks and by Lightning over micro-steps, would weight a sample
        # of a padding-heavy share more. Instead each share returns its summed NLL x parts / N (parts =
        # ranks x micro-steps): that averaging then gives exactly sum(NLL) / N, the one-device loss.
        if len(batch) > 2:
            parts = self.trainer.world_size * self.trainer.accumulate_grad_batches
            loss = nll * parts / batch[2].clamp(min=1)
        else:  # the whole global batch (one device, no accumulation)
            loss = nll / max(samples, 1)
        sums = self._step.add(self, batch_idx, [nll, torch.tensor(float(samples))])
        if sums is not None:
            rate = self._step.per_second(sums[1])
            if rate is not None:
                self.log("samples/s", rate, prog_bar=True, on_step=True)
            step_loss = (sums[0] / sums[1].clamp(min=1)).float()
            self.log("train/loss", step_loss, on_step=True)
            self.log("bits/sample", step_loss / math.log(2), prog_bar=True, on_step=True)
            self.log("seq_len", float(ids.shape[1] - 1), on_step=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val.zero_()

    def validation_step(self, batch: tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor], batch_idx: int) -> None:
        (ids, mask), keep = batch
        # Every row runs (see EvenSplit); padding rows are masked out, so none of their samples count.
        mask = mask & keep.to(mask.device)[:, None]
        nll, samples = masked_nll(self.model, ids, mask)
        self._val += torch.tensor([nll.item(), samples], dtype=torch.float64)

    def on_validation_epoch_end(self) -> None:
        # Every rank takes part in the sum, also one whose windows were all padding.
        nll, samples = reduce_sum(self, list(self._val)).tolist()
        if samples:
            # The same value on every rank already; sync_dist only keeps Lightning from warning.
            self.log("val/bits_per_sample", nll / samples / math.log(2), prog_bar=True, sync_dist=True)
        self._step.pause()  # validation time is not training throughput

    def configure_optimizers(self):
        return configure_optimizers(self.model, self.hparams)
