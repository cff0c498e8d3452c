"""Mamba backbone and language model: embedding -> n_layer x (norm -> mixer -> residual) -> norm."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..config import MambaConfig
from .cache import InferenceCache, LayerState
from .mixer import MambaMixer
from .stack_step import prepare_stack_step, step_blocks


def _norm(config: MambaConfig) -> nn.Module:
    if config.rms_norm:
        return nn.RMSNorm(config.d_model, eps=config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps)


class MambaBlock(nn.Module):
    """Pre-norm residual block: residual + mixer(norm(residual))."""

    def __init__(self, config: MambaConfig) -> None:
        super().__init__()
        self.norm = _norm(config)
        self.mixer = MambaMixer(config)

    def forward(self, residual: Tensor, state: LayerState | None = None) -> Tensor:
        normed = self.norm(residual.to(self.norm.weight.dtype))
        return residual + self.mixer(normed, state)

    def step(self, residual: Tensor, state: LayerState) -> Tensor:
        normed = self.norm(residual.to(self.norm.weight.dtype))
        return residual + self.mixer.step(normed, state)


class MambaBackbone(nn.Module):
    """Token ids (batch, L) -> hidden states (batch, L, d_model) after the final norm."""

    def __init__(self, config: MambaConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.padded_vocab_size, config.d_model)
        self.layers = nn.ModuleList(MambaBlock(config) for _ in range(config.n_layer))
        self.norm_f = _norm(config)

    def _residual(self, input_ids: Tensor) -> Tensor:
        hidden = self.embedding(input_ids)
        return hidden.float() if self.config.residual_in_fp32 else hidden

    def forward(self, input_ids: Tensor, cache: InferenceCache | None = None) -> Tensor:
        residual = self._residual(input_ids)
        for i, layer in enumerate(self.layers):
            residual = layer(residual, None if cache is None else cache.layers[i])
        if cache is not None:
            cache.seqlen_offset += input_ids.shape[1]
        return self.norm_f(residual.to(self.norm_f.weight.dtype))

    def step(self, input_ids: Tensor, cache: InferenceCache) -> Tensor:
        """input_ids: (batch,) -> hidden (batch, d_model); advances `cache` by one position.

        With MAMBASEQ_STACK_STEP=1 and no autograd, all blocks run as one fused `mamba_stack_step`
        when they can (see models/stack_step.py); otherwise block by block."""
        residual = step_blocks(self.layers, self._residual(input_ids), cache.layers)
        cache.seqlen_offset += 1
        return self.norm_f(residual.to(self.norm_f.weight.dtype))


@torch.no_grad()
def init_backbone_(backbone: MambaBackbone, n_layer: int) -> None:
    """Initialise `backbone` in place: zero biases (dt_proj keeps its Δ init), N(0, 0.02) embedding."""
    for name, module in backbone.named_modules():
        if isinstance(module, nn.Linear) and module.bias is not None and not name.endswith("dt_proj"):
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
    # GPT-2-style: each residual branch's output projection shrinks with depth, so the
    # residual stream's variance does not grow with the number of layers.
    for layer in backbone.layers:
        weight = layer.mixer.out_proj.weight
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        weight.div_(math.sqrt(n_layer))


class MambaLM(nn.Module):
    """Mamba language model with a (tied) LM head.

    `forward(ids)` gives logits (batch, L, padded_vocab_size); `hidden_states(ids)` the final
    normed hidden states for downstream heads; `step(ids, cache)` decodes one position.
    """

    def __init__(self, config: MambaConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = MambaBackbone(config)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        self._init_weights()
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    def _init_weights(self) -> None:
        init_backbone_(self.backbone, self.config.n_layer)

    def hidden_states(self, input_ids: Tensor, cache: InferenceCache | None = None) -> Tensor:
        """input_ids: (batch, L) -> (batch, L, d_model)."""
        return self.backbone(input_ids, cache)

    def forward(self, input_ids: Tensor, cache: InferenceCache | None = None) -> Tensor:
        """input_ids: (batch, L) -> logits (batch, L, padded_vocab_size).

        With `cache`, continues from its states and leaves the states at the end in it.
        """
        return self.lm_head(self.backbone(input_ids, cache))

    def step(self, input_ids: Tensor, cache: InferenceCache) -> Tensor:
        """input_ids: (batch,) or (batch, 1) -> logits (batch, padded_vocab_size)."""
        if input_ids.dim() == 2:
            input_ids = input_ids.squeeze(1)
        return self.lm_head(self.backbone.step(input_ids, cache))

    def allocate_cache(self, batch_size: int, dtype: torch.dtype | None = None,
                       prepare_step: bool = True) -> InferenceCache:
        """An empty (zero) cache for `batch_size` streams on this model's device. `prepare_step=False`
        skips packing the fused step's weights (a cache for chunked training, which never steps)."""
        cfg = self.config
        weight = self.lm_head.weight
        if prepare_step:
            prepare_stack_step(self.backbone.layers)  # packed now, never inside a CUDA-graph capture
        return InferenceCache.empty(cfg.n_layer, batch_size, cfg.d_inner, cfg.d_conv, cfg.d_state,
                                    device=weight.device, dtype=dtype or weight.dtype)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
