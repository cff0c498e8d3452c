"""CPU benchmark: chunked reference scan vs the sequential loop (the specification).

Times forward and forward+backward (gradients of u, delta, B, C, D, z, delta_bias) at the shape
of the foundation issue, batch 2, dim 256, d_state 16, L 4096, fp32, with the model's call
(z gating, delta_bias + softplus, input-dependent B/C), and prints the speed-up.

    python benchmarks/reference_scan.py [--batch 2 --dim 256 --d-state 16 --length 4096] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from mambaseq.kernels.reference import selective_scan_chunked, selective_scan_ref


def make_inputs(batch: int, dim: int, d_state: int, L: int) -> dict[str, torch.Tensor]:
    # The model's distribution at initialisation: delta = softplus(x + bias), bias for
    # dt in [1e-3, 1e-1], S4D-real A.
    dt = torch.exp(torch.rand(dim) * (torch.log(torch.tensor(0.1)) - torch.log(torch.tensor(1e-3)))
                   + torch.log(torch.tensor(1e-3)))
    return dict(
        u=torch.randn(batch, dim, L),
        delta=torch.randn(batch, dim, L) * 0.1,
        A=-torch.arange(1, d_state + 1, dtype=torch.float32).repeat(dim, 1),
        B=torch.randn(batch, 1, d_state, L),
        C=torch.randn(batch, 1, d_state, L),
        D=torch.ones(dim),
        z=torch.randn(batch, dim, L),
        delta_bias=dt + torch.log(-torch.expm1(-dt)),
    )


def time_call(scan, inputs, backward: bool, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        leaves = {k: (v.clone().requires_grad_(backward) if k != "A" else v) for k, v in inputs.items()}
        start = time.perf_counter()
        y = scan(**leaves)
        if backward:
            y.backward(torch.ones_like(y))
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loop-repeats", type=int, default=3)
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    inputs = make_inputs(args.batch, args.dim, args.d_state, args.length)
    rows = []
    for backward in (False, True):
        loop = statistics.median(time_call(selective_scan_ref, inputs, backward, args.loop_repeats))
        rows.append({"method": "sequential loop", "pass": "fwd+bwd" if backward else "fwd",
                     "ms": loop * 1e3, "speedup": 1.0})
        for chunk in args.chunk_sizes:
            def scan(chunk=chunk, **kw):
                return selective_scan_chunked(**kw, chunk_size=chunk)
            t = statistics.median(time_call(scan, inputs, backward, args.repeats))
            rows.append({"method": f"chunked T={chunk}", "pass": "fwd+bwd" if backward else "fwd",
                         "ms": t * 1e3, "speedup": loop / t})
    report = {
        "shape": {"batch": args.batch, "dim": args.dim, "d_state": args.d_state, "L": args.length},
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor()
        or platform.machine(), "rows": rows,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"shape {report['shape']}, fp32, torch {report['torch']}, {report['threads']} threads")
    print(f"{'method':<18} {'pass':<8} {'median ms':>10} {'x loop':>8}")
    for row in rows:
        print(f"{row['method']:<18} {row['pass']:<8} {row['ms']:>10.1f} {row['speedup']:>8.1f}")


if __name__ == "__main__":
    main()
