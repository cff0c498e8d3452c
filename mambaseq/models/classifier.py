"""Sequence classifier: the Mamba backbone under a pooled classification head."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..config import MambaConfig
from .heads import ClassificationHead
from .lm import MambaBackbone, init_backbone_


class MambaClassifier(nn.Module):
    """Token ids (batch, L) -> class logits (batch, num_classes).

    The backbone is the language model's (same parameter names under `backbone.`), so a pretrained
    LM's backbone loads into it as is. `pooling` picks how per-position hidden states become one
    vector: "last" is the only position of a causal model that has seen the whole window.
    """

    def __init__(self, config: MambaConfig, num_classes: int, pooling: str = "mean", dropout: float = 0.0,
                 norm: str = "batch") -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.config = config
        self.backbone = MambaBackbone(config)
        self.head = ClassificationHead(config.d_model, num_classes, pooling, dropout, norm)
        init_backbone_(self.backbone, config.n_layer)

    @property
    def num_classes(self) -> int:
        return self.head.proj.out_features

    def head_config(self) -> dict[str, Any]:
        """The constructor arguments besides `config`, as saved in config.json."""
        return {"num_classes": self.num_classes, "pooling": self.head.pooling, "dropout": self.head.dropout.p,
                "norm": self.head.norm_kind}

    def forward(self, input_ids: Tensor, mask: Tensor | None = None) -> Tensor:
        """input_ids: (batch, L); mask: (batch, L) True where a position counts -> (batch, num_classes)."""
        return self.head(self.backbone(input_ids), mask)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
