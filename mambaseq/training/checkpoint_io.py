"""Crash-safe Lightning checkpoints: write to a temporary file in the same folder, then rename; read
back with `weights_only=True`, so a checkpoint from elsewhere cannot run code when resumed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..fileio import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """A kill during a write leaves the previous checkpoint file intact (rename is atomic on POSIX)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        atomic_write(path, lambda tmp: super(AtomicCheckpointIO, self).save_checkpoint(checkpoint, tmp,
                                                                                       storage_options))

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        # Our checkpoints hold tensors and plain containers only; anything else is refused unpickled.
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)
