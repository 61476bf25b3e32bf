"""YAML text -> Recipe, with errors that name the key path and suggest the fix."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mergesmith.errors import RecipeError
from mergesmith.recipe.from_card import (
    CardBlock,
    card_blocks,
    looks_like_card,
    looks_like_prose,
    no_recipe,
    recipe_blocks,
)
from mergesmith.recipe.method_names import MethodNames
from mergesmith.recipe.schema import Recipe
from mergesmith.recipe.unflatten import Rebuilt, dump, is_flattened, lost_indentation, unflatten
from mergesmith.recipe.yaml_text import load_yaml, read_text


@dataclass(frozen=True)
class Reading:
    """Another reading of a recipe that lost its indentation: `what` at `line` placed under `where`
    instead of `chosen`. The planner plans every reading; they must give the same merge."""

    line: int  # counted from the top of the file (or card)
    what: str  # "'parameters'"
    chosen: str  # where the main reading places it: "models[2]"
    where: str  # where this one does: "the top level"
    recipe: Recipe
    text: str


@dataclass(frozen=True)
class LoadedRecipe:
    """A validated recipe and its YAML text (saved verbatim with the merged model)."""

    recipe: Recipe
    text: str  # the recipe as written; rebuilt YAML when the indentation had to be restored
    source: str  # file path, or "<string>"
    from_card: bool = False  # taken from a model card's Configuration block
    rebuilt: bool = False  # the indentation was lost and has been restored from the schema
    notes: tuple[str, ...] = ()  # choices made while restoring it
    readings: tuple[Reading, ...] = ()  # other readings of a rebuilt recipe, for the planner to compare
    ignored_keys: tuple[str, ...] = ()  # unknown top-level keys that mergekit ignores (`name`, ...)


def load_recipe(path: str | os.PathLike[str], *, methods: MethodNames) -> LoadedRecipe:
    """Read and validate a recipe file (or a model card holding one). `methods` names the merge
    methods' parameters; mergesmith.api.load_recipe passes the registry's.

    Example:
        >>> loaded = load_recipe("examples/fimbulvetr-11b-v2-47-layers.yaml", methods=api.method_names())
        >>> loaded.recipe.merge_method
        'passthrough'
    """
    return parse_recipe(read_text(path), methods=methods, source=str(Path(path)))


def parse_recipe(text: str, *, methods: MethodNames, source: str = "<string>") -> LoadedRecipe:
    """Validate recipe text, or a model card holding one. Raises RecipeError naming the line or key path.

    A recipe whose indentation was lost (every line at column 0) is rebuilt from the schema.
    """
    if not looks_like_card(text):
        from mergesmith.recipe.stages import is_multi_stage, yaml_documents

        if is_multi_stage(text):
            raise RecipeError(
                f"{source}: {len(yaml_documents(text))} YAML documents: a multi-stage recipe (mergekit-multi's format)",
                hint=f"run it with mergesmith multi {source} OUT_DIR (each named stage goes to OUT_DIR/<name>)",
            )
        return _parse_block(text, source, 0, methods, from_card=False)
    blocks = recipe_blocks(card_blocks(text))
    if not blocks:
        raise no_recipe(source)
    if len(blocks) == 1:
        return _parse_block(blocks[0].text, source, blocks[0].line - 1, methods, from_card=True)
    return _one_of(blocks, source, methods)


def parse_document(text: str, first_line: int, *, methods: MethodNames, source: str) -> LoadedRecipe:
    """One document of a multi-stage recipe file, starting at line `first_line` of `source`."""
    return _parse_block(text, source, first_line - 1, methods, from_card=False)


def _one_of(blocks: list[CardBlock], source: str, methods: MethodNames) -> LoadedRecipe:
    """Of several blocks that read as recipes, the one that loads; an error if not exactly one."""
    loaded = []
    for block in blocks:
        try:
            loaded.append(_parse_block(block.text, source, block.line - 1, methods, from_card=True))
        except RecipeError:
            continue
    if len(loaded) == 1:
        return loaded[0]
    lines = ", ".join(str(block.line) for block in blocks)
    raise RecipeError(
        f"{source}: {len(blocks)} code blocks read as recipes (at lines {lines}), and "
        + ("none" if not loaded else f"{len(loaded)}")
        + " of them load"
        + ("" if not loaded else ", none under a 'Configuration' heading"),
        hint="save the one you want as a .yaml file and pass that",
    )


def _parse_block(text: str, source: str, offset: int, methods: MethodNames, *, from_card: bool) -> LoadedRecipe:
    if not from_card and looks_like_prose(text):  # a page without code blocks, not a broken recipe
        raise no_recipe(source)
    if lost_indentation(text):  # YAML would read the keys that open blocks as empty
        return _rebuilt(text, source, offset, from_card, methods)
    try:
        data = load_yaml(text, first_line=offset + 1)
    except RecipeError as err:
        raise RecipeError(f"{source}: {err.message}", hint=err.hint) from None
    except yaml.YAMLError as err:
        if is_flattened(text):  # the usual cause: indentation lost on the way
            try:
                return _rebuilt(text, source, offset, from_card, methods)
            except RecipeError:
                if not any(line[:1].isspace() for line in text.splitlines() if line.strip()):
                    raise  # wholly flat: the rebuild's message is the useful one
        raise RecipeError(f"{source}: {_describe_yaml_error(err, offset)}", hint=_yaml_hint(err)) from None
    try:
        return dataclasses.replace(_validate(text, source, data, methods), from_card=from_card)
    except RecipeError:
        if not (isinstance(data, dict) and is_flattened(text)):
            raise
        try:
            return _rebuilt(text, source, offset, from_card, methods)
        except RecipeError:
            pass
        raise  # the rebuild made no sense either: report the recipe as written


def _rebuilt(text: str, source: str, offset: int, from_card: bool, methods: MethodNames) -> LoadedRecipe:
    """The recipe of flattened `text`, its nesting restored from the schema, validated; with every
    other reading that validates."""
    # A parameters block takes any method's parameter (a method ignores another's, with a warning).
    known = set(methods.all_parameters)
    names = {name: known for name in methods.parameters}
    per_model = {name: set(params) for name, params in methods.per_model.items()}
    try:
        rebuilt = unflatten(text, method_params=names, per_model=per_model)
    except RecipeError as err:
        raise RecipeError(f"{source}: {_shift_lines(err.message, offset)}", hint=err.hint) from None
    readings = []
    for other in rebuilt.alternatives:
        try:
            valid = _validate(dump(other.data), source, other.data, methods)
        except RecipeError:
            continue  # a reading the schema refuses is not a reading
        where = (other.line + offset, other.what, other.chosen, other.where)
        readings.append(Reading(*where, recipe=valid.recipe, text=valid.text))
    try:
        loaded = _validate(dump(rebuilt.data), source, rebuilt.data, methods)
    except RecipeError:
        if not readings:
            raise
        first = readings.pop(0)  # the main reading is refused: the first that validates replaces it
        loaded = LoadedRecipe(first.recipe, first.text, source)
    return dataclasses.replace(
        loaded, from_card=from_card, rebuilt=True, notes=_notes(rebuilt, offset), readings=tuple(readings)
    )


def _notes(rebuilt: Rebuilt, offset: int) -> tuple[str, ...]:
    """One note per kind of choice, naming every line it was made at (counted from the card's top)."""
    lines: dict[str, list[str]] = {}
    for line, note in rebuilt.notes:
        lines.setdefault(note, []).append(str(line + offset))
    return tuple(f"line{'s' if len(n) > 1 else ''} {', '.join(n)}: {note}" for note, n in lines.items())


def _shift_lines(message: str, offset: int) -> str:
    """Line numbers in a card's block, counted from the top of the card."""
    return re.sub(r"\bline (\d+)", lambda m: f"line {int(m[1]) + offset}", message)


def _validate(text: str, source: str, data: Any, methods: MethodNames) -> LoadedRecipe:
    if not isinstance(data, dict):
        raise RecipeError(
            f"{source}: a recipe is a YAML mapping with keys such as 'merge_method' and 'slices'",
            hint="see examples/ for complete recipes",
        )
    ignored = _tolerated_top_level_keys(data, methods)
    try:
        recipe = Recipe.model_validate({k: v for k, v in data.items() if k not in ignored})
    except ValidationError as err:
        raise _recipe_error(err) from None
    return LoadedRecipe(recipe=recipe, text=text, source=source, ignored_keys=ignored)


def _tolerated_top_level_keys(data: dict[Any, Any], methods: MethodNames) -> tuple[str, ...]:
    """Unknown top-level keys that are not a misspelling of a real one (`name` in mergekit-multi
    documents, notes): mergekit ignores them, and the plan warns. A close misspelling
    (`merge_methd`) stays an error, like unknown keys at every other level; so does a key of a
    deeper level (`weight`, `layer_range`): it is misplaced, usually by lost indentation."""
    fields = list(Recipe.model_fields)
    misplaced = _deeper_keys(methods)
    return tuple(
        str(key)
        for key in data
        if isinstance(key, str)
        and key not in fields
        and key not in misplaced
        and not difflib.get_close_matches(key, fields, n=1, cutoff=_TYPO_CUTOFF)
    )


def _deeper_keys(methods: MethodNames) -> set[str]:
    """Every key of a level below the top: schema fields, filter entries, parameter names."""
    from mergesmith.recipe import schema

    keys = {"filter", "value"} | methods.all_parameters
    for name in _MODEL_NAMES - {"Recipe"}:
        keys |= set(getattr(schema, name).model_fields)
    return keys


_TYPO_CUTOFF = 0.7  # difflib's ratio above which an unknown key is taken for a misspelling


def _describe_yaml_error(err: yaml.YAMLError, offset: int = 0) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f"line {mark.line + 1 + offset}, column {mark.column + 1}: " if mark is not None else ""
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
    if kind == "extra_forbidden" and loc[-1] == "revision" and len(loc) > 1:
        # mergekit 0.1.5 has no such key either: a revision is part of the reference.
        return f"{path}: unknown key", "write the revision into the reference: model: org/name@rev"
    if kind == "extra_forbidden":
        return f"{path}: unknown key", _suggest(loc)
    if kind == "missing":
        return f"{path}: missing (required key)", None
    if kind == "bad_setting":
        return f"{path}: {problem['ctx']['message']}", None
    if kind in ("outputs", "inputs", "tokenizer", "token", "empty", "reference", "old_spelling"):
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
