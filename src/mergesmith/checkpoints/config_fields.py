"""Type checks of the config.json and generation_config.json fields mergesmith reads, so that a
wrong type is refused with the file and the field named instead of failing (or passing) later.

JSON `true` reads as Python's True, which is an int: counts are checked with `type(v) is int`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mergesmith.checkpoints.names import (
    LAYER_COUNT_KEYS,
    NESTED_CONFIG_KEYS,
    PER_LAYER_KEYS,
    ROLE_CONFIG_PARTS,
    ROLE_COUNT_KEYS,
    TOKEN_ID_KEYS,
)
from mergesmith.checkpoints.safe_json import is_count, json_type
from mergesmith.errors import CheckpointError


def _is_token_ids(value: object) -> bool:
    # eos_token_id may be a list; old Llama configs say pad_token_id: -1, so negatives pass
    ids = value if type(value) is list else [value]
    return all(type(i) is int for i in ids)


def _is_names(value: object) -> bool:
    return type(value) is list and all(type(v) is str for v in value)


# field -> (check, what the message says was expected); null (None) always passes: "not set"
_CONFIG_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "architectures": (_is_names, 'a list of class names, e.g. ["MistralForCausalLM"]'),
    "vocab_size": (is_count, "a whole number of tokens"),
    "tie_word_embeddings": (lambda v: type(v) is bool, "true or false"),
    **{key: (is_count, "a whole number of layers") for key in LAYER_COUNT_KEYS},
    **{key: (lambda v: type(v) is list, "a list with one entry per layer") for key in PER_LAYER_KEYS},
    **{key: (_is_token_ids, "a token id or a list of token ids") for key in TOKEN_ID_KEYS},
    **{key: (lambda v: type(v) is dict, "an object of settings") for key in NESTED_CONFIG_KEYS},
}

# a tower's config part (vision_config, audio_config) -> the keys that count its layers (structure.py reads them)
_TOWER_PARTS: dict[str, tuple[str, ...]] = {
    path[0]: ROLE_COUNT_KEYS[role]
    for role, paths in ROLE_CONFIG_PARTS.items()
    for path in paths
    if path and path[0] not in NESTED_CONFIG_KEYS
}


def check_config(config: object, path: Path, model: str) -> dict[str, Any]:
    """config.json's content, checked: an object whose fields we read have the types transformers writes."""
    _check_object(config, path, model)
    assert isinstance(config, dict)
    _check_fields(config, "", path, model, _CONFIG_FIELDS)
    for key in NESTED_CONFIG_KEYS:
        if isinstance(config.get(key), dict):
            _check_fields(config[key], f"{key}.", path, model, _CONFIG_FIELDS)
    _check_fields(config, "", path, model, {key: _CONFIG_FIELDS[NESTED_CONFIG_KEYS[0]] for key in _TOWER_PARTS})
    for key, counts in _TOWER_PARTS.items():
        if isinstance(config.get(key), dict):
            _check_fields(config[key], f"{key}.", path, model, {k: _CONFIG_FIELDS[LAYER_COUNT_KEYS[0]] for k in counts})
    return config


def check_generation_config(settings: object, path: Path, model: str) -> dict[str, Any]:
    """generation_config.json's content: an object whose token ids are ids."""
    _check_object(settings, path, model)
    assert isinstance(settings, dict)
    _check_fields(settings, "", path, model, {key: _CONFIG_FIELDS[key] for key in TOKEN_ID_KEYS})
    return settings


def config_vocab_size(config: dict[str, Any]) -> int | None:
    """The vocabulary size the embeddings must have: a nested text config's, else the top level's."""
    parts = [*(config[k] for k in NESTED_CONFIG_KEYS if isinstance(config.get(k), dict)), config]
    return next((part["vocab_size"] for part in parts if is_count(part.get("vocab_size"))), None)


def _check_object(data: object, path: Path, model: str) -> None:
    if not isinstance(data, dict):
        raise CheckpointError(
            f"model {model!r}: {path} holds {json_type(data)}, not a JSON object of settings",
            hint=f"{path.name} is written by transformers' save_pretrained as an object ({{...}}); "
            "download the model again",
        )


def _check_fields(
    data: dict[str, Any], prefix: str, path: Path, model: str, fields: dict[str, tuple[Callable[[object], bool], str]]
) -> None:
    for key, (is_valid, expected) in fields.items():
        value = data.get(key)
        if value is not None and not is_valid(value):
            shown = json.dumps(value)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise CheckpointError(
                f"model {model!r}: {path}: {prefix}{key} is {json_type(value)}"
                + ("" if isinstance(value, bool) else f" ({shown})")
                + f", expected {expected}",
                hint=f"fix {prefix}{key} in {path.name}, or download the model again",
            )
