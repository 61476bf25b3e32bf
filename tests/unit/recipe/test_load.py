"""Loading recipes: the whole mergekit schema, and errors that name the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergesmith.api import load_recipe, parse_recipe
from mergesmith.errors import RecipeError
from mergesmith.recipe.settings import Conditional, Scalar

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def error_of(text: str) -> str:
    with pytest.raises(RecipeError) as err:
        parse_recipe(text)
    return str(err.value)


def test_seed_recipe_loads_as_written():
    recipe = load_recipe(EXAMPLES / "fimbulvetr-11b-v2-47-layers.yaml").recipe
    assert recipe.merge_method == "passthrough" and recipe.dtype == "bfloat16"
    assert [s.sources[0].layer_range for s in recipe.slices] == [(i, i + 4) for i in range(0, 44, 4)] + [(44, 47)]
    assert recipe.slices[11].sources[0].parameters["scale"] == Conditional(
        (("o_proj", Scalar(4.0)), ("down_proj", Scalar(4.0)))
    )


def test_every_mergekit_key_is_accepted():
    recipe = parse_recipe(
        """
modules:
  decoder:
    slices:
      - sources:
          - {model: a, layer_range: [0, 2], parameters: {weight: 0.5}}
          - {model: b@v2, layer_range: [0, 2]}
        base_model: a
        residual_weight: 0.1
        parameters: {t: [0, 1]}
    parameters: {density: 0.5}
merge_method: slerp
base_model: a
dtype: float32
out_dtype: bfloat16
tokenizer:
  source: union
  tokens:
    "<|im_start|>": {source: {kind: model_token, model: b, token: "<s>"}, force: true}
    "<pad>": {source: {kind: zero}}
    "<x>": {source: a}
  pad_to_multiple_of: 64
chat_template: chatml
parameters: {normalize: true, int8_mask: false}
"""
    ).recipe
    assert recipe.referenced_models() == ["a", "b@v2"]
    assert recipe.tokenizer.pad_to_multiple_of == 64


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "merge_method: linear\nbase_mdoel: a\nmodels: [{model: a}]\n",
            "base_mdoel: unknown key\n  hint: did you mean 'base_model'?",
        ),
        (
            "merge_method: passthrough\nslices:\n- sources:\n  - model: a\n    layer_rnage: [0, 4]\n",
            "slices[0].sources[0].layer_rnage: unknown key\n  hint: did you mean 'layer_range'?",
        ),
        (
            "merge_method: passthrough\nslices:\n- sources:\n  - {model: a, layer_range: [0, 4], parameters: {scale: [{fliter: o, value: 1}]}}\n",
            "slices[0].sources[0].parameters.scale[0].fliter: unknown key (did you mean 'filter'?)",
        ),
        (
            "merge_method: passthrough\nslices:\n- sources:\n  - {model: a, layer_range: [0, x]}\n",
            "slices[0].sources[0].layer_range[1]: input should be a valid integer, unable to parse string as an integer, found 'x'",
        ),
        (
            "merge_method: passthrough\nslices:\n- sources:\n  - {layer_range: [0, 4]}\n",
            "slices[0].sources[0].model: missing (required key)",
        ),
        (
            "slices:\n- sources:\n  - {model: a, layer_range: [0, 4]}\n",
            "merge_method: missing (required key)",
        ),
        (
            "merge_method: linear\nmodels: [{model: a}]\nslices: [{sources: [{model: a, layer_range: [0, 1]}]}]\n",
            "(top level): a recipe needs exactly one of 'models', 'slices' or 'modules' (found: slices, models)",
        ),
        (
            "merge_method: passthrough\nslices:\n- sources: []\n",
            "slices[0].sources: an output slice needs at least one source",
        ),
    ],
)
def test_schema_errors_name_the_key_path(text, message):
    assert error_of(text) == message


def test_yaml_syntax_error_gives_line_and_column():
    message = error_of("merge_method: passthrough\nslices:\n  - sources:\n    - model: a\n   layer_range: [0, 4]\n")
    assert message == (
        "<string>: line 5, column 4: invalid YAML: expected <block end>, but found '<block mapping start>'\n"
        "  hint: check the indentation around that line; recipes copied from web pages often lose it"
    )


def test_not_a_mapping():
    assert error_of("- a\n- b\n").startswith("<string>: a recipe is a YAML mapping")


def test_missing_file(tmp_path):
    with pytest.raises(RecipeError) as err:
        load_recipe(tmp_path / "nope.yaml")
    assert str(err.value) == f"{tmp_path / 'nope.yaml'}: recipe file not found"
