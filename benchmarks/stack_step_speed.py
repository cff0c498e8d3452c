"""Speed of one stack step, fused (`mamba_stack_step`, one launch) against block by block, per stack of
a model and per kernel setting (rows per program, warps): what to tune the fused kernel by on a GPU.

Each figure: the median over `--repeats` of the time per stack step, measured over `--steps` steps
replayed from one CUDA graph (so launch overhead counts as it does in `sample_stream`), between
device synchronisations. "GB/s" is the stack's weight bytes over that time: how far a row of SMs
is from streaming the weights at L2 speed. Random weights and states (the speed does not depend on
them). Rows print as they finish, and --out gets the JSON.

GPU (a few minutes):

    python benchmarks/stack_step_speed.py --device cuda --out OUT/stack_step_speed.json

Quick CPU check (the Triton interpreter; timings meaningless):

    TRITON_INTERPRET=1 python benchmarks/stack_step_speed.py --device cpu --preset sashimi-tiny \\
        --batch-sizes 1 --block-b 1 --num-warps 4 --steps 2 --repeats 1 --out /tmp/stack_step_speed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mambaseq.config import MambaConfig
from mambaseq.models import MambaLM, SashimiConfig, SashimiLM, StackedStates
from mambaseq.models.stack_step import pack_blocks


def stacks(preset: str) -> dict[str, nn.ModuleList]:
    torch.manual_seed(0)
    sashimi = SashimiLM(SashimiConfig.from_preset(preset))
    out = {f"{preset} stage {s} d{sashimi.config.width(s)}": sashimi.down[s] for s in range(len(sashimi.down))}
    out[f"{preset} center d{sashimi.config.width(len(sashimi.down))}"] = sashimi.center
    out["MambaLM d256 x14"] = MambaLM(MambaConfig(d_model=256, n_layer=14, vocab_size=256)).backbone.layers
    return out


def timed(step, device: torch.device, steps: int, repeats: int) -> float:
    """Median seconds per call of `step()`, replayed from a CUDA graph of `steps` calls on CUDA."""
    step()  # compiles the Triton kernel, settles cuBLAS
    if device.type == "cuda":
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(steps):
                step()
        run = graph.replay
    else:
        def run() -> None:
            for _ in range(steps):
                step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="sashimi-sc09")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--block-b", type=int, nargs="+", default=[1, 2, 4, 16, 32])
    parser.add_argument("--num-warps", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--steps", type=int, default=50, help="Stack steps per timed graph replay.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="stack_step_speed.json")
    args = parser.parse_args()

    from mambaseq.kernels.stack_step import mamba_stack_step

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    rows: list[dict[str, Any]] = []
    print("| stack | batch | step | block_b | warps | us per step | weight GB/s |\n|---|---:|---|---:|---:|---:|---:|",
          flush=True)
    for name, blocks in stacks(args.preset).items():
        blocks = blocks.to(device=device, dtype=dtype).eval()
        weights = pack_blocks(blocks)
        weight_bytes = sum(p.numel() * p.element_size() for p in blocks.parameters())
        cfg = blocks[0].mixer.config
        for batch in args.batch_sizes:
            states = StackedStates.zeros(len(blocks), batch, cfg.d_inner, cfg.d_conv, cfg.d_state, device=device,
                                         dtype=dtype)
            residual = torch.randn(batch, cfg.d_model, device=device)

            @torch.no_grad()
            def per_block(states=states, residual=residual, blocks=blocks) -> None:
                x = residual
                for block, state in zip(blocks, states, strict=True):
                    x = block.step(x, state)

            settings = [("per block", None, None, per_block)]
            for block_b in args.block_b:
                for warps in args.num_warps:
                    def fused(states=states, residual=residual, weights=weights, block_b=block_b,
                              warps=warps) -> None:
                        mamba_stack_step(residual, weights, states.conv, states.ssm, block_b=block_b,
                                         num_warps=warps)
                    settings.append(("fused", block_b, warps, fused))
            for kind, block_b, warps, step in settings:
                row: dict[str, Any] = dict(stack=name, n_layer=len(blocks), batch=batch, step=kind, block_b=block_b,
                                           num_warps=warps, dtype=args.dtype, device=str(device))
                try:
                    seconds = timed(step, device, args.steps, args.repeats)
                    row |= dict(us_per_step=seconds * 1e6, weight_gb_per_s=weight_bytes / seconds / 1e9)
                    print(f"| {name} | {batch} | {kind} | {block_b or '-'} | {warps or '-'} | "
                          f"{row['us_per_step']:,.1f} | {row['weight_gb_per_s']:,.1f} |", flush=True)
                except Exception as err:  # a setting that does not compile or fit must not stop the sweep
                    row["error"] = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
                    print(f"| {name} | {batch} | {kind} | {block_b or '-'} | {warps or '-'} | {row['error']} | |",
                          flush=True)
                rows.append(row)
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
