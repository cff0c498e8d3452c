"""Facts about the device that the Triton wrappers size their grids by."""

from __future__ import annotations

import functools

import torch

# Every launch asks for fused multiply-adds: the kernels were tuned and their tolerances set with
# them, and Triton 3.10 stops fusing by default (3.9 warns once per process when this is left unset).
LAUNCH_OPTIONS = {"enable_fp_fusion": True}


@functools.cache
def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (cached: the query costs host time per call);
    1 for any other device."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for host code. `triton.cdiv` is a constexpr function in Triton 3.x, about 1.5 us
    of host time per call, and a short scan call made ten of them."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The least power of two >= n (0 for 0), as `triton.next_power_of_2`, for host code."""
    return 1 << (n - 1).bit_length() if n > 0 else 0
