"""Audio generation throughput of `sample_stream`: samples per second per stream and over all
streams, with and without CUDA graphs, for a SaShiMi U-Net and a plain Mamba LM of similar size.

Targets (issue 6, on an H100): batch 1 >= 16,000 samples/s (faster than real time at 16 kHz),
batch 256 >= 2,000,000 samples/s over all streams.

Models: the sashimi-sc09 preset (6.25M parameters; random weights unless --model DIR: the speed does
not depend on them) and a MambaLM of about the same size (d_model 256, 14 blocks, 256 classes).
Every stream starts from one silence sample, as `generate audio` without a prompt does.

Each row: one warm-up call (compiles the Triton kernels, settles cuBLAS and estimates the speed),
then `--repeats` timed calls; the figures are medians of the timed calls' sampling loop
(`StreamSample.timings["loop"]`: from after prefill and graph capture to the last sample, between
device synchronisations). The setup (prefill + warm-up + capture) is reported apart; it is paid once
per call, whatever its length. Samples per call: `--seconds` of audio at 16 kHz, cut down where one
call would take longer than `--max-call-seconds` (eager rows at batch 1 on a GPU run a few hundred
samples per second), and always a whole number of chunks. Rows run graph-first (the targets), and
the whole run stops starting new rows after `--budget` seconds; every finished row is printed at once
and the JSON rewritten, so a killed run still leaves its results. Peak memory: CUDA's
max_memory_allocated over the timed calls.

Stack step: every row runs with the fused stack step (`--stack-step on`: each stack of Mamba blocks
in one `mamba_stack_step` launch, MAMBASEQ_STACK_STEP=1), the block-by-block step (`off`, =0), the
models' own choice (`default`, unset: SashimiLM fuses its stacks up to d_model 128), `both` (on and
off) or, by default, `all` three, one row each; the row's "stack_step" field and table column say which.
`--stack-block-b` fixes the kernel's rows per program (MAMBASEQ_STACK_BLOCK_B) instead of its heuristic.

GPU (about 3-6 minutes):

    python benchmarks/audio_generate.py --device cuda --stack-step both --out runs/audio_generate.json

Quick CPU check:

    python benchmarks/audio_generate.py --device cpu --batch-sizes 1 --seconds 0.1 --repeats 1 \\
        --out /tmp/audio_generate.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from mambaseq import __version__
from mambaseq.config import MambaConfig
from mambaseq.generation import SamplingConfig, sample_stream
from mambaseq.kernels import backend_for, triton_version
from mambaseq.models import MambaLM, SashimiConfig, SashimiLM
from mambaseq.models.stack_step import ENV_VAR as STACK_STEP_ENV
from mambaseq.sysinfo import cpu_name

RATE = 16000
SILENCE = 128  # mu-law 8-bit id of 0.0
TARGETS = {1: 16_000, 256: 2_000_000}  # aggregate samples/s asked for by the issue, by batch size


def build_models(preset: str, model_dir: str | None, device: str, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    if model_dir:
        from mambaseq.tasks.audio.model_dir import load_audio_model

        sashimi = load_audio_model(model_dir, device)[0]
    else:
        sashimi = SashimiLM(SashimiConfig.from_preset(preset))
    mamba = MambaLM(MambaConfig(d_model=256, n_layer=14, vocab_size=256))
    models = {f"SashimiLM {Path(model_dir).name if model_dir else preset}": sashimi, "MambaLM d256 x14": mamba}
    return {name: m.to(device=device, dtype=dtype).eval() for name, m in models.items()}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_once(model: torch.nn.Module, batch: int, n_new: int, graph: bool, device: str, seed: int) -> Any:
    generator = torch.Generator(device=device).manual_seed(seed)
    return sample_stream(model, None, n_new, SamplingConfig(), generator, batch_size=batch, start_token=SILENCE,
                         use_cuda_graph=graph)


def measure(model: torch.nn.Module, batch: int, graph: bool, args: argparse.Namespace) -> dict[str, Any]:
    period = int(getattr(model.config, "total_pool", 1))
    chunk = period * -(-16 // period)
    # Warm-up: a few chunks, which also gives the speed to size the timed calls by.
    warm_n = 4 * chunk
    warm = run_once(model, batch, warm_n, graph, args.device, seed=0)
    per_sample = warm.timings["loop"] / warm_n
    wanted = round(args.seconds * RATE)
    affordable = int(args.max_call_seconds / max(per_sample, 1e-9))
    n_new = max(chunk, min(wanted, affordable) // chunk * chunk)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    loops, setups, walls = [], [], []
    for repeat in range(args.repeats):
        sync(args.device)
        start = time.perf_counter()
        result = run_once(model, batch, n_new, graph, args.device, seed=1 + repeat)
        walls.append(time.perf_counter() - start)
        loops.append(result.timings["loop"])
        setups.append(result.timings["prefill"] + result.timings["setup"])
    loop = statistics.median(loops)
    per_stream = n_new / loop
    aggregate = per_stream * batch
    peak = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else None
    target = TARGETS.get(batch)
    return {
        "samples_per_stream": n_new, "audio_seconds_per_stream": n_new / RATE, "chunk": chunk,
        "cuda_graph": result.used_cuda_graph, "loop_s": loops, "setup_s": setups, "wall_s": walls,
        "per_stream_samples_per_s": per_stream, "aggregate_samples_per_s": aggregate,
        "real_time_factor": aggregate / RATE, "per_stream_real_time_factor": per_stream / RATE,
        "setup_s_median": statistics.median(setups),
        "end_to_end_aggregate_samples_per_s": n_new * batch / statistics.median(walls),
        "peak_memory_mib": peak, "target_samples_per_s": target,
        "target_met": None if target is None else aggregate >= target,
    }


HEADER = ("| model | batch | CUDA graph | stack step | samples/stream | per stream samples/s | aggregate samples/s "
          "| x real time | setup s | peak MiB | target |\n|---|---:|---|---|---:|---:|---:|---:|---:|---:|---|")


def row_markdown(row: dict[str, Any]) -> str:
    if "error" in row or "skipped" in row:
        why = row.get("error") or row["skipped"]
        return (f"| {row['model']} | {row['batch']} | {row['graph']} | {_on_off(row['stack_step'])} "
                f"| - | - | - | - | - | - | {why} |")
    peak = "-" if row["peak_memory_mib"] is None else f"{row['peak_memory_mib']:,.0f}"
    target = ("-" if row["target_samples_per_s"] is None else
              f"{'met' if row['target_met'] else 'missed'} ({row['target_samples_per_s']:,})")
    return (f"| {row['model']} | {row['batch']} | {'yes' if row['cuda_graph'] else 'no'} | "
            f"{_on_off(row['stack_step'])} | {row['samples_per_stream']:,} | {row['per_stream_samples_per_s']:,.0f} | "
            f"{row['aggregate_samples_per_s']:,.0f} | {row['real_time_factor']:,.2f} | "
            f"{row['setup_s_median']:.2f} | {peak} | {target} |")


def _on_off(flag: bool | None) -> str:
    return "default" if flag is None else "fused" if flag else "per block"


def environment(args: argparse.Namespace, models: dict[str, torch.nn.Module]) -> dict[str, Any]:
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": name,
        "torch": torch.__version__, "triton": triton_version(), "mambaseq": __version__,
        "threads": torch.get_num_threads(), "dtype": args.dtype,
        "state_update_backend": backend_for("selective_state_update", device),
        "stack_step_backend": backend_for("mamba_stack_step", device),
        "parameters": {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()},
        "command": vars(args),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="audio_generate.json", help="JSON file to write.")
    parser.add_argument("--model", default=None, help="An audio model folder instead of random sashimi weights.")
    parser.add_argument("--preset", default="sashimi-sc09", help="SaShiMi preset (random weights).")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--seconds", type=float, default=2.0, help="Audio per stream per timed call.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-call-seconds", type=float, default=8.0,
                        help="Cut the samples per call so one call takes about this long at most.")
    parser.add_argument("--budget", type=float, default=400.0, help="Start no new row after this many seconds.")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--no-eager", action="store_true", help="Skip the rows without CUDA graphs.")
    parser.add_argument("--stack-step", default="all", choices=["on", "off", "default", "both", "all"],
                        help="Fused stack step (one launch per stack of blocks), the per-block step, the models' "
                             "default, on and off, or all three.")
    parser.add_argument("--stack-block-b", type=int, default=None,
                        help="Rows per program of the fused stack step (a power of two; default: its heuristic).")
    args = parser.parse_args()

    begin = time.perf_counter()
    models = build_models(args.preset, args.model, args.device, getattr(torch, args.dtype))
    report = {"environment": environment(args, models), "rows": []}
    print(json.dumps(report["environment"], indent=1), flush=True)
    cuda = args.device.startswith("cuda")
    modes = ([True] if cuda else []) + ([] if args.no_eager and cuda else [False])
    stack_modes = {"on": [True], "off": [False], "default": [None], "both": [True, False],
                   "all": [None, True, False]}[args.stack_step]
    if args.stack_block_b is not None:
        os.environ["MAMBASEQ_STACK_BLOCK_B"] = str(args.stack_block_b)
    plan = [(graph, name, batch, stack) for graph in modes for name in models for batch in args.batch_sizes
            for stack in stack_modes]
    print(HEADER, flush=True)
    for graph, name, batch, stack in plan:
        row: dict[str, Any] = {"model": name, "batch": batch, "graph": graph, "stack_step": stack}
        # Read at every step (and so when each row's graph is captured): the row's own setting.
        if stack is None:
            os.environ.pop(STACK_STEP_ENV, None)
        else:
            os.environ[STACK_STEP_ENV] = "1" if stack else "0"
        if time.perf_counter() - begin > args.budget:
            row["skipped"] = f"skipped: past the {args.budget:.0f} s budget"
        else:
            try:
                row.update(measure(models[name], batch, graph, args))
            except Exception as err:  # one failing row (OOM, capture) must not lose the others
                row["error"] = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
                row["traceback"] = traceback.format_exc()
                if cuda:
                    torch.cuda.empty_cache()
        report["rows"].append(row)
        print(row_markdown(row), flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"total {time.perf_counter() - begin:.0f} s; wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
