"""Recipes inside model cards: a fenced YAML block, usually under a "Configuration" heading.

Cards written by mergekit and by mergesmith put the recipe there. People also indent the fence
(inside `<details>`, under a list item, in a `>` quote), use `~~~` fences, or paste the HTML of a page, where the
recipe is a `<pre><code>` block with its characters escaped; all of these are read. A page copied
from the hub often loses the recipe's indentation too (see unflatten.py).

The card is read in one pass over its lines, so reading it is linear in its size.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from mergesmith.errors import RecipeError

_FENCE_OPEN = re.compile(
    r"^(?P<quote>(?:[ \t]*>[ \t]?)*)"  # inside > quotes
    r"(?P<indent>[ \t]*(?:(?:[-*+]|\d{1,9}[.)])[ \t]+)?)"  # indented, or after a list marker
    r"(?P<fence>`{3,}|~{3,})(?P<info>.*)$"
)
_QUOTE = re.compile(r"^(?:[ \t]*>[ \t]?)")
_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+(?P<title>.+?)[ \t]*#*[ \t]*$")
_SUMMARY = re.compile(r"<summary[^>]*>(?P<title>.*?)</summary>", re.I)
_BOLD_LINE = re.compile(r"^[ \t]*(?:\*\*|__)(?P<title>[^*_]+)(?:\*\*|__):?[ \t]*$")
_PRE = re.compile(r"<pre\b[^>]*>", re.I)
_TAG = re.compile(r"<[^>\n]*>")
_RECIPE_KEY = re.compile(r"^[ \t]*merge_method[ \t]*:", re.M)
_PROSE = re.compile(
    r"\]\(https?://|<(?:details|summary|p|div|pre|code|img|br|a|h[1-6]|table)\b"
    r"|\A---[ \t]*\n(?:[^\n]*\n){0,200}?---[ \t]*\n\s*\S",  # front matter, then the page
    re.I,
)

NO_RECIPE_HINT = (
    "a card's recipe is the ```yaml block under its 'Configuration' heading; this card has none "
    "(was the model made by merging?); if the recipe is on the page in another form, save it as a .yaml file"
)


@dataclass(frozen=True)
class CardBlock:
    text: str  # the block's content, its fence's indentation removed
    line: int  # 1-based line of its first content line in the card
    heading: str | None = None  # the nearest heading (or <summary>, or bold line) above it


def looks_like_card(text: str) -> bool:
    """A Markdown or HTML page with code blocks, rather than a bare YAML recipe."""
    return bool(card_blocks(text))


def looks_like_prose(text: str) -> bool:
    """A page with links, HTML or front matter: a card without code blocks, not a broken recipe."""
    return bool(_PROSE.search(text)) and not _RECIPE_KEY.search(text)


def card_blocks(text: str) -> list[CardBlock]:
    """Every fenced block of a card, and every <pre> block (HTML-unescaped), in order."""
    blocks: list[CardBlock] = []
    lines = text.split("\n")
    heading: str | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        fence = _FENCE_OPEN.match(line)
        if fence and not (fence["fence"][0] == "`" and "`" in fence["info"]):
            index = _read_fence(lines, index, fence, heading, blocks)
            continue
        heading = _heading(line) or heading
        if "<pre" in line.lower():
            index = _read_pre(lines, index, heading, blocks)
            continue
        index += 1
    return blocks


def recipe_blocks(blocks: list[CardBlock]) -> list[CardBlock]:
    """The blocks that read as recipes (they have `merge_method:`), those under a configuration
    heading first."""
    recipes = [block for block in blocks if _RECIPE_KEY.search(block.text)]
    configured = [block for block in recipes if block.heading and "config" in block.heading.lower()]
    return configured or recipes


def no_recipe(source: str) -> RecipeError:
    return RecipeError(f"{source}: no recipe found in this model card", hint=NO_RECIPE_HINT)


def _heading(line: str) -> str | None:
    match = _HEADING.match(line) or _SUMMARY.search(line) or _BOLD_LINE.match(line)
    return match["title"] if match else None


def _read_fence(lines: list[str], start: int, fence: re.Match, heading: str | None, blocks: list[CardBlock]) -> int:
    """Collect a fenced block; returns the index after its closing fence (or the end)."""
    width, quotes = len(fence["indent"]), fence["quote"].count(">")
    mark = fence["fence"]
    body: list[str] = []
    index = start + 1
    while index < len(lines):
        line = _unquote(lines[index], quotes)  # a fence inside a > blockquote: its lines carry the >
        stripped = line.strip()
        if stripped.startswith(mark[0] * len(mark)) and not stripped.strip(mark[0]):
            break
        body.append(_dedent(line, width))
        index += 1
    blocks.append(CardBlock("\n".join(body) + "\n", start + 2, heading))
    return index + 1


def _unquote(line: str, quotes: int) -> str:
    for _ in range(quotes):
        line = _QUOTE.sub("", line, count=1)
    return line


def _dedent(line: str, width: int) -> str:
    """Remove up to `width` leading spaces: the fence's own indentation, kept by every line of it."""
    spaces = len(line) - len(line.lstrip(" "))
    return line[min(spaces, width) :]


def _read_pre(lines: list[str], start: int, heading: str | None, blocks: list[CardBlock]) -> int:
    """Collect an HTML <pre> block (tags removed, entities unescaped); returns the index after it."""
    first = lines[start]
    opening = _PRE.search(first)
    if opening is None:
        return start + 1
    parts = [first[opening.end() :]]
    index = start
    while "</pre>" not in parts[-1].lower() and index + 1 < len(lines):
        index += 1
        parts.append(lines[index])
    body = "\n".join(parts)
    end = body.lower().find("</pre>")
    body = body[: end if end >= 0 else len(body)]
    text = html.unescape(_TAG.sub("", body)).strip("\n")
    blocks.append(CardBlock(text + "\n", start + 1 + (0 if parts[0].strip() else 1), heading))
    return index + 1
