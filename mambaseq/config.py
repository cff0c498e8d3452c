"""Model configuration: the `MambaConfig` dataclass, its JSON round trip and named presets."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

_C = TypeVar("_C", bound="JsonConfig")


class JsonConfig:
    """The JSON round trip every model config shares (a dataclass; unknown keys are refused)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[_C], data: dict[str, Any]) -> _C:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {', '.join(unknown)}")
        return cls(**data)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls: type[_C], text_or_path: str | Path) -> _C:
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text()
        return cls.from_dict(json.loads(text))

    def diff(self, other: JsonConfig) -> dict[str, tuple[Any, Any]]:
        """Keys whose values differ, as {key: (self_value, other_value)}."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)}


@dataclass
class MambaConfig(JsonConfig):
    """Hyperparameters of a Mamba language model (seed paper, Section 3.4 and Appendix E).

    `dt_rank="auto"` means ceil(d_model / 16). The vocabulary is padded up to a multiple of
    `pad_vocab_size_multiple` so the embedding and head matrices have friendly shapes.
    """

    d_model: int
    n_layer: int
    vocab_size: int
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False
    rms_norm: bool = True
    residual_in_fp32: bool = True
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    # False: time-invariant Δ, B, C (learned per channel, not computed from the input): the
    # non-selective blocks of the seed paper's audio ablations (Section 4.4).
    selective: bool = True
    # Training memory, not the model: the selective mixer's stateless forward keeps only its input
    # and weights for backward and recomputes the rest there (models/mixer_fn.py).
    # Same outputs and gradients; off until measured on the GPU.
    fused_inner: bool = False

    def __post_init__(self) -> None:
        problems = []
        for name in ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "expand",
                     "pad_vocab_size_multiple"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if self.dt_rank != "auto" and (not isinstance(self.dt_rank, int) or isinstance(self.dt_rank, bool)
                                       or self.dt_rank < 1):
            problems.append(f"dt_rank must be 'auto' or a positive integer, got {self.dt_rank!r}")
        if not 0 < self.dt_min <= self.dt_max:
            problems.append(f"need 0 < dt_min <= dt_max, got {self.dt_min} and {self.dt_max}")
        for name in ("selective", "fused_inner"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false, got {getattr(self, name)!r}")
        if problems:
            raise ValueError("invalid MambaConfig: " + "; ".join(problems))

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def dt_rank_value(self) -> int:
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else int(self.dt_rank)

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return ((self.vocab_size + m - 1) // m) * m

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> MambaConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


# The seed paper counts two Mamba blocks per "layer" (one block has about half the parameters of
# a Transformer layer), so its "6 layers x width 128" DNA model is 12 blocks here (~1.4M params).
PRESETS: dict[str, dict[str, Any]] = {
    # Small enough for unit tests and CPU demos (HyenaDNA's 12-token DNA vocabulary).
    "tiny": dict(d_model=64, n_layer=2, vocab_size=12, d_state=16),
    # Seed paper, HG38 scaling experiments: ~1.4M and ~7M parameters.
    "dna-1.4m": dict(d_model=128, n_layer=12, vocab_size=12),
    "dna-7m": dict(d_model=256, n_layer=16, vocab_size=12),
    # Seed paper SC09 size (~6M parameters) over 256 mu-law classes, as a plain (flat) LM.
    "sc09-6m": dict(d_model=256, n_layer=14, vocab_size=256),
}
