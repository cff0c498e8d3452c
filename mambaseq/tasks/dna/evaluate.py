"""`mambaseq eval dna`: bits per base and perplexity of a trained model on FASTA windows."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ...checkpoint import from_pretrained
from ...sysinfo import default_device
from .fasta import DnaInputError, FastaCollection, regions_of
from .model_dir import check_dna_model
from .windows import ValidWindows


@torch.no_grad()
def evaluate_dna(model_dir: str | Path, fasta: list[str], bed: str | None = None, seq_len: int | None = None,
                 max_windows: int | None = None, batch_size: int = 8, device: str | None = None,
                 max_n_frac: float = 0.1, seed: int = 0, by_position: bool = False) -> dict:
    """Next-base log-likelihood over windows tiling the records (or BED intervals).

    Returns {"bits_per_base", "perplexity", "tokens", "windows", "seq_len"}. `max_windows` evaluates
    a fixed random subset; `seq_len` defaults to the length the model was trained at. `by_position`
    adds "by_position": bits/base by how many bases of the window precede the predicted one, in
    power-of-two bands (see `position_bands`): whether a long-context model makes use of its context.
    """
    info = check_dna_model(model_dir)
    seq_len = int(info["metadata"].get("seq_len", 1024)) if seq_len is None else seq_len
    if seq_len < 1 or batch_size < 1 or (max_windows is not None and max_windows < 1):
        raise DnaInputError(f"--seq-len, --batch-size and --max-windows must be >= 1 "
                            f"(got {seq_len}, {batch_size}, {max_windows})")
    soft_mask = info["metadata"].get("soft_mask", "base")
    collection = FastaCollection(fasta)
    regions = regions_of(collection, bed)
    # Here the whole file (or BED) is evaluated: only the window length can change.
    windows = ValidWindows(collection, regions, seq_len, max_windows, max_n_frac, soft_mask, seed,
                           too_short="lower --seq-len")
    device = device or default_device()
    model = from_pretrained(model_dir, device=device)
    vocab = model.config.vocab_size
    nll, tokens = 0.0, 0
    position_nll = torch.zeros(seq_len if by_position else 0, dtype=torch.float64)  # summed over windows
    for batch in DataLoader(windows, batch_size=batch_size):
        batch = batch.to(device)
        device_type = torch.device(device).type
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=device_type == "cuda"):
            logits = model(batch[:, :-1])[..., :vocab]
        per_base = F.cross_entropy(logits.float().transpose(1, 2), batch[:, 1:], reduction="none")
        nll += per_base.sum().item()
        tokens += per_base.numel()
        if by_position:
            position_nll += per_base.sum(0).double().cpu()
    if tokens == 0:
        raise DnaInputError("no windows to evaluate")
    bits = nll / tokens / math.log(2)
    result = {"bits_per_base": bits, "perplexity": math.exp(nll / tokens), "tokens": tokens,
              "windows": len(windows), "seq_len": seq_len}
    if by_position:
        result["by_position"] = position_bands(position_nll, len(windows))
    return result


def position_bands(position_nll: torch.Tensor, windows: int) -> list[dict]:
    """position_nll: (seq_len,) natural-log loss summed over `windows` windows; entry i is the base
    predicted from the i + 1 bases before it. Bits/base in bands of that context length c,
    [1, 1], [2, 3], [4, 7], ... (the last band ends at seq_len)."""
    bands, start = [], 1
    while start <= position_nll.numel():
        end = min(2 * start - 1, position_nll.numel())
        loss = position_nll[start - 1: end].sum().item()
        count = (end - start + 1) * windows
        bands.append({"context_from": start, "context_to": end, "tokens": count,
                      "bits_per_base": loss / count / math.log(2)})
        start *= 2
    return bands
