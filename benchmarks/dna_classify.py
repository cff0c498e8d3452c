"""Species classification accuracy by window length: a Mamba classifier trained from scratch
(`train_classifier`) next to a 4-mer logistic-regression baseline, on the same split and the same
fixed test windows.

Data: a folder of FASTA files, one species each, named by the first 6 characters of the file name
(here the six Drosophila chromosome-4 assemblies: Dmauri, Dmelan, Dsanto, Dseche, Dsimul, Dteiss).
Every record is cut into train | valid | test regions (the last `--valid-fraction` and
`--test-fraction` of each record; `split="region"`).

Measured per window length L:

- Mamba: `--model` (default dna-1.4m) from scratch, `--steps` optimizer steps of
  batch = `--tokens-per-step` // L windows (so every length sees the same number of tokens), AdamW
  at `--lr` with `min(100, steps // 10)` warm-up steps, reverse-complement augmentation, `--pooling`
  head. Reported: test accuracy and macro F1 on `--eval-windows` fixed test windows per species (the
  windows `train_classifier` reports on, RUN_DIR/test/metrics.json), validation accuracy on the
  fixed validation windows, the wall time of the whole `train_classifier` call and the training
  tokens/s = steps x batch x L / that wall time (so it includes data sampling, one validation pass,
  the test pass and saving; a lower bound on the pure training rate), and the peak CUDA memory.
- 4-mer baseline: `--baseline-train-bases` // L training windows (at least 200, at most 4000),
  sampled uniformly from the training regions as the Mamba training stream samples them (a species
  uniformly, then a position; no reverse complement, as the test windows are all forward strand),
  each turned into its 256 4-mer frequencies (only k-mers of A/C/G/T count, upper or lower case under
  the default soft-mask policy; windows above 10% N are redrawn, as in training); StandardScaler + multinomial
  LogisticRegression, C in {0.01, 0.1, 1, 10} chosen by accuracy on the fixed validation windows
  (ties: the smaller C), test accuracy of that fit on the very test windows the Mamba model sees.
  Runs on the CPU; deterministic for a given --seed.

Caveats: fixed windows with more than 10% N are dropped, not replaced (Dmelan keeps 43-60 of 64),
and when a held-out region holds fewer than `--eval-windows` non-overlapping tiles the windows are
evenly spaced and overlap: with the default fractions that starts at L = 4096, and at L = 65536 the
64 test windows of a species come from 3-4 tiles' worth of sequence (validation: 1-2), so long-L
accuracies rest on little independent sequence.

Results: a line per length as it finishes, `OUT/dna_classify.json` (settings, device, versions,
date, one row per length; rewritten after every length), the Mamba runs in `OUT/L{L}/`, and a
markdown table at the end.

GPU (the published Mamba numbers; the baseline rows come along unless --no-baseline):

    python benchmarks/dna_classify.py --data .shared/drosophila6 --out runs/bench_classify \\
        [--lengths 1024,4096,16384,65536] [--steps 600] [--tokens-per-step 262144]

CPU, baseline only (the published baseline numbers):

    python benchmarks/dna_classify.py --data .shared/drosophila6 --baseline-only \\
        --lengths 1024,4096,16384,65536 --eval-windows 64 --out runs/bench_classify_baseline

Quick CPU check of the whole script:

    python benchmarks/dna_classify.py --data .shared/drosophila6 --lengths 256,512 --model tiny \\
        --steps 4 --tokens-per-step 4096 --eval-windows 4 --out /tmp/bench_cls
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mambaseq import __version__
from mambaseq.kernels import triton_version
from mambaseq.metrics import classification_report
from mambaseq.sysinfo import cpu_name
from mambaseq.tasks.dna.classify import ClassifyConfig, train_classifier
from mambaseq.tasks.dna.species import SpeciesGenomes
from mambaseq.tasks.dna.tokenizer import A, T

FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".fa.gz", ".fasta.gz", ".fna.gz")
C_GRID = (0.01, 0.1, 1.0, 10.0)
K = 4


def species_files(folder: str | Path) -> dict[str, Path]:
    """{NAME: PATH} for every FASTA file of `folder` (sorted by file name), NAME = its first 6 characters."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.name.endswith(FASTA_SUFFIXES))
    names = [p.name[:6] for p in files]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if len(files) < 2 or repeated:
        raise SystemExit(f"{folder}: need >= 2 FASTA files whose first 6 characters differ "
                         f"(found {len(files)}; repeated names: {', '.join(repeated) or 'none'})")
    return {name: path.resolve() for name, path in zip(names, files, strict=True)}


def kmer_frequencies(ids: np.ndarray, k: int = K) -> np.ndarray:
    """Token ids (L,) -> frequencies of the 4**k k-mers (float64, summing to 1, or all 0 when none).

    A k-mer counts only when all k positions are A/C/G/T (ids A..T are consecutive, 7..10); k-mers
    touching N or other tokens are skipped rather than guessed.
    """
    codes = ids.astype(np.int64) - A
    valid = (ids >= A) & (ids <= T)
    codes = np.where(valid, codes, 0)  # keeps the index arithmetic in range; masked out below
    n = len(ids) - k + 1
    if n <= 0:
        return np.zeros(4**k)
    index = np.zeros(n, dtype=np.int64)
    ok = np.ones(n, dtype=bool)
    for j in range(k):
        index = index * 4 + codes[j:j + n]
        ok &= valid[j:j + n]
    counts = np.bincount(index[ok], minlength=4**k).astype(np.float64)
    return counts / max(1.0, counts.sum())


def classify_config(args: argparse.Namespace, specs: list[str], L: int) -> ClassifyConfig:
    """The ClassifyConfig of one length; the baseline reads its split from the same object."""
    return ClassifyConfig(
        species=specs, model=args.model, init_from=args.init_from, seq_len=L, warmup_start_len=args.warmup_start_len,
        batch_size=max(1, args.tokens_per_step // L), max_steps=args.steps, lr=args.lr,
        lr_warmup_steps=min(100, args.steps // 10), valid_fraction=args.valid_fraction,
        test_fraction=args.test_fraction, eval_windows=args.eval_windows,
        # Evaluation batches of about 1M tokens: enough to fill a GPU, small at L = 2^16.
        eval_batch_size=max(1, min(64, 2**20 // L)),
        # One validation at the end and one checkpoint: curves are not what this benchmark is for.
        val_every=args.steps, checkpoint_every=args.steps, keep_checkpoints=1, out=str(Path(args.out) / f"L{L}"),
        progress=False, seed=args.seed, pooling=args.pooling, head_norm=args.head_norm, precision=args.precision)


def run_mamba(cfg: ClassifyConfig) -> dict[str, Any]:
    """Train and test one Mamba classifier; accuracy, timing and memory figures."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    tic = time.perf_counter()
    result = train_classifier(cfg)
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - tic
    # With a length warm-up every step still holds batch_size x seq_len tokens (ClassifyBatches keeps
    # the tokens per step fixed), up to the rounding of batch = tokens // length.
    tokens = result.steps * cfg.batch_size * cfg.seq_len
    return {"test_accuracy": result.test["accuracy"], "macro_f1": result.test["macro_f1"],
            "test_windows": result.test["windows"], "valid_accuracy": result.valid_accuracy,
            "steps": result.steps, "batch": cfg.batch_size, "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "run_dir": str(result.run_dir)}


def window_features(genomes: SpeciesGenomes, windows: list, soft_mask: str) -> tuple[np.ndarray, np.ndarray]:
    features = np.stack([kmer_frequencies(genomes.fetch_ids(w.label, w.name, w.start, w.end, soft_mask))
                         for w in windows])
    return features, np.array([w.label for w in windows])


def run_baseline(cfg: ClassifyConfig, train_bases: int) -> dict[str, Any]:
    """4-mer frequency + logistic regression on `cfg`'s split and fixed windows (see the docstring)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    tic = time.perf_counter()
    L = cfg.seq_len
    species = cfg.load_species()
    # Exactly as train_classifier builds them: the same regions, and the same fixed windows
    # (SpeciesGenomes.fixed_windows gives valid and test their own windows of one seed).
    genomes = SpeciesGenomes(species, **cfg.split_kwargs())
    genomes.check_length(L)
    valid = genomes.fixed_windows("valid", L, cfg.eval_windows, cfg.seed, cfg.max_n_frac, cfg.soft_mask)
    test = genomes.fixed_windows("test", L, cfg.eval_windows, cfg.seed, cfg.max_n_frac, cfg.soft_mask)
    # A stream of its own (not one of the training steps' [seed, step] streams used by train_classifier).
    rng = np.random.default_rng([cfg.seed, 12345])
    n_train = min(4000, max(200, train_bases // L))
    train_x, train_y = [], []
    for _ in range(n_train):
        ids, label = genomes.sample(rng, L, cfg.max_n_frac, rc_augment=False, soft_mask=cfg.soft_mask)
        train_x.append(kmer_frequencies(ids))
        train_y.append(label)
    x, y = np.stack(train_x), np.array(train_y)
    valid_x, valid_y = window_features(genomes, valid, cfg.soft_mask)
    test_x, test_y = window_features(genomes, test, cfg.soft_mask)
    fits = {}
    # One BLAS thread: at <= 4000 x 256 the threads only add synchronisation (10x slower on a loaded
    # 2-core machine), and a single thread makes the floating-point sums, hence the fit, reproducible.
    with threadpool_limits(1):
        for C in C_GRID:
            model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000, random_state=0))
            model.fit(x, y)
            fits[C] = (float((model.predict(valid_x) == valid_y).mean()), model)
    best = max(C_GRID, key=lambda C: (fits[C][0], -C))  # ties: the stronger regularisation
    predicted = fits[best][1].predict(test_x)
    report = classification_report(torch.from_numpy(test_y), torch.from_numpy(predicted), genomes.names)
    return {"test_accuracy": report["accuracy"], "macro_f1": report["macro_f1"], "test_windows": report["windows"],
            "valid_accuracy": fits[best][0], "C": best, "valid_accuracy_by_C": {str(C): fits[C][0] for C in C_GRID},
            "train_windows": n_train, "train_per_species": np.bincount(y, minlength=len(genomes.names)).tolist(),
            "wall_s": time.perf_counter() - tic}


def _fmt(value: float | None, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| L | Mamba test acc | macro F1 | 4-mer LR test acc | test windows | steps x batch | tok/s | peak mem |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        m, b = row.get("mamba") or {}, row.get("baseline") or {}
        windows = m.get("test_windows", b.get("test_windows"))
        baseline = f"{b['test_accuracy']:.3f} (C={b['C']:g})" if b else "-"
        steps = f"{m['steps']} x {m['batch']}" if m else "-"
        peak = m.get("peak_mem_gib")
        lines.append(f"| {row['L']:,} | {_fmt(m.get('test_accuracy'), '.3f')} | {_fmt(m.get('macro_f1'), '.3f')} "
                     f"| {baseline} | {windows} | {steps} | {_fmt(m.get('tokens_per_s'), ',.0f')} "
                     f"| {'-' if peak is None else f'{peak:.2f} GiB'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder of FASTA files, one per species")
    parser.add_argument("--lengths", default="1024,4096,16384,65536", help="comma-separated window lengths")
    parser.add_argument("--model", default="dna-1.4m", help="MambaConfig preset")
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps per length")
    parser.add_argument("--tokens-per-step", type=int, default=262144, help="batch = this // L (at least 1)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--valid-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--eval-windows", type=int, default=64, help="fixed valid/test windows per species")
    parser.add_argument("--pooling", default="mean")
    parser.add_argument("--head-norm", default="batch", help="batch | none: pooled features standardized or not")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="folder for dna_classify.json and the runs L{L}/")
    parser.add_argument("--baseline-only", action="store_true", help="skip the Mamba model")
    parser.add_argument("--no-baseline", action="store_true", help="skip the 4-mer baseline")
    parser.add_argument("--baseline-train-bases", type=int, default=50_000_000,
                        help="bases of baseline training windows (their count is clamped to 200..4000)")
    parser.add_argument("--warmup-start-len", type=int, default=None, help="sequence-length warm-up start")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--init-from", default=None,
                        help="pretrained DNA LM folder to start from (trained on the train regions only)")
    args = parser.parse_args()
    if args.baseline_only and args.no_baseline:
        parser.error("--baseline-only and --no-baseline leave nothing to run")
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = species_files(args.data)
    specs = [f"{name}={path}" for name, path in files.items()]
    use_cuda = torch.cuda.is_available() and not args.baseline_only
    document: dict[str, Any] = {
        "benchmark": "dna_classify", "settings": vars(args),
        "data_files": {name: str(p) for name, p in species_files(args.data).items()}, "species": specs,
        "device": torch.cuda.get_device_name() if use_cuda else "cpu", "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(), "load_average_at_start": os.getloadavg(), "torch": torch.__version__,
        "triton": triton_version(), "mambaseq": __version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": []}
    for L in lengths:
        cfg = classify_config(args, specs, L)
        row: dict[str, Any] = {"L": L}
        # The baseline first: it is quick, so a GPU run cut short still has it.
        if not args.no_baseline:
            row["baseline"] = run_baseline(cfg, args.baseline_train_bases)
        if not args.baseline_only:
            row["mamba"] = run_mamba(cfg)
            if "baseline" in row and row["baseline"]["test_windows"] != row["mamba"]["test_windows"]:
                # Both build the windows from the same call; a difference means the two drifted apart.
                row["warning"] = "baseline and Mamba test window counts differ"
        document["rows"].append(row)
        print(json.dumps(row), flush=True)
        (out / "dna_classify.json").write_text(json.dumps(document, indent=2) + "\n")
    print(markdown_table(document["rows"]), flush=True)


if __name__ == "__main__":
    main()
