"""Learning on real data by context length (seed paper, Figure 5, in small): the dna-1.4m model on
the six Drosophila chromosome-4 sequences, trained at L = 2^10 and at a long L with the same
number of tokens per step and in total; validation bits/base curves to JSON (and PNG if
matplotlib is installed).

    python benchmarks/dna_length_curves.py --fasta DIR/*.fna.gz --out OUT [--lengths 1024 32768]
        [--tokens-per-step 131072] [--steps 600]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from mambaseq.tasks.dna.train import DnaTrainConfig, train_dna


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fasta", nargs="+", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 32768])
    parser.add_argument("--tokens-per-step", type=int, default=2**17)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--val-every", type=int, default=100)
    args = parser.parse_args()
    out = Path(args.out)
    summary = {}
    for L in args.lengths:
        cfg = DnaTrainConfig(model="dna-1.4m", fasta=args.fasta, out=str(out / f"L{L}"), seq_len=L,
                             batch_size=max(1, args.tokens_per_step // L), max_steps=args.steps, lr=8e-3,
                             lr_warmup_steps=args.steps // 10, val_every=args.val_every, max_val_windows=None,
                             checkpoint_every=args.steps, keep_checkpoints=1, progress=False)
        result = train_dna(cfg)
        curve = []
        with open(out / f"L{L}" / "logs" / "metrics.csv") as f:
            for row in csv.DictReader(f):
                if row.get("val/bits_per_base"):
                    curve.append((int(row["step"]), float(row["val/bits_per_base"])))
        summary[L] = {"final_bits_per_base": result.valid_bits_per_base, "curve": curve,
                      "tokens": args.steps * cfg.batch_size * L}
        print(json.dumps({"L": L, **summary[L]}), flush=True)
    (out / "length_curves.json").write_text(json.dumps(summary, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    for L, s in summary.items():
        steps, bits = zip(*s["curve"], strict=True)
        plt.plot([st * args.tokens_per_step / 1e6 for st in steps], bits, marker="o", label=f"L = {L}")
    plt.xlabel("tokens (M)")
    plt.ylabel("validation bits/base")
    plt.title("dna-1.4m on Drosophila chr4 (6 species)")
    plt.legend()
    plt.savefig(out / "length_curves.png", dpi=120)


if __name__ == "__main__":
    main()
