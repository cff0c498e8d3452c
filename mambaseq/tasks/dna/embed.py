"""`mambaseq embed dna`: embeddings of records or BED intervals, streamed through the model.

A sequence of any length goes through the model `chunk_len` bases at a time with the recurrent
state carried from chunk to chunk, so memory depends on the chunk, not on the record, and the
result equals one forward over the whole sequence. Short sequences are batched (sorted by length;
right padding cannot reach earlier positions of a causal model and is left out of the pooling).

Pooling: mean, max, first, last (one vector per sequence) or none (one vector per base, HDF5).
Output by extension: .npy (plus a .tsv index of name/start/end), .parquet, .h5.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from ...checkpoint import from_pretrained
from ...fileio import atomic_write
from ...models import MambaLM
from ...sysinfo import default_device
from .fasta import DnaInputError, FastaCollection, Interval, regions_of
from .model_dir import check_dna_model
from .tokenizer import N, encode

POOLS = ("mean", "max", "first", "last", "none")
FORMATS = (".npy", ".parquet", ".h5")


def batches_by_length(lengths: list[int], batch_size: int) -> Iterator[list[int]]:
    """Indices in batches of `batch_size`, longest first, so a batch's lengths are close (little padding)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for i in range(0, len(order), batch_size):
        yield order[i:i + batch_size]


@torch.no_grad()
def stream_hidden(model: MambaLM, collection: FastaCollection, regions: list[Interval], chunk_len: int,
                  soft_mask: str = "base") -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Hidden states of a batch of regions, one chunk at a time.

    Yields (offset, ids (batch, chunk) long, hidden (batch, chunk, d_model) float32, valid (batch,
    chunk) bool), all on the model's device, in order of position; the model's state is carried
    across chunks. Padding past a region's end is N.
    """
    device = model.lm_head.weight.device
    longest = max(r.length for r in regions)
    cache = model.allocate_cache(len(regions))
    for offset in range(0, longest, chunk_len):
        width = min(chunk_len, longest - offset)
        ids = torch.full((len(regions), width), N, dtype=torch.long)
        valid = torch.zeros(len(regions), width, dtype=torch.bool)
        for row, region in enumerate(regions):
            end = min(region.end, region.start + offset + width)
            if region.start + offset < end:
                seq = collection.fetch(region.name, region.start + offset, end)
                ids[row, :len(seq)] = torch.from_numpy(encode(seq, soft_mask))
                valid[row, :len(seq)] = True
        ids = ids.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            hidden = model.hidden_states(ids, cache=cache)
        yield offset, ids, hidden.float(), valid.to(device)


class _Pooler:
    def __init__(self, pool: str, batch: int, d_model: int, device: torch.device) -> None:
        self.pool = pool
        fill = float("-inf") if pool == "max" else 0.0
        self.value = torch.full((batch, d_model), fill, device=device)
        self.count = torch.zeros(batch, 1, device=device)

    def add(self, offset: int, hidden: torch.Tensor, valid: torch.Tensor) -> None:
        mask = valid.unsqueeze(-1)
        if self.pool == "mean":
            self.value += (hidden * mask).sum(1)
        elif self.pool == "max":
            self.value = torch.maximum(self.value, hidden.masked_fill(~mask, float("-inf")).amax(1))
        elif self.pool == "first" and offset == 0:
            self.value = hidden[:, 0].clone()
        elif self.pool == "last":
            n_valid = valid.sum(1)
            rows = n_valid > 0
            last = hidden[torch.arange(hidden.shape[0], device=hidden.device), (n_valid - 1).clamp(min=0)]
            self.value[rows] = last[rows]
        self.count += valid.sum(1, keepdim=True)

    def result(self) -> torch.Tensor:
        return self.value / self.count.clamp(min=1) if self.pool == "mean" else self.value


def _regions(collection: FastaCollection, bed: str | None) -> tuple[list[Interval], list[str]]:
    """(non-empty records or intervals, names of the empty ones: they have no bases to embed)."""
    regions = regions_of(collection, bed)
    empty = [r.name for r in regions if r.length == 0]
    regions = [r for r in regions if r.length > 0]
    if not regions:
        raise DnaInputError(f"{bed or 'FASTA'}: no non-empty records or intervals to embed")
    return regions, empty


def _check_out(out: Path, pool: str) -> None:
    if pool not in POOLS:
        raise DnaInputError(f"--pool must be one of {', '.join(POOLS)}, got '{pool}'")
    if out.suffix not in FORMATS:
        raise DnaInputError(f"{out}: output must end in {', '.join(FORMATS)}")
    if pool == "none" and out.suffix != ".h5":
        raise DnaInputError(f"{out}: per-base embeddings (--pool none) are written as HDF5: use a .h5 file")


def embed_dna(model_dir: str | Path, fasta: list[str], out: str | Path, bed: str | None = None,
              pool: str = "mean", chunk_len: int = 65536, batch_size: int = 8, device: str | None = None,
              on_bases: Callable[[int], None] | None = None) -> dict:
    """Embed every record of `fasta` (or every BED interval) and write the result to `out`.

    Rows are keyed by record name and 0-based half-open coordinates, in input order; empty records
    get no row and are listed under "skipped_empty". Returns {"rows", "dim", "bases", "pool", "out",
    "skipped_empty"}. `on_bases(n)` is called as bases are done.
    """
    out = Path(out)
    _check_out(out, pool)
    if chunk_len < 1 or batch_size < 1:
        raise DnaInputError(f"--chunk-len and --batch-size must be >= 1 (got {chunk_len} and {batch_size})")
    soft_mask = check_dna_model(model_dir)["metadata"].get("soft_mask", "base")
    collection = FastaCollection(fasta)
    regions, empty = _regions(collection, bed)
    device = device or default_device()
    model = from_pretrained(model_dir, device=device).eval()
    d_model = model.config.d_model
    if pool == "none":
        _write_h5_per_base(out, model, collection, regions, chunk_len, batch_size, soft_mask, on_bases)
    else:
        pooled = np.zeros((len(regions), d_model), dtype=np.float32)
        for index in batches_by_length([r.length for r in regions], batch_size):
            batch = [regions[i] for i in index]
            pooler = _Pooler(pool, len(batch), d_model, torch.device(device))
            for offset, _, hidden, valid in stream_hidden(model, collection, batch, chunk_len, soft_mask):
                pooler.add(offset, hidden, valid)
                if on_bases:
                    on_bases(int(valid.sum()))
            pooled[index] = pooler.result().cpu().numpy()
        _write_pooled(out, pooled, regions)
    return {"rows": len(regions), "dim": d_model, "bases": sum(r.length for r in regions), "pool": pool,
            "out": str(out), "skipped_empty": empty}


def _index_columns(regions: list[Interval]) -> dict:
    return {"name": [r.name for r in regions], "start": [r.start for r in regions], "end": [r.end for r in regions]}


def _write_pooled(out: Path, pooled: np.ndarray, regions: list[Interval]) -> None:
    columns = _index_columns(regions)
    if out.suffix == ".npy":
        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.save(f, pooled)

        def write_index(tmp: str) -> None:
            with open(tmp, "w") as f:
                f.write("row\tname\tstart\tend\n")
                for i, r in enumerate(regions):
                    f.write(f"{i}\t{r.name}\t{r.start}\t{r.end}\n")

        atomic_write(out, write)
        atomic_write(out.with_suffix(".tsv"), write_index)
    elif out.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        embedding = pa.FixedSizeListArray.from_arrays(pa.array(pooled.reshape(-1)), pooled.shape[1])
        table = pa.table({**columns, "embedding": embedding})
        atomic_write(out, lambda tmp: pq.write_table(table, tmp))
    else:
        import h5py

        def write(tmp: str) -> None:
            with h5py.File(tmp, "w") as f:
                _h5_index(f, regions)
                f.create_dataset("embedding", data=pooled)

        atomic_write(out, write)


def _h5_index(f, regions: list[Interval]) -> None:
    import h5py

    columns = _index_columns(regions)
    f.create_dataset("name", data=columns["name"], dtype=h5py.string_dtype())
    f.create_dataset("start", data=np.array(columns["start"], dtype=np.int64))
    f.create_dataset("end", data=np.array(columns["end"], dtype=np.int64))


def _write_h5_per_base(out: Path, model: MambaLM, collection: FastaCollection, regions: list[Interval],
                       chunk_len: int, batch_size: int, soft_mask: str, on_bases: Callable[[int], None] | None) -> None:
    import h5py

    d_model = model.config.d_model

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            _h5_index(f, regions)
            group = f.create_group("per_base")
            for index in batches_by_length([r.length for r in regions], batch_size):
                batch = [regions[i] for i in index]
                sets = [group.create_dataset(str(i), shape=(regions[i].length, d_model), dtype=np.float32,
                                             chunks=(min(regions[i].length, 4096), d_model)) for i in index]
                for offset, _, hidden, valid in stream_hidden(model, collection, batch, chunk_len, soft_mask):
                    hidden = hidden.cpu().numpy()
                    for row, dataset in enumerate(sets):
                        n = int(valid[row].sum())
                        if n:
                            dataset[offset:offset + n] = hidden[row, :n]
                    if on_bases:
                        on_bases(int(valid.sum()))
            for i, r in enumerate(regions):
                group[str(i)].attrs.update(name=r.name, start=r.start, end=r.end)

    atomic_write(out, write)
