"""Launching Triton kernels with less host time per call.

Triton's JIT entry, `kernel[grid](*args, **kwargs)`, binds and specialises every argument, reads
its knobs and builds launch metadata on every call: 30.6 us of host time per launch on the H100
machine (Triton 3.9), against 7.6 us for the compiled kernel's own launcher and 21.9 us for this
module's path, whose key is most of its cost (`benchmarks/launch_probe.py`, RESULTS.md). Short
scan calls are host-bound, and every training step of the model makes several launches per layer.

`launch(kernel, grid, *args, **kwargs)` does what `kernel[grid](*args, **kwargs)` does, with the
package's launch options (`device.LAUNCH_OPTIONS`) and a cache in front. The first call of a key
goes through the JIT entry, which compiles (or finds its own cache) and returns the compiled
kernel; later calls of the key call that kernel's launcher.
The key holds everything Triton specialises a compilation on: the value of every int and bool
argument (Triton specialises ints on being 1 and on divisibility by 16), each tensor's dtype and
whether its address is 16-byte aligned, which arguments are None, the keyword arguments
(constexprs and launch options) and the device. Calls under TRITON_INTERPRET, with a callable
grid, or while a launch hook (a profiler) is set go through the JIT entry every time.

Runtime arguments are passed by position and constexprs by keyword, as every kernel of this
package is called. Triton knobs changed after a kernel's first launch (debug, instrumentation) are
not part of the key: call `clear_launch_cache()` after changing them.
"""

from __future__ import annotations

from typing import Any

import torch
from triton import knobs
from triton.runtime import driver
from triton.runtime.jit import JITFunction

from .device import LAUNCH_OPTIONS

_cache: dict[tuple, tuple[Any, tuple[str, ...]]] = {}
_counts = {"cached": 0, "jit": 0}


def launch(kernel: Any, grid: tuple[int, ...], *args: Any, **kwargs: Any) -> None:
    """`kernel[grid](*args, **kwargs, **LAUNCH_OPTIONS)` through the compiled kernel's launcher when
    the same specialisation was launched before (see the module's docstring)."""
    kwargs = {**LAUNCH_OPTIONS, **kwargs}
    if not isinstance(kernel, JITFunction) or not isinstance(grid, tuple) or _hook_set():
        _counts["jit"] += 1
        kernel[grid](*args, **kwargs)
        return
    device = driver.active.get_current_device()
    # One comprehension: this key is most of the path's own host time.
    key = (id(kernel), device, *[(a.dtype, a.data_ptr() & 15 == 0) if isinstance(a, torch.Tensor) else a
                                 for a in args], *kwargs.items())
    hit = _cache.get(key)
    if hit is None:
        _counts["jit"] += 1
        compiled = kernel[grid](*args, **kwargs)
        compiled = compiled.result() if hasattr(compiled, "result") else compiled  # asynchronous compile
        tail = tuple(kernel.arg_names[len(args):])
        # Only runtime arguments passed by position are keyed by dtype; a tensor passed by keyword
        # would be keyed by identity (a new entry every call), so such calls are not cached.
        by_keyword = any(isinstance(v, torch.Tensor) for v in kwargs.values())
        if compiled is not None and not by_keyword and all(name in kwargs for name in tail):
            _cache[key] = (compiled, tail)
        return
    compiled, tail = hit
    _counts["cached"] += 1
    compiled.run(grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1,
                 driver.active.get_current_stream(device), compiled.function, compiled.packed_metadata, None,
                 knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook, *args,
                 *[kwargs[name] for name in tail])


def _hook_set() -> bool:
    # Triton 3.6 keeps a hook or None, 3.9 a chain of hooks (empty: none set).
    hook = knobs.runtime.launch_enter_hook
    return hook is not None and bool(getattr(hook, "calls", True))


def launch_counts() -> dict[str, int]:
    """How many launches took the cached path and how many the JIT entry (for tests and
    benchmarks)."""
    return dict(_counts)


def clear_launch_cache() -> None:
    """Forget the compiled kernels kept (the next launch of each goes through the JIT entry)."""
    _cache.clear()
