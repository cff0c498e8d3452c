"""Multi-scale causal U-Net of Mamba blocks for raw audio: SaShiMi (Goel et al. 2022, "It's Raw!
Audio Generation with State-Space Models") with the seed paper's Mamba blocks in place of its
S4 + MLP blocks (Mamba, Section 4.4 and Appendix E.4).

Stages s = 0 .. S from the outside in; stage 0 runs on the samples themselves, stage s on
sequences pooled by p_1 * ... * p_s, at width D_s = d_model * pool_expand**s:

    ids (batch, L) -> embedding                                              (batch, L, D_0)
    down, s = 0 .. S-1:  n_layer[s] Mamba blocks, kept as skip_s             (batch, L_s, D_s)
                         DownPool: p consecutive positions side by side, (batch, L_s / p, D_s * p),
                         then Linear -> D_{s+1}
    center (s = S):      n_layer[S] Mamba blocks                             (batch, L_S, D_S)
    up, s = S-1 .. 0:    UpPool: Linear D_{s+1} -> D_s * p, each coarse step unfolded into p
                         positions (batch, L_s, D_s), causal shift; + skip_s; n_layer[s] Mamba blocks
    final norm -> LM head                                                   (batch, L, vocab_size)

Causal shift. Mamba blocks are causal (output t reads inputs <= t), so only the pools can leak
the future. Coarse step k of stage s+1 is made of fine positions [kp, kp + p), so everything the
inner stages compute at step k depends on fine inputs up to kp + p - 1. UpPool turns it into p
fine vectors u_{kp}, ..., u_{kp+p-1}. Placed unshifted, u_{kp} would sit at position kp and see
p - 1 samples of its future. Shifted right by p - 1, position t reads u_{t-p+1}, from coarse
step k = (t - p + 1) // p, which depends on inputs <= kp + p - 1 <= t: causal. It is the least
shift that is: with p - 2, position kp + p - 2 would read step k and so input kp + p - 1.
Positions t < p - 1 read zeros. SaShiMi shifts by one whole coarse step (p positions), one sample
more than needed: there the last sample of a block, kp + p - 1, waits one more sample before it
sees its own block's summary. Every stage is causal in its own time, so by induction the whole
network is: logits at t depend on ids[: t + 1] only, and predict ids[t + 1].

Lengths. `forward` pads ids at the end up to a multiple of prod(pool) and crops the logits back:
by causality the padding cannot change any kept position.

Streaming and step mode. With a `SashimiCache`, `forward(ids, cache)` continues a stream and
`step(ids, cache)` is the same for one sample. Per pooled stage the cache holds, besides the Mamba
states, `pending`: the stage's down-path outputs of the coarse step not yet complete (the first
t % p rows), and `upsampled`: UpPool's p vectors of the latest complete coarse step (zeros before
the first one: the shift's padding). A chunk of T positions at stage time t0 completes
n = (t0 % p + T) // p coarse steps; only those are passed down (so an inner stage steps once
every p samples), and the positions read their shifted vectors from [upsampled, new vectors].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import JsonConfig, MambaConfig
from .cache import LayerState, StackedStates
from .lm import MambaBlock
from .stack_step import prepare_stack_step, step_blocks

# Fields shared with MambaConfig, passed on to the Mamba blocks of every stage.
_BLOCK_FIELDS = ("d_state", "d_conv", "expand", "dt_min", "dt_max", "dt_init_floor", "conv_bias", "bias",
                 "rms_norm", "residual_in_fp32", "norm_eps")


@dataclass
class SashimiConfig(JsonConfig):
    """Hyperparameters of a SaShiMi U-Net of Mamba blocks.

    `pool` lists the pooling factors from the outside in; there are len(pool) + 1 stages, the last
    one (the center) the coarsest. `n_layer[s]` is the number of Mamba blocks of stage s on the
    down path and again on the up path (the center has one stack); `selective[s]` chooses selective
    or time-invariant blocks for stage s. An int or bool stands for the same value at every stage.
    Stage s has width d_model * pool_expand**s (SaShiMi doubles it at each down-pool).
    """

    d_model: int
    n_layer: int | list[int]
    pool: list[int] = field(default_factory=lambda: [4, 4])
    pool_expand: int = 2
    vocab_size: int = 256
    selective: bool | list[bool] = True
    # The Mamba blocks' own fields (_BLOCK_FIELDS), with MambaConfig's defaults.
    d_state: int = MambaConfig.d_state
    d_conv: int = MambaConfig.d_conv
    expand: int = MambaConfig.expand
    dt_min: float = MambaConfig.dt_min
    dt_max: float = MambaConfig.dt_max
    dt_init_floor: float = MambaConfig.dt_init_floor
    conv_bias: bool = MambaConfig.conv_bias
    bias: bool = MambaConfig.bias
    rms_norm: bool = MambaConfig.rms_norm
    residual_in_fp32: bool = MambaConfig.residual_in_fp32
    norm_eps: float = MambaConfig.norm_eps
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.pool, tuple):
            self.pool = list(self.pool)
        if not isinstance(self.pool, list) or not all(_positive_int(p) for p in self.pool):
            problems.append(f"pool must be a list of positive integers, got {self.pool!r}")
            self.pool = []
        stages = len(self.pool) + 1
        # One value per stage, from an int or bool given for all of them.
        if _count(self.n_layer):
            self.n_layer = [self.n_layer] * stages
        if isinstance(self.selective, bool):
            self.selective = [self.selective] * stages
        if isinstance(self.n_layer, tuple):
            self.n_layer = list(self.n_layer)
        if isinstance(self.selective, tuple):
            self.selective = list(self.selective)
        if (not isinstance(self.n_layer, list) or len(self.n_layer) != stages
                or not all(_count(n) for n in self.n_layer)):
            problems.append(f"n_layer must be a non-negative integer or a list of {stages} (one per stage, "
                            f"len(pool) + 1), got {self.n_layer!r}")
        if (not isinstance(self.selective, list) or len(self.selective) != stages
                or not all(isinstance(s, bool) for s in self.selective)):
            problems.append(f"selective must be true/false or a list of {stages} of them (one per stage), "
                            f"got {self.selective!r}")
        for name in ("d_model", "pool_expand", "vocab_size", "d_state", "d_conv", "expand"):
            if not _positive_int(getattr(self, name)):
                problems.append(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not 0 < self.dt_min <= self.dt_max:
            problems.append(f"need 0 < dt_min <= dt_max, got {self.dt_min} and {self.dt_max}")
        if problems:
            raise ValueError("invalid SashimiConfig: " + "; ".join(problems))

    @property
    def n_stages(self) -> int:
        return len(self.pool) + 1

    @property
    def total_pool(self) -> int:
        """The factor the center stage is pooled by; forward pads L up to a multiple of it."""
        return math.prod(self.pool)

    def width(self, stage: int) -> int:
        return self.d_model * self.pool_expand**stage

    def block_config(self, stage: int) -> MambaConfig:
        """The MambaConfig of the Mamba blocks of `stage` (0 = outermost)."""
        return MambaConfig(d_model=self.width(stage), n_layer=max(1, self.n_layer[stage]),
                           vocab_size=self.vocab_size, selective=self.selective[stage],
                           **{name: getattr(self, name) for name in _BLOCK_FIELDS})

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> SashimiConfig:
        if name not in SASHIMI_PRESETS:
            raise ValueError(f"unknown SaShiMi preset {name!r}; choose one of: {', '.join(SASHIMI_PRESETS)}")
        return cls(**{**SASHIMI_PRESETS[name], **overrides})


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _positive_int(value: Any) -> bool:
    return _count(value) and value >= 1


SASHIMI_PRESETS: dict[str, dict[str, Any]] = {
    # Seed paper, SC09 (Table 4: Mamba 6.1M): SaShiMi's layout (width 64, pooling 4 then 4, width
    # doubled at each pool) over 256 mu-law classes. The block count per stage is our choice to
    # come close to the paper's size: 6,254,784 parameters.
    "sashimi-sc09": dict(d_model=64, n_layer=[8, 8, 8], pool=[4, 4], pool_expand=2, vocab_size=256),
    # Small enough for unit tests and CPU demos: one block per stage, 88,336 parameters.
    "sashimi-tiny": dict(d_model=16, n_layer=1, pool=[4, 4], pool_expand=2, vocab_size=256),
}


class DownPool(nn.Module):
    """(batch, L, d_in) -> (batch, L / p, d_out): p consecutive positions side by side, then Linear.

    Output k depends on positions [kp, kp + p) only; L must be a multiple of p.
    """

    def __init__(self, d_in: int, d_out: int, p: int) -> None:
        super().__init__()
        self.p = p
        self.linear = nn.Linear(d_in * p, d_out)

    def forward(self, x: Tensor) -> Tensor:
        batch, L, d = x.shape
        folded = x.reshape(batch, L // self.p, self.p * d)
        return self.linear(folded.to(self.linear.weight.dtype)).to(x.dtype)


class UpPool(nn.Module):
    """(batch, K, d_in) -> (batch, K * p, d_out), unshifted: Linear to d_out * p, then each coarse
    step's p vectors one after the other in time. The caller applies the causal shift: position t
    reads vector t - `shift` (see the module docstring for why shift = p - 1).
    """

    def __init__(self, d_in: int, d_out: int, p: int) -> None:
        super().__init__()
        self.p = p
        self.shift = p - 1
        self.linear = nn.Linear(d_in, d_out * p)

    def forward(self, x: Tensor) -> Tensor:
        batch, K, _ = x.shape
        unfolded = self.linear(x.to(self.linear.weight.dtype)).to(x.dtype)
        return unfolded.reshape(batch, K * self.p, -1)

    def shifted(self, up: Tensor) -> Tensor:
        """up: (batch, L, d) -> (batch, L, d), position t holding up[t - shift] (zeros for t < shift)."""
        return F.pad(up, (0, 0, self.shift, 0))[:, : up.shape[1]]


@dataclass
class StageCache:
    """Streaming state of one pooled stage (pool factor p, width D).

    down, up: states of its Mamba blocks; pending: (batch, p, D), the first t % p rows hold the
    down-path outputs of the incomplete coarse step; upsampled: (batch, p, D), UpPool's vectors of
    the latest complete coarse step (zeros before the first one).
    """

    down: list[LayerState]
    up: list[LayerState]
    pending: Tensor
    upsampled: Tensor


@dataclass
class SashimiCache:
    """Everything a SashimiLM needs to continue a stream, plus the number of samples consumed."""

    stages: list[StageCache]
    center: list[LayerState]
    seqlen_offset: int = 0

    @property
    def batch_size(self) -> int:
        return self.stages[0].pending.shape[0] if self.stages else self.center[0].ssm.shape[0]

    def reset(self) -> None:
        for stage in self.stages:
            for state in (*stage.down, *stage.up):
                state.conv.zero_()
                state.ssm.zero_()
            stage.pending = torch.zeros_like(stage.pending)
            stage.upsampled = torch.zeros_like(stage.upsampled)
        for state in self.center:
            state.conv.zero_()
            state.ssm.zero_()
        self.seqlen_offset = 0


def _run_blocks(blocks: nn.ModuleList, x: Tensor, states: list[LayerState] | None = None) -> Tensor:
    """x: (batch, T, D) through `blocks`; with `states`, continuing from them (one position without
    autograd: the recurrent step, fused into one `mamba_stack_step` where it can be, see
    models/stack_step.py; otherwise the scan with initial and final states)."""
    if states is None:
        for block in blocks:
            x = block(x)
    elif x.shape[1] == 1 and not torch.is_grad_enabled():  # the step updates states in place
        x = step_blocks(blocks, x[:, 0], states, fused_by_default=True)[:, None]
    else:
        for block, state in zip(blocks, states, strict=True):
            x = block(x, state)
    return x


class SashimiLM(nn.Module):
    """SaShiMi U-Net of Mamba blocks with an LM head over the quantization classes.

    `forward(ids)` gives logits (batch, L, vocab_size); `hidden_states(ids)` the final normed hidden
    states (batch, L, d_model); `step(ids, cache)` one sample at a time from `allocate_cache`.
    """

    def __init__(self, config: SashimiConfig) -> None:
        super().__init__()
        self.config = config
        S = len(config.pool)
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)

        def stack(stage: int) -> nn.ModuleList:
            block_config = config.block_config(stage)
            return nn.ModuleList(MambaBlock(block_config) for _ in range(config.n_layer[stage]))

        self.down = nn.ModuleList(stack(s) for s in range(S))
        self.down_pools = nn.ModuleList(DownPool(config.width(s), config.width(s + 1), p)
                                        for s, p in enumerate(config.pool))
        self.center = stack(S)
        # up_pools[s] and up[s] bring stage s + 1 back to stage s (the mirror of down[s]).
        self.up_pools = nn.ModuleList(UpPool(config.width(s + 1), config.width(s), p)
                                      for s, p in enumerate(config.pool))
        self.up = nn.ModuleList(stack(s) for s in range(S))
        norm = nn.RMSNorm if config.rms_norm else nn.LayerNorm
        self.norm_f = norm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self._init_weights()
        if config.tie_embeddings:
            self.lm_head.weight = self.embedding.weight

    @torch.no_grad()
    def _init_weights(self) -> None:
        """As MambaLM: zero biases (dt_proj keeps its Δ init), N(0, 0.02) embedding, and each block's
        out_proj shrunk by the square root of the number of blocks writing into its stage's stream
        (the down and up stacks of a stage share one through the skip connection)."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and module.bias is not None and not name.endswith("dt_proj"):
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        stacks = [(self.center, len(self.center))]
        stacks += [(blocks, len(self.down[s]) + len(self.up[s])) for s in range(len(self.down))
                   for blocks in (self.down[s], self.up[s])]
        for blocks, depth in stacks:
            for block in blocks:
                weight = block.mixer.out_proj.weight
                nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
                weight.div_(math.sqrt(depth))

    def _embed(self, ids: Tensor) -> Tensor:
        if ids.dim() != 2 or ids.shape[1] < 1:
            raise ValueError(f"ids must be (batch, L) with L >= 1, got {tuple(ids.shape)}")
        hidden = self.embedding(ids)
        return hidden.float() if self.config.residual_in_fp32 else hidden

    def _forward_stage(self, s: int, x: Tensor) -> Tensor:
        """x: (batch, L_s, D_s) at stage s, L_s a multiple of the pooling below -> (batch, L_s, D_s)."""
        if s == len(self.down):
            return _run_blocks(self.center, x)
        skip = _run_blocks(self.down[s], x)
        inner = self._forward_stage(s + 1, self.down_pools[s](skip))
        up_pool = self.up_pools[s]
        return _run_blocks(self.up[s], skip + up_pool.shifted(up_pool(inner)))

    def _stream_stage(self, s: int, x: Tensor, t0: int, cache: SashimiCache) -> Tensor:
        """x: (batch, T, D_s), stage-s positions [t0, t0 + T) of a stream -> (batch, T, D_s)."""
        if s == len(self.down):
            return _run_blocks(self.center, x, cache.center)
        state, p, up_pool = cache.stages[s], self.config.pool[s], self.up_pools[s]
        skip = _run_blocks(self.down[s], x, state.down)
        r0 = t0 % p  # rows of `pending` that hold data
        window = torch.cat([state.pending[:, :r0], skip], dim=1)
        n = window.shape[1] // p  # coarse steps completed by this chunk
        rest = window[:, n * p:]
        state.pending = torch.cat([rest, state.pending[:, rest.shape[1]:]], dim=1)
        # `stream` holds UpPool's vectors u_i from i = (K - 1) p on, K = t0 // p: the previous
        # coarse step's (kept in the cache), then those of the n steps completed now.
        stream = state.upsampled
        if n > 0:
            inner = self._stream_stage(s + 1, self.down_pools[s](window[:, : n * p]), t0 // p, cache)
            stream = torch.cat([stream, up_pool(inner)], dim=1)
            state.upsampled = stream[:, -p:].clone()
        # Position t reads u_{t - shift}, at index t - shift - (K - 1) p of `stream`.
        start = r0 + p - up_pool.shift
        up = stream[:, start: start + x.shape[1]]
        return _run_blocks(self.up[s], skip + up, state.up)

    def _step_stage(self, s: int, x: Tensor, t: int, cache: SashimiCache) -> Tensor:
        """`_stream_stage` for one position (x: (batch, 1, D_s) at stage time t), in place: the sample
        is written into `pending` and a completed coarse step's vectors into `upsampled`, with no
        concatenation and no tensor rebound, so a captured CUDA graph has fewer kernels and no
        copies back into the cache's tensors."""
        if s == len(self.down):
            return _run_blocks(self.center, x, cache.center)
        state, p, up_pool = cache.stages[s], self.config.pool[s], self.up_pools[s]
        skip = _run_blocks(self.down[s], x, state.down)
        r = t % p
        state.pending[:, r].copy_(skip[:, 0])
        if r == p - 1:  # this sample completes coarse step t // p: pending holds all of it
            new = up_pool(self._step_stage(s + 1, self.down_pools[s](state.pending), t // p, cache))
            state.upsampled.copy_(new)
            up = new[:, :1]  # u_{t - shift} = u_{(t // p) p}: the first vector of the new step
        else:
            up = state.upsampled[:, r + 1: r + 2]  # u_{t - shift}, from the previous coarse step
        return _run_blocks(self.up[s], skip + up, state.up)

    def hidden_states(self, ids: Tensor, cache: SashimiCache | None = None) -> Tensor:
        """ids: (batch, L) -> final normed hidden states (batch, L, d_model).

        With `cache`, continues the stream it holds (any L) and leaves the states at the end in it.
        """
        L = ids.shape[-1]
        if cache is not None:
            # The step path writes the cache in place: for generation, not for gradients through it.
            stage = self._step_stage if L == 1 and not torch.is_grad_enabled() else self._stream_stage
            hidden = stage(0, self._embed(ids), cache.seqlen_offset, cache)
            cache.seqlen_offset += L
        else:
            # Pad to a multiple of the total pooling and crop: causal, so the tail changes nothing.
            padded = F.pad(ids, (0, (-L) % self.config.total_pool))
            hidden = self._forward_stage(0, self._embed(padded))[:, :L]
        return self.norm_f(hidden.to(self.norm_f.weight.dtype))

    def forward(self, ids: Tensor, cache: SashimiCache | None = None) -> Tensor:
        """ids: (batch, L) -> logits (batch, L, vocab_size); logits[:, t] predict ids[:, t + 1]."""
        return self.lm_head(self.hidden_states(ids, cache))

    def step(self, ids: Tensor, cache: SashimiCache) -> Tensor:
        """ids: (batch,) or (batch, 1), the next sample of every stream -> logits (batch, vocab_size)."""
        return self.forward(ids.reshape(-1, 1), cache)[:, 0]

    def allocate_cache(self, batch_size: int, dtype: torch.dtype | None = None,
                       prepare_step: bool = True) -> SashimiCache:
        """An empty (zero) cache for `batch_size` streams on this model's device. `prepare_step=False`
        skips packing the fused step's weights (a cache for chunked training, which never steps)."""
        cfg = self.config
        weight = self.lm_head.weight
        dtype = dtype or weight.dtype
        stream_dtype = torch.float32 if cfg.residual_in_fp32 else dtype

        def states(blocks: nn.ModuleList, stage: int) -> StackedStates:
            # One stacked tensor per stack and kind of state, the blocks' states views into it; the
            # stack's fused-step weights packed now, never inside a CUDA-graph capture.
            if prepare_step:
                prepare_stack_step(blocks, fused_by_default=True)
            bc = cfg.block_config(stage)
            return StackedStates.zeros(len(blocks), batch_size, bc.d_inner, bc.d_conv, bc.d_state,
                                       device=weight.device, dtype=dtype)

        def buffer(s: int) -> Tensor:
            return torch.zeros(batch_size, cfg.pool[s], cfg.width(s), device=weight.device, dtype=stream_dtype)

        stages = [StageCache(states(self.down[s], s), states(self.up[s], s), buffer(s), buffer(s))
                  for s in range(len(cfg.pool))]
        return SashimiCache(stages, states(self.center, len(cfg.pool)))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
