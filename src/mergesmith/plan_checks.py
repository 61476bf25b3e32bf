"""Recipe keys that mergekit 0.1.5 reads and ignores: warned about once each, refused under --strict.

Published recipes carry them (LazyMergekit templates give every model `weight` and `density`,
mergekit's own tests give every method `weight`), and they merge as they do without the key. A
name that no method knows is a typo, and stays an error with the closest name.

The checks read the method registry, so they run in the planner: recipe/ imports no method code.
"""

from __future__ import annotations

import difflib
import logging

from mergesmith.errors import RecipeError
from mergesmith.methods import METHODS
from mergesmith.methods.spec import MethodSpec
from mergesmith.plan_parameters import Level
from mergesmith.recipe.schema import Recipe

log = logging.getLogger(__name__)

# Every parameter name some merge method knows (mergekit 0.1.5's twenty methods use a subset of
# these). mergekit ignores a parameter the chosen method does not take, and published recipes rely
# on it (LazyMergekit templates give every model `weight` and `density`); a name no method knows is
# a typo, and stays an error.
KNOWN_PARAMETERS = frozenset(p.name for spec, _ in METHODS.values() for p in spec.params)


class Ignored:
    """Recipe keys mergekit ignores: each is warned about once, or refused when `strict`."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.messages: list[str] = []

    def add(self, message: str, hint: str) -> None:
        if self.strict:
            raise RecipeError(message, hint=f"{hint} (--strict refuses keys that the merge ignores)")
        if message not in self.messages:
            self.messages.append(message)
            log.warning(message)


def check_parameter_names(level: Level, spec: MethodSpec, ignored: Ignored) -> None:
    for name in level.settings or {}:
        param = spec.param(name)
        if param is None and name in KNOWN_PARAMETERS:  # another method's parameter
            ignored.add(f"{spec.name} ignores {name!r} ({level.path})", "remove the key")
        elif param is None:
            names = [p.name for p in spec.params]
            close = difflib.get_close_matches(name, names, n=1) or difflib.get_close_matches(
                name, sorted(KNOWN_PARAMETERS), n=1
            )
            choices = ", ".join(names) or "none"
            raise RecipeError(
                f"{level.path}.{name}: {spec.name} has no parameter {name!r}",
                hint=f"did you mean '{close[0]}'?" if close else f"{spec.name} takes: {choices}",
            )
        elif level.is_model_block and not param.per_input:
            ignored.add(
                f"{spec.name} ignores {name!r} ({level.path}): it is method-wide, read only from the slice's "
                "or the top-level parameters",
                "move it to the slice's or the top-level parameters",
            )


def check_slice_keys(recipe: Recipe, spec: MethodSpec, ignored: Ignored) -> None:
    outputs = [("", recipe.slices)]
    if recipe.modules:
        outputs = [(f"modules.{name}.", module.slices) for name, module in recipe.modules.items()]
    for prefix, slices in outputs:
        for i, out_slice in enumerate(slices or ()):
            if out_slice.residual_weight is not None:  # mergekit 0.1.5 reads it and never uses it
                ignored.add(f"{spec.name} ignores 'residual_weight' ({prefix}slices[{i}])", "remove the key")
