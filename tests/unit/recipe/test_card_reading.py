"""Model cards as people write them (issue #14): fences anywhere, <pre> blocks, several blocks,
the shapes mergekit's yaml.dump writes, comments after keys, and cards of any size in linear time."""

from __future__ import annotations

import typing

import pytest
import yaml

from mergesmith.api import parse_recipe
from mergesmith.errors import RecipeError
from mergesmith.recipe.schema import Recipe
from mergesmith.recipe.unflatten import SCHEMA

TIES = """models:
  - model: org/base
  - model: org/math
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1]
merge_method: ties
base_model: org/base
parameters:
  normalize: true
dtype: float16
"""


def flat(text: str) -> str:
    """What a web page copy does to a recipe: every line loses its indentation."""
    return "\n".join(line.strip() for line in text.splitlines()) + "\n"


def indent(text: str, prefix: str) -> str:
    return "".join(prefix + line + "\n" for line in text.splitlines())


# (id, card text): each must give TIES's recipe.
CARDS = [
    # inside <details>, the fence indented by two spaces
    (
        "details",
        "# m\n\n<details><summary>Merge configuration</summary>\n\n  ```yaml\n"
        + indent(TIES, "  ")
        + "  ```\n</details>\n",
    ),
    # under a list item, the fence indented by three spaces, body lines too
    ("list item", "# m\n\n1. Configuration:\n\n   ```yaml\n" + indent(TIES, "   ") + "   ```\n"),
    # inside a > blockquote (a note in a card)
    ("blockquote", "# m\n\n> **Configuration**\n> ```yaml\n" + indent(TIES, "> ") + "> ```\n"),
    # a ~~~ fence
    ("tilde", "## Configuration\n\n~~~yaml\n" + TIES + "~~~\n"),
    # a four-backtick fence holding a ``` line elsewhere is not closed by it
    ("long fence", "## Configuration\n\n````yaml\n" + TIES + "````\n"),
    # the HTML of a page: <pre><code>, characters escaped, spans around tokens
    (
        "html pre",
        '<h3>Configuration</h3>\n<pre><code class="language-yaml">'
        + TIES.replace("org/base", '<span class="hljs-string">org/base</span>').replace("'", "&#39;")
        + "</code></pre>\n",
    ),
    # several blocks: the one under the configuration heading wins over an earlier recipe-like one
    (
        "configured",
        "# m\n\n```yaml\nmerge_method: linear\nmodels: [{model: x}]\n```\n\n### Configuration\n\n```yaml\n"
        + TIES
        + "```\n",
    ),
    # several recipe-like blocks, none under such a heading: the only one that loads
    ("only one loads", "# m\n\n```yaml\nmerge_method: linear\nmodels: 3\n```\n\n```yaml\n" + TIES + "```\n"),
    # flattened inside an indented fence: indentation lost, then re-indented by the fence's
    (
        "flattened in details",
        "<details>\n<summary>Config</summary>\n\n  ```yaml\n" + indent(flat(TIES), "  ") + "  ```\n</details>\n",
    ),
]


@pytest.mark.parametrize("card", [text for _, text in CARDS], ids=[name for name, _ in CARDS])
def test_cards_give_their_recipe(card):
    loaded = parse_recipe(card, source="README.md")
    assert loaded.from_card
    assert loaded.recipe == Recipe.model_validate(yaml.safe_load(TIES))


def test_a_card_without_any_code_block_has_no_recipe():
    card = "---\nlicense: mit\n---\n# A merge\n\nMade with [mergekit](https://github.com/arcee-ai/mergekit).\n"
    with pytest.raises(RecipeError) as err:
        parse_recipe(card, source="README.md")
    assert str(err.value).startswith("README.md: no recipe found in this model card\n  hint: a card's recipe is the")


def test_a_pre_block_that_is_not_a_recipe_is_no_recipe():
    card = "<p>A model.</p>\n<pre><code>pip install transformers</code></pre>\n"
    with pytest.raises(RecipeError) as err:
        parse_recipe(card, source="page.html")
    assert str(err.value).startswith("page.html: no recipe found in this model card")


def test_several_recipe_blocks_that_all_load_are_refused_naming_their_lines():
    card = f"# m\n\n```yaml\n{TIES}```\n\ntext\n\n```yaml\n{TIES}```\n"
    with pytest.raises(RecipeError) as err:
        parse_recipe(card, source="README.md")
    assert str(err.value) == (
        "README.md: 2 code blocks read as recipes (at lines 4, 20), and 2 of them load, none under a 'Configuration' "
        "heading\n  hint: save the one you want as a .yaml file and pass that"
    )


def test_an_unclosed_fence_is_read_to_the_end():
    loaded = parse_recipe("## Configuration\n```yaml\n" + TIES)
    assert loaded.recipe == Recipe.model_validate(yaml.safe_load(TIES))


# What mergekit's own cards hold: yaml.dump of the configuration, lists in block style, nested in
# list items (a gradient under `value:`, a layer_range as two `- n` lines).
MERGEKIT_DUMP = {
    "slices": [{"sources": [{"model": "org/a", "layer_range": [0, 32]}, {"model": "org/b", "layer_range": [0, 32]}]}],
    "merge_method": "slerp",
    "base_model": "org/a",
    "parameters": {
        "t": [
            {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
            {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
            {"value": 0.5},
        ]
    },
    "dtype": "bfloat16",
}


def test_mergekits_yaml_dump_flattened_is_rebuilt():
    text = yaml.dump(MERGEKIT_DUMP, sort_keys=False)
    assert "    - 0.5\n" in text  # block-style lists nested in list items, as mergekit writes them
    loaded = parse_recipe(flat(text))
    assert loaded.rebuilt and not loaded.readings
    assert yaml.safe_load(loaded.text) == MERGEKIT_DUMP


def test_comments_after_keys_are_ignored():
    text = flat(TIES).replace("density: 0.5", "density: 0.5 # keep half").replace("parameters:", "parameters: # note")
    loaded = parse_recipe(text)
    assert loaded.recipe == Recipe.model_validate(yaml.safe_load(TIES))


def test_an_unknown_top_level_scalar_key_does_not_stop_the_rebuild():
    # mergekit-multi documents carry `name:`; whether it is accepted is the schema's decision, but
    # the rebuild places it at the top level rather than failing to place it.
    text = flat("name: my-merge\n" + TIES)
    try:
        loaded = parse_recipe(text)
    except RecipeError as err:
        assert str(err).startswith("name: unknown key"), err  # the schema refuses it, naming it
    else:
        assert loaded.recipe == Recipe.model_validate(yaml.safe_load(TIES))


def _big_passthrough(slices: int) -> str:
    return (
        "slices:\n"
        + "".join(
            f"- sources:\n- model: org/a\nlayer_range: [{i}, {i + 1}]\nparameters:\nscale: 1.5\n" for i in range(slices)
        )
        + "merge_method: passthrough\n"
    )


def test_a_large_flattened_card_with_many_headings_is_read():
    # 2000 one-source slices whose parameters read two ways, after 5000 headings: the rebuild and
    # the card reading are linear (the quadratic versions took minutes for a card this size).
    card = "".join(f"## Section {i}\ntext\n" for i in range(5000)) + "### Configuration\n```yaml\n"
    card += _big_passthrough(2000) + "```\n"
    loaded = parse_recipe(card)
    assert len(loaded.recipe.slices) == 2000
    assert loaded.recipe.slices[1999].sources[0].layer_range == (1999, 2000)
    assert loaded.recipe.slices[1999].sources[0].parameters is not None
    assert [(r.line, r.where) for r in loaded.readings] == [(10000 + 3 + 5 * 1999 + 4, "the top level")]


def _fields(model: type) -> dict[str, str]:
    """Each field of a schema class and the shape of its value, read from its annotation text."""
    shapes = {}
    for name, info in model.model_fields.items():
        text = str(info.annotation)
        if name == "parameters":
            shapes[name] = "dict:setting"
        elif "list[" in text or "tuple[" in text:
            shapes[name] = "list"
        elif "dict[" in text:
            shapes[name] = "dict"
        else:
            args = typing.get_args(info.annotation) or (info.annotation,)
            is_block = any(isinstance(arg, type) and hasattr(arg, "model_fields") for arg in args)
            shapes[name] = "map" if is_block else "scalar"
    return shapes


@pytest.mark.parametrize(
    "kind, model",
    [
        ("map:Recipe", "Recipe"),
        ("map:OutputSlice", "OutputSlice"),
        ("map:InputSlice", "InputSlice"),
        ("map:InputModel", "InputModel"),
        ("map:OutputModule", "OutputModule"),
        ("map:TokenizerSettings", "TokenizerSettings"),
        ("map:TokenEmbedding", "TokenEmbedding"),
    ],
)
def test_the_flattened_schema_has_every_key_of_the_recipe_schema(kind, model):
    from mergesmith.recipe import schema

    expected = _fields(getattr(schema, model))
    assert set(SCHEMA[kind]) == set(expected)
    for key, shape in expected.items():
        assert SCHEMA[kind][key].split(":")[0] == shape.split(":")[0] or (shape, SCHEMA[kind][key]) == (
            "dict:setting",
            "dict:setting",
        ), key


def test_readings_that_part_for_good_are_followed_to_the_end():
    # Line 5's block read as the slice's leaves the slice no room for line 7's, which then can only
    # be the recipe's: the two readings go different ways after line 7, and both are kept whole.
    loaded = parse_recipe(
        "slices:\n- sources:\n- model: a\nlayer_range: [0, 1]\nparameters:\nweight: 1\nparameters:\nweight: 2\n"
        "merge_method: linear\n"
    )
    assert yaml.safe_load(loaded.text)["slices"][0]["sources"][0]["parameters"] == {"weight": 1}
    assert yaml.safe_load(loaded.text)["slices"][0]["parameters"] == {"weight": 2}
    readings = {(r.line, r.chosen, r.where): yaml.safe_load(r.text) for r in loaded.readings}
    assert set(readings) == {(7, "slices[0]", "the top level"), (5, "slices[0].sources[0]", "slices[0]")}
    parted = readings[(5, "slices[0].sources[0]", "slices[0]")]
    assert parted["slices"][0]["parameters"] == {"weight": 1} and parted["parameters"] == {"weight": 2}
