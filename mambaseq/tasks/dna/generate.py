"""`mambaseq generate dna`: sample DNA from a trained model in step mode, written as FASTA."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ...checkpoint import from_pretrained
from ...fileio import atomic_write
from ...generation import SamplingConfig, generate
from ...sysinfo import default_device
from .fasta import DnaInputError, FastaCollection
from .model_dir import check_dna_model
from .tokenizer import UNK, A, C, G, T, decode, encode

FASTA_LINE = 80


def _prompts(prompt: str | None, prompt_fasta: str | None, soft_mask: str,
             generator: torch.Generator) -> list[tuple[str, torch.Tensor]]:
    if prompt and prompt_fasta:
        raise DnaInputError("give --prompt or --prompt-fasta, not both")
    if prompt_fasta:
        collection = FastaCollection([prompt_fasta])
        prompts = [(r.name, collection.fetch(r.name, 0, r.length)) for r in collection.records]
    elif prompt:
        unknown = np.flatnonzero(encode(prompt) == UNK)
        if unknown.size:
            pos = int(unknown[0])
            raise DnaInputError(f"--prompt: not a DNA sequence ({prompt[pos]!r} at position {pos + 1})")
        prompts = [("prompt", prompt)]
    else:
        # The model was trained on bare windows (no start token): begin from one random base.
        first = "ACGT"[int(torch.randint(4, (1,), generator=generator))]
        return [("none", torch.tensor(encode(first)))]
    return [(name, torch.tensor(encode(seq, soft_mask))) for name, seq in prompts]


def generate_dna(model_dir: str | Path, out: str | Path, length: int = 1000, n: int = 1,
                 prompt: str | None = None, prompt_fasta: str | None = None,
                 sampling: SamplingConfig | None = None, seed: int = 0, device: str | None = None,
                 on_step: Callable[[int], None] | None = None) -> list[dict]:
    """Sample `n` continuations of `length` bases per prompt and write them to `out` (FASTA).

    Without a prompt, each sample starts from one random base. Only A, C, G and T are sampled. The
    same seed gives the same output on the same device. Returns one dict per written record
    (name, prompt, length, settings); the settings are also in each FASTA header.
    """
    if length < 1 or n < 1:
        raise DnaInputError(f"--length and --n must be >= 1 (got {length} and {n})")
    sampling = sampling or SamplingConfig()
    info = check_dna_model(model_dir)
    soft_mask = info["metadata"].get("soft_mask", "base")
    device = device or default_device()
    prompts = _prompts(prompt, prompt_fasta, soft_mask, torch.Generator().manual_seed(seed))
    generator = torch.Generator(device=device).manual_seed(seed)
    model = from_pretrained(model_dir, device=device).eval()
    vocab = model.config.vocab_size
    allowed = torch.zeros(vocab, dtype=torch.bool)
    allowed[[A, C, G, T]] = True
    records = []
    for prompt_name, ids in prompts:
        batch = ids.to(device).unsqueeze(0).expand(n, -1)
        out_ids = generate(model, batch, length, sampling, generator=generator, vocab_limit=vocab, allowed=allowed,
                           on_step=on_step)
        for i in range(n):
            seq = decode(out_ids[i, ids.numel():].cpu())
            settings = (f"temperature={sampling.temperature} top_k={sampling.top_k} top_p={sampling.top_p} "
                        f"seed={seed} prompt={prompt_name} prompt_len={ids.numel()}")
            records.append({"name": f"mambaseq_{len(records) + 1}", "prompt": prompt_name, "length": len(seq),
                            "settings": settings, "sequence": seq})

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            for rec in records:
                f.write(f">{rec['name']} {rec['settings']} model={Path(model_dir).name}\n")
                for start in range(0, len(rec["sequence"]), FASTA_LINE):
                    f.write(rec["sequence"][start:start + FASTA_LINE] + "\n")

    atomic_write(out, write)
    return records
