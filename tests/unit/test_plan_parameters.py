"""Precedence and fall-through across recipe levels."""

from __future__ import annotations

import pytest

from mergesmith.errors import PlanError, RecipeError
from mergesmith.methods.spec import Param
from mergesmith.plan_parameters import Level, resolve_parameter
from mergesmith.recipe.settings import parse_setting

SCALE = Param("scale", float, scope="input")
WEIGHT = Param("weight", float, required=True, scope="input")


def level(path, **settings):
    return Level(path, {k: parse_setting(v) for k, v in settings.items()})


def resolve(levels, name="model.layers.3.mlp.down_proj.weight", t=0.0, param=SCALE):
    return resolve_parameter(param, levels, tensor_name=name, t=t)


def test_highest_level_wins():
    levels = [level("source", scale=1.0), level("slice", scale=2.0), level("top", scale=3.0)]
    assert resolve(levels) == 1.0


def test_level_without_the_parameter_is_skipped():
    assert resolve([level("source"), level("slice", scale=2.0)]) == 2.0


def test_unmatched_filter_falls_through_to_the_next_level():
    levels = [level("source", scale=[{"filter": "o_proj", "value": 9.0}]), level("top", scale=4.0)]
    assert resolve(levels) == 4.0
    assert resolve(levels, name="model.layers.3.self_attn.o_proj.weight") == 9.0


def test_nothing_anywhere_gives_the_default():
    assert resolve([level("top", other=1.0)]) is None


def test_required_parameter_missing_names_the_place():
    with pytest.raises(PlanError) as err:
        resolve([level("slices[0].sources[1].parameters")], param=WEIGHT)
    assert str(err.value).startswith("slices[0].sources[1]: parameter 'weight' has no value for tensor model.layers.3")


def test_wrong_type_names_the_key_path():
    with pytest.raises(RecipeError) as err:
        resolve([level("slices[2].parameters", scale="big")])
    assert str(err.value) == "slices[2].parameters.scale: expected a number, found 'big'"
