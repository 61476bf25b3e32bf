"""Reading JSON and text from a model folder as untrusted input: size, nesting depth and duplicate
keys are bounded or refused before the data reaches the code that uses it.

Python's json module recurses once per nesting level (a 100 KB file of `[[[[...` raises
RecursionError) and keeps the last of two equal keys (a header can name a tensor twice, and
another reader may pick the other one). Every JSON read of an input file goes through here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mergesmith.errors import CheckpointError

MAX_DEPTH = 100  # model files nest under 10 levels; far below the interpreter's recursion limit
MAX_BYTES = 64 * 2**20  # config, index, tokenizer_config, generation settings, chat templates
MAX_TOKENIZER_BYTES = 256 * 2**20  # tokenizer.json: a 256k vocabulary with merges is ~35 MB

_CORRUPT_HINT = "the file is damaged or was not written by a model library; download the model again"
_NOT_SKELETON = bytes(c for c in range(256) if c not in b'"[]{}:')
_SQUARE = bytes.maketrans(b"{}", b"[]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # \ud800-\udfff: half of a UTF-16 pair


def read_json(path: Path, where: str, *, max_bytes: int = MAX_BYTES) -> Any:
    """Parse the JSON file `path`; `where` starts every error message ("model 'a': /x/config.json").

    >>> read_json(Path("config.json"), "model 'a': config.json")  # doctest: +SKIP
    {'architectures': ['MistralForCausalLM'], ...}
    """
    return parse_json(read_bytes(path, where, max_bytes=max_bytes), where)


def read_text(path: Path, where: str, *, max_bytes: int = MAX_BYTES) -> str:
    """The UTF-8 text of `path` (a chat template, say), size bounded."""
    raw = read_bytes(path, where, max_bytes=max_bytes)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{where}: not UTF-8 text (byte {err.start})", hint=_CORRUPT_HINT) from None


def read_bytes(path: Path, where: str, *, max_bytes: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(max_bytes + 1)  # never more than the bound, whatever the file claims
    except OSError as err:
        raise CheckpointError(
            f"{where}: cannot read ({err.strerror or err})", hint="check that the file is readable by you"
        ) from None
    if len(raw) > max_bytes:
        raise CheckpointError(
            f"{where}: larger than {max_bytes // 2**20} MiB, more than such a file ever needs",
            hint=_CORRUPT_HINT,
        )
    return raw


def parse_json(raw: bytes, where: str, *, count_keys: Callable[[Any], int] | None = None) -> Any:
    """Parse JSON bytes: nesting at most MAX_DEPTH levels, no key twice in one object.

    Finding a repeated key takes a Python call per object. `count_keys`, for data of a known shape
    (a safetensors header: a million small objects), counts the keys of some of the parsed objects;
    when that equals the number of keys in the text, none was repeated and the data is returned
    from one plain parse. Otherwise the text is parsed again, object by object, to name the key.
    """
    skeleton = _skeleton(raw)
    if _depth(skeleton.replace(b":", b""), MAX_DEPTH) > MAX_DEPTH:
        raise CheckpointError(f"{where}: JSON nested more than {MAX_DEPTH} levels deep", hint=_CORRUPT_HINT)
    data = _loads(raw, where, None) if count_keys is not None else None
    if data is None or count_keys is None or count_keys(data) != skeleton.count(b":"):
        data = _loads(raw, where, _unique_keys)
    if _SURROGATE_ESCAPE.search(raw):
        _refuse_lone_surrogates(data, where)
    return data


def _loads(raw: bytes, where: str, hook: Callable[[list[tuple[str, Any]]], Any] | None) -> Any:
    try:
        return json.loads(raw, object_pairs_hook=hook)
    except _DuplicateKey as err:
        raise CheckpointError(
            f"{where}: key {err.key!r} appears twice in one JSON object",
            hint="readers disagree on which of the two counts; " + _CORRUPT_HINT,
        ) from None
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{where}: not UTF-8 text (byte {err.start})", hint=_CORRUPT_HINT) from None
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"{where}: not valid JSON ({err.msg}: line {err.lineno} column {err.colno})", hint=_CORRUPT_HINT
        ) from None
    except ValueError as err:  # an integer of more than 4300 digits (Python's limit), say
        raise CheckpointError(f"{where}: not valid JSON ({err})", hint=_CORRUPT_HINT) from None
    except RecursionError:  # not reached below MAX_DEPTH; kept so that no traceback escapes
        raise CheckpointError(f"{where}: JSON nested too deep to read", hint=_CORRUPT_HINT) from None


def _refuse_lone_surrogates(data: Any, where: str) -> None:
    """A `\\ud800` escape without its pair parses to a str that cannot be written as UTF-8: the
    merged model's JSON files would fail to write, after the merge. Pairs (emoji) are fine."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as err:
        raise CheckpointError(
            f"{where}: holds an unpaired UTF-16 surrogate escape "
            f"({err.object[err.start : err.end]!a}), which is not text",
            hint=_CORRUPT_HINT,
        ) from None


def nesting_depth(raw: bytes, limit: int) -> int:
    """How deeply `raw`'s arrays and objects nest, counted up to `limit + 1` (then it stops).

    >>> nesting_depth(b'{"a": [1, {"b": "[[["}]}', 100)
    3
    """
    return _depth(_skeleton(raw).replace(b":", b""), limit)


def _skeleton(raw: bytes) -> bytes:
    """The brackets (as [ and ]) and colons of `raw` outside its strings: its nesting and its keys.

    Linear in `raw` and done by bytes methods (C loops). Malformed JSON gives some skeleton;
    json.loads then reports where it is malformed.
    """
    # Escaped backslashes, then escaped quotes: every quote left opens or closes a string.
    text = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    text = text.translate(_SQUARE, _NOT_SKELETON)  # only quotes, [ ] and : remain
    text = text.replace(b'""', b"")  # strings without brackets or colons in them; quote parity is kept
    if b'"' in text:
        text = b"".join(text.split(b'"')[::2])  # outside strings: the even pieces
    return text


def _depth(brackets: bytes, limit: int) -> int:
    # Each pass removes the innermost level: a balanced text of depth d is empty after d passes.
    depth = 0
    while brackets and depth <= limit:
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):  # unbalanced: not JSON, json.loads says where
            break
        brackets, depth = shorter, depth + 1
    return depth


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for messages: 'a list', 'a string', 'true'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    names = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number"}
    return names.get(type(value), type(value).__name__)


def is_count(value: object) -> bool:
    """A JSON integer (not true/false, which Python reads as 1 and 0) that is zero or more."""
    return type(value) is int and value >= 0
