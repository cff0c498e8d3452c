"""Heads on top of backbone hidden states: pooling and sequence classification."""

from __future__ import annotations

import torch
from torch import Tensor, nn

POOLINGS = ("mean", "max", "first", "last")
HEAD_NORMS = ("batch", "none")


def pool(hidden: Tensor, how: str = "mean", mask: Tensor | None = None) -> Tensor:
    """hidden: (batch, L, d) -> (batch, d). mask: (batch, L), True where a position counts.

    "last" takes the last counted position: for a causal model the only one that has seen the
    whole sequence. A row with no counted position pools to zeros.
    """
    if how not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {how!r}")
    batch, L, _ = hidden.shape
    if mask is None:
        mask = torch.ones(batch, L, dtype=torch.bool, device=hidden.device)
    mask = mask.bool()
    if how == "mean":
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
    if how == "max":
        pooled = hidden.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
    else:
        positions = torch.arange(L, device=hidden.device).expand(batch, L)
        if how == "first":
            index = torch.where(mask, positions, L).amin(1).clamp(max=L - 1)
        else:
            index = torch.where(mask, positions, -1).amax(1).clamp(min=0)
        pooled = hidden[torch.arange(batch, device=hidden.device), index]
    return pooled.masked_fill(~mask.any(1, keepdim=True), 0.0)


class ClassificationHead(nn.Module):
    """Pooled hidden states -> class logits: (batch, L, d_model) -> (batch, num_classes).

    `norm="batch"` standardizes each pooled feature over the batch (BatchNorm without affine,
    running statistics at eval time) before the linear layer, as in MAE's linear probing (He et
    al. 2021, Appendix A). Why: a mean over thousands of positions is nearly the same vector for
    every window; what tells classes apart is a deviation orders of magnitude smaller than the
    common part, and a linear layer at a normal learning rate would need hundreds of steps just to
    grow weights large enough to see it. Standardized, the deviation is unit-sized from step one.
    """

    def __init__(self, d_model: int, num_classes: int, pooling: str = "mean", dropout: float = 0.0,
                 norm: str = "batch") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if norm not in HEAD_NORMS:
            raise ValueError(f"head norm must be one of {', '.join(HEAD_NORMS)}, got {norm!r}")
        self.pooling = pooling
        self.norm_kind = norm
        # eps far below BatchNorm's 1e-5: pooled features of long windows vary across windows by
        # about that much, and a 1e-5 floor would damp exactly the signal the norm is there for.
        self.norm = nn.BatchNorm1d(d_model, eps=1e-8, affine=False) if norm == "batch" else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(d_model, num_classes)

    def forward(self, hidden: Tensor, mask: Tensor | None = None) -> Tensor:
        # Pooled in fp32, head in fp32 even under autocast: a mean over 2^16 positions differs between
        # classes by far less than bf16's 3 significant digits.
        with torch.autocast(hidden.device.type, enabled=False):
            pooled = pool(hidden.float(), self.pooling, mask)
            # Under SyncBatchNorm (several GPUs) the statistics span every rank's rows: one row here is
            # not a batch of one.
            if (self.training and pooled.shape[0] == 1 and self.norm_kind == "batch"
                    and not isinstance(self.norm, nn.SyncBatchNorm)):
                pooled = self._normalize_one(pooled)
            else:
                pooled = self.norm(pooled)
            return self.proj(self.dropout(pooled))

    def _normalize_one(self, pooled: Tensor) -> Tensor:
        """A batch of one window (the longest contexts) has no batch variance: normalise it with the
        running statistics, and move those towards it as BatchNorm's momentum would."""
        norm = self.norm
        with torch.no_grad():
            norm.running_mean.lerp_(pooled[0], norm.momentum)
            norm.running_var.lerp_((pooled[0] - norm.running_mean) ** 2, norm.momentum)
            norm.num_batches_tracked += 1
        return (pooled - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps)
