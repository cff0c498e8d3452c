"""Bytes autograd saves for the backward, per token, of a DNA LM with and without `fused_inner`.

Counts every distinct storage saved for backward during one forward (bf16 autocast on the CPU, the
reference ops) except the parameters themselves; autocast's bf16 weight copies are included (they
are small next to the activations at this length). This is a device-independent count of what
activation memory the memory-lean mixer removes, not a GPU peak-memory measurement (for that:
`benchmarks/dna_long.py --fused-inner`).

    python benchmarks/saved_bytes.py [--model dna-1.4m] [--length 2048]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from mambaseq import MambaConfig, MambaLM


def saved_bytes_per_token(model_name: str, length: int, fused: bool) -> float:
    torch.manual_seed(0)
    model = MambaLM(MambaConfig.from_preset(model_name, vocab_size=12, fused_inner=fused))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    ids = torch.randint(7, 11, (1, length + 1))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids[:, :-1]).float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    loss.backward()
    return sum(saved.values()) / length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dna-1.4m")
    parser.add_argument("--length", type=int, default=2048)
    args = parser.parse_args()
    plain, fused = (saved_bytes_per_token(args.model, args.length, f) for f in (False, True))
    print(f"{args.model}, L {args.length}, bf16 autocast: plain {plain / 1024:.1f} KB/token, "
          f"fused_inner {fused / 1024:.1f} KB/token ({plain / fused:.1f}x less)")


if __name__ == "__main__":
    main()
