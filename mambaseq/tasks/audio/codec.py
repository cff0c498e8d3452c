"""Sample quantization: a float waveform in [-1, 1] <-> class ids in [0, 2**bits).

A codec is a frozen dataclass of its bits; `to_dict()` / `Codec.from_dict()` carry it through a model's
config.json. Every codec cuts its domain [-1, 1] into 2**bits equal bins (id = floor((y + 1) / 2 * Q),
the top edge folded into the last bin) and decodes to bin centres, so silence lands on id Q / 2 and
`encode(decode(ids)) == ids`. Arithmetic runs in float64 whatever the input dtype, so a float32 and a
float64 copy of one waveform quantize alike except within rounding of a bin edge.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

MIN_BITS, MAX_BITS = 2, 16


def _check_bits(bits: Any) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"codec bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}")


@dataclass(frozen=True)
class Codec(ABC):
    """Base of the quantization codecs; subclasses give `_compress` / `_expand` on [-1, 1]."""

    bits: int = 8
    name: ClassVar[str]

    def __post_init__(self) -> None:
        _check_bits(self.bits)
        object.__setattr__(self, "bits", int(self.bits))

    @property
    def num_classes(self) -> int:
        return 2 ** self.bits

    @property
    def silence_id(self) -> int:
        """The id of 0.0 (Q / 2): what short windows are padded with."""
        return self.num_classes // 2

    @abstractmethod
    def _compress(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> [-1, 1], monotonic, float64."""

    @abstractmethod
    def _expand(self, y: torch.Tensor) -> torch.Tensor:
        """Inverse of `_compress`, float64."""

    def encode(self, wave: torch.Tensor | np.ndarray | float) -> torch.Tensor:
        """Float samples (any shape) -> int64 ids of the same shape; values outside [-1, 1] are clipped.

        Raises ValueError for NaN or a non-float input (integer PCM must be scaled to [-1, 1] first).
        """
        x = torch.as_tensor(wave)
        if not x.is_floating_point():
            raise ValueError(f"{self.name} codec: expected a float waveform in [-1, 1], got {x.dtype} "
                             "(scale integer PCM to [-1, 1] first)")
        if torch.isnan(x).any():
            raise ValueError(f"{self.name} codec: waveform holds NaN samples")
        y = self._compress(x.to(torch.float64).clamp(-1.0, 1.0))
        half = self.num_classes // 2
        # floor(y * Q/2) + Q/2 rather than floor((y + 1) * Q/2): scaling by a power of two is exact, so a
        # tiny negative sample still lands below the middle instead of being rounded onto it by the + 1.
        return (torch.floor(y * half) + half).clamp_(0, 2 * half - 1).to(torch.int64)

    def decode(self, ids: torch.Tensor | np.ndarray | int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Ids (any shape) -> samples at the bin centres, `dtype`, same shape. Raises ValueError for ids
        outside [0, num_classes)."""
        ids = torch.as_tensor(ids)
        if ids.is_floating_point() or ids.is_complex():
            raise ValueError(f"{self.name} codec: ids must be integers, got {ids.dtype}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_classes):
            raise ValueError(f"{self.name} codec: ids must lie in [0, {self.num_classes}), got "
                             f"{int(ids.min())}..{int(ids.max())}")
        centres = (ids.to(torch.float64) + 0.5) * (2.0 / self.num_classes) - 1.0
        return self._expand(centres).to(dtype)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "bits": self.bits}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Codec:
        """The codec `to_dict()` described; on a subclass, the name must be that subclass's."""
        if not isinstance(data, dict) or "name" not in data:
            raise ValueError(f"codec description must be a dict with a 'name', got {data!r}")
        codec = make_codec(data["name"], data.get("bits", 8))
        if cls is not Codec and not isinstance(codec, cls):
            raise ValueError(f"codec description names {codec.name!r}, not {cls.name!r}")
        return codec


@dataclass(frozen=True)
class MuLawCodec(Codec):
    """Continuous mu-law companding, then uniform quantization of the companded value.

    F(x) = sgn(x) ln(1 + mu |x|) / ln(1 + mu), mu = 2**bits - 1, is the mu-law characteristic of
    ITU-T Recommendation G.711 (1988), "Pulse code modulation (PCM) of voice frequencies"; G.711 itself
    codes a segmented, piecewise-linear approximation of it for mu = 255, which is not used here. The
    continuous form with 8 bits is the quantization of WaveNet (van den Oord et al., 2016, eq. 2).
    Decoding applies F^-1(y) = sgn(y) ((1 + mu)**|y| - 1) / mu to the bin centre.
    """

    name: ClassVar[str] = "mulaw"

    @property
    def mu(self) -> int:
        return self.num_classes - 1

    def _compress(self, x: torch.Tensor) -> torch.Tensor:
        # log1p/expm1 keep quiet samples (mu |x| far below 1) accurate.
        return torch.sign(x) * torch.log1p(self.mu * x.abs()) / math.log1p(self.mu)

    def _expand(self, y: torch.Tensor) -> torch.Tensor:
        return torch.sign(y) * torch.expm1(y.abs() * math.log1p(self.mu)) / self.mu


@dataclass(frozen=True)
class LinearCodec(Codec):
    """Uniform quantization of x itself; with 16 bits the ids are 16-bit PCM offset by 32768."""

    name: ClassVar[str] = "linear"

    def _compress(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _expand(self, y: torch.Tensor) -> torch.Tensor:
        return y


CODECS: dict[str, type[Codec]] = {"mulaw": MuLawCodec, "linear": LinearCodec}


def make_codec(name: str, bits: int = 8) -> Codec:
    """`make_codec("mulaw", 8)`; names: mulaw (also mu-law, mu_law), linear."""
    key = name.lower().replace("-", "").replace("_", "") if isinstance(name, str) else name
    if key not in CODECS:
        raise ValueError(f"unknown codec {name!r}; choose one of {', '.join(CODECS)}")
    return CODECS[key](bits)
