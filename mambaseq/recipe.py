"""Run configurations as dataclasses read from YAML recipes, every field overridable (CLI flags)."""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

R = TypeVar("R", bound="Recipe")


class Recipe:
    """Base of a config dataclass: `from_recipe(name or YAML path, **overrides)`.

    Subclasses name their bundled recipes (`RECIPES`, YAML files in `RECIPE_PACKAGE`/recipes/) and
    the error type their commands turn into one-line messages (`input_error`).
    """

    RECIPES: ClassVar[tuple[str, ...]] = ()
    RECIPE_PACKAGE: ClassVar[str] = ""
    input_error: ClassVar[type[Exception]] = ValueError

    @classmethod
    def recipe_text(cls, recipe: str | Path) -> str:
        if str(recipe) in cls.RECIPES:
            return (resources.files(cls.RECIPE_PACKAGE) / "recipes" / f"{recipe}.yaml").read_text()
        path = Path(recipe)
        # Names like "hg38-1.4m" have a suffix too: only YAML files count as paths.
        if path.suffix not in (".yaml", ".yml"):
            raise cls.input_error(f"unknown recipe {recipe!r}; choose one of {', '.join(cls.RECIPES)} "
                                  "or a YAML file")
        if not path.is_file():
            raise cls.input_error(f"{path}: recipe file not found")
        return path.read_text()

    @classmethod
    def from_recipe(cls: type[R], recipe: str | Path, **overrides: Any) -> R:
        """The recipe's values, then every override that is not None."""
        try:
            values = yaml.safe_load(cls.recipe_text(recipe)) or {}
        except yaml.YAMLError as err:
            raise cls.input_error(f"{recipe}: invalid YAML ({' '.join(str(err).split())})") from None
        if not isinstance(values, dict):
            raise cls.input_error(f"{recipe}: a recipe is a mapping of field: value")
        return cls.from_dict({**values, **{k: v for k, v in overrides.items() if v is not None}}, str(recipe))

    @classmethod
    def from_dict(cls: type[R], values: dict[str, Any], where: str = "config") -> R:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise cls.input_error(f"{where}: unknown field(s) {', '.join(unknown)}")
        try:
            return cls(**values)
        except cls.input_error as err:  # a field of the wrong type (__post_init__): say where it came from
            raise cls.input_error(f"{where}: {err}") from None

    def __post_init__(self) -> None:
        """Every field's value checked against its type, and converted where `_conform` says, however
        the dataclass is made (from a recipe, from flags or in Python)."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            ok, converted = _conform(value, hints[f.name])
            if not ok:
                raise self.input_error(f"{f.name} must be {_describe(hints[f.name])}, got {value!r}")
            setattr(self, f.name, converted)


def _conform(value: Any, hint: Any) -> tuple[bool, Any]:
    """(whether `value` fits the field type `hint`, the value to keep). Values come from YAML (a recipe
    or --set), so a number is accepted for a str field and a string such as '8e-3' (YAML 1.1 reads
    exponents without a dot as strings) for a float one; a Path is taken for a str; one string or
    Path for a list is a list of one.
    Containers are checked by kind only, and types other than these are not checked."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(hint):  # the first arm that takes it, in the order written
            ok, converted = _conform(value, arm)
            if ok:
                return True, converted
        return False, value
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                return False, value
            return math.isfinite(number), number if math.isfinite(number) else value  # not 'nan' or 'inf'
        return isinstance(value, (int, float)) and not isinstance(value, bool), value
    if hint is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, str(value)
        if isinstance(value, os.PathLike):  # the Python API: Path objects for files and folders
            return True, os.fspath(value)
        return isinstance(value, str), value
    if origin in (list, tuple):
        if isinstance(value, (str, os.PathLike)) and origin is list:
            return True, [value]
        return isinstance(value, (list, tuple)), origin(value) if isinstance(value, (list, tuple)) else value
    if origin is dict:
        return isinstance(value, dict), value
    return True, value


def _describe(hint: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(arm) for arm in typing.get_args(hint))
    origin = typing.get_origin(hint)
    return names.get(hint) or {list: "a list", tuple: "a list", dict: "a mapping"}.get(origin, str(hint))
