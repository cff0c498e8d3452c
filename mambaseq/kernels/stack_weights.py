"""`StackWeights`: the weights of a stack of consecutive Mamba blocks, stacked along a leading layer
dim, as `mamba_stack_step` reads them (its reference and its Triton kernel alike)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class StackWeights:
    """n_layer pre-norm Mamba blocks of one config (RMSNorm), residual + mixer(rmsnorm(residual)).

    Weights in the model dtype, leading dim n_layer (written n below):
        norm_weight (n, d_model), eps; in_proj_weight (n, 2 d_inner, d_model), in_proj_bias (n, 2 d_inner);
        conv_weight (n, d_inner, d_conv), conv_bias (n, d_inner);
        out_proj_weight (n, d_model, d_inner), out_proj_bias (n, d_model).
    SSM parameters in fp32: A = -exp(A_log) (n, d_inner, d_state); D (n, d_inner); dt_bias (n, d_inner).
    Selective blocks: x_proj_weight (n, dt_rank + 2 d_state, d_inner), dt_proj_weight (n, d_inner, dt_rank),
    both in the model dtype, and B = C = None. Time-invariant blocks: B, C (n, d_inner, d_state) fp32 and
    no x_proj / dt_proj (Δ = softplus(dt_bias)). Biases are None where the blocks have none.
    Every tensor is contiguous (the Triton kernel indexes them as dense arrays).
    """

    norm_weight: Tensor
    eps: float
    in_proj_weight: Tensor
    in_proj_bias: Tensor | None
    conv_weight: Tensor
    conv_bias: Tensor | None
    dt_bias: Tensor
    A: Tensor
    D: Tensor
    out_proj_weight: Tensor
    out_proj_bias: Tensor | None
    x_proj_weight: Tensor | None = None
    dt_proj_weight: Tensor | None = None
    B: Tensor | None = None
    C: Tensor | None = None

    def __post_init__(self) -> None:
        n, d_model = self.norm_weight.shape
        d_inner, d_conv = self.conv_weight.shape[1:]
        d_state = self.A.shape[-1]
        shapes: dict[str, tuple[int, ...]] = {
            "in_proj_weight": (n, 2 * d_inner, d_model), "in_proj_bias": (n, 2 * d_inner),
            "conv_weight": (n, d_inner, d_conv), "conv_bias": (n, d_inner), "dt_bias": (n, d_inner),
            "A": (n, d_inner, d_state), "D": (n, d_inner), "out_proj_weight": (n, d_model, d_inner),
            "out_proj_bias": (n, d_model),
        }
        if self.selective:
            rank = self.dt_proj_weight.shape[-1] if self.dt_proj_weight is not None else -1
            shapes |= {"x_proj_weight": (n, rank + 2 * d_state, d_inner), "dt_proj_weight": (n, d_inner, rank)}
            if self.B is not None or self.C is not None:
                raise ValueError("StackWeights: selective blocks take B and C from x_proj, not as weights")
        else:
            shapes |= {"B": (n, d_inner, d_state), "C": (n, d_inner, d_state)}
        problems = []
        for name, shape in shapes.items():
            value = getattr(self, name)
            if value is None:
                if not name.endswith("bias") or name == "dt_bias":
                    problems.append(f"{name} is missing")
            elif tuple(value.shape) != shape or not value.is_contiguous():
                problems.append(f"{name} must be contiguous {shape}, got {tuple(value.shape)}")
        for name in ("A", "D", "dt_bias", "B", "C"):
            value = getattr(self, name)
            if value is not None and value.dtype != torch.float32:
                problems.append(f"{name} must be fp32, got {value.dtype}")
        if problems:
            raise ValueError("invalid StackWeights: " + "; ".join(problems))

    @property
    def selective(self) -> bool:
        return self.x_proj_weight is not None

    @property
    def n_layer(self) -> int:
        return self.norm_weight.shape[0]

    @property
    def d_model(self) -> int:
        return self.norm_weight.shape[1]

    @property
    def d_inner(self) -> int:
        return self.conv_weight.shape[1]

    @property
    def d_conv(self) -> int:
        return self.conv_weight.shape[2]

    @property
    def d_state(self) -> int:
        return self.A.shape[2]

    @property
    def dt_rank(self) -> int:
        """0 for time-invariant blocks."""
        return self.dt_proj_weight.shape[2] if self.dt_proj_weight is not None else 0

    @property
    def dtype(self) -> torch.dtype:
        """The model dtype: where the per-block step rounds its activations."""
        return self.in_proj_weight.dtype
