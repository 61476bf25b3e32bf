"""The merge methods: an explicit registry of specs and their pure tensor functions.

Importing this package does not import torch: `mergesmith plan` validates recipes without it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from mergesmith.errors import RecipeError, UnsupportedError
from mergesmith.methods import passthrough
from mergesmith.methods.spec import Inputs, MethodSpec, Param

METHODS: dict[str, tuple[MethodSpec, Callable[..., Any]]] = {
    passthrough.SPEC.name: (passthrough.SPEC, passthrough.passthrough),
}

# mergekit 0.1.5's other method names: recognised, so that a recipe using them gets "not yet"
# rather than "unknown".
PLANNED = (
    "linear",
    "slerp",
    "nuslerp",
    "multislerp",
    "karcher",
    "task_arithmetic",
    "ties",
    "dare_ties",
    "dare_linear",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
    "sce",
    "ram",
    "ramplus_tl",
    "model_stock",
    "arcee_fusion",
    "nearswap",
)


def get_method(name: str) -> tuple[MethodSpec, Callable[..., Any]]:
    """The spec and tensor function of `merge_method: name`, or a RecipeError naming the choices."""
    if name in METHODS:
        return METHODS[name]
    supported = ", ".join(METHODS)
    if name in PLANNED:
        raise UnsupportedError(
            f"merge_method: {name!r} is not supported yet (supported now: {supported})",
            hint="use mergekit for this recipe for now",
        )
    close = difflib.get_close_matches(name, [*METHODS, *PLANNED], n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"supported methods: {supported}"
    raise RecipeError(f"merge_method: unknown method {name!r}", hint=hint)


__all__ = ["METHODS", "Inputs", "MethodSpec", "Param", "get_method"]
