"""Rebuild a recipe whose indentation was lost (a model card copied from a web page).

Every key of the schema knows the level it belongs to, so the nesting can be restored: each line
is placed in the innermost open block that accepts it. Where an outer block would accept it too,
both readings are followed to the end; a reading that cannot place a later line is dropped. If two
readings survive and give different merges, that is an error naming the line and both readings;
if they give the same merge (a per-model parameter under a one-source slice), the inner one is
chosen and the choice is reported.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from mergesmith.errors import RecipeError

# Kinds of block: "map" with fixed keys, "dict" with free keys, "list" of items, "setting".
SCHEMA: dict[str, dict[str, str]] = {
    "top": {
        "modules": "modules",
        "slices": "slices",
        "models": "models",
        "merge_method": "scalar",
        "base_model": "scalar",
        "dtype": "scalar",
        "tokenizer_source": "scalar",
        "tokenizer": "tokenizer",
        "chat_template": "scalar",
        "out_dtype": "scalar",
        "parameters": "parameters",
    },
    "slice": {"sources": "sources", "base_model": "scalar", "residual_weight": "scalar", "parameters": "parameters"},
    "source": {"model": "scalar", "layer_range": "scalars", "parameters": "parameters"},
    "model": {"model": "scalar", "parameters": "parameters"},
    "module": {"slices": "slices", "models": "models", "parameters": "parameters"},
    "condition": {"filter": "scalar", "value": "scalars"},
    "tokenizer": {"source": "token_source", "tokens": "tokens", "pad_to_multiple_of": "scalar"},
    "token": {"source": "token_source", "force": "scalar"},
    "token_source": {"kind": "scalar", "model": "scalar", "token_id": "scalar", "token": "scalar"},
}
LISTS = {"slices": "slice", "sources": "source", "models": "model", "scalars": "scalar"}
DICTS = {"modules": "module", "parameters": "setting", "tokens": "token"}

_LINE = re.compile(
    r"^(?P<item>-\s+|-$)?(?:(?P<key>[^\s:'\"\[{#-][^:]*?|\"[^\"]*\"|'[^']*'):(?:\s+(?P<value>.*))?$|(?P<scalar>.*))$"
)


@dataclass
class _Line:
    number: int  # 1-based, in the text given
    is_item: bool
    key: str | None
    value: str | None  # raw YAML text after "key: " or "- "


@dataclass
class _Frame:
    kind: str  # a SCHEMA key, a LISTS key, a DICTS key, or "setting"
    path: str
    data: Any  # the dict or list being filled; None for a setting whose shape is not known yet
    parent: dict | None = None  # for a setting: where to store it once its shape is known
    key: str = ""


@dataclass
class Rebuilt:
    data: dict[str, Any]
    notes: list[tuple[int, str]] = field(default_factory=list)  # (line, choice made between equivalent readings)


def is_flattened(text: str) -> bool:
    """True when no content line is indented (and there is more than one line)."""
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return len(lines) > 1 and all(not line[0].isspace() for line in lines)


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

    class Dumper(yaml.SafeDumper):
        pass

    def represent_list(dumper: yaml.SafeDumper, value: list) -> yaml.Node:
        flow = all(not isinstance(v, (dict, list)) for v in value)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)

    Dumper.add_representer(list, represent_list)
    return yaml.dump(data, Dumper=Dumper, sort_keys=False, default_flow_style=False, indent=2)


def _tokenize(text: str) -> list[_Line]:
    result = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _LINE.match(stripped)
        assert match is not None  # the pattern's last branch matches anything
        key, value = match["key"], match["value"]
        if key is not None:
            key = key.strip().strip("\"'")
        else:
            value = match["scalar"] or None
        result.append(_Line(number, bool(match["item"]), key, value))
    return result


def _scalar(line: _Line) -> Any:
    if line.value is None:
        return None
    try:
        return yaml.safe_load(line.value)
    except yaml.YAMLError as err:
        raise RecipeError(f"line {line.number}: cannot read the value {line.value!r} ({err})") from None


class _Parser:
    def __init__(self, lines: list[_Line], *, per_model: set[str] | None, all_params: set[str] | None) -> None:
        self.lines, self.per_model, self.all_params = lines, per_model, all_params

    def run(self) -> Rebuilt:
        result = Rebuilt({})
        stack = [_Frame("top", "", result.data)]
        for index, line in enumerate(self.lines):
            candidates = self._candidates(stack, line)
            if len(candidates) > 1 and candidates[0] == 0:
                # A key that fits inside the open slice or model is read there: ending the whole
                # slices/models list is only the reading when nothing inside accepts the key.
                candidates = candidates[1:]
            if len(candidates) > 1:
                candidates = [d for d in candidates if self._completes(stack, index, d)] or candidates[-1:]
            if not candidates:
                raise RecipeError(
                    f"line {line.number}: cannot place {self._describe(line)} in the recipe",
                    hint="check the key's spelling; the recipe could not be re-indented from its keys",
                )
            if len(candidates) > 1:
                result.notes.append(self._settle(stack, index, candidates))
            self._attach(stack, candidates[-1], line)
        return result

    def _describe(self, line: _Line) -> str:
        return f"'{line.key}'" if line.key else f"the list item {line.value!r}"

    def _candidates(self, stack: list[_Frame], line: _Line) -> list[int]:
        """Depths of the open frames that accept `line`, outermost first."""
        return [depth for depth, frame in enumerate(stack) if self._accepts(frame, line)]

    def _accepts(self, frame: _Frame, line: _Line) -> bool:
        kind, data = frame.kind, frame.data
        if kind == "setting":  # `name:` then a list of conditions or scalars, or one condition
            if line.is_item:
                return data is None or (
                    isinstance(data, list) and (line.key is None or line.key in SCHEMA["condition"])
                )
            return (
                (data is None or isinstance(data, dict))
                and line.key in SCHEMA["condition"]
                and line.key not in (data or {})
            )
        if line.is_item:
            if kind not in LISTS:
                return False
            item = LISTS[kind]
            return (line.key is None) == (item == "scalar") and (line.key is None or line.key in SCHEMA[item])
        if line.key is None:
            return False
        if kind in SCHEMA:
            return line.key in SCHEMA[kind] and line.key not in data
        if kind == "parameters":
            return line.key not in data and (self.all_params is None or line.key in self.all_params)
        if kind in DICTS:
            return line.key not in data
        return False

    def _completes(self, stack: list[_Frame], index: int, depth: int) -> bool:
        """Whether the rest parses, placing this line at `depth` and later lines innermost-first."""
        trial = _copy_stack(stack)
        try:
            self._attach(trial, depth, self.lines[index])
            for line in self.lines[index + 1 :]:
                choices = self._candidates(trial, line)
                if not choices:
                    return False
                self._attach(trial, choices[-1], line)
        except RecipeError:
            return False
        return True

    def _settle(self, stack: list[_Frame], index: int, depths: list[int]) -> tuple[int, str]:
        line = self.lines[index]
        if len(depths) == 2 and line.key == "parameters" and self._same_either_way(stack, depths, index):
            return line.number, (
                "'parameters' could belong to the slice or to its only source; with one model and only "
                "per-model parameters both readings give the same merge, so it is read as the source's"
            )
        readings = " or to ".join(f"{stack[d].path or 'the top level'}" for d in reversed(depths))
        raise RecipeError(
            f"line {line.number}: {self._describe(line)} could belong to {readings}, "
            "and the readings give different merges",
            hint="restore the indentation of that part of the recipe so that only one reading remains",
        )

    def _same_either_way(self, stack: list[_Frame], depths: list[int], index: int) -> bool:
        inner, outer = stack[depths[-1]], stack[depths[0]]
        if (inner.kind, outer.kind) != ("source", "slice"):
            return False
        trial = _copy_stack(stack)
        the_slice: dict[str, Any] = trial[depths[0]].data  # this slice, whatever the stack holds later
        self._attach(trial, depths[-1], self.lines[index])
        block: dict[str, Any] = trial[-1].data
        for line in self.lines[index + 1 :]:  # parse on to learn the slice's sources and the block's keys
            choices = self._candidates(trial, line)
            if not choices:
                break
            self._attach(trial, choices[-1], line)
        sources = the_slice.get("sources", [])
        names = set(block)
        return len(sources) == 1 and self.per_model is not None and names <= self.per_model

    def _attach(self, stack: list[_Frame], depth: int, line: _Line) -> None:
        del stack[depth + 1 :]
        frame = stack[depth]
        if frame.kind == "setting" and frame.data is None:  # the first line fixes the setting's shape
            frame.data = [] if line.is_item else {}
            assert frame.parent is not None
            frame.parent[frame.key] = frame.data
        if not line.is_item:
            self._attach_key(stack, frame, line)
            return
        if line.key is None:
            frame.data.append(_scalar(line))
            return
        item_kind = "condition" if frame.kind == "setting" else LISTS[frame.kind]
        item: dict[str, Any] = {}
        stack.append(_Frame(item_kind, f"{frame.path}[{len(frame.data)}]", item))
        frame.data.append(item)
        self._attach_key(stack, stack[-1], line)

    def _attach_key(self, stack: list[_Frame], frame: _Frame, line: _Line) -> None:
        assert line.key is not None
        if frame.kind == "setting":
            child = SCHEMA["condition"][line.key]
        elif frame.kind in SCHEMA:
            child = SCHEMA[frame.kind][line.key]
        else:
            child = DICTS[frame.kind]
        path = f"{frame.path}.{line.key}" if frame.path else line.key
        if line.value is not None:
            frame.data[line.key] = _scalar(line)
            return
        if child == "setting":  # shape decided by the next line
            frame.data[line.key] = None
            stack.append(_Frame("setting", path, None, parent=frame.data, key=line.key))
            return
        # An empty value opens a block: a list for list kinds, else a mapping.
        frame.data[line.key] = [] if child in LISTS else {}
        stack.append(_Frame(child, path, frame.data[line.key]))


def _copy_stack(stack: list[_Frame]) -> list[_Frame]:
    # One deepcopy of the whole stack keeps the frames pointing into the same copied tree.
    return copy.deepcopy(stack)
