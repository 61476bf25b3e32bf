"""Parameter resolution: which recipe level gives a parameter its value for one tensor.

Precedence, highest first (mergekit 0.1.5): the source's own `parameters` (every source of the slice
naming the same model), the output slice's, the module's, the recipe's top level, then the method's
default. A level whose setting evaluates to nothing (an empty list, a filter list in which no filter
matches) is skipped. Method-wide parameters are never read from a model's own block.

It is the planner's work, as it reads a method's Param: recipe/ parses settings without method code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mergesmith.errors import PlanError, RecipeError
from mergesmith.methods.spec import Param
from mergesmith.recipe.settings import Setting, evaluate_setting


@dataclass(frozen=True)
class Level:
    """The parameters of one recipe level, with the key path they live at (for messages)."""

    path: str  # "slices[3].sources[0].parameters"
    settings: Mapping[str, Setting] | None
    is_model_block: bool = False  # a source's or a model's own parameters


def resolve_parameter(param: Param, levels: Sequence[Level], *, tensor_name: str, t: float) -> Any:
    """The value of `param` for `tensor_name` at position `t` of its slice.

    Per-input parameters are matched against the source tensor name, method-wide ones against the
    output tensor name: the caller passes the right one.
    """
    for level in levels:
        if not level.settings or param.name not in level.settings:
            continue
        try:
            value = evaluate_setting(level.settings[param.name], tensor_name, t, validate=param.validate)
        except ValueError as err:
            raise RecipeError(f"{level.path}.{param.name}: {err}") from None
        if value is not None:
            return value
    if param.required:
        where = levels[0].path.rsplit(".parameters", 1)[0] if levels else "parameters"
        raise PlanError(
            f"{where}: parameter {param.name!r} has no value for tensor {tensor_name}",
            hint=f"set {param.name} under the model, the slice or the top-level parameters"
            if param.per_input
            else f"set {param.name} in the slice's or the top-level parameters (it is method-wide)",
        )
    return param.default
