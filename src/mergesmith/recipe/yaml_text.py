"""Reading recipe text and parsing its YAML within bounds: size, nesting depth and alias expansion.

A recipe is a few kilobytes of YAML. A file of gigabytes (or /dev/zero), YAML nested thousands deep,
or a 1 KB "billion laughs" of aliases is refused before it is expanded, in bounded time and memory.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import yaml

from mergesmith.errors import RecipeError

MAX_TEXT_BYTES = 4 * 2**20  # a recipe is kilobytes; a model card rarely passes 100 KB
MAX_DEPTH = 64  # a recipe nests about 8 deep
MAX_NODES = 100_000  # values after expanding aliases; a 2,000-slice recipe has about 20,000

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when PyYAML has it


def read_text(path: str | os.PathLike[str], *, what: str = "recipe") -> str:
    """The UTF-8 text of a regular file of at most MAX_TEXT_BYTES, or a RecipeError saying why not."""
    path = Path(path)
    try:
        mode = path.stat().st_mode  # before opening: opening a FIFO would wait for a writer
    except FileNotFoundError:
        raise RecipeError(f"{path}: {what} file not found") from None
    except OSError as err:
        raise RecipeError(f"{path}: cannot read the {what} ({err.strerror or err})") from None
    if not stat.S_ISREG(mode):
        raise RecipeError(
            f"{path}: not a regular file (it is {_file_kind(mode)})", hint=f"give the path of a {what} file"
        )
    try:
        with path.open("rb") as file:
            data = file.read(MAX_TEXT_BYTES + 1)
    except OSError as err:
        raise RecipeError(f"{path}: cannot read the {what} ({err.strerror or err})") from None
    if len(data) > MAX_TEXT_BYTES:
        raise RecipeError(
            f"{path}: larger than {MAX_TEXT_BYTES // 2**20} MiB, too large for a {what}",
            hint="a recipe is a few kilobytes of YAML; check that this is the file you meant",
        )
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise RecipeError(
            f"{path}: line {line}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})",
            hint="save the file as UTF-8",
        ) from None


def _file_kind(mode: int) -> str:
    kinds = [
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ]
    return next((name for test, name in kinds if test(mode)), "not a plain file")


def check_bounds(text: str, *, first_line: int = 1) -> None:
    """Refuse YAML nested deeper than MAX_DEPTH or whose aliases expand past MAX_NODES values.

    Walks the parser's events (no objects are built), counting each alias as the size of what it
    names. YAML syntax errors are left to the loader, whose messages are explained elsewhere.
    """
    sizes: dict[str, int] = {}  # anchor -> values it stands for
    open_blocks: list[tuple[str | None, int]] = []  # (anchor, total when the block started)
    total = 0
    try:
        for event in yaml.parse(text, Loader=_LOADER):
            line = event.start_mark.line + first_line if event.start_mark else first_line
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                open_blocks.append((event.anchor, total))
                total += 1
                if len(open_blocks) > MAX_DEPTH:
                    raise RecipeError(
                        f"line {line}: the YAML nests deeper than {MAX_DEPTH} levels",
                        hint="a recipe nests a few levels deep; check that this is a recipe",
                    )
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                anchor, start = open_blocks.pop()
                if anchor is not None:
                    sizes[anchor] = total - start
            elif isinstance(event, yaml.ScalarEvent):
                total += 1
                if event.anchor is not None:
                    sizes[event.anchor] = 1
            elif isinstance(event, yaml.AliasEvent):
                total += _alias_size(event.anchor, sizes, open_blocks, line)
            if total > MAX_NODES:
                raise RecipeError(
                    f"line {line}: the YAML expands to more than {MAX_NODES} values (its aliases repeat "
                    "anchored blocks)",
                    hint="write the recipe out without '&anchor' and '*alias' repeats",
                )
    except yaml.YAMLError:
        return  # the loader reports it, with its position


def _alias_size(anchor: str, sizes: dict[str, int], open_blocks: list[tuple[str | None, int]], line: int) -> int:
    if any(name == anchor for name, _ in open_blocks):
        raise RecipeError(
            f"line {line}: the alias *{anchor} refers to the block that contains it",
            hint="a recipe cannot contain itself; write the values out",
        )
    return sizes.get(anchor, 1)  # an unknown anchor is the loader's error


def load_yaml(text: str, *, first_line: int = 1) -> object:
    """Parse YAML within the bounds above. Raises RecipeError (bounds) or yaml.YAMLError (syntax)."""
    check_bounds(text, first_line=first_line)
    try:
        return yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError:
        # The pure-Python parser again: its messages are the ones load.py's hints recognise.
        return yaml.safe_load(text)
