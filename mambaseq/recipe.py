"""Run configurations as dataclasses read from YAML recipes, every field overridable (CLI flags)."""

from __future__ import annotations

import dataclasses
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
        return cls(**values)
