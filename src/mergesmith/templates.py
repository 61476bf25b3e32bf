"""Chat templates a recipe can name (`chat_template: chatml`), or a literal Jinja template."""

from __future__ import annotations

import difflib
from importlib import resources

from mergesmith.errors import RecipeError

BUILT_IN = ("alpaca", "chatml", "exaone", "llama3", "mistral")


def chat_template_text(choice: str) -> str:
    """The Jinja text for a built-in template name, or `choice` itself when it is a template."""
    if choice in BUILT_IN:
        return resources.files("mergesmith").joinpath(f"data/chat_templates/{choice}.jinja").read_text("utf-8")
    if "{" in choice:
        return choice
    close = difflib.get_close_matches(choice, [*BUILT_IN, "auto"], n=1)
    raise RecipeError(
        f"chat_template: {choice!r} is neither a built-in template nor a Jinja template",
        hint=(f"did you mean '{close[0]}'? " if close else "")
        + f"use 'auto' (the inputs' most common template), one of {', '.join(BUILT_IN)}, or Jinja text",
    )
