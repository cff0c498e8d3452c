"""Property-based tests of the DNA tokenizer (issue 7, item 3): any text encodes without raising,
one id per character, to the ids an independent table gives; round trips; reverse complement."""

from __future__ import annotations

import string

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mambaseq.tasks.dna import tokenizer as tok

PROPERTY = settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# The documented vocabulary, written out here rather than read from the module.
IDS = {"A": 7, "C": 8, "G": 9, "T": 10, "N": 11, "U": 10, **dict.fromkeys("RYSWKMBDHV", 11)}
UNK = 6
COMPLEMENT = {"A": "T", "C": "G", "G": "C", "T": "A", "N": "N"}


def expected_ids(text: str, soft_mask: str) -> list[int]:
    out = []
    for char in text:
        upper = char.upper() if char in string.ascii_letters else char
        if upper not in IDS:
            out.append(UNK)
        elif soft_mask == "n" and char in string.ascii_lowercase:
            out.append(IDS["N"])
        else:
            out.append(IDS[upper])
    return out


DNA_ALPHABET = "ACGTNacgtnRYSWKMBDHVryswkmbdhvUu"


@PROPERTY
@given(text=st.text(st.sampled_from(DNA_ALPHABET + "-*.X? é\n\x00\ud800")) | st.text(),
       soft_mask=st.sampled_from(["base", "n"]))
@example(text="\ud800é", soft_mask="base")  # a lone surrogate and a non-ASCII letter: one [UNK] each
def test_any_text_encodes_to_one_known_id_per_character(text: str, soft_mask: str) -> None:
    ids = tok.encode(text, soft_mask)
    assert ids.dtype == np.int64 and ids.shape == (len(text),)
    assert ids.tolist() == expected_ids(text, soft_mask)
    assert tok.DnaTokenizer(soft_mask).encode(text).tolist() == ids.tolist()


@PROPERTY
@given(data=st.binary(), soft_mask=st.sampled_from(["base", "n"]))
def test_any_bytes_encode_like_their_latin1_text(data: bytes, soft_mask: str) -> None:
    # A byte is a character: the bytes above 127 are no letters of the vocabulary, so [UNK].
    assert tok.encode(data, soft_mask).tolist() == expected_ids(data.decode("latin-1"), soft_mask)
    assert tok.encode(bytearray(data), soft_mask).tolist() == tok.encode(data, soft_mask).tolist()


@PROPERTY
@given(text=st.text())
def test_soft_mask_positions_are_the_ascii_lowercase(text: str) -> None:
    assert tok.soft_mask_positions(text).tolist() == [c in string.ascii_lowercase for c in text]


@PROPERTY
@given(seq=st.text(st.sampled_from("ACGTNacgtn")))
def test_round_trip_of_bases_uppercases(seq: str) -> None:
    assert tok.decode(tok.encode(seq)) == seq.upper()
    assert tok.decode(torch.from_numpy(tok.encode(seq))) == seq.upper()


@PROPERTY
@given(seq=st.text(st.sampled_from("ACGTNacgtnRYKM")))
def test_reverse_complement_reverses_and_complements(seq: str) -> None:
    expected = "".join(COMPLEMENT[c] for c in tok.decode(tok.encode(seq))[::-1])
    assert tok.decode(tok.reverse_complement(tok.encode(seq))) == expected


@PROPERTY
@given(ids=arrays(np.int64, st.tuples(st.integers(1, 3), st.integers(0, 40)), elements=st.integers(0, 11)),
       as_torch=st.booleans())
def test_reverse_complement_is_an_involution(ids: np.ndarray, as_torch: bool) -> None:
    x = torch.from_numpy(ids).to(torch.int32) if as_torch else ids
    once = tok.reverse_complement(x)
    twice = tok.reverse_complement(once)
    assert type(twice) is type(x) and twice.shape == x.shape
    assert np.array_equal(np.asarray(twice), np.asarray(x))
    special = ids < tok.A
    assert np.array_equal(np.asarray(once)[..., ::-1][special], ids[special])  # specials stay themselves


@PROPERTY
@given(ids=st.lists(st.integers(), max_size=20), keep_special=st.booleans())
@example(ids=[2**70], keep_special=False)  # beyond int64: was an OverflowError
def test_decode_of_any_integers_is_text_or_a_value_error(ids: list[int], keep_special: bool) -> None:
    if all(0 <= i < tok.VOCAB_SIZE for i in ids):
        names = [*tok.SPECIAL_TOKENS, *tok.BASES]
        assert tok.decode(ids, keep_special) == "".join(names[i] for i in ids if keep_special or i >= tok.A)
    else:
        with pytest.raises(ValueError, match=r"token ids must lie in \[0, 12\)"):
            tok.decode(ids, keep_special)


@PROPERTY
@given(ids=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=20), as_torch=st.booleans())
@example(ids=[-1, 7], as_torch=False)  # was read as N: a negative id indexed the table from its end
@example(ids=[12], as_torch=True)  # was an IndexError
def test_reverse_complement_refuses_ids_outside_the_vocabulary(ids: list[int], as_torch: bool) -> None:
    x = torch.tensor(ids) if as_torch else np.array(ids)
    if all(0 <= i < tok.VOCAB_SIZE for i in ids):
        assert np.asarray(tok.reverse_complement(x)).shape == (len(ids),)
    else:
        with pytest.raises(ValueError, match=r"token ids must lie in \[0, 12\)"):
            tok.reverse_complement(x)


@PROPERTY
@given(policy=st.text(max_size=6))
def test_only_the_two_soft_mask_policies_are_accepted(policy: str) -> None:
    if policy in ("base", "n"):
        assert tok.DnaTokenizer(policy).soft_mask == policy
        return
    with pytest.raises(ValueError, match="soft_mask must be 'base' or 'n'"):
        tok.DnaTokenizer(policy)
    with pytest.raises(ValueError, match="soft_mask must be 'base' or 'n'"):
        tok.encode("ACGT", policy)  # type: ignore[arg-type]
