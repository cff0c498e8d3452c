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
