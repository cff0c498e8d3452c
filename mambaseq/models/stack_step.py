"""The fused step of a stack of Mamba blocks: packing the blocks' weights for
`kernels.mamba_stack_step`, and choosing it over the block-by-block step.

Step mode at small batch is bound by kernel launches (about 15 per block), so `step_blocks` runs a
whole stack of blocks in one `mamba_stack_step` call (one Triton launch on CUDA) when it can:

- no autograd (the fused kernel has no backward), blocks with RMSNorm (LayerNorm blocks keep the
  per-block path), and states that are an intact `StackedStates` (what `allocate_cache` makes);
- `MAMBASEQ_STACK_STEP` is `1` / `on`, or unset for a model that asks for it by default
  (`fused_by_default`) and a stack no wider than `FUSED_MAX_D_MODEL`: SashimiLM asks, MambaLM does
  not. One program per batch row runs a whole stack on one SM, so a narrow stack gains and a wide
  one loses: on the H100 (2026-11-23, `benchmarks/stack_step_speed.py`, prefetching kernel) 8 blocks
  of d_model 64 ran 4.1x / 7.5x faster fused than block by block at batch 1 / 256, d_model 128
  1.5x / 2.4x, d_model 256 0.47x / 0.83x (RESULTS.md). `0` / `off` forces the per-block step;
  `1` / `on` fuses every stack.

The packed weights (stacked copies, so one more copy of the blocks' weights in memory) are built
once per stack and kept in a weak map keyed by the stack's ModuleList, together with the
(data_ptr, version) of every source parameter. Each step compares that key, a few Python attribute
reads per parameter and no device work, and repacks when a parameter was replaced (`.to()`,
`load_state_dict(assign=True)`) or updated in place (optimizer step, `copy_`). The models' `allocate_cache`
packs too, so a step inside CUDA-graph capture finds the pack ready and never builds one there.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..kernels import StackWeights, mamba_stack_step
from .cache import LayerState, StackedStates

if TYPE_CHECKING:
    from .lm import MambaBlock

ENV_VAR = "MAMBASEQ_STACK_STEP"
_OFF = ("0", "off", "false", "no")
_ON = ("1", "on", "true", "yes")
FUSED_MAX_D_MODEL = 128  # widest stack fused by default (module docstring)


def stack_step_enabled(fused_by_default: bool = False, d_model: int | None = None) -> bool:
    """Whether to run the fused stack step: MAMBASEQ_STACK_STEP on (1, on, true, yes) or off (0, off,
    false, no); unset, the model's own default for a stack of width `d_model` (any width when None)."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value and value not in _OFF + _ON:
        raise ValueError(f"{ENV_VAR}={value!r} is not one of {', '.join(repr(v) for v in _OFF + _ON)}")
    if value:
        return value in _ON
    return fused_by_default and (d_model is None or d_model <= FUSED_MAX_D_MODEL)


def _d_model(blocks: nn.ModuleList) -> int:
    return blocks[0].mixer.config.d_model


@torch.no_grad()
def pack_blocks(blocks: Sequence[MambaBlock]) -> StackWeights:
    """The StackWeights of `blocks` (one config, RMSNorm), copied out of the modules."""
    blocks = list(blocks)
    if not blocks:
        raise ValueError("pack_blocks needs at least one block")
    norms = [block.norm for block in blocks]
    if not all(isinstance(norm, nn.RMSNorm) for norm in norms):
        raise ValueError("the fused stack step supports RMSNorm blocks only")
    dtype = norms[0].weight.dtype
    eps = {norm.eps if norm.eps is not None else torch.finfo(dtype).eps for norm in norms}
    mixers = [block.mixer for block in blocks]
    selective = {mixer.config.selective for mixer in mixers}
    if len(eps) != 1 or len(selective) != 1:
        raise ValueError("the blocks of a stack must share norm eps and selectivity")

    def stack(get, dtype: torch.dtype | None = None) -> Tensor | None:
        parts = [get(mixer) for mixer in mixers]
        if any(part is None for part in parts):
            return None
        stacked = torch.stack([part.detach() for part in parts])
        return (stacked if dtype is None else stacked.to(dtype)).contiguous()

    common = dict(
        norm_weight=torch.stack([norm.weight.detach() for norm in norms]).contiguous(), eps=float(eps.pop()),
        in_proj_weight=stack(lambda m: m.in_proj.weight), in_proj_bias=stack(lambda m: m.in_proj.bias),
        conv_weight=stack(lambda m: m.conv1d.weight.squeeze(1)), conv_bias=stack(lambda m: m.conv1d.bias),
        A=-torch.exp(stack(lambda m: m.A_log, torch.float32)), D=stack(lambda m: m.D, torch.float32),
        out_proj_weight=stack(lambda m: m.out_proj.weight), out_proj_bias=stack(lambda m: m.out_proj.bias),
    )
    if selective.pop():
        return StackWeights(**common, dt_bias=stack(lambda m: m.dt_proj.bias, torch.float32),
                            x_proj_weight=stack(lambda m: m.x_proj.weight),
                            dt_proj_weight=stack(lambda m: m.dt_proj.weight))
    return StackWeights(**common, dt_bias=stack(lambda m: m.dt_bias, torch.float32),
                        B=stack(lambda m: m.B, torch.float32), C=stack(lambda m: m.C, torch.float32))


def _version(param: Tensor) -> int:
    try:
        return param._version
    except RuntimeError:  # an inference tensor has no version counter; it cannot change in place either
        return -1


# blocks -> (key of the source parameters, their StackWeights or None when they cannot be fused)
_PACKS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[tuple[int, int], ...], StackWeights | None]] = (
    weakref.WeakKeyDictionary())


def packed_weights(blocks: nn.ModuleList) -> StackWeights | None:
    """The cached StackWeights of `blocks`, repacked when a parameter changed; None for blocks the
    fused step does not support (LayerNorm)."""
    key = tuple((param.data_ptr(), _version(param)) for param in blocks.parameters())
    hit = _PACKS.get(blocks)
    if hit is not None and hit[0] == key:
        return hit[1]
    try:
        weights = pack_blocks(blocks)
    except ValueError:
        weights = None
    _PACKS[blocks] = (key, weights)
    return weights


def prepare_stack_step(blocks: nn.ModuleList, fused_by_default: bool = False) -> None:
    """Pack `blocks` now (when the fused step is on), so that the first step does not."""
    if len(blocks) and stack_step_enabled(fused_by_default, _d_model(blocks)):
        packed_weights(blocks)


def step_blocks(blocks: nn.ModuleList, residual: Tensor, states: Sequence[LayerState],
                fused_by_default: bool = False) -> Tensor:
    """One position through `blocks`: residual (batch, d_model) -> (batch, d_model), updating
    `states` in place; one fused `mamba_stack_step` when possible (module docstring), else block by block."""
    if (len(blocks) and isinstance(states, StackedStates) and not torch.is_grad_enabled()
            and stack_step_enabled(fused_by_default, residual.shape[-1]) and states.intact()):
        weights = packed_weights(blocks)
        if weights is not None:
            return mamba_stack_step(residual, weights, states.conv, states.ssm)
    for block, state in zip(blocks, states, strict=True):
        residual = block.step(residual, state)
    return residual
