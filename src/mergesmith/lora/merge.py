"""`mergesmith lora merge`: one or more LoRA adapters applied to a base, weighted, as a recipe.

One adapter at weight 1 is a passthrough of `BASE+ADAPTER`: exactly W + scale B A. Several (or
other weights) are task arithmetic over `BASE+ADAPTER_i` with BASE as the base model:
W + sum_i w_i ((W + scale_i B_i A_i) - W). Either streams like every merge: no adapted model is ever
held whole or written.
"""

from __future__ import annotations

from collections.abc import Sequence

import yaml

from mergesmith.errors import RecipeError


def adapters_recipe(
    base: str, adapters: Sequence[str], weights: Sequence[float] | None = None, dtype: str | None = None
) -> str:
    """The YAML recipe applying `adapters` (folders or hub ids) to `base` with `weights` (1 each by
    default), written in `dtype` (None: the base's)."""
    if not adapters:
        raise RecipeError("lora merge: no adapter given", hint="give BASE ADAPTER... OUT")
    weights = list(weights) if weights else [1.0] * len(adapters)
    if len(weights) != len(adapters):
        raise RecipeError(
            f"lora merge: {len(weights)} --weight values for {len(adapters)} adapters",
            hint="give one --weight per adapter, in the adapters' order, or none (each 1.0)",
        )
    for text in (base, *adapters):
        if "+" in text:
            raise RecipeError(f"lora merge: {text!r} holds a '+'", hint="give the base and each adapter on its own")
    if len(adapters) == 1 and weights[0] == 1.0:
        recipe: dict = {"models": [{"model": f"{base}+{adapters[0]}"}], "merge_method": "passthrough"}
    else:
        models = [{"model": f"{base}+{a}", "parameters": {"weight": float(w)}} for a, w in zip(adapters, weights)]
        recipe = {"models": models, "base_model": base, "merge_method": "task_arithmetic"}
    if dtype is not None:
        recipe["dtype"] = dtype
    return yaml.safe_dump(recipe, sort_keys=False)
