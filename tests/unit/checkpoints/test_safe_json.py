"""The bounded JSON reader: nesting depth counted by hand-worked examples, duplicate keys, sizes,
encodings; every refusal is a CheckpointError that starts with the caller's `where`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mergesmith.checkpoints.safe_json import MAX_DEPTH, nesting_depth, parse_json, read_json, read_text
from mergesmith.errors import CheckpointError

DEPTHS = [
    (b"1", 0),  # a scalar nests nothing
    (b"[]", 1),
    (b"{}", 1),
    (b'{"a": [1, {"b": 2}]}', 3),
    (b"[[], [[]], []]", 3),  # siblings do not add up
    (b'["[[[[", "]]"]', 1),  # brackets inside strings do not count
    (b'["a\\"[[[", 1]', 1),  # an escaped quote does not end the string
    (b'["a\\\\", [[2]]]', 3),  # an escaped backslash does: the quote after it ends the string
    (b'["\\\\\\"[", 1]', 1),  # backslash, then an escaped quote: still inside the string
    (b'{"k": "}}}"}', 1),
]


@pytest.mark.parametrize(("raw", "depth"), DEPTHS, ids=[d[0].decode() for d in DEPTHS])
def test_nesting_depth_by_hand(raw: bytes, depth: int) -> None:
    assert nesting_depth(raw, MAX_DEPTH) == depth
    assert json.loads(raw) is not None  # every example is valid JSON


def test_nesting_depth_stops_one_past_the_limit() -> None:
    assert nesting_depth(b"[" * 10 + b"]" * 10, 4) == 5
    assert nesting_depth(b"[" * 4 + b"]" * 4, 4) == 4


def test_depth_at_the_limit_parses_and_one_more_is_refused() -> None:
    at_limit = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert parse_json(at_limit, "x") == json.loads(at_limit)
    with pytest.raises(CheckpointError) as err:
        parse_json(b"[" + at_limit + b"]", "model 'a': f.json")
    assert err.value.message == f"model 'a': f.json: JSON nested more than {MAX_DEPTH} levels deep"
    assert err.value.hint


def test_deep_nesting_that_crashes_json_is_refused() -> None:
    deep = b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    with pytest.raises(RecursionError):
        json.loads(deep)  # the crash this reader exists to prevent
    with pytest.raises(CheckpointError, match="nested more than"):
        parse_json(deep, "x")


def test_duplicate_keys_are_named_at_any_depth() -> None:
    with pytest.raises(CheckpointError) as err:
        parse_json(b'{"a": 1, "b": {"c": 1, "c": 2}}', "where")
    assert err.value.message == "where: key 'c' appears twice in one JSON object"


def test_syntax_error_gives_line_and_column() -> None:
    with pytest.raises(CheckpointError) as err:
        parse_json(b'{\n  "a": }', "where")
    assert err.value.message == "where: not valid JSON (Expecting value: line 2 column 8)"


def test_integer_beyond_pythons_digit_limit_is_refused() -> None:
    with pytest.raises(CheckpointError, match=re.escape("where: not valid JSON (Exceeds the limit (4300 digits)")):
        parse_json(b"[" + b"7" * 5000 + b"]", "where")


def test_surrogate_pairs_pass_and_halves_are_refused() -> None:
    assert parse_json(b'"\\ud83d\\ude00"', "x") == "\U0001f600"  # an emoji, escaped as a pair
    with pytest.raises(CheckpointError) as err:
        parse_json(b'{"t": "a\\udc00"}', "where")
    assert err.value.message == "where: holds an unpaired UTF-16 surrogate escape ('\\udc00'), which is not text"


def test_not_utf8_is_named_with_the_byte(tmp_path: Path) -> None:
    (tmp_path / "t.jinja").write_bytes(b"ok\xc3")
    with pytest.raises(CheckpointError) as err:
        read_text(tmp_path / "t.jinja", "where")
    assert err.value.message == "where: not UTF-8 text (byte 2)"
    with pytest.raises(CheckpointError, match="where: not UTF-8 text"):
        parse_json(b'{"a": "\xff"}', "where")


def test_size_is_bounded_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_bytes(b"[" + b" " * (2 * 2**20) + b"]")
    assert read_json(path, "x", max_bytes=3 * 2**20) == []
    with pytest.raises(CheckpointError) as err:
        read_json(path, "where", max_bytes=2**20)
    assert err.value.message == "where: larger than 1 MiB, more than such a file ever needs"


def test_a_file_that_cannot_be_opened(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="where: cannot read"):
        read_json(tmp_path / "missing.json", "where")


def top_and_second_level_keys(data: dict) -> int:
    return len(data) + sum(len(v) for v in data.values() if isinstance(v, dict))


def test_counted_keys_still_find_a_repeated_key() -> None:
    with pytest.raises(CheckpointError, match="key 't' appears twice"):
        parse_json(b'{"t": {"a": 1}, "t": {"a": 2}}', "x", count_keys=top_and_second_level_keys)
    with pytest.raises(CheckpointError, match="key 'a' appears twice"):
        parse_json(b'{"t": {"a": 1, "a": 2}}', "x", count_keys=top_and_second_level_keys)


def test_keys_the_count_leaves_out_fall_back_to_the_full_check() -> None:
    text = b'{"t": {"a": {"deep": 1, "more": 2}}, "u": {"k": ":"}}'  # a colon in a string is no key
    assert parse_json(text, "x", count_keys=top_and_second_level_keys) == json.loads(text)
    with pytest.raises(CheckpointError, match="key 'deep' appears twice"):
        parse_json(b'{"t": {"a": {"deep": 1, "deep": 2}}}', "x", count_keys=top_and_second_level_keys)
