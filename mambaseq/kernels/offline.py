"""Compiling a Triton kernel for an NVIDIA GPU on a machine without one (Triton's front end and
ptxas run anywhere; not under TRITON_INTERPRET): what the interpreter cannot show, such as
registers, spills, layout conversions and barriers, counted before any GPU time is spent.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch
import triton
from torch import Tensor

from .device import LAUNCH_OPTIONS

_TRITON_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def compile_kernel(kernel: Any, args: list, constexprs: dict, *, num_warps: int, arch: int = 90,
                   **options: Any) -> Any:
    """`kernel` compiled for compute capability `arch` with the launch arguments `args` (tensors on
    any device, the meta device included: only dtypes and strides matter) and constexprs.

    `options` are further compile options of a launch (e.g. maxnreg). Arguments are specialised as a
    launch specialises them: None and ints equal to 1 become constants, pointers are 16-byte aligned
    (torch's allocations), ints divisible by 16 are marked so.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if not isinstance(kernel, triton.runtime.jit.JITFunction):
        raise RuntimeError("compiling offline needs the compiled kernel: run without TRITON_INTERPRET=1")
    signature, constants, attrs = {}, dict(constexprs), {}
    for i, (name, arg) in enumerate(zip(kernel.arg_names, args, strict=False)):
        if arg is None or (isinstance(arg, int) and not isinstance(arg, bool) and arg == 1):
            signature[name], constants[name] = "constexpr", arg
            continue
        if isinstance(arg, Tensor):
            signature[name] = "*" + _TRITON_TYPES[arg.dtype]
        elif isinstance(arg, float):
            signature[name] = "fp32"
        else:
            signature[name] = "i32" if -2**31 <= arg < 2**31 else "i64"
        if isinstance(arg, Tensor) or (isinstance(arg, int) and arg % 16 == 0):
            attrs[(i,)] = [["tt.divisibility", 16]]
    signature |= dict.fromkeys(constexprs, "constexpr")
    source = ASTSource(kernel, {n: signature[n] for n in kernel.arg_names}, constants, attrs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": num_warps, "num_stages": 1, **LAUNCH_OPTIONS, **options})


def ptxas_usage(ptx: str, arch: int) -> dict[str, int | None]:
    """Registers per thread and spill-store bytes of `ptx`, from `ptxas -v`."""
    import subprocess
    import tempfile

    try:  # Triton >= 3.5 names the ptxas that knows the newest PTX per arch; older ones have one
        from triton.backends.nvidia.compiler import get_ptxas

        ptxas = get_ptxas(arch).path
    except ImportError:
        from triton import knobs

        ptxas = knobs.nvidia.ptxas.path
    suffix = "a" if arch >= 90 else ""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        run = subprocess.run([ptxas, "-v", f"--gpu-name=sm_{arch}{suffix}", path, "-o", path + ".cubin"],
                             capture_output=True, text=True, check=True)
    registers = re.search(r"Used (\d+) registers", run.stderr)
    spills = re.search(r"(\d+) bytes spill stores", run.stderr)
    return dict(registers=int(registers.group(1)) if registers else None,
                spill_bytes=int(spills.group(1)) if spills else 0)


def ops_by_loop_depth(ttgir: str, op: str) -> dict[int, int]:
    """How many `op`s of a Triton GPU IR module sit at each depth of scf.for nesting (0: outside
    every loop). Other regions (scf.if, the combine bodies of reductions and scans) are not loops."""
    counts: dict[int, int] = {}
    stack: list[bool] = []  # one entry per open region: whether it is an scf.for body
    for line in ttgir.splitlines():
        text = line.strip()
        closes = len(text) - len(text.lstrip("}"))
        del stack[len(stack) - closes:]
        if re.search(rf"\b{re.escape(op)}\b", text):
            depth = sum(stack)
            counts[depth] = counts.get(depth, 0) + 1
        if text.endswith("{"):
            stack.append("scf.for" in text)
    return counts


def ptx_by_loop_depth(ptx: str, text: str) -> tuple[dict[int, int], int]:
    """How many lines holding `text` (e.g. "bar.sync") each loop depth of the PTX holds (0: outside
    every loop), by the loop comments LLVM writes at every basic block; and the deepest loop's depth."""
    counts: dict[int, int] = {}
    depth = deepest = 0
    in_header = False  # in the comment lines that follow a block's label
    for line in ptx.splitlines():
        stripped = line.strip()
        if stripped.startswith("$L__BB") or stripped.startswith("// %bb."):  # a basic block begins
            depth, in_header = 0, True
        elif not stripped.startswith("//"):
            in_header = False
        if in_header:
            depth = max([depth, *(int(d) for d in re.findall(r"Depth=(\d+)", stripped))])
            deepest = max(deepest, depth)
        elif text in stripped:
            counts[depth] = counts.get(depth, 0) + 1
    return counts, deepest
