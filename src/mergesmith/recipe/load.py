"""YAML text -> Recipe, with errors that name the key path and suggest the fix."""

from __future__ import annotations

import difflib
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mergesmith.errors import RecipeError
from mergesmith.recipe.schema import Recipe


@dataclass(frozen=True)
class LoadedRecipe:
    """A validated recipe and the text it came from (saved verbatim with the merged model)."""

    recipe: Recipe
    text: str
    source: str  # file path, or "<string>"


def load_recipe(path: str | os.PathLike[str]) -> LoadedRecipe:
    """Read and validate a recipe file.

    Example:
        >>> loaded = load_recipe("examples/fimbulvetr-11b-v2-47-layers.yaml")
        >>> loaded.recipe.merge_method
        'passthrough'
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"{path}: cannot read the recipe ({err})") from None
    return parse_recipe(text, source=str(path))


def parse_recipe(text: str, *, source: str = "<string>") -> LoadedRecipe:
    """Validate recipe text. Raises RecipeError naming the YAML line or key path."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RecipeError(f"{source}: {_describe_yaml_error(err)}", hint=_yaml_hint(err)) from None
    if not isinstance(data, dict):
        raise RecipeError(
            f"{source}: a recipe is a YAML mapping with keys such as 'merge_method' and 'slices'",
            hint="see examples/ for complete recipes",
        )
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise _recipe_error(err) from None
    return LoadedRecipe(recipe=recipe, text=text, source=source)


def _describe_yaml_error(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}invalid YAML: {problem}"


def _yaml_hint(err: yaml.YAMLError) -> str:
    problem = getattr(err, "problem", "") or ""
    if "expected <block end>" in problem or "mapping values are not allowed" in problem:
        return "check the indentation around that line; recipes copied from web pages often lose it"
    return "check the YAML syntax around that line"


def _recipe_error(err: ValidationError) -> RecipeError:
    messages, hints = [], []
    problems = _dedupe(err.errors())
    # A misspelt required key shows up twice: as an unknown key and as a missing one. Say it once.
    misspelt = {_misspelt_target(p["loc"]) for p in problems if p["type"] == "extra_forbidden"}
    for problem in problems:
        if problem["type"] == "missing" and tuple(problem["loc"]) in misspelt:
            continue
        message, hint = _describe_problem(problem)
        messages.append(message)
        if hint and hint not in hints:
            hints.append(hint)
    return RecipeError("\n".join(messages), hint="; ".join(hints) or None)


def _misspelt_target(loc: tuple[Any, ...]) -> tuple[Any, ...] | None:
    valid = _valid_keys([item for item in loc[:-1] if not (isinstance(item, str) and _is_type_tag(item))])
    close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6)
    return (*loc[:-1], close[0]) if close else None


def _dedupe(problems: list[Any]) -> list[Any]:
    # A union (e.g. a token source) reports one error per branch; one per key path is enough.
    seen, kept = set(), []
    for problem in problems:
        path = _key_path(problem["loc"], problem)
        if path not in seen:
            seen.add(path)
            kept.append(problem)
    return kept


def _describe_problem(problem: Any) -> tuple[str, str | None]:
    loc, kind = problem["loc"], problem["type"]
    path = _key_path(loc, problem) or "(top level)"
    if kind == "extra_forbidden":
        return f"{path}: unknown key", _suggest(loc)
    if kind == "missing":
        return f"{path}: missing (required key)", None
    if kind == "bad_setting":
        return f"{path}: {problem['ctx']['message']}", None
    if kind in ("outputs", "inputs", "tokenizer", "token", "empty", "reference"):
        return f"{path}: {problem['msg']}", None
    found = problem.get("input")
    return f"{path}: {_lowercase_first(problem['msg'])}, found {found!r}", None


def _lowercase_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _key_path(loc: tuple[Any, ...], problem: Any) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif _is_type_tag(item):
            continue
        else:
            parts.append(("." if parts else "") + str(item))
    if problem.get("type") == "bad_setting":
        subpath = problem["ctx"]["subpath"]
        parts.append(("." if parts else "") + subpath)
    return "".join(parts)


def _is_type_tag(item: str) -> bool:
    # pydantic puts union branch names into error locations: 'str', 'ZeroEmbedding', 'literal[...]'
    return item in _MODEL_NAMES or item in ("str", "int", "float", "bool", "none") or "[" in item


def _suggest(loc: tuple[Any, ...]) -> str | None:
    key = str(loc[-1])
    valid = _valid_keys([item for item in loc[:-1] if not (isinstance(item, str) and _is_type_tag(item))])
    if not valid:
        return None
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return "valid keys here: " + ", ".join(valid)


def _valid_keys(loc: list[Any]) -> list[str]:
    """The field names of the schema class at `loc`, found by walking the type annotations."""
    current: Any = Recipe
    for item in loc:
        current = _step(current, item)
        if current is None:
            return []
    model = _model_in(current)
    return list(model.model_fields) if model else []


def _step(annotation: Any, item: Any) -> Any:
    model = _model_in(annotation)
    if model is not None and isinstance(item, str) and item in model.model_fields:
        return model.model_fields[item].annotation
    for arg in _union_args(annotation):
        origin = typing.get_origin(arg)
        if origin is list and isinstance(item, int):
            return typing.get_args(arg)[0]
        if origin is dict and isinstance(item, str):
            return typing.get_args(arg)[1]
    return None


def _union_args(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    for arg in _union_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _model_names() -> set[str]:
    from mergesmith.recipe import schema

    return {name for name, obj in vars(schema).items() if isinstance(obj, type) and issubclass(obj, BaseModel)}


_MODEL_NAMES = _model_names()
