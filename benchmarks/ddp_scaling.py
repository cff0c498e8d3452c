"""Data-parallel scaling of `train_dna`: training tokens/s on 1 GPU and on N GPUs (DDP) with the same
global batch, at L = 2^16 and 2^20; scaling efficiency = tokens/s(N) / (N x tokens/s(1)).

Each run is `train_dna` itself (dna-1.4m, bf16 autocast, Triton kernels) in a fresh process: on N
GPUs with `devices=N, strategy=ddp` (Lightning starts ranks 1..N-1 by running this script again),
on one GPU with the same global batch through gradient accumulation (`micro_batch_size`: N
micro-steps per optimizer step). Per GPU and micro-step: `--tokens-per-gpu` tokens (default 2^20:
16 windows at 2^16, 1 at 2^20); global batch = N x that. Tokens/s: the `tok/s` column of the run's
logs/metrics.csv (global tokens of a step / wall time from the previous step, rank 0, data loading
in 2 workers per rank), over the steps after `--warmup` (Triton compilation, allocator warm-up),
as total tokens / total time. Validation (2 windows) and one checkpoint come after the last step
and are not timed.

Data: `--fasta` files, or a synthetic genome (4 random records of 4 Mb, written under --out).

Made for one unattended run under 10 minutes on a 2-GPU machine: runs go from the cheapest on, a
line is printed as each finishes, the JSON (`--out`/ddp_scaling.json, or --json) is rewritten after
every run, each run has a time limit (--run-timeout) and runs that would start after --budget
seconds are skipped (recorded as such).

    python benchmarks/ddp_scaling.py --gpus 2 --out runs/ddp_scaling [--fasta hg38.fa.gz]

CPU check of the mechanics (gloo, tiny model):

    python benchmarks/ddp_scaling.py --accelerator cpu --model tiny --lengths 256 --tokens-per-gpu 1024 \\
        --steps 4 --warmup 1 --out /tmp/ddp_scaling
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np


def synthetic_genome(path: Path, records: int = 4, length: int = 4 << 20) -> Path:
    """Random ACGT records, long enough for windows of 2^20 in the training regions (95% of each)."""
    if not path.exists():
        rng = np.random.default_rng(0)
        with open(path, "w") as f:
            for i in range(records):
                seq = np.frombuffer(b"ACGT", dtype=np.uint8)[rng.integers(0, 4, length)].tobytes().decode()
                f.write(f">synthetic{i}\n")
                f.writelines(seq[j:j + 80] + "\n" for j in range(0, length, 80))
    return path


def worker(fields: dict[str, Any]) -> None:
    """One training run (also run by every further rank, started by Lightning with the same arguments)."""
    from mambaseq.tasks.dna.train import DnaTrainConfig, train_dna

    train_dna(DnaTrainConfig.from_recipe("hg38-1.4m", **fields))


def tokens_per_second(run_dir: Path, warmup: int) -> tuple[float, int]:
    """Total tokens / total time over the steps after `warmup` (every step has the same tokens)."""
    rates = []
    with open(run_dir / "logs" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get("tok/s") and int(row["step"]) >= warmup:
                rates.append(float(row["tok/s"]))
    if not rates:
        raise RuntimeError(f"{run_dir}: no tok/s rows after step {warmup} in logs/metrics.csv")
    return len(rates) / sum(1 / r for r in rates), len(rates)


def run(args: argparse.Namespace, fasta: list[str], seq_len: int, devices: int, gpus: int) -> dict[str, Any]:
    """train_dna on `devices` devices with the global batch of `gpus` devices; tokens/s from its log."""
    micro = max(1, args.tokens_per_gpu // seq_len)
    out = Path(args.out) / f"L{seq_len}_devices{devices}"
    # warmup_start_len = seq_len: no length warmup (every step at L).
    fields = dict(fasta=fasta, out=str(out), model=args.model, seq_len=seq_len, warmup_start_len=seq_len,
                  batch_size=micro * gpus, micro_batch_size=micro, devices=devices, num_nodes=1,
                  strategy="ddp" if devices > 1 else "auto", accelerator=args.accelerator,
                  max_steps=args.steps, lr_warmup_steps=1, val_every=args.steps, checkpoint_every=args.steps,
                  max_val_windows=2, log_every=1, num_workers=2, progress=False,
                  checkpoint_activations=args.checkpoint_activations)
    if not args.fasta:  # the synthetic records' last 30% hold a validation window of 2^20
        fields["valid_fraction"] = 0.3
    row: dict[str, Any] = {"seq_len": seq_len, "devices": devices, "global_batch": micro * gpus,
                           "micro_batch_per_device": micro, "accumulate": gpus // devices,
                           "tokens_per_step": micro * gpus * seq_len}
    tic = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "4")}
    try:
        done = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(fields)],
                              env=env, capture_output=True, text=True, timeout=args.run_timeout)
        row["wall_s"] = round(time.perf_counter() - tic, 1)
        if done.returncode:
            row["error"] = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
            (out.parent / f"L{seq_len}_devices{devices}.stderr.txt").write_text(done.stderr)
            return row
        row["tokens_per_s"], row["measured_steps"] = tokens_per_second(out, args.warmup)
    except subprocess.TimeoutExpired:
        row["wall_s"] = round(time.perf_counter() - tic, 1)
        row["error"] = f"timed out after {args.run_timeout} s"
    except RuntimeError as err:
        row["error"] = str(err)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--gpus", type=int, default=2, help="N: devices of the multi-device runs")
    parser.add_argument("--lengths", default=f"{2**16},{2**20}")
    parser.add_argument("--fasta", nargs="*", help="FASTA files (default: a synthetic genome)")
    parser.add_argument("--model", default="dna-1.4m")
    parser.add_argument("--tokens-per-gpu", type=int, default=2**20, help="tokens per device per micro-step")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=4, help="steps left out of the measurement")
    parser.add_argument("--checkpoint-activations", action="store_true")
    parser.add_argument("--accelerator", default="gpu")
    parser.add_argument("--run-timeout", type=int, default=240, help="seconds per run")
    parser.add_argument("--budget", type=int, default=540, help="start no run after this many seconds")
    parser.add_argument("--out", default="runs/ddp_scaling")
    parser.add_argument("--json", help="results file (default OUT/ddp_scaling.json)")
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return

    import torch

    start = time.perf_counter()
    if args.accelerator == "gpu" and torch.cuda.device_count() < args.gpus:
        sys.exit(f"--gpus {args.gpus}: only {torch.cuda.device_count()} CUDA devices visible")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    fasta = args.fasta or [str(synthetic_genome(Path(args.out) / "synthetic.fa"))]
    result_path = Path(args.json or Path(args.out) / "ddp_scaling.json")
    result: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0) if args.accelerator == "gpu" else "cpu",
        "gpus": args.gpus, "torch": torch.__version__, "model": args.model, "fasta": fasta,
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "fasta")}, "runs": [],
        "efficiency": {}}
    print(f"# {result['device']} x {args.gpus}, {args.model}, {args.steps} steps per run "
          f"({args.warmup} warm-up), {args.tokens_per_gpu} tokens per device per micro-step", flush=True)
    for seq_len in (int(x) for x in args.lengths.split(",")):
        rates = {}
        for devices in (1, args.gpus):
            if time.perf_counter() - start > args.budget:
                row = {"seq_len": seq_len, "devices": devices, "error": f"skipped: past --budget {args.budget} s"}
            else:
                row = run(args, fasta, seq_len, devices, args.gpus)
            result["runs"].append(row)
            rates[devices] = row.get("tokens_per_s")
            shown = f"{row['tokens_per_s']:,.0f} tokens/s" if "tokens_per_s" in row else row["error"]
            print(f"L={seq_len} devices={devices} global_batch={row.get('global_batch')} "
                  f"accumulate={row.get('accumulate')}: {shown} (wall {row.get('wall_s')} s)", flush=True)
            result_path.write_text(json.dumps(result, indent=2) + "\n")
        if rates.get(1) and rates.get(args.gpus):
            efficiency = rates[args.gpus] / (args.gpus * rates[1])
            result["efficiency"][str(seq_len)] = round(efficiency, 4)
            print(f"L={seq_len}: scaling efficiency {efficiency:.1%} "
                  f"({'meets' if efficiency >= 0.9 else 'below'} the 90% target)", flush=True)
        result_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"# results: {result_path} ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
