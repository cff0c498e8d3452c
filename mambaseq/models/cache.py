"""Inference cache: the recurrent state of every layer, for step mode and streaming."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

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


class StackedStates(list):
    """The LayerStates of a stack of consecutive blocks, each a view into one pair of stacked tensors.

    conv: (n_layer, batch, d_inner, d_conv - 1); ssm: (n_layer, batch, d_inner, d_state) fp32;
    self[l] is LayerState(conv[l], ssm[l]). Code that updates a layer's state in place (every step
    and prefill path does) updates the stacked tensors too, so the fused stack step
    (`kernels.mamba_stack_step`) can read and write all layers at once while the per-layer paths
    keep working unchanged. Code that rebinds `self[l].conv` to another tensor detaches that layer
    from the stack; `intact()` notices, and the fused step is then skipped.
    """

    def __init__(self, conv: Tensor, ssm: Tensor) -> None:
        super().__init__(LayerState(conv[l], ssm[l]) for l in range(conv.shape[0]))
        self.conv, self.ssm = conv, ssm
        # The view objects themselves: identity is the cheapest check that nobody rebound them.
        self._views = [(state.conv, state.ssm) for state in self]

    @classmethod
    def zeros(cls, n_layer: int, batch: int, d_inner: int, d_conv: int, d_state: int,
              device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> StackedStates:
        return cls(torch.zeros(n_layer, batch, d_inner, d_conv - 1, device=device, dtype=dtype),
                   torch.zeros(n_layer, batch, d_inner, d_state, device=device, dtype=torch.float32))

    def intact(self) -> bool:
        """Whether every layer's state still is its view into the stacked tensors."""
        return len(self) == len(self._views) and all(
            state.conv is conv and state.ssm is ssm for state, (conv, ssm) in zip(self, self._views, strict=True))


@dataclass
class InferenceCache:
    """Per-layer states plus the number of positions already consumed.

    `empty` makes `layers` a StackedStates (one stacked tensor per kind of state, layers as views);
    `detach` and `select` keep it one while it is intact.
    """

    layers: list[LayerState]
    seqlen_offset: int = 0

    @classmethod
    def empty(cls, n_layer: int, batch: int, d_inner: int, d_conv: int, d_state: int,
              device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
              ) -> InferenceCache:
        return cls(StackedStates.zeros(n_layer, batch, d_inner, d_conv, d_state, device=device, dtype=dtype))

    @property
    def batch_size(self) -> int:
        return self.layers[0].ssm.shape[0]

    def _stacked(self) -> StackedStates | None:
        layers = self.layers
        return layers if isinstance(layers, StackedStates) and layers.intact() else None

    def reset(self) -> None:
        for layer in self.layers:
            layer.conv.zero_()
            layer.ssm.zero_()
        self.seqlen_offset = 0

    def detach(self) -> InferenceCache:
        """A copy cut from the autograd graph (for truncated backprop through long streams)."""
        stacked = self._stacked()
        if stacked is not None:
            return InferenceCache(StackedStates(stacked.conv.detach(), stacked.ssm.detach()), self.seqlen_offset)
        return InferenceCache([LayerState(s.conv.detach(), s.ssm.detach()) for s in self.layers],
                              self.seqlen_offset)

    def select(self, index: Tensor) -> InferenceCache:
        """The cache of the batch rows in `index` (for beam or row reordering)."""
        stacked = self._stacked()
        if stacked is not None:
            return InferenceCache(StackedStates(stacked.conv[:, index], stacked.ssm[:, index]), self.seqlen_offset)
        return InferenceCache([LayerState(s.conv[index], s.ssm[index]) for s in self.layers],
                              self.seqlen_offset)


Slot = tuple[Any, Any]  # (holder, key): a dataclass and a field name, or a list and an index


def tensor_slots(obj: Any) -> list[Slot]:
    """Every place a tensor is held in a cache (InferenceCache, SashimiCache: nested dataclasses and
    lists), in a fixed order, so code can read, pin or replace a cache's tensors without knowing its
    type (generation's CUDA-graph buffers, chunked training's carried states)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        items: list[Slot] = [(obj, f.name) for f in dataclasses.fields(obj)]
    elif isinstance(obj, list):
        items = [(obj, i) for i in range(len(obj))]
    else:
        return []
    slots = []
    for holder, key in items:
        value = get_slot(holder, key)
        slots += [(holder, key)] if isinstance(value, Tensor) else tensor_slots(value)
    return slots


def get_slot(holder: Any, key: Any) -> Any:
    return holder[key] if isinstance(holder, list) else getattr(holder, key)


def set_slot(holder: Any, key: Any, value: Any) -> None:
    if isinstance(holder, list):
        holder[key] = value
    else:
        setattr(holder, key, value)
