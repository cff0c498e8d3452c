"""Crash-safe Lightning checkpoints: write to a temporary file in the same folder, then rename; read
back with `weights_only=True`, so a checkpoint from elsewhere cannot run code when resumed."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..checkpoint import CheckpointError
from ..fileio import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """A kill during a write leaves the previous checkpoint file intact (rename is atomic on POSIX)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        atomic_write(path, lambda tmp: super(AtomicCheckpointIO, self).save_checkpoint(checkpoint, tmp,
                                                                                       storage_options))

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        # Our checkpoints hold tensors and plain containers only; anything else is refused unpickled.
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            # torch's message runs to many lines; the one naming the refused global is what matters.
            refused = next((line for line in str(err).splitlines() if "Unsupported global" in line), None)
            if refused is None:
                raise CheckpointError(f"{path}: not a readable checkpoint ({str(err).splitlines()[0][:200]})") from None
            what = refused.split("Unsupported global:", 1)[1].split(" was not")[0].strip()
            raise CheckpointError(f"{path}: refused to load: it holds an object beyond tensors and plain containers "
                                  f"({what}); a checkpoint that could run code is never unpickled") from None
        except (RuntimeError, EOFError, OSError) as err:
            raise CheckpointError(f"{path}: not a readable checkpoint ({' '.join(str(err).split())[:200]})") from None
