"""Where in the text an error points: the line an editor marks beside a recipe's error."""

from __future__ import annotations

import re

import yaml

from mergesmith.recipe.from_card import card_blocks, looks_like_card, recipe_blocks
from mergesmith.recipe.yaml_text import check_bounds

_LINE = re.compile(r"\bline (\d+)\b")
_KEY_PATH = re.compile(r"^((?:[A-Za-z_][\w-]*|\[\d+\])(?:\.[A-Za-z_][\w-]*|\[\d+\])*): ")
_STEP = re.compile(r"([A-Za-z_][\w-]*)|\[(\d+)\]")


def error_line(text: str, message: str) -> int | None:
    """The 1-based line of `text` (a recipe, or a card holding one) that `message` is about: the
    line it names, or the line of the key path it starts with (`slices[0].sources[0].layer_range:
    ...`); None when neither is found."""
    named = _LINE.search(message)
    if named:
        return int(named[1])
    path = _KEY_PATH.match(message)
    if path is None:
        return None
    block, offset = _recipe_block(text)
    try:
        check_bounds(block)
        node = yaml.compose(block, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, ValueError):
        return None
    line = None
    for name, index in _STEP.findall(path[1]):
        found = _child(node, name, int(index) if index else None)
        if found is None:
            break
        line, node = found
    return None if line is None else line + 1 + offset


def _recipe_block(text: str) -> tuple[str, int]:
    if looks_like_card(text):
        blocks = recipe_blocks(card_blocks(text))
        if blocks:
            return blocks[0].text, blocks[0].line - 1
    return text, 0


def _child(node: yaml.Node | None, name: str, index: int | None) -> tuple[int, yaml.Node] | None:
    if name and isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == name:
                return key.start_mark.line, value
    if index is not None and isinstance(node, yaml.SequenceNode) and index < len(node.value):
        item = node.value[index]
        return item.start_mark.line, item
    return None
