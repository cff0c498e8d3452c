"""GPU benchmark: our Triton selective scan against mambaseq's anchor (mamba_ssm's CUDA kernel).

For every row of the anchor file (same call: z on, softplus on, input-dependent B/C with one
group, fp32 A/D/delta_bias) prints our forward and forward+backward medians
(`triton.testing.do_bench`), the anchor's, the ratio anchor/ours, and the fraction of the floor
reached; then the geometric-mean speed-up. `--sweep` times tile configurations on a few shapes
first; `--tune` times backward tiles, `--breakdown` splits the backward; `--model` adds end-to-end
forward+backward of one Mamba layer and of the 1.4M-parameter DNA model at L = 2^20.

    python benchmarks/scan.py --anchors shared/anchors/mamba_ssm_cuda_h100.json [--sweep] [--model]
        [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import triton

from mambaseq.kernels.selective_scan_triton import selective_scan


def make_inputs(batch: int, dim: int, d_state: int, L: int, dtype: torch.dtype, requires_grad: bool):
    def rnd(*shape, dt=dtype):
        return torch.randn(*shape, device="cuda", dtype=dt).requires_grad_(requires_grad)

    dt_init = torch.exp(torch.rand(dim, device="cuda") * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    return dict(
        u=rnd(batch, dim, L),
        delta=(0.1 * torch.randn(batch, dim, L, device="cuda", dtype=dtype)).requires_grad_(requires_grad),
        A=(-torch.arange(1, d_state + 1, device="cuda", dtype=torch.float32).repeat(dim, 1)).requires_grad_(
            requires_grad),
        B=rnd(batch, 1, d_state, L),
        C=rnd(batch, 1, d_state, L),
        D=torch.ones(dim, device="cuda").requires_grad_(requires_grad),
        z=rnd(batch, dim, L),
        delta_bias=(dt_init + torch.log(-torch.expm1(-dt_init))).requires_grad_(requires_grad),
    )


def backward_ms(y: torch.Tensor, leaves: list[torch.Tensor], dout: torch.Tensor) -> float:
    """Median time of the backward alone (the graph of `y` is kept and replayed)."""
    return triton.testing.do_bench(lambda: torch.autograd.grad(y, leaves, dout, retain_graph=True),
                                   return_mode="median")


def time_scan(row: dict, dtype: torch.dtype, **config) -> tuple[float, float]:
    x = make_inputs(row["batch"], row["dim"], row["dstate"], row["seqlen"], dtype, requires_grad=True)
    with torch.no_grad():
        fwd = triton.testing.do_bench(lambda: selective_scan(**x, **config), return_mode="median")
    leaves = list(x.values())
    dout = torch.randn(row["batch"], row["dim"], row["seqlen"], device="cuda", dtype=dtype)

    def fwd_bwd():
        y = selective_scan(**x, **config)
        torch.autograd.grad(y, leaves, dout)

    both = triton.testing.do_bench(fwd_bwd, return_mode="median")
    return fwd, both


def check_once(row: dict, dtype: torch.dtype, **config) -> float:
    """Relative error of our forward against the chunked PyTorch reference on the same GPU inputs."""
    from mambaseq.kernels.reference import selective_scan_chunked

    small = dict(row, seqlen=min(row["seqlen"], 8192))
    x = make_inputs(small["batch"], small["dim"], small["dstate"], small["seqlen"], dtype, requires_grad=False)
    ours = selective_scan(**x, **config).double()
    ref = selective_scan_chunked(**{k: (v.double() if v.is_floating_point() else v) for k, v in x.items()}).double()
    return ((ours - ref).norm() / ref.norm()).item()


BWD_CONFIGS = [  # (block_t steps, block_d channels, warps)
    (256, 2, 2), (128, 2, 1), (256, 4, 4), (512, 2, 4), (256, 1, 1), (128, 4, 2), (256, 4, 2), (128, 1, 1),
    (512, 4, 4), (1024, 2, 8), (64, 4, 1),
]


def _bwd_config(block_t: int, block_d: int, warps: int, maxnreg: int | None = None) -> dict:
    return dict(bwd_block_t=block_t, bwd_block_d=block_d, bwd_num_warps=warps, bwd_maxnreg=maxnreg)


def breakdown() -> list[dict]:
    """Backward-only time against forward; with constant B/C (no cross-channel reduction of dB/dC,
    no atomics); and in one chunk (no local-adjoint pass), to see where the backward spends its time."""
    out = []
    for batch, dim, L in [(8, 1536, 2048), (1, 1024, 131072), (1, 256, 2**20)]:
        for const_bc, one_chunk in ((False, False), (True, False), (False, True)):
            x = make_inputs(batch, dim, 16, L, torch.bfloat16, requires_grad=True)
            if const_bc:
                x["B"] = torch.randn(dim, 16, device="cuda", requires_grad=True)
                x["C"] = torch.randn(dim, 16, device="cuda", requires_grad=True)
            config = dict(chunk_len=L) if one_chunk else {}
            leaves = list(x.values())
            with torch.no_grad():
                fwd = triton.testing.do_bench(lambda x=x, c=config: selective_scan(**x, **c), return_mode="median")
            y = selective_scan(**x, **config)
            bwd = backward_ms(y, leaves, torch.randn_like(y))
            del y
            out.append(dict(batch=batch, dim=dim, L=L, const_bc=const_bc, one_chunk=one_chunk, fwd_ms=fwd,
                            bwd_ms=bwd))
            print(out[-1], flush=True)
    return out


def cuda_kernels(fn, calls: int = 1) -> list[dict]:
    """The GPU kernels of `calls` calls of `fn` (after one untimed call), in launch order, with their
    durations in ms (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    kernels = sorted((e for e in prof.events() if e.device_type.name == "CUDA"), key=lambda e: e.time_range.start)
    return [dict(name=e.name[:60], ms=(e.time_range.end - e.time_range.start) / 1e3) for e in kernels]


def kernel_times() -> list[dict]:
    """GPU time of every kernel of one forward+backward (torch.profiler), in launch order, at the
    three breakdown shapes (bf16): which pass of the chunked scan costs what."""
    out = []
    for batch, dim, L in [(8, 1536, 2048), (1, 1024, 131072), (1, 256, 2**20)]:
        x = make_inputs(batch, dim, 16, L, torch.bfloat16, requires_grad=True)
        leaves = list(x.values())
        dout = torch.randn(batch, dim, L, device="cuda", dtype=torch.bfloat16)

        def fwd_bwd(x=x, leaves=leaves, dout=dout):
            torch.autograd.grad(selective_scan(**x), leaves, dout)

        fwd_bwd()  # compile (cuda_kernels warms up once more)
        rows = cuda_kernels(fwd_bwd)
        out.append(dict(batch=batch, dim=dim, L=L, kernels=rows))
        print(f"batch {batch}, dim {dim}, L {L}: " + "; ".join(f"{r['name']} {r['ms']:.3f}" for r in rows), flush=True)
    return out


def launch_overhead(rows: list[dict]) -> list[dict]:
    """Forward time as timed normally and as replays of a captured CUDA graph (no Python, no launch
    gaps): the difference is per-call host overhead."""
    out = []
    for row in rows:
        if row["seqlen"] > 8192:
            continue
        dtype = getattr(torch, row["dtype"])
        x = make_inputs(row["batch"], row["dim"], row["dstate"], row["seqlen"], dtype, requires_grad=False)
        with torch.no_grad():
            plain = triton.testing.do_bench(lambda x=x: selective_scan(**x), return_mode="median")
            graph = triton.testing.do_bench_cudagraph(lambda x=x: selective_scan(**x), return_mode="median")
            one_chunk = triton.testing.do_bench(lambda x=x, n=row["seqlen"]: selective_scan(**x, chunk_len=n),
                                                return_mode="median")
        leaves = list(x.values())
        for v in leaves:
            v.requires_grad_(True)
        y = selective_scan(**x)
        dout = torch.randn_like(y)
        bwd = backward_ms(y, leaves, dout)
        y1 = selective_scan(**x, chunk_len=row["seqlen"])
        bwd_one = backward_ms(y1, leaves, dout)
        out.append({**{k: row[k] for k in ("batch", "dim", "seqlen", "dtype", "fwd_ms", "fwd_bwd_ms")},
                    "ours_fwd_ms": plain, "ours_fwd_graph_ms": graph, "ours_fwd_one_chunk_ms": one_chunk,
                    "ours_bwd_ms": bwd, "ours_bwd_one_chunk_ms": bwd_one})
        print(out[-1], flush=True)
    return out


def host_profile(calls: int = 300) -> dict:
    """Where a short call's host time goes: cProfile of `calls` forward and forward+backward calls at
    batch 1, dim 1024, L 512, bf16 (the GPU work is ~25 us, so the loop runs at host speed), with the
    wall time per call. Prints the top entries by own time."""
    import cProfile
    import io
    import pstats

    x = make_inputs(1, 1024, 16, 512, torch.bfloat16, requires_grad=True)
    leaves = list(x.values())
    dout = torch.randn(1, 1024, 512, device="cuda", dtype=torch.bfloat16)

    def fwd():
        with torch.no_grad():
            selective_scan(**x)

    def fwd_bwd():
        torch.autograd.grad(selective_scan(**x), leaves, dout)

    out = {}
    for name, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        tic = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        out[f"{name}_us_per_call"] = (time.perf_counter() - tic) / calls * 1e6
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        profile.disable()
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(25)
        out[f"{name}_profile"] = text.getvalue()
        print(f"{name}: {out[f'{name}_us_per_call']:.1f} us per call\n{text.getvalue()}", flush=True)
        # The operations of one call as torch's profiler lists them: launches, allocations, casts.
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                fn()
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=40)
        out[f"{name}_ops"] = table
        print(table, flush=True)
    return out


def tune(configs: list[tuple[int, ...]], programs: list[int]) -> list[dict]:
    """Backward-only medians for backward tile configurations and targets of programs per SM
    (splitting the channel blocks of a chunk; bf16, the call of the anchor)."""
    from mambaseq.kernels import selective_scan_triton as sst

    default_programs = sst.BWD_PROGRAMS_PER_SM
    out = []
    for batch, dim, L in [(8, 1536, 2048), (1, 1024, 131072), (1, 256, 1048576)]:
        x = make_inputs(batch, dim, 16, L, torch.bfloat16, requires_grad=True)
        leaves = list(x.values())
        for (block_t, block_d, warps, *maxnreg), per_sm in ((c, n) for c in configs for n in programs):
            config = _bwd_config(block_t, block_d, warps, *maxnreg)
            sst.BWD_PROGRAMS_PER_SM = per_sm
            sst._cached_plan.cache_clear()  # plans (chunking) depend on the target
            try:
                y = selective_scan(**x, **config)
                ms = backward_ms(y, leaves, torch.randn_like(y))
                del y
            except Exception as err:  # out of resources for this tile
                ms = f"{type(err).__name__}"
            out.append(dict(batch=batch, dim=dim, L=L, block_t=block_t, block_d=block_d, num_warps=warps,
                            maxnreg=maxnreg[0] if maxnreg else None, programs_per_sm=per_sm, bwd_ms=ms))
            print(out[-1], flush=True)
    sst.BWD_PROGRAMS_PER_SM = default_programs
    sst._cached_plan.cache_clear()
    return out


def sweep(rows: list[dict]) -> list[dict]:
    shapes = [r for r in rows if r["dtype"] == "bfloat16" and (r["seqlen"], r["dim"]) in
              {(2048, 1536), (1048576, 256)} and r["batch"] < 2]
    results = []
    for row in shapes:
        for block_l in (2, 4, 8):
            for num_warps in (1, 2, 4):
                for _ in (0,):
                    config = dict(block_l=block_l, num_warps=num_warps)
                    try:
                        fwd, both = time_scan(row, torch.bfloat16, **config)
                    except Exception as err:  # out of resources for this tile: skip it
                        print(f"  {config}: {type(err).__name__}", file=sys.stderr)
                        continue
                    results.append({**{k: row[k] for k in ("batch", "dim", "seqlen")}, **config,
                                    "fwd_ms": fwd, "fwd_bwd_ms": both})
                    print(f"sweep b{row['batch']} d{row['dim']} L{row['seqlen']} {config}: "
                          f"fwd {fwd:.4f} fwd+bwd {both:.4f} (anchor {row['fwd_ms']} / {row['fwd_bwd_ms']})",
                          flush=True)
    return results


def model_benchmarks() -> list[dict]:
    import torch.nn.functional as F

    from mambaseq import MambaConfig, MambaLM
    from mambaseq.models import MambaMixer

    out = []
    for name, cfg, batch, L in [
        ("Mamba layer d_model 512", MambaConfig(d_model=512, n_layer=1, vocab_size=16), 1, 131072),
        ("Mamba layer d_model 128", MambaConfig(d_model=128, n_layer=1, vocab_size=16), 1, 2**20),
    ]:
        layer = MambaMixer(cfg).cuda()
        x = torch.randn(batch, L, cfg.d_model, device="cuda", requires_grad=True)

        def step(layer=layer, x=x):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y = layer(x)
            y.float().square().mean().backward()

        out.append({"what": f"{name}, batch {batch}, L {L}, bf16 autocast, fwd+bwd",
                    "ms": triton.testing.do_bench(step, return_mode="median")})
        print(out[-1], flush=True)
        del layer, x
        torch.cuda.empty_cache()
    model = MambaLM(MambaConfig.from_preset("dna-1.4m")).cuda()
    ids = torch.randint(0, 12, (1, 2**20 + 1), device="cuda")

    def train_step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(ids[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()

    torch.cuda.reset_peak_memory_stats()
    try:
        ms = triton.testing.do_bench(train_step, warmup=1, rep=1, return_mode="median")
    except torch.OutOfMemoryError:
        ms = float("nan")
    out.append({"what": "dna-1.4m model (12 blocks x 128), batch 1, L 2^20, bf16 autocast, fwd+bwd",
                "ms": ms, "peak_gib": torch.cuda.max_memory_allocated() / 2**30})
    print(out[-1], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--anchors", default=os.path.join("..", "shared", "anchors", "mamba_ssm_cuda_h100.json"))
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--model", action="store_true")
    parser.add_argument("--skip-grid", action="store_true")
    parser.add_argument("--breakdown", action="store_true")
    parser.add_argument("--tune", action="store_true")
    parser.add_argument("--overhead", action="store_true")
    parser.add_argument("--kernel-times", action="store_true", help="GPU time per kernel of one fwd+bwd")
    parser.add_argument("--host-profile", action="store_true", help="cProfile of short calls (host time)")
    parser.add_argument("--target-warps", type=int, help="override the chunking target (warps per SM)")
    parser.add_argument("--split-from-l", type=int, help="override SPLIT_FROM_L (shortest L cut into chunks)")
    parser.add_argument("--max-l", type=int, help="time only the grid rows with L up to this")
    parser.add_argument("--block-d", type=int)
    parser.add_argument("--block-l", type=int)
    parser.add_argument("--num-warps", type=int)
    parser.add_argument("--bwd-tile", help="backward tile as block_t,block_d,warps[,maxnreg]")
    parser.add_argument("--tune-configs", help="backward tiles to tune, e.g. 64,8,1;64,4,1,128 (4th: maxnreg)")
    parser.add_argument("--tune-programs", default="8", help="backward programs per SM to tune, e.g. 4,8,16")
    parser.add_argument("--bwd-programs", type=int, help="override BWD_PROGRAMS_PER_SM (backward splits per SM)")
    parser.add_argument("--json")
    args = parser.parse_args()
    with open(args.anchors) as f:
        anchors = json.load(f)
    if args.target_warps:
        from mambaseq.kernels import selective_scan_triton as sst

        sst.TARGET_WARPS_PER_SM = args.target_warps
    if args.bwd_programs:
        from mambaseq.kernels import selective_scan_triton as sst

        sst.BWD_PROGRAMS_PER_SM = args.bwd_programs
    if args.split_from_l:
        from mambaseq.kernels import selective_scan_triton as sst

        sst.SPLIT_FROM_L = args.split_from_l
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    if args.breakdown:
        report["breakdown"] = breakdown()
    if args.tune:
        configs = BWD_CONFIGS
        if args.tune_configs:
            configs = [tuple(int(v) for v in c.split(",")) for c in args.tune_configs.split(";")]
        report["tune"] = tune(configs, [int(n) for n in args.tune_programs.split(",")])
    if args.kernel_times:
        report["kernel_times"] = kernel_times()
    if args.overhead:
        report["overhead"] = launch_overhead(anchors["rows"])
    if args.host_profile:
        report["host_profile"] = host_profile()
    if args.sweep:
        report["sweep"] = sweep(anchors["rows"])
    config = {k: v for k, v in dict(block_d=args.block_d, block_l=args.block_l, num_warps=args.num_warps).items()
              if v is not None}
    if args.bwd_tile:
        config.update(_bwd_config(*(int(v) for v in args.bwd_tile.split(","))))
    rows = []
    if not args.skip_grid:
        for row in anchors["rows"]:
            if args.max_l and row["seqlen"] > args.max_l:
                continue
            dtype = getattr(torch, row["dtype"])
            err = check_once(row, dtype, **config)
            fwd, both = time_scan(row, dtype, **config)
            rows.append({**row, "ours_fwd_ms": fwd, "ours_fwd_bwd_ms": both, "rel_err_fwd": err,
                         "speedup_fwd": row["fwd_ms"] / fwd, "speedup_fwd_bwd": row["fwd_bwd_ms"] / both,
                         "floor_frac_fwd": row["floor_fwd_ms"] / fwd,
                         "floor_frac_fwd_bwd": row["floor_fwd_bwd_ms"] / both})
            print(json.dumps(rows[-1]), flush=True)
        report["rows"] = rows
    if args.model:
        report["model"] = model_benchmarks()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if rows:
        print(f"{'batch':>5} {'dim':>5} {'L':>8} {'dtype':>9} | {'fwd ms':>8} {'anchor':>8} {'x':>5} {'floor':>6} | "
              f"{'f+b ms':>8} {'anchor':>8} {'x':>5} {'floor':>6} | err")
        for r in rows:
            print(f"{r['batch']:>5} {r['dim']:>5} {r['seqlen']:>8} {r['dtype']:>9} | {r['ours_fwd_ms']:>8.4f} "
                  f"{r['fwd_ms']:>8.4f} {r['speedup_fwd']:>5.2f} {r['floor_frac_fwd']:>6.1%} | "
                  f"{r['ours_fwd_bwd_ms']:>8.4f} {r['fwd_bwd_ms']:>8.4f} {r['speedup_fwd_bwd']:>5.2f} "
                  f"{r['floor_frac_fwd_bwd']:>6.1%} | {r['rel_err_fwd']:.1e}")
        gm = math.exp(sum(math.log(r["speedup_fwd_bwd"]) for r in rows) / len(rows))
        gm_f = math.exp(sum(math.log(r["speedup_fwd"]) for r in rows) / len(rows))
        print(f"geometric mean speed-up: fwd {gm_f:.2f}x, fwd+bwd {gm:.2f}x")


if __name__ == "__main__":
    main()
