"""Reading a YAML configuration into a strict pydantic model (genome files, MoE configs): unknown
keys are errors naming the closest real key, other problems name their key path."""

from __future__ import annotations

import difflib
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from mergesmith.errors import RecipeError

Model = TypeVar("Model", bound=BaseModel)


def parse_strict(schema: type[Model], text: str, source: str) -> Model:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RecipeError(f"{source}: not YAML ({err})") from None
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        messages, hints = [], []
        for problem in err.errors():
            loc = problem["loc"]
            path = "".join(f"[{p}]" if isinstance(p, int) else f"{'.' if i else ''}{p}" for i, p in enumerate(loc))
            if problem["type"] == "extra_forbidden":
                keys = _keys_at(schema, loc[:-1])
                close = difflib.get_close_matches(str(loc[-1]), keys, n=1, cutoff=0.6)
                messages.append(f"{path}: unknown key")
                hints.append(f"did you mean '{close[0]}'?" if close else "valid keys: " + ", ".join(keys))
            else:
                messages.append(f"{path or '(top level)'}: {problem['msg'][:1].lower()}{problem['msg'][1:]}")
        raise RecipeError(f"{source}: " + "\n".join(messages), hint="; ".join(hints) or None) from None


def _keys_at(schema: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    model: Any = schema
    for item in loc:
        if isinstance(item, int):
            continue
        field = model.model_fields.get(item)
        if field is None:
            return []
        inner = [a for a in getattr(field.annotation, "__args__", (field.annotation,)) if isinstance(a, type)]
        nested = [a for a in inner if issubclass(a, BaseModel)]
        if not nested:  # list[Expert] | None: one level further down
            inner = [b for a in getattr(field.annotation, "__args__", ()) for b in getattr(a, "__args__", ())]
            nested = [a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields)
