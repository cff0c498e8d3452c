"""Inference cache: the recurrent state of every layer, for step mode and streaming."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class LayerState:
    """State of one Mamba mixer between calls.

    conv: (batch, d_inner, d_conv - 1), the last inputs of the causal conv, in the model dtype.
    ssm: (batch, d_inner, d_state), the selective-scan state, always fp32.
    """

    conv: Tensor
    ssm: Tensor


@dataclass
class InferenceCache:
    """Per-layer states plus the number of positions already consumed."""

    layers: list[LayerState]
    seqlen_offset: int = 0

    @classmethod
    def empty(cls, n_layer: int, batch: int, d_inner: int, d_conv: int, d_state: int,
              device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
              ) -> InferenceCache:
        layers = [
            LayerState(
                conv=torch.zeros(batch, d_inner, d_conv - 1, device=device, dtype=dtype),
                ssm=torch.zeros(batch, d_inner, d_state, device=device, dtype=torch.float32),
            )
            for _ in range(n_layer)
        ]
        return cls(layers)

    @property
    def batch_size(self) -> int:
        return self.layers[0].ssm.shape[0]

    def reset(self) -> None:
        for layer in self.layers:
            layer.conv.zero_()
            layer.ssm.zero_()
        self.seqlen_offset = 0

    def detach(self) -> InferenceCache:
        """A copy cut from the autograd graph (for truncated backprop through long streams)."""
        return InferenceCache([LayerState(s.conv.detach(), s.ssm.detach()) for s in self.layers],
                              self.seqlen_offset)

    def select(self, index: Tensor) -> InferenceCache:
        """The cache of the batch rows in `index` (for beam or row reordering)."""
        return InferenceCache([LayerState(s.conv[index], s.ssm[index]) for s in self.layers],
                              self.seqlen_offset)
