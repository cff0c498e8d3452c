"""Registers, spills and shared memory of the fused stack-step kernel, compiled for an NVIDIA GPU on
any machine (no GPU needed; not under TRITON_INTERPRET): one row per stage width of a SaShiMi preset,
dtype and rows per program (`block_b`; 16 and more go through tl.dot).

    python benchmarks/stack_step_ptx.py [--preset sashimi-sc09] [--arch 90] [--num-warps 8]
"""

from __future__ import annotations

import argparse

import torch

from mambaseq.kernels.stack_step import compile_offline
from mambaseq.models import SashimiConfig, SashimiLM
from mambaseq.models.stack_step import pack_blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="sashimi-sc09")
    parser.add_argument("--arch", type=int, default=90, help="Compute capability, e.g. 90 for H100/H200.")
    parser.add_argument("--num-warps", type=int, default=8)
    parser.add_argument("--block-b", type=int, nargs="+", default=[1, 2, 4, 16, 32])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    args = parser.parse_args()
    model = SashimiLM(SashimiConfig.from_preset(args.preset))
    stacks = {f"center d{model.config.width(len(model.down))}": model.center}
    stacks |= {f"stage {s} d{model.config.width(s)}": model.down[s] for s in range(len(model.down))}
    print("| stack | dtype | block_b | registers | spill bytes | shared bytes | barriers |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, blocks in stacks.items():
        for dtype in args.dtypes:
            weights = pack_blocks(blocks.to(getattr(torch, dtype)))
            for block_b in args.block_b:
                r = compile_offline(weights, 256, block_b, num_warps=args.num_warps, arch=args.arch)
                print(f"| {name} x{weights.n_layer} | {dtype} | {block_b} | {r['registers']} | {r['spill_bytes']} "
                      f"| {r['shared_bytes']} | {r['barriers']} |", flush=True)


if __name__ == "__main__":
    main()
