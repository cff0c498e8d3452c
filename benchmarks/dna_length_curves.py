"""Learning on real data by context length (seed paper, Figure 5, in small): the dna-1.4m model on
the six Drosophila chromosome-4 sequences, trained at L = 2^10 and at a long L with the same
number of tokens per step and in total; validation bits/base curves to JSON (and PNG if
matplotlib is installed).

    python benchmarks/dna_length_curves.py --fasta DIR/*.fna.gz --out OUT [--lengths 1024 32768]
        [--tokens-per-step 131072] [--steps 600] [--seeds 0 1 2] [--warmup-start-len 1024]

With several seeds each length is trained once per seed (data order and initialisation); the JSON
holds every run and the plot the mean curve with the runs' range. `--merge A.json B.json ...` joins
the runs of earlier outputs (also the one-run-per-length JSON of the first version) and plots them,
without training. `--position-eval-len N` also scores every trained model on the validation regions in
windows of N bases, by context length within the window (`mambaseq eval dna --by-position`): whether
a model uses context beyond its training length, and how the lengths compare position by position.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from mambaseq.tasks.dna.evaluate import evaluate_dna
from mambaseq.tasks.dna.fasta import FastaCollection
from mambaseq.tasks.dna.train import DnaTrainConfig, train_dna
from mambaseq.tasks.dna.windows import split_regions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fasta", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 32768])
    parser.add_argument("--tokens-per-step", type=int, default=2**17)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--val-every", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--merge", nargs="+", help="earlier length_curves.json files to join and plot")
    parser.add_argument("--warmup-start-len", type=int,
                        help="sequence-length warmup for longer lengths: doubling from this (same tokens per step)")
    parser.add_argument("--warmup-stage-steps", type=int, default=50)
    parser.add_argument("--position-eval-len", type=int,
                        help="also score each trained model on validation windows of this length, by context length")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        summary = merge([json.loads(Path(p).read_text()) for p in args.merge])
        (out / "length_curves.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps(table(summary), indent=2))
        plot(summary, args.tokens_per_step, out / "length_curves.png")
        return
    if not args.fasta:
        parser.error("--fasta is required unless --merge is given")
    summary = {}
    for L in args.lengths:
        warm = args.warmup_start_len if args.warmup_start_len and L > args.warmup_start_len else None
        key = f"{L} (warmup from {warm})" if warm else str(L)
        for seed in args.seeds:
            run = out / (f"L{L}" + (f"_warm{warm}" if warm else "") + (f"_seed{seed}" if seed else ""))
            cfg = DnaTrainConfig(model="dna-1.4m", fasta=args.fasta, out=str(run), seq_len=L,
                                 batch_size=max(1, args.tokens_per_step // L), max_steps=args.steps, lr=8e-3,
                                 lr_warmup_steps=args.steps // 10, val_every=args.val_every, max_val_windows=None,
                                 checkpoint_every=args.steps, keep_checkpoints=1, progress=False, seed=seed,
                                 warmup_start_len=warm, warmup_stage_steps=args.warmup_stage_steps)
            result = train_dna(cfg)
            curve = []
            with open(run / "logs" / "metrics.csv") as f:
                for row in csv.DictReader(f):
                    if row.get("val/bits_per_base"):
                        curve.append((int(row["step"]), float(row["val/bits_per_base"])))
            entry = {"seed": seed, "final_bits_per_base": result.valid_bits_per_base, "curve": curve,
                     "tokens": args.steps * cfg.batch_size * L}
            if args.position_eval_len:
                bed = out / "validation.bed"
                if not bed.exists():  # the held-out ends of the records, as training split them
                    regions = split_regions(FastaCollection(args.fasta), None, "region", cfg.valid_fraction)
                    bed.write_text("".join(f"{i.name}\t{i.start}\t{i.end}\n" for i in regions.valid))
                scored = evaluate_dna(result.model_dir, args.fasta, str(bed), args.position_eval_len,
                                      by_position=True, batch_size=1)
                entry["by_position"] = {"seq_len": args.position_eval_len, "bits_per_base": scored["bits_per_base"],
                                        "bands": scored["by_position"]}
            summary.setdefault(key, []).append(entry)
            print(json.dumps({"L": key, **entry}), flush=True)
    (out / "length_curves.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(table(summary), indent=2))
    plot(summary, args.tokens_per_step, out / "length_curves.png")


def merge(reports: list[dict]) -> dict[str, list[dict]]:
    """Runs by length from several outputs; a one-run-per-length report (the first version of this
    script) counts as seed 0."""
    merged: dict[str, list[dict]] = {}
    for report in reports:
        for L, runs in report.items():
            for run in runs if isinstance(runs, list) else [{"seed": 0, **runs}]:
                merged.setdefault(str(L), []).append(run)
    return merged


def table(summary: dict) -> dict:
    """Final bits/base per length: each seed's, the mean, and per seed the difference from the first
    length (same seed: same initialisation and data order)."""
    finals = {str(L): {r["seed"]: r["final_bits_per_base"] for r in runs} for L, runs in summary.items()}
    first = next(iter(finals.values()))
    return {L: {"per_seed": by_seed, "mean": sum(by_seed.values()) / len(by_seed),
                "minus_first_length": {s: v - first[s] for s, v in by_seed.items() if s in first}}
            for L, by_seed in finals.items()}


def plot(summary: dict, tokens_per_step: int, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    for L, runs in summary.items():
        steps = [st for st, _ in runs[0]["curve"]]
        per_step = list(zip(*([bits for _, bits in r["curve"]] for r in runs), strict=True))
        tokens = [st * tokens_per_step / 1e6 for st in steps]
        plt.plot(tokens, [sum(b) / len(b) for b in per_step], marker="o", label=f"L = {L} ({len(runs)} runs)")
        if len(runs) > 1:
            plt.fill_between(tokens, [min(b) for b in per_step], [max(b) for b in per_step], alpha=0.2)
    plt.xlabel("tokens (M)")
    plt.ylabel("validation bits/base")
    plt.title("dna-1.4m on Drosophila chr4 (6 species)")
    plt.legend()
    plt.savefig(path, dpi=120)
    plt.close()


if __name__ == "__main__":
    main()
