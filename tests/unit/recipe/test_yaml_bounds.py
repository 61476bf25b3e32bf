"""Recipe text within bounds (issue #14): alias bombs, deep nesting, huge or special files and
non-UTF-8 text are refused quickly with a clear message."""

from __future__ import annotations

import os

import pytest

from mergesmith.api import load_recipe, parse_recipe
from mergesmith.errors import RecipeError
from mergesmith.recipe.yaml_text import MAX_DEPTH, MAX_NODES, MAX_TEXT_BYTES


def alias_bomb(levels: int = 9) -> str:
    """The "billion laughs": each level repeats the one before nine times (9**levels values)."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        refs = ", ".join([f"*a{level - 1}"] * 9)
        lines.append(f"a{level}: &a{level} [{refs}]")
    return (
        "merge_method: linear\n"
        + "\n".join(lines)
        + f"\nmodels: [{{model: x, parameters: {{weight: *a{levels - 1}}}}}]\n"
    )


def test_an_alias_bomb_is_refused_without_expanding_it():
    text = alias_bomb()
    assert len(text) < 1024
    with pytest.raises(RecipeError) as err:
        parse_recipe(text, source="bomb.yaml")
    message = str(err.value)
    assert message.startswith(f"bomb.yaml: line 7: the YAML expands to more than {MAX_NODES} values")
    assert "hint: write the recipe out without '&anchor' and '*alias' repeats" in message
    assert "lol" not in message  # the expanded value is never printed


def test_a_few_aliases_are_fine():
    text = "merge_method: linear\nmodels:\n  - model: a\n    parameters: &p {weight: 1}\n  - model: b\n    parameters: *p\n"
    assert parse_recipe(text).recipe.models[1].parameters == parse_recipe(text).recipe.models[0].parameters


def test_a_recursive_alias_is_refused():
    with pytest.raises(RecipeError) as err:
        parse_recipe("merge_method: linear\nmodels: &m [{model: a, parameters: {weight: *m}}]\n", source="r.yaml")
    assert str(err.value).startswith("r.yaml: line 2: the alias *m refers to the block that contains it")


def test_deep_nesting_is_refused():
    text = "merge_method: linear\nmodels: " + "[" * 5000 + "]" * 5000 + "\n"
    with pytest.raises(RecipeError) as err:
        parse_recipe(text, source="deep.yaml")
    assert str(err.value).startswith(f"deep.yaml: line 2: the YAML nests deeper than {MAX_DEPTH} levels")


def test_a_huge_file_is_refused_after_reading_its_limit(tmp_path):
    path = tmp_path / "huge.yaml"
    with path.open("wb") as file:
        file.truncate(MAX_TEXT_BYTES + 10)  # sparse: no disk used
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}: larger than 4 MiB, too large for a recipe")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_a_device_is_refused():
    with pytest.raises(RecipeError) as err:
        load_recipe("/dev/zero")
    assert (
        str(err.value)
        == "/dev/zero: not a regular file (it is a character device)\n  hint: give the path of a recipe file"
    )


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    with pytest.raises(RecipeError) as err:
        load_recipe(fifo)
    assert str(err.value).startswith(f"{fifo}: not a regular file (it is a named pipe)")


def test_a_folder_is_refused(tmp_path):
    with pytest.raises(RecipeError) as err:
        load_recipe(tmp_path)
    assert str(err.value).startswith(f"{tmp_path}: not a regular file (it is a folder)")


def test_non_utf8_text_is_named(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("merge_method: linear\nmodels: [{model: caf\u00e9}]\n".encode("latin-1"))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value) == (
        f"{path}: line 2: not UTF-8 text (byte 0xe9 at offset 41)\n  hint: save the file as UTF-8"
    )


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(RecipeError) as err:
        load_recipe(tmp_path / "nope.yaml")
    assert str(err.value) == f"{tmp_path / 'nope.yaml'}: recipe file not found"
