"""Rebuild a recipe whose indentation was lost (a model card copied from a web page).

Every key of the schema knows the level it belongs to, so the nesting can be restored: each line
is placed in an open block that accepts it. Where several open blocks accept a line, every placement
is followed until its reading leaves the block they share (the next slice, say) or dies. Readings
that build the same part of the recipe, or parts that merge alike (per-model parameters of a slice
pushed down to its sources), are one; the others are kept as alternative readings, which the
planner compares (see `api.plan`): a flattened recipe never silently becomes a different merge.

Each line is read a bounded number of times (once, plus once per candidate block of an ambiguous
line, up to the end of that line's block), so the rebuild is linear in the recipe's size.
"""

from __future__ import annotations

import copy
import difflib
import functools
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mergesmith.errors import RecipeError
from mergesmith.recipe.schema import Recipe
from mergesmith.recipe.settings import _CONDITIONAL_KEYS

MAX_ALTERNATIVES = 16  # readings kept for the planner to compare; more is a recipe to re-indent by hand


def _derive_schema(root: type[BaseModel]) -> dict[str, dict[str, str]]:
    """Block kinds from the pydantic schema: "map:<Class>" -> {key: kind}. A kind is "scalar",
    "setting", "list:<item kind>", "dict:<value kind>" or another "map:<Class...>"."""
    schema: dict[str, dict[str, str]] = {}

    def kind_of(annotation: Any) -> str:
        args = [a for a in _union_args(annotation) if a is not type(None)]
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if models:  # a block (maybe also a scalar: a token source is a reference or a mapping)
            name = "map:" + "|".join(m.__name__ for m in models)
            if name not in schema:
                schema[name] = {}
                for model in models:
                    for key, info in model.model_fields.items():
                        schema[name][key] = "dict:setting" if _is_parameters(info) else kind_of(info.annotation)
            return name
        for arg in args:
            origin = typing.get_origin(arg)
            if origin in (list, tuple):
                return "list:" + kind_of(typing.get_args(arg)[0])
            if origin is dict:
                return "dict:" + kind_of(typing.get_args(arg)[1])
        return "scalar"

    kind_of(root)
    schema["condition"] = {key: ("list:scalar" if key == "value" else "scalar") for key in _CONDITIONAL_KEYS}
    return schema


def _is_parameters(info: Any) -> bool:
    # `parameters` blocks map parameter names to settings (see schema.Parameters)
    return any(getattr(m, "func", None) is not None and m.func.__name__ == "_parse_parameters" for m in info.metadata)


def _union_args(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(a for arg in typing.get_args(annotation) for a in _union_args(arg))
    return (annotation,)


SCHEMA = _derive_schema(Recipe)
TOP = "map:Recipe"
_KEYS = sorted({key for keys in SCHEMA.values() for key in keys})

_LINE = re.compile(
    r"^(?P<item>-\s+|-$)?(?:(?P<key>[^\s:'\"\[{#-][^:]*?|\"[^\"]*\"|'[^']*'):(?:\s+(?P<value>.*))?$|(?P<scalar>.*))$"
)


@dataclass
class _Line:
    number: int  # 1-based, in the text given
    is_item: bool
    key: str | None
    value: str | None  # raw YAML text after "key: " or "- "; None when the line opens a block
    indent: int = 0  # what is left of its indentation: an indented key is not a top-level key


@dataclass
class _Frame:
    kind: str  # a SCHEMA kind, "list:..", "dict:..", or "setting"
    loc: tuple[str | int, ...]  # key path from the top
    data: Any  # the dict or list being filled; None for a setting whose shape is not known yet
    parent: dict | None = None  # for a setting: where to store it once its shape is known
    key: str = ""


@dataclass(frozen=True)
class Alternative:
    """Another reading of the whole recipe: `what` at `line` placed under `where`, not `chosen`."""

    line: int
    what: str  # "'parameters'"
    chosen: str  # where the main reading placed it: "models[2]"
    where: str  # where this reading places it: "the top level"
    data: dict[str, Any]


@dataclass
class Rebuilt:
    data: dict[str, Any]
    notes: list[tuple[int, str]] = field(default_factory=list)  # (line, choice made between equivalent readings)
    alternatives: list[Alternative] = field(default_factory=list)  # readings the planner must compare


@dataclass
class _Trial:
    closed_at: tuple[int, int] | None  # (line index, depth) where it left its block; None: at the end
    data: Any  # the block it rebuilt (with `keep`)


@dataclass
class _Pending:
    index: int
    loc: tuple[str | int, ...]  # the block both readings share
    kind: str
    data: Any  # this reading's version of that block
    chosen: str
    where: str


def is_flattened(text: str) -> bool:
    """True when (almost) no content line is indented: at most one in five, as when only the part
    of a flattened recipe that reads two ways has had its indentation restored."""
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    indented = sum(1 for line in lines if line[0].isspace())
    return len(lines) > 1 and indented * 5 <= len(lines)


def lost_indentation(text: str) -> bool:
    """Flattened, and some key opens a block that is not a list, with the next line no deeper:
    YAML would read that key as empty."""
    if not is_flattened(text):
        return False
    lines = _tokenize(text)
    return any(
        line.key is not None and line.value is None and not after.is_item and after.indent <= line.indent
        for line, after in zip(lines, lines[1:])
    )


def unflatten(
    text: str, *, method_params: dict[str, set[str]] | None = None, per_model: dict[str, set[str]] | None = None
) -> Rebuilt:
    """Rebuild the nested recipe of flattened `text`.

    `method_params` maps method names to their parameter names (a `parameters` block accepts only
    those of the recipe's method); `per_model` to the per-model ones, which decide whether two
    readings give the same merge. Unknown methods accept any parameter name.
    """
    lines = _tokenize(text)
    method = next((_scalar(line) for line in lines if line.key == "merge_method" and not line.is_item), None)
    parser = _Parser(
        lines, per_model=(per_model or {}).get(str(method)), all_params=(method_params or {}).get(str(method))
    )
    return parser.run()


def dump(data: dict[str, Any]) -> str:
    """YAML with lists of scalars in flow style ([0, 4]), as recipes are usually written."""

    class Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]  # libyaml: 10x faster
        def ignore_aliases(self, data: Any) -> bool:
            return True

    def represent_list(dumper: yaml.SafeDumper, value: list) -> yaml.Node:
        flow = all(not isinstance(v, (dict, list)) for v in value)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)

    Dumper.add_representer(list, represent_list)
    return yaml.dump(data, Dumper=Dumper, sort_keys=False, default_flow_style=False, indent=2)


def _tokenize(text: str) -> list[_Line]:
    result = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#") or stripped in ("---", "..."):
            continue
        match = _LINE.match(stripped)
        assert match is not None  # the pattern's last branch matches anything
        key, value = match["key"], match["value"]
        if key is not None:
            key = key.strip().strip("\"'")
        else:
            value = match["scalar"] or None
        if value is not None and value.startswith("#"):  # `key: # note` opens a block
            value = None
        result.append(_Line(number, bool(match["item"]), key, value, len(raw) - len(raw.lstrip())))
    return result


def _scalar(line: _Line) -> Any:
    if line.value is None:
        return None
    try:
        value = _load_scalar(line.value)
        return _clone(value)  # never shared between lines
    except yaml.YAMLError as err:
        raise RecipeError(f"line {line.number}: cannot read the value {line.value!r} ({err})") from None


@functools.lru_cache(maxsize=4096)
def _load_scalar(value: str) -> Any:
    # Flattened recipes repeat the same few values ([0, 4], 0.5) on thousands of lines.
    return yaml.load(value, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _path(loc: tuple[str | int, ...]) -> str:
    text = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    return text or "the top level"


def _child_kind(frame: _Frame, key: str) -> str:
    if frame.kind == "setting":
        return SCHEMA["condition"][key]
    if frame.kind in SCHEMA:
        return SCHEMA[frame.kind].get(key, "scalar")  # an unknown top-level key holds a scalar
    return frame.kind.split(":", 1)[1]  # dict:<kind>


class _Parser:
    def __init__(self, lines: list[_Line], *, per_model: set[str] | None, all_params: set[str] | None) -> None:
        self.lines, self.per_model, self.all_params = lines, per_model, all_params
        self.pending: list[_Pending] = []
        self.undo: list[Any] | None = None  # while a trial runs: how to take its writes back
        self.full: list[Alternative] = []

    def run(self) -> Rebuilt:
        root: dict[str, Any] = {}
        self._parse([_Frame(TOP, (), root)], 0, record=True)
        result = Rebuilt(root)
        for pending in self.pending:
            self._settle(result, pending)
        result.alternatives.extend(self.full)
        result.alternatives = [other for other in result.alternatives if _valid(other.data)]
        if len(result.alternatives) > MAX_ALTERNATIVES:
            raise RecipeError(
                f"line {result.alternatives[MAX_ALTERNATIVES].line}: the flattened recipe reads in more than "
                f"{MAX_ALTERNATIVES} different ways",
                hint="restore the recipe's indentation (copy it from the model card's raw file)",
            )
        return result

    def _parse(self, stack: list[_Frame], start: int, *, record: bool) -> None:
        for index in range(start, len(self.lines)):
            line = self.lines[index]
            depths = self._candidates(stack, line)
            if not depths:
                raise RecipeError(
                    f"line {line.number}: cannot place {_describe(line)} in the recipe",
                    hint="check the key's spelling; the recipe could not be re-indented from its keys",
                )
            depth = self._choose(stack, index, depths, record=record) if len(depths) > 1 else depths[0]
            self._attach(stack, depth, line)

    def _candidates(self, stack: list[_Frame], line: _Line) -> list[int]:
        """Depths of the open frames that accept `line`, outermost first."""
        depths = [depth for depth, frame in enumerate(stack) if self._accepts(frame, line)]
        if line.indent and not line.is_item:
            depths = [depth for depth in depths if depth > 0]
        if _unknown_top_key(stack[0], line) and 0 not in depths and line.key not in (self.all_params or ()):
            # `name: x`: a key the top level does not know (mergekit ignores it there), a reading if
            # the schema takes it (see `_valid`). Not a parameter's name: mergekit would ignore a
            # parameter at the top level, so that reading is never the one meant.
            depths = [0, *depths]
        return depths

    def _accepts(self, frame: _Frame, line: _Line) -> bool:
        kind, data = frame.kind, frame.data
        if kind == "setting":  # `name:` then a list of conditions or scalars, or one condition
            if line.is_item:  # a list holds scalars (a gradient) or conditions, not both
                if data is None:
                    return True
                is_condition = line.key is not None and line.key in SCHEMA["condition"]
                return isinstance(data, list) and (line.key is None or is_condition) and _same_shape(data, is_condition)
            return (
                (data is None or isinstance(data, dict))
                and line.key in SCHEMA["condition"]
                and line.key not in (data or {})
            )
        if line.is_item:
            if not kind.startswith("list:"):
                return False
            item = kind[5:]
            if item == "scalar":
                return line.key is None
            return line.key is not None and line.key in SCHEMA[item]
        if line.key is None:
            return False
        if kind in SCHEMA:
            return line.key in SCHEMA[kind] and line.key not in data
        if kind == "dict:setting":  # a parameter name; with an unknown method, any but a condition's keys
            known = line.key in self.all_params if self.all_params is not None else line.key not in SCHEMA["condition"]
            return line.key not in data and known
        return kind.startswith("dict:") and line.key not in data

    def _choose(self, stack: list[_Frame], index: int, depths: list[int], *, record: bool) -> int:
        """The innermost placement whose reading survives; the others are compared with it.

        A placement survives if its reading lives until it leaves the placement's own block. Each
        other survivor is compared with the innermost over the block they share.
        """
        own = {depth: self._trial(stack, index, depth, depth, keep=record) for depth in depths}
        survivors = [depth for depth, trial in own.items() if trial is not None]
        if len(survivors) < 2:
            return survivors[0] if survivors else depths[-1]  # none: the innermost one reports where
        chosen = survivors[-1]
        for depth in survivors[:-1] if record else ():
            # Each other placement against the chosen one, over the block they share.
            main = self._trial(stack, index, chosen, depth, keep=True)
            if main is not None:
                self._keep(stack, index, chosen, main, depth, own[depth])
        return chosen

    def _trial(self, stack: list[_Frame], index: int, depth: int, root: int, *, keep: bool = False) -> _Trial | None:
        """Read on from placing line `index` at `depth`, innermost first, until a line leaves the
        block at `root`. None if the reading dies. The trial writes into the recipe being built and
        takes its writes back, so a trial costs the lines it reads, not the recipe's size. With
        `keep`, the block at `root` as the trial left it is returned (a copy)."""
        trial = [_Frame(f.kind, f.loc, f.data, f.parent, f.key) for f in stack]  # its own frames, shared data
        self.undo = []
        try:
            closed_at: tuple[int, int] | None = None
            self._attach(trial, depth, self.lines[index])
            for later in range(index + 1, len(self.lines)):
                choices = self._candidates(trial, self.lines[later])
                if not choices:
                    return None
                if choices[-1] < root:
                    closed_at = (later, choices[-1])
                    break
                self._attach(trial, choices[-1], self.lines[later])
            return _Trial(closed_at, _clone(trial[root].data) if keep else None)
        except RecipeError:
            return None
        finally:
            self._roll_back()

    def _roll_back(self) -> None:
        for undo in reversed(self.undo or ()):
            undo()
        self.undo = None

    def _set(self, mapping: dict[str, Any], key: str, value: Any) -> None:
        if self.undo is not None:
            restore = functools.partial(mapping.__setitem__, key, mapping[key]) if key in mapping else None
            self.undo.append(restore or functools.partial(mapping.pop, key))
        mapping[key] = value

    def _append(self, items: list[Any], value: Any) -> None:
        if self.undo is not None:
            self.undo.append(items.pop)
        items.append(value)

    def _keep(
        self, stack: list[_Frame], index: int, chosen: int, main: _Trial, other: int, trial: _Trial | None
    ) -> None:
        assert trial is not None  # a survivor
        if main.closed_at != trial.closed_at:  # the readings part for good: follow this one to the end
            self._follow(stack, index, chosen, other)
            return
        if main.data == trial.data:
            return
        root = stack[min(chosen, other)]
        where = (_path(stack[chosen].loc), _path(stack[other].loc))
        self.pending.append(_Pending(index, root.loc, root.kind, trial.data, *where))

    def _follow(self, stack: list[_Frame], index: int, chosen: int, other: int) -> None:
        if len(self.full) > MAX_ALTERNATIVES:
            return  # run() reports the count
        copied = copy.deepcopy(stack)
        try:
            self._attach(copied, other, self.lines[index])
            self._parse(copied, index + 1, record=False)
        except RecipeError:
            return  # that reading fails later: it is not a reading
        line = self.lines[index]
        self.full.append(
            Alternative(line.number, _describe(line), _path(stack[chosen].loc), _path(stack[other].loc), copied[0].data)
        )

    def _settle(self, result: Rebuilt, pending: _Pending) -> None:
        """Equivalent readings become a note; different ones an alternative for the planner."""
        line = self.lines[pending.index]
        mine = _at(result.data, pending.loc)
        if self._same_merge(result.data, pending.kind, mine, pending.data):
            result.notes.append((line.number, _note(pending.kind, mine)))
            return
        other = _clone(result.data)
        if pending.loc:
            _at(other, pending.loc[:-1])[pending.loc[-1]] = pending.data
        else:
            other = pending.data
        result.alternatives.append(Alternative(line.number, _describe(line), pending.chosen, pending.where, other))

    def _same_merge(self, top: dict[str, Any], kind: str, mine: Any, theirs: Any) -> bool:
        """Two versions of one slice merge alike when pushing the slice's per-model parameters down
        to its sources makes them equal, and the base model (which the slice's parameters would
        also reach) is one of those sources."""
        if kind != "map:OutputSlice" or self.per_model is None:
            return False
        base = mine.get("base_model") or top.get("base_model")
        models = [source.get("model") for source in mine.get("sources") or []]
        if base is not None and base not in models:
            return False
        return _pushed_down(mine, self.per_model) == _pushed_down(theirs, self.per_model)

    def _attach(self, stack: list[_Frame], depth: int, line: _Line) -> None:
        del stack[depth + 1 :]
        frame = stack[depth]
        if frame.kind == "setting" and frame.data is None:  # the first line fixes the setting's shape
            frame.data = [] if line.is_item else {}
            assert frame.parent is not None
            self._set(frame.parent, frame.key, frame.data)
        if not line.is_item:
            self._attach_key(stack, frame, line)
            return
        if line.key is None:
            self._append(frame.data, _scalar(line))
            return
        item_kind = "condition" if frame.kind == "setting" else frame.kind[5:]
        item: dict[str, Any] = {}
        stack.append(_Frame(item_kind, (*frame.loc, len(frame.data)), item))
        self._append(frame.data, item)
        self._attach_key(stack, stack[-1], line)

    def _attach_key(self, stack: list[_Frame], frame: _Frame, line: _Line) -> None:
        assert line.key is not None
        child = _child_kind(frame, line.key)
        loc = (*frame.loc, line.key)
        if line.value is not None:
            self._set(frame.data, line.key, _scalar(line))
            return
        if child == "setting":  # shape decided by the next line
            self._set(frame.data, line.key, None)
            stack.append(_Frame("setting", loc, None, parent=frame.data, key=line.key))
            return
        # An empty value opens a block: a list for list kinds, else a mapping.
        self._set(frame.data, line.key, [] if child.startswith("list:") else {})
        stack.append(_Frame(child, loc, frame.data[line.key]))


def _same_shape(items: list[Any], is_condition: bool) -> bool:
    return not items or isinstance(items[-1], dict) == is_condition


def _valid(data: dict[str, Any]) -> bool:
    try:
        Recipe.model_validate(data)
    except (ValidationError, ValueError, TypeError):
        return False
    return True


def _describe(line: _Line) -> str:
    return f"'{line.key}'" if line.key else f"the list item {line.value!r}"


def _unknown_top_key(top: _Frame, line: _Line) -> bool:
    return (
        not line.is_item
        and line.key is not None
        and line.value is not None
        and line.key not in top.data
        and not _is_typo(line.key)
    )


@functools.lru_cache(maxsize=1024)
def _is_typo(key: str) -> bool:
    # A key close to one of the schema's (`layer_rnage`) stays an error rather than a top-level key.
    return key in _KEYS or bool(difflib.get_close_matches(key, _KEYS, n=1, cutoff=0.8))


def _clone(data: Any) -> Any:
    """A copy of YAML data (mappings, lists, scalars): deepcopy's work without its bookkeeping."""
    if isinstance(data, dict):
        return {key: _clone(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_clone(value) for value in data]
    return data


def _at(data: Any, loc: tuple[str | int, ...]) -> Any:
    for part in loc:
        data = data[part]
    return data


def _pushed_down(out_slice: dict[str, Any], per_model: set[str]) -> dict[str, Any]:
    """A slice with its per-model parameters given to each source instead (a source's own win)."""
    params = out_slice.get("parameters") or {}
    shared = {name: value for name, value in params.items() if name in per_model}
    kept = {name: value for name, value in params.items() if name not in per_model}
    sources = [
        {**source, "parameters": {**shared, **(source.get("parameters") or {})}}
        for source in out_slice.get("sources") or []
    ]
    return {**out_slice, "parameters": kept, "sources": sources}


def _note(kind: str, out_slice: dict[str, Any]) -> str:
    if len(out_slice.get("sources") or []) == 1:
        return (
            "'parameters' could belong to the slice or to its only source; with one model and only "
            "per-model parameters both readings give the same merge, so it is read as the source's"
        )
    return (
        "'parameters' could belong to the slice or to its last source; every source gets the same "
        "parameters either way, so it is read as the source's"
    )
