"""DNA tokenizer: HyenaDNA ids, soft-masking, IUPAC, reverse complement, round trip."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mambaseq.tasks.dna import tokenizer as tok


def random_dna(n, alphabet="ACGTacgtNn"):
    return "".join(random.choice(alphabet) for _ in range(n))


def test_ids_are_hyenadna_compatible():
    assert tok.encode("ACGTN").tolist() == [7, 8, 9, 10, 11]
    assert tok.decode(list(range(12)), keep_special=True) == "[CLS][SEP][BOS][MASK][PAD][RESERVED][UNK]ACGTN"


@pytest.mark.parametrize("n", [0, 1, 1000])
def test_round_trip_uppercases(n):
    seq = random_dna(n)
    assert tok.decode(tok.encode(seq)) == seq.upper()


def test_soft_masked_bases_read_as_bases_by_default():
    assert tok.encode("acgt").tolist() == tok.encode("ACGT").tolist()


def test_soft_mask_policy_n():
    assert tok.encode("ACgt", soft_mask="n").tolist() == [7, 8, 11, 11]


def test_soft_mask_positions():
    assert tok.soft_mask_positions("ACgtN").tolist() == [False, False, True, True, False]


@pytest.mark.parametrize("code", list("RYSWKMBDHVryswkmbdhv"))
def test_iupac_codes_become_n(code):
    assert tok.encode(code).tolist() == [tok.N]


@pytest.mark.parametrize("char", ["-", "X", "*", "1", "é"])
def test_other_characters_become_unk(char):
    assert tok.encode(char).tolist()[0] == tok.UNK


def test_rna_u_is_t():
    assert tok.encode("Uu").tolist() == [tok.T, tok.T]


def test_reverse_complement_numpy():
    ids = tok.encode("AACGTN")
    assert tok.decode(tok.reverse_complement(ids)) == "NACGTT"


def test_reverse_complement_is_an_involution_on_batches():
    ids = np.stack([tok.encode(random_dna(50, "ACGTN")) for _ in range(3)])
    assert np.array_equal(tok.reverse_complement(tok.reverse_complement(ids)), ids)


def test_reverse_complement_torch_keeps_specials_and_dtype():
    ids = torch.tensor([[tok.BOS, tok.A, tok.C, tok.PAD]], dtype=torch.int32)
    out = tok.reverse_complement(ids)
    assert out.dtype == torch.int32
    assert out.tolist() == [[tok.PAD, tok.G, tok.T, tok.BOS]]


def test_decode_rejects_out_of_range_ids():
    with pytest.raises(ValueError, match="token ids"):
        tok.decode([3, 12])


def test_bad_policy_is_rejected():
    with pytest.raises(ValueError, match="soft_mask"):
        tok.DnaTokenizer(soft_mask="lower")
