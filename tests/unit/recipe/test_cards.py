"""Recipes from model cards, and flattened recipes rebuilt from the schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mergesmith.api import load_recipe, parse_recipe
from mergesmith.errors import RecipeError
from mergesmith.recipe.settings import Scalar

REPO = Path(__file__).resolve().parents[3]
SEED = REPO.parent / "shared" / "seed" / "000_75b09b5f9d0ce7e0.txt"
EXAMPLE = REPO / "examples" / "fimbulvetr-11b-v2-47-layers.yaml"


def flat(text: str) -> str:
    """What a web page copy does to a recipe: every line loses its indentation."""
    return "\n".join(line.strip() for line in text.splitlines()) + "\n"


def test_the_seed_card_gives_the_indented_recipe():
    if not SEED.is_file():
        pytest.skip(f"{SEED} not found")
    loaded = load_recipe(SEED)
    assert loaded.from_card and loaded.rebuilt
    assert yaml.safe_load(loaded.text) == yaml.safe_load(EXAMPLE.read_text())
    assert loaded.recipe == load_recipe(EXAMPLE).recipe
    assert loaded.notes == (
        "lines 53, 62, 71, 80, 89, 98, 107, 116, 125, 134, 143: 'parameters' could belong to the slice or to its "
        "only source; with one model and only per-model parameters both readings give the same merge, so it is "
        "read as the source's",
    )


TIES = """
models:
  - model: org/base
  - model: org/math
    parameters:
      density: [1, 0.7, 0.1]
      weight:
        - 0.2
        - 0.8
  - model: org/code
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1]
merge_method: ties
base_model: org/base
parameters:
  normalize: true
  int8_mask: true
dtype: float16
"""

SLERP = """
slices:
  - sources:
      - model: org/a
        layer_range: [0, 32]
      - model: org/b
        layer_range: [0, 32]
merge_method: slerp
base_model: org/a
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: bfloat16
"""

PASSTHROUGH_GRADIENT = """
slices:
  - sources:
      - model: org/a
        layer_range: [0, 16]
        parameters:
          scale:
            - filter: o_proj
              value: [1.0, 2.0]
            - value: 1
  - sources:
      - model: org/a
        layer_range: [8, 24]
merge_method: passthrough
"""


@pytest.mark.parametrize("recipe", [TIES, SLERP, PASSTHROUGH_GRADIENT], ids=["ties", "slerp", "gradients"])
def test_flattened_recipes_are_rebuilt_exactly(recipe):
    loaded = parse_recipe(flat(recipe))
    assert loaded.rebuilt
    assert loaded.recipe == parse_recipe(recipe).recipe
    assert yaml.safe_load(loaded.text) == yaml.safe_load(recipe)


def test_an_ambiguous_flattened_recipe_names_the_line_and_both_readings():
    # Issue #14: which reading is meant is decided by comparing their plans (tests/e2e/test_card_readings.py);
    # the loader keeps both, naming the line and both places.
    ambiguous = flat(
        """
slices:
  - sources:
      - model: org/a
        layer_range: [0, 8]
      - model: org/b
        layer_range: [0, 8]
        parameters:
          weight: 0.7
merge_method: linear
"""
    )
    loaded = parse_recipe(ambiguous)
    assert [(r.line, r.what, r.chosen, r.where) for r in loaded.readings] == [
        (8, "'parameters'", "slices[0].sources[1]", "the top level"),
        (8, "'parameters'", "slices[0].sources[1]", "slices[0]"),
    ]
    assert loaded.readings[0].recipe.parameters == {"weight": Scalar(0.7)}
    assert loaded.readings[1].recipe.slices[0].parameters == {"weight": Scalar(0.7)}


def test_an_unknown_key_in_a_flattened_recipe_names_its_line():
    with pytest.raises(RecipeError) as err:
        parse_recipe(flat(PASSTHROUGH_GRADIENT).replace("layer_range: [8, 24]", "layer_rnage: [8, 24]"))
    assert str(err.value).startswith("<string>: line 13: cannot place 'layer_rnage' in the recipe")


def test_slice_parameters_of_a_one_source_slice_are_read_as_the_sources_and_said_so():
    written = PASSTHROUGH_GRADIENT.replace("        parameters:\n          scale:", "    parameters:\n      scale:")
    assert yaml.safe_load(written)["slices"][0]["parameters"]  # the original has them on the slice
    loaded = parse_recipe(flat(written))
    assert loaded.recipe.slices[0].sources[0].parameters == parse_recipe(written).recipe.slices[0].parameters
    assert loaded.notes and loaded.notes[0].startswith(
        "line 6: 'parameters' could belong to the slice or to its only source"
    )


def test_card_without_a_recipe():
    card = "---\nlicense: mit\n---\n# A model\n\n```python\nprint('hello')\n```\n"
    with pytest.raises(RecipeError) as err:
        parse_recipe(card, source="README.md")
    assert str(err.value).startswith("README.md: no recipe found in this model card")


def test_configuration_heading_wins_over_other_blocks():
    card = f"# m\n\n```yaml\nfoo: 1\n```\n\n### Configuration\n\nThe YAML:\n\n```yaml\n{TIES.strip()}\n```\n"
    loaded = parse_recipe(card)
    assert loaded.from_card and not loaded.rebuilt and loaded.text.strip() == TIES.strip()


def test_a_mergekit_card_round_trips():
    # The layout mergekit 0.1.5's card.py writes.
    card = (
        "---\nbase_model:\n- org/base\nlibrary_name: transformers\ntags:\n- mergekit\n- merge\n\n---\n# merged\n\n"
        "This is a merge of pre-trained language models created using [mergekit](https://github.com/cg123/mergekit).\n\n"
        "## Merge Details\n### Merge Method\n\nThis model was merged using the [TIES](https://arxiv.org/abs/2306.01708) "
        "merge method using org/base as a base.\n\n### Models Merged\n\nThe following models were included in the merge:\n"
        "* org/math\n* org/code\n\n### Configuration\n\nThe following YAML configuration was used to produce this model:\n\n"
        f"```yaml\n{TIES.strip()}\n```\n"
    )
    assert parse_recipe(card).recipe == parse_recipe(TIES).recipe


def test_a_later_two_source_slice_does_not_make_an_earlier_one_ambiguous():
    # Slice 0 has one source (its parameters may be read either way); slice 1 has two.
    recipe = """
slices:
  - sources:
      - model: org/a
        layer_range: [0, 4]
        parameters:
          weight: 0.5
  - sources:
      - model: org/a
        layer_range: [4, 8]
      - model: org/b
        layer_range: [4, 8]
merge_method: linear
parameters:
  weight: 1.0
"""
    loaded = parse_recipe(flat(recipe))
    assert loaded.recipe == parse_recipe(recipe).recipe
    assert len(loaded.notes) == 1 and loaded.notes[0].startswith("line 6: 'parameters' could belong to the slice")
