"""Single-nucleotide DNA tokenizer with HyenaDNA-compatible ids.

Ids: [CLS]=0 [SEP]=1 [BOS]=2 [MASK]=3 [PAD]=4 [RESERVED]=5 [UNK]=6, A=7 C=8 G=9 T=10 N=11
(the character vocabulary of HyenaDNA's tokenizer, so its checkpoints' embeddings line up).
IUPAC ambiguity codes (R Y S W K M B D H V) become N, U (RNA) becomes T, anything else [UNK].
Lowercase (soft-masked repeats in most assemblies) is read as the base by default; with
`soft_mask="n"` it becomes N. `soft_mask_positions` gives the mask itself.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]")
CLS, SEP, BOS, MASK, PAD, RESERVED, UNK = range(7)
A, C, G, T, N = 7, 8, 9, 10, 11
VOCAB_SIZE = 12
BASES = "ACGTN"
IUPAC_AMBIGUOUS = "RYSWKMBDHV"
SoftMaskPolicy = Literal["base", "n"]

_ENCODE_UPPER = np.full(256, UNK, dtype=np.int64)
for _char, _id in zip("ACGTN", (A, C, G, T, N), strict=True):
    _ENCODE_UPPER[ord(_char)] = _id
    _ENCODE_UPPER[ord(_char.lower())] = _id
for _char in IUPAC_AMBIGUOUS:
    _ENCODE_UPPER[ord(_char)] = N
    _ENCODE_UPPER[ord(_char.lower())] = N
_ENCODE_UPPER[ord("U")] = T
_ENCODE_UPPER[ord("u")] = T
_ENCODE_SOFT_N = _ENCODE_UPPER.copy()
_ENCODE_SOFT_N[[ord(c) for c in "acgtnu" + IUPAC_AMBIGUOUS.lower()]] = N
_IS_LOWER = np.zeros(256, dtype=bool)
_IS_LOWER[np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)] = True

_DECODE = np.array([*SPECIAL_TOKENS, *BASES], dtype=object)
_COMPLEMENT = np.arange(VOCAB_SIZE, dtype=np.int64)
_COMPLEMENT[[A, C, G, T]] = [T, G, C, A]


def _as_bytes(seq: str | bytes | bytearray) -> np.ndarray:
    if isinstance(seq, str):
        seq = seq.encode("ascii", errors="replace")  # non-ASCII becomes '?', hence [UNK]
    return np.frombuffer(bytes(seq), dtype=np.uint8)


def encode(seq: str | bytes, soft_mask: SoftMaskPolicy = "base") -> np.ndarray:
    """DNA text -> int64 token ids (L,)."""
    if soft_mask not in ("base", "n"):
        raise ValueError(f"soft_mask must be 'base' or 'n', got {soft_mask!r}")
    table = _ENCODE_UPPER if soft_mask == "base" else _ENCODE_SOFT_N
    return table[_as_bytes(seq)]


def soft_mask_positions(seq: str | bytes) -> np.ndarray:
    """Boolean (L,): True where the sequence is lowercase (soft-masked)."""
    return _IS_LOWER[_as_bytes(seq)]


def _out_of_range(got: str) -> ValueError:
    return ValueError(f"token ids must lie in [0, {VOCAB_SIZE}), got {got}")


def decode(ids: np.ndarray | torch.Tensor | list[int], keep_special: bool = False) -> str:
    """Token ids -> text; special tokens are dropped unless `keep_special`. Ids outside the
    vocabulary raise ValueError."""
    try:
        ids = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids, dtype=np.int64).ravel()
    except OverflowError:  # a Python int beyond int64 is out of the vocabulary too
        raise _out_of_range("one beyond int64") from None
    if ids.size and (ids.min() < 0 or ids.max() >= VOCAB_SIZE):
        raise _out_of_range(f"{ids.min()}..{ids.max()}")
    if not keep_special:
        ids = ids[ids >= A]
    return "".join(_DECODE[ids])


def reverse_complement(ids: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Reverse complement along the last axis; N and special tokens map to themselves. Ids outside
    the vocabulary raise ValueError (a negative id would otherwise index the table from its end)."""
    if isinstance(ids, torch.Tensor):
        if ids.numel() and bool(((ids < 0) | (ids >= VOCAB_SIZE)).any()):
            raise _out_of_range(f"{ids.min().item()}..{ids.max().item()}")
        table = torch.as_tensor(_COMPLEMENT, device=ids.device)
        return table[ids.long()].flip(-1).to(ids.dtype)
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= VOCAB_SIZE):
        raise _out_of_range(f"{ids.min()}..{ids.max()}")
    return _COMPLEMENT[ids][..., ::-1].copy()


class DnaTokenizer:
    """Object form of the module functions, carrying the soft-mask policy (for configs and CLIs)."""

    vocab_size = VOCAB_SIZE
    pad_id = PAD

    def __init__(self, soft_mask: SoftMaskPolicy = "base") -> None:
        if soft_mask not in ("base", "n"):
            raise ValueError(f"soft_mask must be 'base' or 'n', got {soft_mask!r}")
        self.soft_mask = soft_mask

    def encode(self, seq: str | bytes) -> np.ndarray:
        return encode(seq, self.soft_mask)

    def decode(self, ids, keep_special: bool = False) -> str:
        return decode(ids, keep_special)

    def reverse_complement(self, ids):
        return reverse_complement(ids)

    def to_dict(self) -> dict:
        """What a model directory records about its vocabulary."""
        return {"tokenizer": "dna-char", "vocab": [*SPECIAL_TOKENS, *BASES], "soft_mask": self.soft_mask}
