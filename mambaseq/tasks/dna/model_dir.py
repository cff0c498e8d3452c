"""Loading a model folder for a DNA command, refusing models made for another task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...checkpoint import Model, build_model, load_weights, read_model_dir
from .fasta import DnaInputError
from .tokenizer import VOCAB_SIZE

ARCHITECTURE = {"dna-lm": "MambaLM", "dna-classify": "MambaClassifier"}
WHAT = {"dna-lm": "a DNA language model", "dna-classify": "a DNA species classifier"}


def check_dna_model(model_dir: str | Path, task: str = "dna-lm") -> dict[str, Any]:
    """The parsed config.json of `model_dir` if it holds a model for `task`; a one-line error otherwise.

    Folders written without task metadata (a user's own `save_pretrained`) pass when the architecture
    and the vocabulary fit.
    """
    document = read_model_dir(model_dir)
    found = document["metadata"].get("task")
    fits = document["architecture"] == ARCHITECTURE[task] and document["config"].vocab_size == VOCAB_SIZE
    if found != task and (found is not None or not fits):
        got = f"task {found!r}" if found else f"a {document['architecture']} with vocab_size " \
                                                f"{document['config'].vocab_size}"
        raise DnaInputError(f"{model_dir}: not {WHAT[task]} ({got}; this command needs task {task!r})")
    return document


def load_dna_model(model_dir: str | Path, task: str = "dna-lm",
                   device: torch.device | str | None = None) -> tuple[Model, dict[str, Any]]:
    """(model in eval mode on `device`, metadata) of a DNA model folder checked by `check_dna_model`."""
    document = check_dna_model(model_dir, task)
    model = build_model(document)
    load_weights(model, model_dir)
    return model.to(device).eval(), document["metadata"]
