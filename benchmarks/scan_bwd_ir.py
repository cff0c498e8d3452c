"""What the selective-scan backward compiles to on an H100 (sm_90), without a GPU: layout
conversions in the Triton GPU IR, barriers in the PTX (each in all and inside the loop over states,
the hot loop), registers and spills from ptxas. One row per pass at the tile and inputs the GPU runs
(bf16 u/delta/z/dy and B/C, input-dependent B/C, z, D, delta_bias, softplus).

    python benchmarks/scan_bwd_ir.py [--arch 90] [--bwd-tile 64,8,1[,128]] [--dump DIR]

Not under TRITON_INTERPRET (unset it if the environment sets it).
"""

from __future__ import annotations

import argparse
import os

from mambaseq.kernels.selective_scan_triton import BWD_TILE, compile_bwd_offline

PASSES = {"gradient pass (HAS_CARRY=1)": dict(has_carry=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--bwd-tile", help="backward tile as block_t,block_d,warps[,maxnreg] (default: BWD_TILE)")
    parser.add_argument("--dump", help="write each pass's TTGIR and PTX here")
    args = parser.parse_args()
    tile = dict(BWD_TILE)
    if args.bwd_tile:
        values = [int(v) for v in args.bwd_tile.split(",")]
        tile.update(zip(("block_t", "block_d", "num_warps", "maxnreg"), values, strict=False))
    print(f"tile {tile}, sm_{args.arch}")
    print("| pass | convert_layout (state loop / all) | bar.sync (state loop / all) | registers | spill bytes |")
    print("|---|---:|---:|---:|---:|")
    for i, (name, flags) in enumerate(PASSES.items()):
        r = compile_bwd_offline(arch=args.arch, **flags, **tile)
        print(f"| {name} | {r['convert_layout_state_loop']} / {r['convert_layout']} "
              f"| {r['barriers_state_loop']} / {r['barriers']} | {r['registers']} | {r['spill_bytes']} |", flush=True)
        if args.dump:
            os.makedirs(args.dump, exist_ok=True)
            for kind in ("ttgir", "ptx"):
                with open(os.path.join(args.dump, f"scan_bwd_{i}.{kind}"), "w") as f:
                    f.write(r[kind])


if __name__ == "__main__":
    main()
