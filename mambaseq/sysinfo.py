"""What this installation will run: versions, devices and the backend of every kernel op."""

from __future__ import annotations

import platform
import sys
from typing import Any

import torch

from . import __version__
from .kernels import ENV_VAR, backend_report, requested_backend, triton_version


def default_device() -> str:
    """Where a command runs when the user names no device: the first GPU if there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_name() -> str:
    """The CPU's model name (platform.processor() is often just "x86_64" on Linux)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def system_report() -> dict[str, Any]:
    """The facts `mambaseq info` prints, as a dict (JSON-ready)."""
    devices = [{"name": "cpu", "type": "cpu", "description": cpu_name(),
                "threads": torch.get_num_threads()}]
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        devices.append({"name": f"cuda:{i}", "type": "cuda", "description": props.name,
                        "memory_gib": round(props.total_memory / 2**30, 1),
                        "capability": f"{props.major}.{props.minor}"})
    return {
        "mambaseq": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_version(),
        "kernel_backend_requested": f"{ENV_VAR}={requested_backend()}",
        "devices": devices,
        "kernels": backend_report([d["name"] for d in devices]),
    }
