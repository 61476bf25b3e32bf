"""Parameter settings: scalars, gradients and conditional (filtered) lists, as mergekit 0.1.5 reads them.

A setting is parsed once, when the recipe loads, into one of three frozen shapes, and evaluated per
tensor with `evaluate_setting(setting, tensor_name, t)`:

    scale: 1.5                                   -> Scalar(1.5)
    weight: [0.1, 0.5, 1.0]                      -> ScalarList((0.1, 0.5, 1.0))   (a gradient)
    scale: [{filter: o_proj, value: 2.0}, ...]   -> Conditional((("o_proj", Scalar(2.0)), ...))
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ScalarValue = bool | int | float | str


@dataclass(frozen=True)
class Scalar:
    value: ScalarValue


@dataclass(frozen=True)
class ScalarList:
    """A list of numbers is a gradient over the layers of a slice; other lists pick by position."""

    values: tuple[ScalarValue, ...]


@dataclass(frozen=True)
class Conditional:
    """Entries of (filter, value); the first whose filter is missing, '*' or a substring wins."""

    entries: tuple[tuple[str | None, Scalar | ScalarList], ...]


Setting = Scalar | ScalarList | Conditional


class SettingError(ValueError):
    """A malformed setting; `subpath` is the key path inside the setting, e.g. '[1].filter'."""

    def __init__(self, subpath: str, message: str) -> None:
        super().__init__(message)
        self.subpath = subpath
        self.message = message


_CONDITIONAL_KEYS = ("filter", "value")


def parse_setting(raw: Any) -> Setting:
    """Parse one parameter value from YAML. Raises SettingError naming where inside it is wrong."""
    if isinstance(raw, dict):
        return Conditional((_parse_conditional_entry(raw, ""),))
    if isinstance(raw, list):
        if raw and all(isinstance(e, dict) for e in raw):
            return Conditional(tuple(_parse_conditional_entry(e, f"[{i}]") for i, e in enumerate(raw)))
        return _parse_value(raw, "")
    return _parse_value(raw, "")


def _parse_conditional_entry(raw: dict, subpath: str) -> tuple[str | None, Scalar | ScalarList]:
    for key in raw:
        if key not in _CONDITIONAL_KEYS:
            close = difflib.get_close_matches(str(key), _CONDITIONAL_KEYS, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "a conditional entry has 'filter' and 'value'"
            raise SettingError(f"{subpath}.{key}", f"unknown key ({hint})")
    if "value" not in raw:
        raise SettingError(subpath, "a conditional entry needs a 'value' (and optionally a 'filter')")
    filter_ = raw.get("filter")
    if filter_ is not None and not isinstance(filter_, str):
        raise SettingError(f"{subpath}.filter", f"expected a string (a substring of tensor names), found {filter_!r}")
    return filter_, _parse_value(raw["value"], f"{subpath}.value")


def _parse_value(raw: Any, subpath: str) -> Scalar | ScalarList:
    if isinstance(raw, list):
        for i, e in enumerate(raw):
            if not _is_scalar(e):
                raise SettingError(f"{subpath}[{i}]", f"expected a number, boolean or string, found {_describe(e)}")
        return ScalarList(tuple(raw))
    if not _is_scalar(raw):
        raise SettingError(subpath, f"expected a number, boolean, string, list or filter list, found {_describe(raw)}")
    return Scalar(raw)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def evaluate_setting(setting: Setting, tensor_name: str, t: float, *, validate: Callable[[Any], Any]) -> Any:
    """The value of `setting` for one tensor at position t in [0, 1] of its slice, or None.

    None means "no value here": an empty list, or a conditional list in which no filter matches.
    The caller then falls through to the next level. Arithmetic is mergekit 0.1.5's, operation for
    operation, so gradients give the same floats and therefore the same tensors.
    """
    if isinstance(setting, Scalar):
        return validate(setting.value)
    if isinstance(setting, ScalarList):
        return _evaluate_list(setting.values, t, validate)
    for filter_, value in setting.entries:
        if filter_ is None or filter_ == "*" or (tensor_name and filter_ in tensor_name):
            return evaluate_setting(value, tensor_name, t, validate=validate)
    return None


def _evaluate_list(raw: tuple[ScalarValue, ...], t: float, validate: Callable[[Any], Any]) -> Any:
    if not raw:
        return None
    values = [validate(e) for e in raw]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return values[int(t * (len(values) - 1))]
    # Linear interpolation between the two anchors around t (mergekit's formula, kept verbatim
    # in its operation order so that results are the same floats).
    scaled = t * (len(values) - 1)
    i0 = int(scaled)
    i1 = min(len(values) - 1, i0 + 1)
    frac = scaled - i0
    return validate((1 - frac) * values[i0] + frac * values[i1])
