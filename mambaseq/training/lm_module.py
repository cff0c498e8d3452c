"""Lightning module for causal language modeling (DNA or quantized audio) on a MambaLM."""

from __future__ import annotations

import math
import time

import lightning as L
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from ..config import MambaConfig
from ..models import MambaLM
from ..models.lm import MambaBlock
from .chunked import check_chunk_tokens, chunked_nll, wants_chunks
from .data import kept
from .optim import configure_optimizers


def checkpoint_blocks(model: nn.Module) -> None:
    """Activation checkpointing of every Mamba block, wherever it sits (a flat stack or the stages of a
    U-Net): each keeps only its input and recomputes the rest in backward (memory per layer falls to
    one residual stream; compute grows by one forward). Streaming and no-grad calls run as before."""
    for block in model.modules():
        if not isinstance(block, MambaBlock):
            continue
        forward = block.forward

        def checkpointed(residual, state=None, forward=forward):
            if state is not None or not torch.is_grad_enabled():
                return forward(residual, state)
            return torch.utils.checkpoint.checkpoint(forward, residual, use_reentrant=False)

        block.forward = checkpointed


def reduce_sum(module: L.LightningModule, values: list[torch.Tensor | float]) -> torch.Tensor:
    """`values` stacked (float64, on the module's device) and summed over all ranks (no-op on one device)."""
    stacked = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=module.device) for v in values])
    return module.trainer.strategy.reduce(stacked, reduce_op="sum")


class StepSums:
    """Sums over the micro-batches of one optimizer step, for logging figures of the global batch.

    `add(module, batch_idx, values)` returns the sums over this step's micro-batches and all ranks
    at the step's last micro-batch (Lightning logs only that one), None before it. `per_second(count)`
    turns a count of the step (tokens, samples) into a rate over the time since the previous step;
    `pause()` (after validation) keeps the time in between out of the next rate.
    """

    def __init__(self) -> None:
        self.sums: list[torch.Tensor] | None = None
        self._tic: float | None = None

    def per_second(self, count: torch.Tensor) -> torch.Tensor | None:
        now = time.perf_counter()
        rate = None if self._tic is None else count / max(now - self._tic, 1e-9)
        self._tic = now
        return rate

    def pause(self) -> None:
        self._tic = None

    def add(self, module: L.LightningModule, batch_idx: int, values: list[torch.Tensor]) -> torch.Tensor | None:
        accumulate = module.trainer.accumulate_grad_batches
        values = [v.detach() for v in values]
        if batch_idx % accumulate == 0 or self.sums is None:
            self.sums = values
        else:
            self.sums = [a + b for a, b in zip(self.sums, values, strict=True)]
        if (batch_idx + 1) % accumulate:
            return None
        return reduce_sum(module, self.sums)


class CausalLMModule(L.LightningModule):
    """Batches are token ids (batch, L + 1): predict positions 1..L from 0..L-1.

    `chunk_tokens`: train batches of more tokens than this in chunks of at most this many: long
    windows cut along the sequence with the states carried, short ones a few rows at a time
    (training/chunked.py: exact, one chunk's activations in memory).

    Logs loss, bits per token (loss / ln 2) and tokens per second of the global batch (all ranks and
    micro-batches of the step); validation reports bits per token over all validation tokens of all
    ranks (summed, then divided: not a mean of batch or rank means). Validation batches are
    `(ids, keep)` (see EvenSplit): rows with keep False are padding, run but not counted.
    """

    VALIDATION_KEEP = True  # validation batches are (batch, keep): see EvenSplit

    def __init__(self, model_config: dict, lr: float = 8e-3, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 100, total_steps: int = 1000,
                 min_lr_ratio: float = 0.1, checkpoint_activations: bool = False, chunk_tokens: int | None = None,
                 ) -> None:
        super().__init__()
        check_chunk_tokens(chunk_tokens)
        self.save_hyperparameters()
        self.model = MambaLM(MambaConfig.from_dict(model_config))
        self.chunk_tokens = chunk_tokens
        if checkpoint_activations:
            checkpoint_blocks(self.model)
        self._val_nll = 0.0
        self._val_tokens = 0
        self._step = StepSums()

    def _nll(self, batch: torch.Tensor, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        if keep is None and wants_chunks(self.chunk_tokens, batch[:, 1:]):
            nll = chunked_nll(self.model, batch[:, :-1], batch[:, 1:], self.chunk_tokens,
                              self.model.config.vocab_size)
            return nll, batch[:, 1:].numel()
        logits = self.model(batch[:, :-1])[..., : self.model.config.vocab_size]
        targets = batch[:, 1:]
        if keep is not None:  # every row ran through the model (see EvenSplit); padding is not counted
            logits, targets = kept(logits, keep), kept(targets, keep)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="sum")
        return loss, targets.numel()

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        nll, tokens = self._nll(batch)
        # Shares of the global batch have equal rows: DDP's mean over ranks and Lightning's division
        # by the accumulated micro-steps turn these means into the mean over the global batch.
        loss = nll / tokens
        sums = self._step.add(self, batch_idx, [nll, torch.tensor(float(tokens))])
        if sums is not None:
            rate = self._step.per_second(sums[1])
            if rate is not None:
                self.log("tok/s", rate, prog_bar=True, on_step=True)
            step_loss = (sums[0] / sums[1]).float()
            self.log("train/loss", step_loss, prog_bar=False, on_step=True)
            self.log("bits/base", step_loss / math.log(2), prog_bar=True, on_step=True)
            self.log("seq_len", float(batch.shape[1] - 1), on_step=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_nll, self._val_tokens = 0.0, 0

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        ids, keep = batch
        nll, tokens = self._nll(ids, keep)
        self._val_nll += nll.item()
        self._val_tokens += tokens

    def on_validation_epoch_end(self) -> None:
        # Every rank takes part in the sum, also one whose windows were all padding.
        nll, tokens = reduce_sum(self, [self._val_nll, self._val_tokens]).tolist()
        if tokens:
            # The same value on every rank already; sync_dist only keeps Lightning from warning.
            self.log("val/bits_per_base", nll / tokens / math.log(2), prog_bar=True, sync_dist=True)
        self._step.pause()  # validation time is not training throughput

    def configure_optimizers(self):
        return configure_optimizers(self.model, self.hparams)
