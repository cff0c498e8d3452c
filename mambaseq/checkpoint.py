"""Model directories: `config.json` + `model.safetensors`. Weights never load through pickle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .config import MambaConfig
from .fileio import atomic_write
from .models import MambaLM

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "mambaseq"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A model directory is missing, malformed, or does not fit the model it is loaded into."""


def save_pretrained(model: MambaLM, directory: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write `model` to `directory` (created if needed) as config.json + model.safetensors.

    `metadata` holds task facts a user of the model needs (vocabulary, sample rate, class names).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)  # the same tensor as the embedding
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "mambaseq_version": __version__,
        "architecture": type(model).__name__,
        "model": model.config.to_dict(),
        "metadata": metadata or {},
    }
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    atomic_write(directory / CONFIG_NAME,
                  lambda tmp: Path(tmp).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n"))
    return directory


def read_model_dir(directory: str | Path) -> dict[str, Any]:
    """The parsed config.json of a model directory, checked for shape; runs no code."""
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a model directory (no such folder)")
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a model directory (no {CONFIG_NAME})")
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT or "model" not in document:
        raise CheckpointError(f"{path}: not a mambaseq model config (missing 'format': '{FORMAT}')")
    version = document.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path}: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {document['format_version']} is newer than this "
                              f"mambaseq ({__version__}) reads; upgrade mambaseq")
    try:
        document["config"] = MambaConfig.from_dict(document["model"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: {err}") from None
    return document


def load_weights(model: MambaLM, directory: str | Path, strict_config: bool = True) -> MambaLM:
    """Load the weights of `directory` into `model`, checking the config first."""
    directory = Path(directory)
    saved = read_model_dir(directory)["config"]
    if strict_config:
        differences = model.config.diff(saved)
        if differences:
            listed = ", ".join(f"{k}: model has {a!r}, checkpoint has {b!r}"
                               for k, (a, b) in differences.items())
            raise CheckpointError(f"{directory}: config does not match the model ({listed})")
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        raise CheckpointError(f"{directory}: no {WEIGHTS_NAME}")
    try:
        state = load_file(weights_path)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{weights_path}: unreadable safetensors file ({err})") from None
    expected = model.state_dict()
    if model.config.tie_embeddings:
        expected.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
        if unexpected:
            parts.append("unexpected " + ", ".join(unexpected[:5]) + (" ..." if len(unexpected) > 5 else ""))
        if wrong_shape:
            parts.append("wrong shape " + ", ".join(
                f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong_shape[:5]))
        raise CheckpointError(f"{weights_path}: weights do not fit the model ({'; '.join(parts)})")
    model.load_state_dict(state, strict=False)
    return model


def from_pretrained(directory: str | Path, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None) -> MambaLM:
    """Build the model described by `directory`/config.json and load its weights."""
    config = read_model_dir(directory)["config"]
    model = MambaLM(config)
    load_weights(model, directory)
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model.eval()
