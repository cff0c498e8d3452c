"""Recipe.from_dict: field values from YAML or --set are checked against the dataclass's types."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mambaseq.recipe import Recipe


@dataclass
class Example(Recipe):
    flag: bool = False
    count: int = 1
    rate: float = 1e-3
    name: str = "run"
    limit: int | None = None
    devices: int | str = 1
    files: list[str] | None = None
    pair: tuple[float, float] = (0.9, 0.95)
    extra: dict[str, Any] = field(default_factory=dict)
    anything: Any = None


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("rate", "8e-3", 8e-3),  # YAML 1.1 reads an exponent without a dot as a string
    ("rate", 2, 2),
    ("name", 2024, "2024"),
    ("name", Path("runs/x"), "runs/x"),
    ("files", Path("a.fa"), [Path("a.fa")]),
    ("limit", None, None),
    ("limit", 5, 5),
    ("devices", "0,1", "0,1"),
    ("devices", 2, 2),
    ("files", "a.fa", ["a.fa"]),
    ("files", ["a.fa", "b.fa"], ["a.fa", "b.fa"]),
    ("pair", [0.8, 0.9], (0.8, 0.9)),
    ("anything", object, object),
])
def test_a_value_of_the_fields_type_is_taken(name, value, expected):
    assert getattr(Example.from_dict({name: value}), name) == expected


@pytest.mark.parametrize(("name", "value", "message"), [
    ("flag", "maybe", "flag must be true or false, got 'maybe'"),
    ("flag", 1, "flag must be true or false, got 1"),
    ("count", "two", "count must be an integer, got 'two'"),
    ("count", 2.5, "count must be an integer, got 2.5"),
    ("count", True, "count must be an integer, got True"),
    ("rate", "fast", "rate must be a number, got 'fast'"),
    ("rate", "nan", "rate must be a number, got 'nan'"),
    ("rate", False, "rate must be a number, got False"),
    ("name", [1], "name must be a string, got [1]"),
    ("limit", "none", "limit must be an integer or null, got 'none'"),
    ("pair", 0.9, "pair must be a list, got 0.9"),
    ("extra", 3, "extra must be a mapping, got 3"),
])
def test_a_value_of_another_type_is_a_one_line_error_naming_the_field(name, value, message):
    with pytest.raises(ValueError, match=f"^my.yaml: {re.escape(message)}$"):
        Example.from_dict({name: value}, "my.yaml")


def test_a_dataclass_made_in_python_is_checked_too():
    with pytest.raises(ValueError, match=r"^count must be an integer, got 'two'$"):
        Example(count="two")


def test_a_dataclass_made_in_python_takes_the_same_conversions():
    assert Example(rate="8e-3", files="a.fa").rate == 8e-3
    assert Example(files="a.fa").files == ["a.fa"]
