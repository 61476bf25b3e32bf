"""Recipes inside model cards: the fenced YAML block under a "Configuration" heading.

Cards written by mergekit and by mergesmith put the recipe there; a page copied from the hub keeps
the same layout, though often without indentation (see unflatten.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

from mergesmith.errors import RecipeError

_FENCE = re.compile(r"^```[ \t]*(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^```", re.M | re.S)
_HEADING = re.compile(r"^#{1,6}\s*(?P<title>.+?)\s*#*\s*$", re.M)


@dataclass(frozen=True)
class CardBlock:
    text: str  # the block's content, as written
    line: int  # 1-based line of its first content line in the card


def looks_like_card(text: str) -> bool:
    """A Markdown page with fenced blocks, rather than a bare YAML recipe."""
    return bool(_FENCE.search(text))


def recipe_block(text: str, source: str) -> CardBlock:
    """The recipe of a model card: the yaml block under a "Configuration" heading, else the only
    fenced block that reads as a recipe."""
    blocks = [(m, _heading_before(text, m.start())) for m in _FENCE.finditer(text)]
    configured = [m for m, heading in blocks if heading and "configuration" in heading.lower()]
    if configured:
        return _block(text, configured[0])
    recipes = [m for m, _ in blocks if _reads_as_recipe(m["body"])]
    if len(recipes) == 1:
        return _block(text, recipes[0])
    if not recipes:
        raise RecipeError(
            f"{source}: no recipe found in this model card",
            hint="a card's recipe is the ```yaml block under its 'Configuration' heading; "
            "this card has none (was the model made by merging?)",
        )
    lines = ", ".join(str(_block(text, m).line) for m in recipes)
    raise RecipeError(
        f"{source}: {len(recipes)} fenced blocks read as recipes (at lines {lines}), and none is under a "
        "'Configuration' heading",
        hint="save the one you want as a .yaml file and pass that",
    )


def _block(text: str, match: re.Match) -> CardBlock:
    return CardBlock(match["body"], text.count("\n", 0, match.start("body")) + 1)


def _heading_before(text: str, position: int) -> str | None:
    headings = [m["title"] for m in _HEADING.finditer(text, 0, position)]
    return headings[-1] if headings else None


def _reads_as_recipe(body: str) -> bool:
    # merge_method is the one key every recipe has; flattened blocks do not parse as YAML.
    return bool(re.search(r"^\s*merge_method\s*:", body, re.M)) or _parses_with_key(body)


def _parses_with_key(body: str) -> bool:
    try:
        data = yaml.safe_load(body)
    except yaml.YAMLError:
        return False
    return isinstance(data, dict) and "merge_method" in data
