"""The cached launch path (`kernels.launch`): a repeated specialisation skips Triton's JIT entry,
and every call that Triton would compile differently (another int value such as a stride of 1,
a misaligned pointer) still gets the right kernel. Held to the float64 reference."""

from __future__ import annotations

import pytest
import torch
from helpers import rel_err
from kernels.test_selective_scan_triton import check, make_inputs

pytest.importorskip("triton")

from mambaseq.kernels.launch import clear_launch_cache, launch_counts
from mambaseq.kernels.reference import selective_scan_ref
from mambaseq.kernels.selective_scan_triton import selective_scan as selective_scan_triton

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def counted(fn) -> dict[str, int]:
    before = launch_counts()
    fn()
    after = launch_counts()
    return {k: after[k] - before[k] for k in after}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter runs where there is no GPU")
def test_interpreter_takes_the_jit_entry(seed):
    x = make_inputs(1, 4, 2, 9, with_state=False)
    for _ in range(2):
        n = counted(lambda: check(x, torch.float32))
        assert n["cached"] == 0 and n["jit"] > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.gpu
@needs_cuda
def test_repeated_call_is_cached(seed, dtype):
    clear_launch_cache()
    first = counted(lambda: check(make_inputs(1, 256, 16, 1000, dtype=dtype), dtype))
    again = counted(lambda: check(make_inputs(1, 256, 16, 1000, dtype=dtype), dtype))
    assert first["jit"] > 0
    assert again == {"cached": first["jit"] + first["cached"], "jit": 0}


@pytest.mark.gpu
@needs_cuda
def test_stride_one_is_a_new_specialisation(seed):
    # Triton compiles a stride of 1 as a constant: a kernel cached for contiguous inputs must not
    # serve the same shapes laid out (batch, L, dim), as the model's projections are.
    clear_launch_cache()
    check(make_inputs(2, 64, 8, 300), torch.float32)
    x = make_inputs(2, 64, 8, 300)
    for name in ("u", "delta", "z"):
        x[name] = x[name].transpose(1, 2).contiguous().transpose(1, 2)
    check(x, torch.float32)


@pytest.mark.gpu
@needs_cuda
def test_misaligned_pointer_is_a_new_specialisation(seed):
    clear_launch_cache()
    x = make_inputs(1, 64, 8, 200, with_state=False)  # one chunk: one launch, which reads u
    check(x, torch.float32, backward=False)
    wide = torch.randn(1, 64, 201, device="cuda")
    u = wide[:, :, 1:]  # 4 bytes past a 16-byte boundary (check() would copy it aligned)
    inputs = {**x, "u": u}
    n = counted(lambda: selective_scan_triton(**inputs))
    assert n == {"jit": 1, "cached": 0}
    y = selective_scan_triton(**inputs)
    ref = selective_scan_ref(**{k: v.double() for k, v in inputs.items() if v is not None})
    assert rel_err(y, ref) < 1e-5
