"""Crash-safe Lightning checkpoints: write to a temporary file in the same folder, then rename."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..fileio import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """A kill during a write leaves the previous checkpoint file intact (rename is atomic on POSIX)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        atomic_write(path, lambda tmp: super(AtomicCheckpointIO, self).save_checkpoint(checkpoint, tmp,
                                                                                       storage_options))
