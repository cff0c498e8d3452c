"""Lightning checkpoints: atomic writes, and reads that run no pickled code."""

from __future__ import annotations

import pytest
import torch

from mambaseq.checkpoint import CheckpointError
from mambaseq.training.checkpoint_io import AtomicCheckpointIO


class Payload:
    """Stands for an object a tampered checkpoint could smuggle in (its unpickling would run code)."""


def test_round_trip_of_tensors_and_plain_containers(tmp_path):
    checkpoint = {"state_dict": {"w": torch.randn(3)}, "hyper_parameters": {"betas": (0.9, 0.95), "lr": 1e-3},
                  "global_step": 7}
    io = AtomicCheckpointIO()
    io.save_checkpoint(checkpoint, tmp_path / "a.ckpt")
    loaded = io.load_checkpoint(tmp_path / "a.ckpt")
    assert torch.equal(loaded["state_dict"]["w"], checkpoint["state_dict"]["w"])
    assert loaded["hyper_parameters"] == checkpoint["hyper_parameters"] and loaded["global_step"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["a.ckpt"]


def test_a_checkpoint_holding_an_arbitrary_object_is_refused(tmp_path):
    torch.save({"state_dict": {}, "extra": Payload()}, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match=r"bad\.ckpt: refused to load.*Payload") as err:
        AtomicCheckpointIO().load_checkpoint(tmp_path / "bad.ckpt")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated zip"])
def test_a_file_that_is_no_checkpoint_is_a_one_line_error(tmp_path, content):
    (tmp_path / "junk.ckpt").write_bytes(content)
    with pytest.raises(CheckpointError, match=r"junk\.ckpt: not a readable checkpoint") as err:
        AtomicCheckpointIO().load_checkpoint(tmp_path / "junk.ckpt")
    assert "\n" not in str(err.value)
