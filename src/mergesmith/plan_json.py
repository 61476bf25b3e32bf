"""The plan as one JSON document: what `plan --json` prints and what the web page draws from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from mergesmith.methods.spec import Unset

if TYPE_CHECKING:
    from mergesmith.plan import Plan


def plan_document(result: Plan) -> dict[str, Any]:
    """The plan's fields as plain data (parameters still as plan.Params: dump with `json_default`)."""
    vocabulary = result.vocabulary
    summary: dict[str, Any] | None = None
    if vocabulary is not None:  # the per-model row maps are data for the executor, not for reading
        summary = {
            "tokens": len(vocabulary.tokens),
            "rows": vocabulary.size,
            "tokenizer_from": vocabulary.source,
            "added": [entry["content"] for entry in vocabulary.appended],
            "dropped_ids": list(vocabulary.dropped),
        }
    return {**asdict(result, dict_factory=_without_unset_fp8), "vocabulary": summary}


def json_default(value: object) -> object:
    """Plan values json cannot write itself: parameters as an object, unset ones as null."""
    if isinstance(value, Mapping):  # plan.Params
        return {key: None if isinstance(v, Unset) else v for key, v in value.items()}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _without_unset_fp8(items: list[tuple[str, Any]]) -> dict[str, Any]:
    """`plan --json` names the FP8 settings of a source or entry, a source's adapter and an entry's
    card line only where there are some."""
    return {key: value for key, value in items if not (key in ("fp8", "lora", "method_line") and value is None)}
