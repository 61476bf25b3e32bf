"""A merge method is declared data (MethodSpec) plus one pure tensor function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from mergesmith.recipe.settings import as_float


def as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"expected true or false, found {value!r}")


VALIDATORS: dict[type, Callable[[Any], Any]] = {float: as_float, bool: as_bool}


@dataclass(frozen=True)
class Param:
    """One parameter. `per_input` ones are set per model; the others are method-wide."""

    name: str
    type: type
    default: Any = None
    required: bool = False
    per_input: bool = False
    doc: str = ""

    def validate(self, value: Any) -> Any:
        return VALIDATORS[self.type](value)


@dataclass(frozen=True)
class Inputs:
    """The input contract, checked at plan time for every output slice."""

    base: Literal["required", "optional", "ignored", "forbidden"] = "ignored"
    min_count: int = 1
    max_count: int | None = None


@dataclass(frozen=True)
class MethodSpec:
    name: str
    params: tuple[Param, ...]
    inputs: Inputs
    reference: str | None = None  # paper or documentation
    summary: str = ""
    # True when the function may run on any matching slice of its flattened inputs, so the
    # executor can stream a large tensor through it in chunks.
    elementwise: bool = False

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)
