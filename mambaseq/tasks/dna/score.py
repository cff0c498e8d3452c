"""`mambaseq score dna`: log-likelihood of sequences under a DNA LM, and the effect of variants.

Records (or BED intervals) of any length are streamed through the model `chunk_len` bases at a
time with the recurrent state carried over, so the score equals one forward over the whole
sequence. The first base of a sequence has no context and is not scored; neither is any position
whose target base is N (an unknown base has no likelihood worth measuring). Variants are
scored as ll(alt window) - ll(ref window) over a window of reference around each variant.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...checkpoint import from_pretrained
from ...fileio import atomic_write
from ...models import MambaLM
from ...sysinfo import default_device
from .embed import batches_by_length, stream_hidden
from .fasta import DnaInputError, FastaCollection, Interval, regions_of
from .model_dir import check_dna_model
from .tokenizer import N, encode

_BASES = frozenset("ACGT")


def _check_out(out: Path) -> None:
    if out.suffix != ".tsv":
        raise DnaInputError(f"{out}: output must end in .tsv")


def _target_log_probs(model: MambaLM, predictors: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target | context): predictors (batch, L, d_model) float32, targets (batch, L) -> (batch, L).

    Computed in float32 outside autocast; the head's padded rows beyond the real vocabulary are
    never produced by training, so they are left out of the softmax as `evaluate_dna` does.
    """
    logits = model.lm_head(predictors)[..., :model.config.vocab_size].float()
    return logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _score_batch(model: MambaLM, collection: FastaCollection, regions: list[Interval], chunk_len: int,
                 soft_mask: str, on_bases: Callable[[int], None] | None) -> tuple[np.ndarray, np.ndarray]:
    """Summed log-likelihood (batch,) float64 and scored-base count (batch,) int64 of `regions`."""
    device = model.lm_head.weight.device
    ll = torch.zeros(len(regions), dtype=torch.float64, device=device)
    scored = torch.zeros(len(regions), dtype=torch.long, device=device)
    previous = None  # last hidden state of the previous chunk: it predicts this chunk's first base
    for _, targets, hidden, valid in stream_hidden(model, collection, regions, chunk_len, soft_mask):
        if on_bases:
            on_bases(int(valid.sum()))
        if previous is None:
            predictors, targets, valid = hidden[:, :-1], targets[:, 1:], valid[:, 1:]
        else:
            predictors = torch.cat([previous.unsqueeze(1), hidden[:, :-1]], dim=1)
        previous = hidden[:, -1]
        keep = valid & (targets != N)
        log_probs = _target_log_probs(model, predictors, targets)
        ll += torch.where(keep, log_probs, 0.0).sum(1).double()
        scored += keep.sum(1)
    return ll.cpu().numpy(), scored.cpu().numpy()


def _bits(ll: float, scored: int) -> float:
    return -ll / scored / math.log(2) if scored else float("nan")


def _soft_mask(model_dir: str | Path) -> str:
    # Scoring must read bases the way training did: lowercase as the base, or as N.
    return check_dna_model(model_dir, "dna-lm")["metadata"].get("soft_mask", "base")


def _load(model_dir: str | Path, device: str | None) -> MambaLM:
    return from_pretrained(model_dir, device=device or default_device()).eval()


@torch.no_grad()
def score_dna(model_dir: str | Path, fasta: list[str], out: str | Path, bed: str | None = None,
              chunk_len: int = 65536, batch_size: int = 8, device: str | None = None,
              on_bases: Callable[[int], None] | None = None) -> dict:
    """Log-likelihood of every record of `fasta` (or every BED interval), written as a TSV to `out`.

    One row per sequence, in input order: name, start, end (0-based half-open), scored_bases,
    log_likelihood (nats, summed over scored bases), bits_per_base. Returns {"rows", "bases",
    "scored_bases", "n_targets" (positions skipped because the target is N), "bits_per_base"
    (over all rows), "out"}. `on_bases(n)` is called as bases are done.
    """
    out = Path(out)
    _check_out(out)
    if chunk_len < 1 or batch_size < 1:
        raise DnaInputError(f"--chunk-len and --batch-size must be >= 1 (got {chunk_len} and {batch_size})")
    soft_mask = _soft_mask(model_dir)
    collection = FastaCollection(fasta)
    # Empty records stay in, as rows with nothing scored, so the output has one row per record.
    regions = regions_of(collection, bed)
    if not regions:
        raise DnaInputError(f"{bed or 'FASTA'}: no records or intervals to score")
    model = _load(model_dir, device)
    ll = np.zeros(len(regions), dtype=np.float64)
    scored = np.zeros(len(regions), dtype=np.int64)
    for index in batches_by_length([r.length for r in regions], batch_size):
        ll[index], scored[index] = _score_batch(model, collection, [regions[i] for i in index], chunk_len,
                                                soft_mask, on_bases)

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("name\tstart\tend\tscored_bases\tlog_likelihood\tbits_per_base\n")
            for r, value, count in zip(regions, ll, scored, strict=True):
                f.write(f"{r.name}\t{r.start}\t{r.end}\t{count}\t{value:.6f}\t{_bits(value, count):.6f}\n")

    atomic_write(out, write)
    bases = sum(r.length for r in regions)
    # Every base but each sequence's first is a target; those not scored were N.
    targets = sum(max(r.length - 1, 0) for r in regions)
    return {"rows": len(regions), "bases": bases, "scored_bases": int(scored.sum()),
            "n_targets": targets - int(scored.sum()), "bits_per_base": _bits(float(ll.sum()), int(scored.sum())),
            "out": str(out)}


@dataclass(frozen=True)
class Variant:
    """One ALT allele at a 1-based position (VCF convention), with where it was read."""

    chrom: str
    pos: int
    ref: str
    alt: str
    line: int


def _open_variants(path: Path):
    return gzip.open(path, "rt") if path.name.endswith(".gz") else open(path)


def read_variants(path: str | Path, collection: FastaCollection) -> list[Variant]:
    """Variants of a `chrom pos ref alt` table or a VCF (.vcf, .vcf.gz), checked against the genome.

    A VCF row with several comma-separated ALTs gives one variant per ALT. Bad rows raise
    `DnaInputError` naming the file and line.
    """
    path = Path(path)
    is_vcf = path.name.endswith((".vcf", ".vcf.gz"))
    if not path.is_file():
        raise DnaInputError(f"{path}: no such variants file")
    variants: list[Variant] = []
    seen_content = False
    try:
        with _open_variants(path) as handle:
            for line_no, raw in enumerate(handle, start=1):
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                fields = line.split("\t") if "\t" in line else line.split()
                # A plain table may open with a column-name line such as `chrom pos ref alt`.
                if not seen_content and not is_vcf and fields[0].lower() == "chrom":
                    seen_content = True
                    continue
                seen_content = True
                variants.extend(_parse_row(path, line_no, fields, is_vcf, collection))
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise DnaInputError(f"{path}: unreadable variants file ({' '.join(str(err).split())})") from None
    if not variants:
        raise DnaInputError(f"{path}: no variants")
    return variants


def _parse_row(path: Path, line_no: int, fields: list[str], is_vcf: bool,
               collection: FastaCollection) -> list[Variant]:
    where = f"{path} line {line_no}"
    need = 5 if is_vcf else 4
    if len(fields) < need:
        columns = "CHROM POS ID REF ALT" if is_vcf else "chrom pos ref alt"
        raise DnaInputError(f"{where}: expected {need} columns ({columns}), got {len(fields)}")
    chrom, pos_text = fields[0], fields[1]
    ref, alts = (fields[3], fields[4].split(",")) if is_vcf else (fields[2], [fields[3]])
    try:
        pos = int(pos_text)
    except ValueError:
        raise DnaInputError(f"{where}: position must be an integer, got {pos_text!r}") from None
    ref = ref.upper()
    for label, allele in (("REF", ref), *(("ALT", a.upper()) for a in alts)):
        if not allele or not set(allele) <= _BASES:
            raise DnaInputError(f"{where}: {label} must be A/C/G/T bases, got {allele!r}")
    if chrom not in collection:
        raise DnaInputError(f"{where}: chromosome '{chrom}' is in none of the FASTA files")
    length = collection.length(chrom)
    if pos < 1 or pos - 1 + len(ref) > length:
        raise DnaInputError(f"{where}: position {pos} (REF {len(ref)} bases) lies outside {chrom} "
                            f"(length {length})")
    genome = collection.fetch(chrom, pos - 1, pos - 1 + len(ref)).upper()
    if genome != ref:
        raise DnaInputError(f"{where}: REF '{ref}' does not match the genome ('{genome}' at {chrom}:{pos})")
    return [Variant(chrom, pos, ref, alt.upper(), line_no) for alt in alts]


def variant_window(variant: Variant, length: int, window: int) -> tuple[int, int]:
    """0-based half-open reference window of `window` bases centred on the variant.

    Clamped to the record [0, length) and widened when REF itself is longer than `window`.
    """
    start0 = variant.pos - 1
    centre = start0 + len(variant.ref) // 2
    start = centre - window // 2
    end = start + window
    return max(0, min(start, start0)), min(length, max(end, start0 + len(variant.ref)))


def _sequence_ll(model: MambaLM, seqs: list[str], soft_mask: str) -> list[float]:
    """Summed log-likelihood of each sequence, first position and N targets excluded; one forward."""
    device = model.lm_head.weight.device
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), N, dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, :len(seq)] = torch.from_numpy(encode(seq, soft_mask))
    ids = ids.to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        hidden = model.hidden_states(ids)
    targets = ids[:, 1:]
    # Right padding cannot reach earlier positions of a causal model, and as N it is never a scored target.
    keep = targets != N
    log_probs = _target_log_probs(model, hidden[:, :-1].float(), targets)
    return torch.where(keep, log_probs, 0.0).double().sum(1).tolist()


@torch.no_grad()
def score_variants(model_dir: str | Path, fasta: list[str], variants: str | Path, out: str | Path,
                   window: int = 1024, batch_size: int = 16, device: str | None = None,
                   on_variant: Callable[[int], None] | None = None) -> dict:
    """Likelihood change of each variant: ll(alt window) - ll(ref window), written as a TSV to `out`.

    `variants` is a `chrom pos ref alt` table (1-based pos) or a VCF. Each variant gets a reference
    window of `window` bases centred on it (clamped to the record); the alt sequence has the same
    flanks with REF replaced by ALT. Columns: chrom, pos, ref, alt, window_start, window_end
    (0-based half-open, reference), ll_ref, ll_alt, delta_ll (nats). `batch_size` counts sequences
    per forward (two per variant). Returns {"rows", "out"}; `on_variant(n)` is called as variants are done.
    """
    out = Path(out)
    _check_out(out)
    if window < 2:
        raise DnaInputError(f"--window must be >= 2 bases (got {window})")
    if batch_size < 1:
        raise DnaInputError(f"--batch-size must be >= 1 (got {batch_size})")
    soft_mask = _soft_mask(model_dir)
    collection = FastaCollection(fasta)
    rows = read_variants(variants, collection)
    model = _load(model_dir, device)
    windows, seqs = [], []
    for v in rows:
        start, end = variant_window(v, collection.length(v.chrom), window)
        ref_seq = collection.fetch(v.chrom, start, end)
        cut = v.pos - 1 - start
        windows.append((start, end))
        seqs += [ref_seq, ref_seq[:cut] + v.alt + ref_seq[cut + len(v.ref):]]
    ll = [0.0] * len(seqs)
    halves_done = [0] * len(rows)  # ref and alt of one variant may land in different batches
    for index in batches_by_length([len(seq) for seq in seqs], batch_size):
        completed = 0
        for i, value in zip(index, _sequence_ll(model, [seqs[i] for i in index], soft_mask), strict=True):
            ll[i] = value
            halves_done[i // 2] += 1
            completed += halves_done[i // 2] == 2
        if on_variant and completed:
            on_variant(completed)

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("chrom\tpos\tref\talt\twindow_start\twindow_end\tll_ref\tll_alt\tdelta_ll\n")
            for k, (v, (start, end)) in enumerate(zip(rows, windows, strict=True)):
                ll_ref, ll_alt = ll[2 * k], ll[2 * k + 1]
                f.write(f"{v.chrom}\t{v.pos}\t{v.ref}\t{v.alt}\t{start}\t{end}\t{ll_ref:.6f}\t{ll_alt:.6f}\t"
                        f"{ll_alt - ll_ref:.6f}\n")

    atomic_write(out, write)
    return {"rows": len(rows), "out": str(out)}
