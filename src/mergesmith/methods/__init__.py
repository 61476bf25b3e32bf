"""The merge methods: an explicit registry of specs and their pure tensor functions.

A function's signature follows its spec's base policy: methods that ignore the base take
`(tensors, **params)`; methods that use one take `(base, tensors, **params)` with the base apart
(None when optional and absent). Per-model parameters arrive as lists aligned with `tensors`.
Random methods also receive `generator=`. Importing this package does not import torch.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from mergesmith.errors import RecipeError
from mergesmith.methods import fusion, linear, model_stock, passthrough, ram, sce, slerp, task_arithmetic
from mergesmith.methods.spec import Inputs, MethodEntry, MethodSpec, Param

METHODS: dict[str, MethodEntry] = {
    passthrough.SPEC.name: (passthrough.SPEC, passthrough.passthrough),
    linear.SPEC.name: (linear.SPEC, linear.linear),
    **slerp.METHODS,
    **task_arithmetic.METHODS,
    **model_stock.METHODS,
    **sce.METHODS,
    **ram.METHODS,
    **fusion.METHODS,
}


def get_method(name: str) -> tuple[MethodSpec, Callable[..., Any]]:
    """The spec and tensor function of `merge_method: name`, or a RecipeError naming the choices."""
    if name in METHODS:
        return METHODS[name]
    close = difflib.get_close_matches(name, list(METHODS), n=1)
    hint = f"did you mean '{close[0]}'?" if close else "`mergesmith methods` lists them all"
    raise RecipeError(f"merge_method: unknown method {name!r}", hint=hint)


__all__ = ["METHODS", "Inputs", "MethodSpec", "Param", "get_method"]
