"""GPU benchmark: one training step (forward + backward + AdamW) of the dna-1.4m model at batch 1,
L = 2^14 .. 2^22 (until memory runs out), with and without activation checkpointing per block;
`--fused-inner` runs the memory-lean mixer path (MambaConfig.fused_inner: each mixer keeps only
its input for backward and recomputes the rest there); `--chunk-tokens N` trains each window in chunks
of N tokens with the states carried between them (training/chunked.py: exact gradients, one
chunk's activations in memory).

Prints peak GPU memory, bytes per token and tokens/s per length (median of a few steps after one
warm-up step), bf16 autocast as `mambaseq train dna` uses on GPU.

    python benchmarks/dna_long.py [--min-log2 14] [--max-log2 22] [--fused-inner]
                                  [--checkpoint both|off|on] [--chunk-tokens N] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from mambaseq import MambaConfig
from mambaseq.training.lm_module import CausalLMModule


def step_stats(L: int, checkpoint: bool, steps: int, fused_inner: bool = False,
               chunk_tokens: int | None = None) -> dict:
    config = MambaConfig.from_preset("dna-1.4m", vocab_size=12, fused_inner=fused_inner)
    module = CausalLMModule(config.to_dict(), checkpoint_activations=checkpoint, chunk_tokens=chunk_tokens).cuda()
    model = module.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=8e-3)
    ids = torch.randint(7, 11, (1, L + 1), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    times = []
    for i in range(steps + 1):
        torch.cuda.synchronize()
        tic = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            nll, tokens = module._nll(ids)  # the training step's loss, chunked when chunk_tokens is set
        loss = nll / tokens
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - tic)
    peak = torch.cuda.max_memory_allocated() - base
    ms = statistics.median(times) * 1e3
    return {"L": L, "checkpoint": checkpoint, "fused_inner": fused_inner, "chunk_tokens": chunk_tokens,
            "step_ms": ms, "tokens_per_s": L / ms * 1e3,
            "peak_gib": peak / 2**30, "bytes_per_token": peak / L, "loss": loss.item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--min-log2", type=int, default=14)
    parser.add_argument("--max-log2", type=int, default=22)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--fused-inner", action="store_true",
                        help="memory-lean mixer (MambaConfig.fused_inner=True)")
    parser.add_argument("--checkpoint", choices=("both", "off", "on"), default="both",
                        help="activation checkpointing per block: off, on, or both sweeps (default)")
    parser.add_argument("--chunk-tokens", type=int, default=None,
                        help="train in chunks of this many tokens, states carried (default: whole windows)")
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = []
    modes = {"both": (False, True), "off": (False,), "on": (True,)}[args.checkpoint]
    for checkpoint in modes:
        for log2 in range(args.min_log2, args.max_log2 + 1):
            try:
                row = step_stats(2**log2, checkpoint, args.steps, args.fused_inner, args.chunk_tokens)
            except torch.OutOfMemoryError:
                rows.append({"L": 2**log2, "checkpoint": checkpoint, "fused_inner": args.fused_inner,
                             "chunk_tokens": args.chunk_tokens, "oom": True})
                print(json.dumps(rows[-1]), flush=True)
                torch.cuda.empty_cache()
                break
            rows.append(row)
            print(json.dumps(row), flush=True)
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=2)
    print(f"fused_inner={args.fused_inner} chunk_tokens={args.chunk_tokens}")
    print(f"{'L':>9} {'ckpt':>5} {'step ms':>9} {'tokens/s':>11} {'peak GiB':>9} {'B/token':>8}")
    for r in rows:
        if r.get("oom"):
            print(f"{r['L']:>9} {r['checkpoint']!s:>5}  out of memory")
        else:
            print(f"{r['L']:>9} {r['checkpoint']!s:>5} {r['step_ms']:>9.1f} {r['tokens_per_s']:>11.0f} "
                  f"{r['peak_gib']:>9.2f} {r['bytes_per_token']:>8.0f}")


if __name__ == "__main__":
    main()
