"""A merge method is declared data (MethodSpec) plus one pure tensor function.

The plan reads the spec to check a recipe before any tensor is read: parameter names, where each
may be set, types, defaults, and the input contract. The function then receives plain values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

Scope = Literal["shared", "input", "non_base"]


class Unset:
    """The value of a parameter that the recipe does not set and that has no default (passthrough's
    `scale`): printed as `unset` in plans, one object however often it is pickled."""

    _instance: Unset | None = None

    def __new__(cls) -> Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "unset"

    def __reduce__(self) -> tuple[type[Unset], tuple[()]]:
        return (Unset, ())


UNSET: Final = Unset()


def as_float(value: Any) -> float:
    """Validate a float parameter: numbers, and numeric strings (YAML reads `1e-3` as a string)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, found {value!r}")
    if isinstance(value, (int, float)):
        # NaN and inf (YAML's .nan, or 1.0e+400 read as inf) would silently fill the model with NaN.
        try:
            result = float(value)
        except OverflowError:  # an integer too large for a float
            raise ValueError(f"expected a finite number, found {value!r}") from None
        if not math.isfinite(result):
            raise ValueError(f"expected a finite number, found {value!r}")
        return result
    if isinstance(value, str):
        try:
            result = float(value)
        except ValueError:
            raise ValueError(f"expected a number, found {value!r}") from None
        if math.isfinite(result):
            return result
    raise ValueError(f"expected a number, found {value!r}")


def as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    # mergekit 0.1.5 reads a flag by its truth value, and published recipes write `normalize: 1.0`;
    # 1 and 0 are taken, other numbers stay errors (a likely mistake, e.g. a weight in the wrong key)
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise ValueError(f"expected true or false (or 1, 0), found {value!r}")


def as_int(value: Any) -> int:
    # NaN and inf are not whole numbers (int() of them raises, or would overflow later in torch).
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"expected a whole number, found {value!r}")
    if value != int(value):
        raise ValueError(f"expected a whole number, found {value!r}")
    return int(value)


def _bound(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) and not value.is_integer() else f"{int(value or 0)}"


# Integer parameters are counts; beyond this torch's int comparisons overflow.
LARGEST_INT = 2**31 - 1

VALIDATORS: dict[type, Callable[[Any], Any]] = {float: as_float, bool: as_bool, int: as_int}


@dataclass(frozen=True)
class Param:
    """One parameter.

    scope: "shared" parameters are method-wide (set at slice or top level, matched against the
    output tensor name); "input" ones are set per model, base included; "non_base" ones per model
    other than the base. Per-model parameters match filters against the source tensor name.
    """

    name: str
    type: type
    default: Any = None
    required: bool = False
    scope: Scope = "shared"
    doc: str = ""
    # The values a merge can use, bounds included (None: unbounded). Wider than the paper's range
    # where mergekit computes something sensible (slerp's t outside [0, 1] extrapolates; weights
    # may be negative): only values that surely break a merge are refused.
    minimum: float | None = None
    maximum: float | None = None

    @property
    def per_input(self) -> bool:
        return self.scope != "shared"

    def validate(self, value: Any) -> Any:
        checked = VALIDATORS[self.type](value)
        if self.type is bool:
            return checked
        if (self.minimum is not None and checked < self.minimum) or (
            self.maximum is not None and checked > self.maximum
        ):
            raise ValueError(f"{value!r} is out of range: {self.name} takes {self.valid_range}")
        return checked

    @property
    def valid_range(self) -> str:
        """The range in words: '[0, 1]', 'values >= 0', 'values <= 2147483647', 'any finite number'."""
        low, high = _bound(self.minimum), _bound(self.maximum)
        if self.minimum is not None and self.maximum is not None:
            return f"values in [{low}, {high}]"
        if self.minimum is not None:
            return f"values >= {low}"
        if self.maximum is not None:
            return f"values <= {high}"
        return "any finite number"


@dataclass(frozen=True)
class Inputs:
    """The input contract, checked at plan time for every output slice."""

    base: Literal["required", "optional", "ignored", "forbidden"] = "ignored"
    min_count: int = 1
    max_count: int | None = None
    min_non_base: int | None = None
    max_non_base: int | None = None

    @property
    def uses_base(self) -> bool:
        return self.base in ("required", "optional")


@dataclass(frozen=True)
class MethodSpec:
    name: str
    params: tuple[Param, ...]
    inputs: Inputs
    reference: str | None = None  # paper or documentation
    pretty_name: str = ""
    summary: str = ""
    # True when the function may run on any matching slice of its flattened inputs, so the
    # executor can stream a large tensor through it in chunks.
    elementwise: bool = False
    # True when the function draws random numbers (it then receives `generator=`).
    is_random: bool = False
    # "input": the result has the inputs' dtype; "at_least_float32": float32 unless wider.
    result_dtype: Literal["input", "at_least_float32"] = "input"
    # True when the result depends on torch's intra-op thread count (a whole-tensor torch.dot goes
    # to MKL, which splits it among threads): the executor then runs it with torch's default count,
    # the one mergekit runs with, so the bits agree on the same machine.
    threads_change_result: bool = False
    # Checks the resolved parameters of one tensor; returns a problem, or None.
    check: Callable[[dict[str, Any]], str | None] | None = None
    # The method on raw bytes (single-input methods only), so copies and scalings need no torch.
    raw_kernel: RawKernel | None = None

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


@dataclass(frozen=True)
class RawKernel:
    """The method on one input's raw little-endian bytes, without torch (seconds of import saved
    on merges that only move bytes). It must give the tensor function's bits exactly; the plan
    routes an entry to it only for the `dtypes` listed and when no cast is needed."""

    dtypes: tuple[str, ...]  # safetensors codes it handles: "BF16", ...
    # the result's bytes from one piece of the input, its dtype code and the entry's parameters
    apply: Callable[[bytes | bytearray | memoryview, str, Mapping[str, Any]], bytes]
    # True when these parameters leave the input unchanged: its bytes are then copied
    is_identity: Callable[[Mapping[str, Any]], bool]


# What the registry holds for each method name: the spec and its tensor function.
MethodEntry = tuple[MethodSpec, Callable[..., Any]]
