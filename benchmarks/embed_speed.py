"""Embedding throughput: bases per second of `embed_dna` (FASTA -> pooled embedding file) and of the
bare model forward over the same bases, so the difference is the cost of everything around the model.

Measured, each as the median of `--repeats` runs after one warm-up that is not counted:

- `embed_dna`: the whole public call, as `mambaseq embed dna` makes it: loading the model folder,
  opening the FASTA index, reading and encoding `--chunk-len` bases at a time, the forward with the
  recurrent state carried across chunks (bf16 autocast on CUDA), pooling (`--pool`) and writing the
  .npy (+ .tsv index; .h5 for `--pool none`). bases/s = bases embedded / wall time.
- forward: `model.hidden_states` over the same records, batched and chunked as `embed_dna` batches
  and chunks them (records sorted by length, `--batch-size` per batch, padded with N to the
  longest; the state carried across chunks), with the token ids already encoded and on the device:
  no FASTA reading, no encoding, no pooling, no writing.

The warm-up embeds, and forwards, the first `chunk_len + length % chunk_len` bases of every
record, so Triton kernels are compiled for (for a single-record file: exactly) the chunk shapes of
the timed runs, and the FASTA index and caches exist before timing. On CUDA the clock is read after
`torch.cuda.synchronize()`; peak memory is `torch.cuda.max_memory_allocated` per phase.

Default model: a randomly initialised dna-1.4m `MambaLM` (vocab 12, seed 0) saved to a temporary
folder with metadata {"task": "dna-lm", "soft_mask": "base"}; the weights do not change the speed.
Default FASTA: the first file of .shared/drosophila6 (Drosophila mauritiana chr4, 1.16 Mb).

GPU:

    python benchmarks/embed_speed.py --out runs/embed_speed [--model DIR] [--fasta FILE]
        [--chunk-len 65536] [--batch-size 8] [--pool mean] [--repeats 3]

Quick CPU check (the first 200,000 bases only):

    python benchmarks/embed_speed.py --bases 200000 --device cpu --out /tmp/embed_speed
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mambaseq import __version__
from mambaseq.checkpoint import from_pretrained, save_pretrained
from mambaseq.config import MambaConfig
from mambaseq.kernels import triton_version
from mambaseq.models import MambaLM
from mambaseq.sysinfo import cpu_name
from mambaseq.tasks.dna.embed import embed_dna
from mambaseq.tasks.dna.fasta import FastaCollection, Interval
from mambaseq.tasks.dna.model_dir import check_dna_model
from mambaseq.tasks.dna.tokenizer import N, encode

DATA = Path(__file__).resolve().parents[1] / ".shared" / "drosophila6"


def default_fasta() -> Path:
    files = sorted(p for p in DATA.glob("*") if p.name.endswith((".fa", ".fna", ".fasta", ".fa.gz", ".fna.gz")))
    if not files:
        raise SystemExit(f"no FASTA files in {DATA}; pass --fasta")
    return files[0]


def random_model_dir(folder: Path, preset: str = "dna-1.4m") -> Path:
    """A randomly initialised DNA LM (seed 0) saved as a model folder `embed_dna` accepts."""
    torch.manual_seed(0)
    model = MambaLM(MambaConfig.from_preset(preset, vocab_size=12))
    return save_pretrained(model, folder, metadata={"task": "dna-lm", "soft_mask": "base"})


def truncated_fasta(source: Path, bases: int, folder: Path) -> Path:
    """The first `bases` bases of the first record of `source`, as a plain FASTA in `folder`."""
    collection = FastaCollection([source])
    record = collection.records[0]
    seq = collection.fetch(record.name, 0, min(bases, record.length))
    path = folder / f"first{len(seq)}.fa"
    with open(path, "w") as f:
        f.write(f">{record.name} first {len(seq)} bases of {source.name}\n")
        f.writelines(seq[i:i + 60] + "\n" for i in range(0, len(seq), 60))
    return path


def warmup_regions(collection: FastaCollection, chunk_len: int) -> list[Interval]:
    # A full chunk plus the tail: the two chunk widths a single-record run uses.
    return [Interval(r.name, 0, min(r.length, chunk_len + r.length % chunk_len))
            for r in collection.records if r.length]


def write_bed(regions: list[Interval], path: Path) -> Path:
    path.write_text("".join(f"{r.name}\t{r.start}\t{r.end}\n" for r in regions))
    return path


def id_batches(collection: FastaCollection, regions: list[Interval], batch_size: int, soft_mask: str,
               device: torch.device) -> list[torch.Tensor]:
    """Token ids grouped as `embed_dna` groups records: longest first, N-padded to the batch's longest."""
    order = sorted(regions, key=lambda r: -r.length)
    batches = []
    for i in range(0, len(order), batch_size):
        group = order[i:i + batch_size]
        ids = np.full((len(group), max(r.length for r in group)), N, dtype=np.int64)
        for row, r in enumerate(group):
            ids[row, :r.length] = encode(collection.fetch(r.name, r.start, r.end), soft_mask)
        batches.append(torch.from_numpy(ids).to(device))
    return batches


@torch.no_grad()
def forward_all(model: MambaLM, batches: list[torch.Tensor], chunk_len: int) -> None:
    """The model work of `embed_dna` alone: chunked `hidden_states` with the state carried over."""
    device = model.lm_head.weight.device
    for ids in batches:
        cache = model.allocate_cache(ids.shape[0])
        for offset in range(0, ids.shape[1], chunk_len):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                model.hidden_states(ids[:, offset:offset + chunk_len], cache=cache)


def timed(fn: Callable[[], Any], cuda: bool) -> float:
    """Wall seconds of `fn()`; on CUDA the queued kernels are finished before each clock read."""
    if cuda:
        torch.cuda.synchronize()
    tic = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - tic


def measure(fn: Callable[[], Any], repeats: int, bases: int, cuda: bool) -> dict[str, Any]:
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = [timed(fn, cuda) for _ in range(repeats)]
    median = statistics.median(seconds)
    return {"seconds": seconds, "median_s": median, "bases_per_s": bases / median,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_name()


def markdown_table(doc: dict[str, Any]) -> str:
    e, f = doc["embed_dna"], doc["forward"]

    def mem(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f} GiB"

    return "\n".join([
        "| device | model | bases | chunk x batch | pool | embed_dna bases/s | forward bases/s "
        "| embed_dna / forward time | peak mem (embed / forward) |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {doc['device_name']} | {doc['model_name']} | {doc['bases']:,} | {doc['settings']['chunk_len']:,} x "
        f"{doc['settings']['batch_size']} | {doc['settings']['pool']} | {e['bases_per_s']:,.0f} "
        f"| {f['bases_per_s']:,.0f} | {e['median_s'] / f['median_s']:.2f} | {mem(e['peak_mem_gib'])} / "
        f"{mem(f['peak_mem_gib'])} |"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a DNA LM folder (default: a random dna-1.4m model)")
    parser.add_argument("--fasta", help="FASTA file (default: the first file of .shared/drosophila6)")
    parser.add_argument("--bases", type=int, help="embed only the first N bases of the first record")
    parser.add_argument("--chunk-len", type=int, default=65536)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pool", default="mean", help="mean | max | first | last | none")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", required=True, help="folder for embed_speed.json")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="embed_speed_") as tmp_name:
        tmp = Path(tmp_name)
        model_dir = Path(args.model) if args.model else random_model_dir(tmp / "model")
        fasta = Path(args.fasta) if args.fasta else default_fasta()
        if args.bases:
            fasta = truncated_fasta(fasta, args.bases, tmp)
        soft_mask = check_dna_model(model_dir)["metadata"].get("soft_mask", "base")
        collection = FastaCollection([fasta])
        regions = [Interval(r.name, 0, r.length) for r in collection.records if r.length]
        bases = sum(r.length for r in regions)
        warm = warmup_regions(collection, args.chunk_len)
        embedding = tmp / ("embedding.h5" if args.pool == "none" else "embedding.npy")

        def embed(bed: str | None = None) -> dict:
            return embed_dna(model_dir, [str(fasta)], embedding, bed=bed, pool=args.pool, chunk_len=args.chunk_len,
                             batch_size=args.batch_size, device=args.device)

        embed(str(write_bed(warm, tmp / "warmup.bed")))
        embed_stats = measure(embed, args.repeats, bases, cuda)
        model = from_pretrained(model_dir, device=args.device).eval()
        device = model.lm_head.weight.device
        # Encoded and copied to the device before the clock starts: this phase is the model alone.
        forward_all(model, id_batches(collection, warm, args.batch_size, soft_mask, device), args.chunk_len)
        batches = id_batches(collection, regions, args.batch_size, soft_mask, device)
        forward_stats = measure(lambda: forward_all(model, batches, args.chunk_len), args.repeats, bases, cuda)
        doc = {
            "benchmark": "embed_speed", "settings": vars(args),
            "model_name": str(args.model) if args.model else "dna-1.4m (random init)",
            "parameters": model.num_parameters(), "fasta": str(args.fasta or default_fasta()),
            "records": len(regions), "bases": bases, "device": args.device, "device_name": device_name(args.device),
            "cpu_threads": torch.get_num_threads(), "load_average_at_end": os.getloadavg(),
            "torch": torch.__version__, "triton": triton_version(), "mambaseq": __version__,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "embed_dna": embed_stats, "forward": forward_stats,
            "embed_over_forward_time": embed_stats["median_s"] / forward_stats["median_s"]}
    (out / "embed_speed.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: doc[k] for k in ("bases", "embed_dna", "forward")}), flush=True)
    print(markdown_table(doc), flush=True)


if __name__ == "__main__":
    main()
