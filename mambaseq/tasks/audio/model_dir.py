"""Audio model folders: what `train audio` writes next to the weights, and loading one for a command.

An audio model folder is a `save_pretrained` folder (a MambaLM or a SashimiLM over quantized samples)
whose metadata says how samples became tokens:

    {"task": "audio-lm", "sample_rate": 16000, "codec": {"name": "mulaw", "bits": 8}, ...}

Generation decodes with that codec at that rate, and evaluation resamples and encodes with them, so a
model is never fed audio quantized another way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...checkpoint import Model, build_model, load_weights, read_model_dir
from .codec import Codec
from .data import AudioInputError

TASK = "audio-lm"
ARCHITECTURES = ("MambaLM", "SashimiLM")


def audio_metadata(sample_rate: int, codec: Codec, **extra: Any) -> dict[str, Any]:
    """The metadata of an audio model folder (extra keys: seq_len, steps, valid_bits_per_sample, ...)."""
    return {"task": TASK, "sample_rate": int(sample_rate), "codec": codec.to_dict(), **extra}


def check_audio_model(model_dir: str | Path) -> dict[str, Any]:
    """The parsed config.json of `model_dir` if it holds an audio LM; a one-line AudioInputError otherwise."""
    document = read_model_dir(model_dir)
    metadata = document["metadata"]
    if metadata.get("task") != TASK or document["architecture"] not in ARCHITECTURES:
        found = f"task {metadata['task']!r}" if metadata.get("task") else f"a {document['architecture']} " \
                                                                          "without audio metadata"
        raise AudioInputError(f"{model_dir}: not an audio model ({found}; this command needs task {TASK!r})")
    try:
        codec = Codec.from_dict(metadata["codec"])
        rate = int(metadata["sample_rate"])
    except (KeyError, TypeError, ValueError) as err:
        raise AudioInputError(f"{model_dir}: config.json has no usable sample_rate/codec metadata ({err})") from None
    if rate < 1:
        raise AudioInputError(f"{model_dir}: sample_rate must be positive, got {rate}")
    if codec.num_classes > document["config"].vocab_size:
        raise AudioInputError(f"{model_dir}: the codec has {codec.num_classes} classes but the model only "
                              f"{document['config'].vocab_size} outputs")
    return document


def load_audio_model(model_dir: str | Path, device: torch.device | str | None = None
                     ) -> tuple[Model, Codec, int, dict[str, Any]]:
    """(model in eval mode on `device`, codec, sample rate, metadata) of a checked audio model folder."""
    document = check_audio_model(model_dir)
    model = build_model(document)
    load_weights(model, model_dir)
    metadata = document["metadata"]
    return model.to(device).eval(), Codec.from_dict(metadata["codec"]), int(metadata["sample_rate"]), metadata
