"""Heads on top of backbone hidden states: pooling and sequence classification."""

from __future__ import annotations

import torch
from torch import Tensor, nn

POOLINGS = ("mean", "max", "first", "last")


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
    """Pooled hidden states -> class logits: (batch, L, d_model) -> (batch, num_classes)."""

    def __init__(self, d_model: int, num_classes: int, pooling: str = "mean", dropout: float = 0.0) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(d_model, num_classes)

    def forward(self, hidden: Tensor, mask: Tensor | None = None) -> Tensor:
        # Pooled in fp32, head in fp32 even under autocast: a mean over 2^16 positions differs between
        # classes by far less than bf16's 3 significant digits.
        with torch.autocast(hidden.device.type, enabled=False):
            pooled = pool(hidden.float(), self.pooling, mask)
            return self.proj(self.dropout(pooled))
