"""Multi-stage recipes: mergekit-multi's YAML, one recipe per document, each named by a `name` key
and referring to earlier ones' outputs by that name wherever a model goes. Read, checked and put in
dependency order here, before any model is opened: duplicate names, names that cannot be folder
names, cycles and a second unnamed (final) recipe are errors naming the documents.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import yaml

from mergesmith.errors import RecipeError
from mergesmith.recipe.load import LoadedRecipe

FINAL = "final"  # the output folder of the unnamed document, mergekit-multi's "final merge"
_DOCUMENT_SEPARATOR = re.compile(r"^---\s*(#.*)?$")
_NAME_KEY = re.compile(r"^name\s*:")
# a stage's name becomes a folder under OUT_DIR: no separators, no "." or ".."
_STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Stage:
    name: str  # FINAL for the unnamed document
    loaded: LoadedRecipe  # the recipe, without its `name` line
    document: int  # 1-based, in the file
    depends: tuple[str, ...]  # the stages whose outputs it reads, in the order it names them


def is_multi_stage(text: str) -> bool:
    """Whether the text holds more than one YAML document, each a mapping (mergekit-multi's files;
    a single recipe with a `name`, as LazyMergekit writes them, is a plain recipe)."""
    documents = yaml_documents(text)
    return len(documents) > 1 and all(_is_mapping(body) for _, body in documents)


def _is_mapping(body: str) -> bool:
    try:
        return isinstance(yaml.safe_load(body), dict)
    except yaml.YAMLError:
        return False


def parse_stages(text: str, source: str, parse: Callable[[str, int], LoadedRecipe]) -> list[Stage]:
    """The stages of a multi-document recipe text in the order they must run (each after those it
    reads). `parse(text, first_line)` reads one document as a recipe (api.parse_recipe's rules)."""
    stages: dict[str, Stage] = {}
    documents = yaml_documents(text)
    names = {_name_of(body, i, source) for i, (_, body) in enumerate(documents, 1)} - {None}
    for index, (first_line, body) in enumerate(documents, 1):
        name = _name_of(body, index, source) or FINAL
        if name in stages:
            earlier = stages[name].document
            what = f"name {name!r}" if name != FINAL else "no name (the final merge)"
            raise RecipeError(
                f"{source}: documents {earlier} and {index} both have {what}",
                hint="give each recipe its own name; only one may be unnamed",
            )
        recipe_text = "".join(line if not _NAME_KEY.match(line) else "\n" for line in body.splitlines(True))
        try:
            loaded = parse(recipe_text, first_line)
        except RecipeError as err:
            raise RecipeError(f"{source}: document {index} ({name}): {err.message}", hint=err.hint) from None
        depends = tuple(dict.fromkeys(n for n in _model_names(loaded) if n in names))
        if name in depends:
            raise RecipeError(f"{source}: document {index} ({name}) reads its own output", hint="name another stage")
        stages[name] = Stage(name, loaded, index, depends)
    return _in_order(stages, source)


def yaml_documents(text: str) -> list[tuple[int, str]]:
    """(first line, text) of each non-empty YAML document."""
    documents: list[tuple[int, list[str]]] = [(1, [])]
    for number, line in enumerate(text.splitlines(True), 1):
        if _DOCUMENT_SEPARATOR.match(line.rstrip("\n")):
            documents.append((number + 1, []))
        else:
            documents[-1][1].append(line)
    return [(first, "".join(lines)) for first, lines in documents if "".join(lines).strip()]


def _name_of(body: str, index: int, source: str) -> str | None:
    try:
        document = yaml.safe_load(body)
    except yaml.YAMLError:
        return None  # the recipe parser reports it, with its line
    name = document.get("name") if isinstance(document, dict) else None
    if name is None:
        return None
    if not isinstance(name, str) or not _STAGE_NAME.match(name) or name == FINAL:
        raise RecipeError(
            f"{source}: document {index}: name {name!r} cannot name a stage's output folder",
            hint="use letters, digits, '.', '_' and '-' (not starting with '.'), and not 'final'",
        )
    return name


def _model_names(loaded: LoadedRecipe) -> list[str]:
    """The model names a recipe reads, its LoRA references' base and adapter parts included, without @revision."""
    names = []
    for reference in loaded.recipe.models_to_open():
        for part in reference.split("+"):
            names.append(part.rpartition("@")[0] if "@" in part else part)
    return names


def _in_order(stages: dict[str, Stage], source: str) -> list[Stage]:
    ordered: list[Stage] = []
    state: dict[str, str] = {}  # name -> "visiting" | "done"

    def visit(name: str, path: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = " -> ".join((*path[path.index(name) :], name))
            raise RecipeError(f"{source}: the stages read each other's outputs in a cycle: {cycle}")
        state[name] = "visiting"
        for dependency in stages[name].depends:
            visit(dependency, (*path, name))
        state[name] = "done"
        ordered.append(stages[name])

    for name in stages:
        visit(name, ())
    return ordered
