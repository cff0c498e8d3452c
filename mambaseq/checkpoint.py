"""Model directories: `config.json` + `model.safetensors`. Weights never load through pickle."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .config import MambaConfig
from .fileio import atomic_write
from .models import MambaClassifier, MambaLM, SashimiConfig, SashimiLM

Model = MambaLM | MambaClassifier | SashimiLM

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "mambaseq"
FORMAT_VERSION = 1
# Architecture name (config.json's "architecture") -> the config class its "model" entry is read with.
ARCHITECTURES: dict[str, type[MambaConfig] | type[SashimiConfig]] = {
    "MambaLM": MambaConfig,
    "MambaClassifier": MambaConfig,
    "SashimiLM": SashimiConfig,
}


class CheckpointError(ValueError):
    """A model directory is missing, malformed, or does not fit the model it is loaded into."""


def save_pretrained(model: Model, directory: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write `model` to `directory` (created if needed) as config.json + model.safetensors.

    `metadata` holds task facts a user of the model needs (vocabulary, sample rate, class names).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in _saved_state(model).items()}
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "mambaseq_version": __version__,
        "architecture": type(model).__name__,
        "model": model.config.to_dict(),
        "metadata": metadata or {},
    }
    if isinstance(model, MambaClassifier):
        document["head"] = model.head_config()
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    atomic_write(directory / CONFIG_NAME,
                  lambda tmp: Path(tmp).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n"))
    return directory


def _saved_state(model: Model) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    if isinstance(model, MambaLM | SashimiLM) and model.config.tie_embeddings:
        state.pop("lm_head.weight", None)  # the same tensor as the embedding
    return state


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
    architecture = document.get("architecture", "MambaLM")
    if architecture not in ARCHITECTURES:
        raise CheckpointError(f"{path}: unknown architecture {architecture!r} (this mambaseq reads "
                              f"{', '.join(ARCHITECTURES)})")
    try:
        document["config"] = ARCHITECTURES[architecture].from_dict(document["model"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: {err}") from None
    if architecture == "MambaClassifier" and not isinstance(document.get("head"), dict):
        raise CheckpointError(f"{path}: a MambaClassifier config needs a 'head' entry")
    document["architecture"] = architecture
    return document


def load_weights(model: Model, directory: str | Path, strict_config: bool = True) -> Model:
    """Load the weights of `directory` into `model`, checking the config first."""
    directory = Path(directory)
    saved = read_model_dir(directory)["config"]
    if type(saved) is not type(model.config):
        raise CheckpointError(f"{directory}: holds a model with a {type(saved).__name__}, not the "
                              f"{type(model.config).__name__} of this {type(model).__name__}")
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
    expected = _saved_state(model)
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


def build_model(document: dict[str, Any]) -> Model:
    """An untrained model of the architecture a parsed config.json (`read_model_dir`) describes."""
    if document["architecture"] == "MambaClassifier":
        try:
            # Folders written before the head had a norm hold an unnormalized head.
            return MambaClassifier(document["config"], **{"norm": "none", **document["head"]})
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"invalid classifier head {document['head']!r}: {err}") from None
    if document["architecture"] == "SashimiLM":
        return SashimiLM(document["config"])
    return MambaLM(document["config"])


def from_pretrained(directory: str | Path, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None) -> Model:
    """Build the model described by `directory`/config.json (a MambaLM, MambaClassifier or SashimiLM)
    and load its weights."""
    model = build_model(read_model_dir(directory))
    load_weights(model, directory)
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model.eval()


def describe_model_dir(directory: str | Path) -> dict[str, Any]:
    """What a model folder holds, read from config.json and the safetensors header only.

    Builds no model and loads no tensor, so a folder from an untrusted source can be inspected
    safely (safetensors has no code path; config.json is plain JSON).
    """
    from safetensors import safe_open

    directory = Path(directory)
    document = read_model_dir(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{directory}: no {WEIGHTS_NAME}")
    tensors: dict[str, list[int]] = {}
    dtypes: set[str] = set()
    try:
        with safe_open(str(weights), framework="pt") as handle:
            for key in handle.keys():
                view = handle.get_slice(key)
                tensors[key] = list(view.get_shape())
                dtypes.add(str(view.get_dtype()))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{weights}: unreadable safetensors file ({err})") from None
    parameters = sum(math.prod(shape) for shape in tensors.values())
    return {"path": str(directory), "format_version": document["format_version"],
            "mambaseq_version": document.get("mambaseq_version"), "architecture": document["architecture"],
            "model": document["model"], "head": document.get("head"), "metadata": document["metadata"],
            "tensors": len(tensors), "parameters": parameters, "dtypes": sorted(dtypes),
            "weights_bytes": weights.stat().st_size}
