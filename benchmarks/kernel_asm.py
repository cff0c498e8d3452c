"""GPU tool: registers, spills and layout conversions of the compiled selective-scan kernels.

Runs one forward+backward of the Triton scan at a given shape, then prints for every compiled
kernel its registers per thread, spilled registers, and how many `convert_layout` ops its Triton
GPU IR holds (each one moves data through shared memory). `--dump DIR` writes the IR files.

    python benchmarks/kernel_asm.py --batch 1 --dim 256 --seqlen 1048576 [--dump DIR]
"""

from __future__ import annotations

import argparse
import os

import torch

from mambaseq.kernels import selective_scan_triton as sst


def compiled_kernels(fn) -> list:
    out = []
    for cache in fn.device_caches.values():
        kernels = cache[0] if isinstance(cache, tuple) else cache
        out.extend(kernels.values())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--seqlen", type=int, default=2**16)
    parser.add_argument("--bwd-tile", help="backward tile as block_t,block_d,warps")
    parser.add_argument("--dump")
    args = parser.parse_args()
    if args.bwd_tile:
        block_t, block_d, warps = (int(v) for v in args.bwd_tile.split(","))
        sst.BWD_TILE.update(block_t=block_t, block_d=block_d, num_warps=warps)
    b, d, n, L = args.batch, args.dim, 16, args.seqlen
    dev = "cuda"
    leaves = dict(u=torch.randn(b, d, L, device=dev, dtype=torch.bfloat16),
                  delta=torch.randn(b, d, L, device=dev, dtype=torch.bfloat16),
                  A=-torch.rand(d, n, device=dev), B=torch.randn(b, 1, n, L, device=dev, dtype=torch.bfloat16),
                  C=torch.randn(b, 1, n, L, device=dev, dtype=torch.bfloat16), D=torch.randn(d, device=dev),
                  z=torch.randn(b, d, L, device=dev, dtype=torch.bfloat16), delta_bias=torch.randn(d, device=dev))
    leaves = {k: v.requires_grad_() for k, v in leaves.items()}
    sst.selective_scan(**leaves).float().sum().backward()
    for name in ("_scan_fwd_kernel", "_carry_chunks_kernel", "_scan_bwd_kernel"):
        for i, kernel in enumerate(compiled_kernels(getattr(sst, name))):
            ttgir = kernel.asm.get("ttgir", "")
            print(f"{name}[{i}]: regs {kernel.n_regs}, spills {kernel.n_spills}, "
                  f"convert_layout {ttgir.count('convert_layout')}, local_alloc {ttgir.count('local_alloc')}",
                  flush=True)
            if args.dump:
                os.makedirs(args.dump, exist_ok=True)
                for kind in ("ttgir", "ptx"):
                    with open(os.path.join(args.dump, f"{name}_{i}.{kind}"), "w") as f:
                        f.write(kernel.asm.get(kind, ""))


if __name__ == "__main__":
    main()
