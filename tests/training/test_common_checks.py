"""TrainRecipe.check_common: values of the shared fields that no run can use are one-line errors
before any data is read."""

from __future__ import annotations

import re

import pytest

from mambaseq.training.trainer import TrainRecipe


@pytest.mark.parametrize(("field", "value", "message"), [
    ("seq_len", -5, "seq_len must be a positive integer, got -5"),
    ("batch_size", 0, "batch_size must be a positive integer, got 0"),
    ("max_steps", 0, "max_steps must be a positive integer, got 0"),
    ("val_every", 0, "val_every must be a positive integer, got 0"),
    ("warmup_start_len", 0, "warmup_start_len must be a positive integer or null, got 0"),
    ("lr", -1.0, "lr must be >= 0, got -1.0"),
    ("weight_decay", -0.1, "weight_decay must be >= 0, got -0.1"),
    ("grad_clip", -1.0, "grad_clip must be >= 0, got -1.0"),
    ("min_lr_ratio", 1.5, "min_lr_ratio must be in [0, 1], got 1.5"),
    ("betas", (0.9, 1.0), "betas must be two numbers in [0, 1), got [0.9, 1.0]"),
    ("betas", (0.9,), "betas must be two numbers in [0, 1), got [0.9]"),
    ("max_minutes", 0.0, "max_minutes must be > 0 or null, got 0.0"),
])
def test_a_value_no_run_can_use_is_a_one_line_error(field, value, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        TrainRecipe(**{field: value}).check_common()


def test_the_defaults_pass():
    TrainRecipe().check_common()
