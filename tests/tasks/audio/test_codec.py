"""Quantization codecs against an independent float64 numpy statement of the formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mambaseq.tasks.audio.codec import Codec, LinearCodec, MuLawCodec, make_codec

BITS = [4, 8, 10]
DTYPES = [torch.float32, torch.float64]
NAMES = ["mulaw", "linear"]


def numpy_mulaw(x: np.ndarray, bits: int) -> np.ndarray:
    """G.711's continuous mu-law, F(x) = sgn(x) ln(1 + mu|x|) / ln(1 + mu), written plainly."""
    mu = 2.0 ** bits - 1
    return np.sign(x) * np.log(1 + mu * np.abs(x)) / np.log(1 + mu)


def numpy_mulaw_inverse(y: np.ndarray, bits: int) -> np.ndarray:
    mu = 2.0 ** bits - 1
    return np.sign(y) * ((1 + mu) ** np.abs(y) - 1) / mu


def numpy_ids(y: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin of y in [-1, 1] among 2**bits equal bins, and the unrounded bin coordinate."""
    q = 2 ** bits
    scaled = (np.clip(y, -1, 1) + 1) / 2 * q
    return np.minimum(np.floor(scaled), q - 1).astype(np.int64), scaled


def compress(name: str, x: np.ndarray, bits: int) -> np.ndarray:
    return numpy_mulaw(x, bits) if name == "mulaw" else x


def random_wave(n: int, dtype: torch.dtype) -> torch.Tensor:
    # Half of the samples quiet (log-uniform down to 1e-6), where mu-law bins are finest.
    rng = np.random.default_rng()
    loud = rng.uniform(-1, 1, n // 2)
    quiet = rng.choice([-1, 1], n - n // 2) * 10 ** rng.uniform(-6, 0, n - n // 2)
    return torch.from_numpy(np.concatenate([loud, quiet])).to(dtype)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_mulaw_round_trip_error_is_within_half_a_bin_in_the_companded_domain(bits, dtype):
    codec = MuLawCodec(bits)
    x = random_wave(20_000, dtype)
    back = codec.decode(codec.encode(x), dtype=torch.float64).numpy()
    x64 = x.double().numpy()
    err = np.abs(numpy_mulaw(back, bits) - numpy_mulaw(x64, bits))
    assert err.max() <= 1 / 2 ** bits * (1 + 1e-9)  # half of a bin of width 2 / 2**bits
    # In the signal domain: at most the distance from the top bin's centre to full scale (the widest
    # bin; its centre sits below the middle of the bin, since F^-1 is convex there).
    top_centre = numpy_mulaw_inverse(np.array([1 - 1 / 2 ** bits]), bits)[0]
    assert np.abs(back - x64).max() <= (1 - top_centre) * (1 + 1e-9)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_round_trip_error_is_at_most_half_a_bin(bits, dtype):
    codec = LinearCodec(bits)
    x = random_wave(20_000, dtype)
    back = codec.decode(codec.encode(x), dtype=torch.float64)
    assert (back - x.double()).abs().max().item() <= 1 / 2 ** bits * (1 + 1e-9)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_encode_agrees_with_numpy_float64(name, bits, dtype):
    x = random_wave(20_000, dtype)
    ids = make_codec(name, bits).encode(x).numpy()
    expected, scaled = numpy_ids(compress(name, x.double().numpy(), bits), bits)
    differ = ids != expected
    # log1p against log may round apart only on a bin edge.
    assert np.all(np.abs(ids - expected)[differ] == 1)
    assert np.all(np.abs(scaled[differ] - np.round(scaled[differ])) < 1e-9)
    assert differ.mean() < 1e-3


@pytest.mark.parametrize("bits", BITS)
def test_mulaw_decode_agrees_with_numpy_inverse(bits):
    ids = np.arange(2 ** bits)
    centres = -1 + (ids + 0.5) * 2 / 2 ** bits
    expected = numpy_mulaw_inverse(centres, bits)
    got = MuLawCodec(bits).decode(torch.from_numpy(ids), dtype=torch.float64).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bits", [*BITS, 2, 16])
@pytest.mark.parametrize("dtype", DTYPES)
def test_encode_of_decode_gives_every_id_back(name, bits, dtype):
    codec = make_codec(name, bits)
    ids = torch.arange(codec.num_classes)
    assert torch.equal(codec.encode(codec.decode(ids, dtype=dtype)), ids)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_encode_is_monotonic(name, bits, dtype):
    x = torch.sort(random_wave(20_000, dtype)).values
    ids = make_codec(name, bits).encode(x)
    assert (ids[1:] >= ids[:-1]).all()


@settings(max_examples=200, deadline=None)
@given(a=st.floats(-2, 2), b=st.floats(-2, 2), bits=st.sampled_from(BITS), name=st.sampled_from(NAMES))
def test_encode_preserves_order_of_any_two_samples(a, b, bits, name):
    codec = make_codec(name, bits)
    lo, hi = sorted([a, b])
    ids = codec.encode(torch.tensor([lo, hi], dtype=torch.float64))
    assert ids[0] <= ids[1]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_silence_maps_to_the_middle_classes(name, bits, dtype):
    codec = make_codec(name, bits)
    q = 2 ** bits
    assert codec.encode(torch.zeros(3, dtype=dtype)).tolist() == [q // 2] * 3 == [codec.silence_id] * 3
    quiet = torch.tensor([-1e-6, -1e-30, 1e-30, 1e-6], dtype=dtype)
    assert codec.encode(quiet).tolist() == [q // 2 - 1] * 2 + [q // 2] * 2


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_extremes_and_values_beyond_them_map_to_the_end_classes(name, bits, dtype):
    codec = make_codec(name, bits)
    x = torch.tensor([-1.0, 1.0, -3.5, 7.0, -float("inf"), float("inf")], dtype=dtype)
    assert codec.encode(x).tolist() == [0, 2 ** bits - 1] * 3


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(), (7,), (2, 3, 5)])
def test_encode_and_decode_keep_the_shape(name, shape):
    codec = make_codec(name)
    x = torch.rand(shape) * 2 - 1
    ids = codec.encode(x)
    assert ids.shape == x.shape and ids.dtype == torch.int64
    assert codec.decode(ids).shape == x.shape and codec.decode(ids).dtype == torch.float32


def test_encode_accepts_numpy():
    x = np.linspace(-1, 1, 11, dtype=np.float32)
    assert torch.equal(MuLawCodec().encode(x), MuLawCodec().encode(torch.from_numpy(x)))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_input_raises(name, dtype):
    x = torch.tensor([0.1, float("nan"), 0.2], dtype=dtype)
    with pytest.raises(ValueError, match="NaN"):
        make_codec(name).encode(x)


def test_integer_pcm_input_raises():
    with pytest.raises(ValueError, match="float waveform"):
        MuLawCodec().encode(torch.tensor([0, 1000], dtype=torch.int16))


@pytest.mark.parametrize("ids", [[-1, 3], [0, 256]])
def test_decode_rejects_ids_out_of_range(ids):
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        MuLawCodec(8).decode(torch.tensor(ids))


@pytest.mark.parametrize("codec", [MuLawCodec(8), MuLawCodec(12), LinearCodec(16), LinearCodec(2)])
def test_dict_round_trip(codec):
    data = codec.to_dict()
    assert set(data) == {"name", "bits"}
    assert Codec.from_dict(data) == codec and type(codec).from_dict(data) == codec


def test_from_dict_on_a_subclass_refuses_another_codec():
    with pytest.raises(ValueError, match="'linear', not 'mulaw'"):
        MuLawCodec.from_dict({"name": "linear", "bits": 8})


def test_make_codec_names_and_classes():
    assert make_codec("mu-law", 8) == MuLawCodec(8) and make_codec("LINEAR", 4) == LinearCodec(4)
    assert MuLawCodec(8).num_classes == 256 and MuLawCodec(8).mu == 255


@pytest.mark.parametrize("bits", [1, 17, 0, 8.0, True, "8"])
def test_bad_bits_raise_one_line_errors(bits):
    with pytest.raises(ValueError, match="from 2 to 16") as info:
        make_codec("mulaw", bits)
    assert "\n" not in str(info.value)


def test_unknown_codec_name_raises_a_one_line_error():
    with pytest.raises(ValueError, match="unknown codec 'alaw'; choose one of mulaw, linear"):
        make_codec("alaw")
