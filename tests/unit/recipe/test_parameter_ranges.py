"""Parameter values that would break a merge (NaN, inf, out of the method's range) are refused at
plan time with the key path, the value and the valid range; values mergekit computes sensibly with
(slerp's t outside [0, 1], negative weights) are accepted."""

from __future__ import annotations

import math

import pytest

from mergesmith.api import plan
from mergesmith.errors import RecipeError
from mergesmith.methods import METHODS
from mergesmith.methods.spec import LARGEST_INT, Param


@pytest.fixture
def models(make_model):
    return {name: make_model(name, layers=2, seed=i) for i, name in enumerate("abc")}


REFUSED = [
    # (recipe, exact message)
    (  # YAML's .nan: today an all-NaN model with exit 0
        "models: [{model: a, parameters: {weight: .nan}}, {model: b, parameters: {weight: 1}}]\nmerge_method: linear\n",
        "models[0].parameters.weight: expected a finite number, found nan",
    ),
    (  # 1.0e+400 is read by YAML as inf
        "slices: [{sources: [{model: a, layer_range: [0, 2], parameters: {scale: 1.0e+400}}]}]\n"
        "merge_method: passthrough\n",
        "slices[0].sources[0].parameters.scale: expected a finite number, found inf",
    ),
    (  # one NaN anchor of a gradient
        "models: [{model: a}, {model: b}]\nbase_model: a\nmerge_method: slerp\nparameters: {t: [0, .nan]}\n",
        "parameters.t: expected a finite number, found nan",
    ),
    (
        "models: [{model: b, parameters: {weight: 1, density: -0.5}}]\nbase_model: a\nmerge_method: ties\n",
        "models[0].parameters.density: -0.5 is out of range: density takes values in [0, 1]",
    ),
    (
        "models: [{model: b, parameters: {weight: 1, density: 1.5}}]\nbase_model: a\nmerge_method: dare_ties\n",
        "models[0].parameters.density: 1.5 is out of range: density takes values in [0, 1]",
    ),
    (
        "models: [{model: b, parameters: {weight: 1, gamma: 2}}]\nbase_model: a\nmerge_method: breadcrumbs\n",
        "models[0].parameters.gamma: 2 is out of range: gamma takes values in [0, 1]",
    ),
    (
        "models: [{model: b}, {model: c}]\nbase_model: a\nmerge_method: sce\nparameters: {select_topk: -1}\n",
        "parameters.select_topk: -1 is out of range: select_topk takes values in [0, 1]",
    ),
    (  # today a crash: int() of inf overflows
        "models: [{model: a}, {model: b}]\nmerge_method: karcher\nparameters: {max_iter: .inf}\n",
        "parameters.max_iter: expected a whole number, found inf",
    ),
    (
        "models: [{model: a}, {model: b}]\nmerge_method: karcher\nparameters: {max_iter: .nan}\n",
        "parameters.max_iter: expected a whole number, found nan",
    ),
    (
        "models: [{model: a}, {model: b}]\nmerge_method: karcher\nparameters: {max_iter: 1.0e+30}\n",
        "parameters.max_iter: 1e+30 is out of range: max_iter takes values in [0, 2147483647]",
    ),
    (
        "models: [{model: a}, {model: b}]\nmerge_method: karcher\nparameters: {tol: -1.0e-5}\n",
        "parameters.tol: -1e-05 is out of range: tol takes values >= 0",
    ),
    (
        "models: [{model: b, parameters: {weight: 1}}]\nbase_model: a\nmerge_method: consensus_ta\n"
        "parameters: {k: 99999999999}\n",
        "parameters.k: 99999999999 is out of range: k takes values in [0, 2147483647]",
    ),
    (
        "models: [{model: b}]\nbase_model: a\nmerge_method: ram\nparameters: {epsilon: -1}\n",
        "parameters.epsilon: -1 is out of range: epsilon takes values >= 0",
    ),
]


@pytest.mark.parametrize("recipe, message", REFUSED, ids=[f"refused{i}" for i in range(len(REFUSED))])
def test_broken_values_are_refused_at_plan_time(tmp_path, models, recipe, message):
    (tmp_path / "r.yaml").write_text(recipe)
    with pytest.raises(RecipeError) as err:
        plan(tmp_path / "r.yaml", model_paths=models)
    assert str(err.value) == message


ACCEPTED = [
    # (recipe, the parameter, its value in the plan's first entry)
    (  # extrapolation: mergekit computes it
        "models: [{model: a}, {model: b}]\nbase_model: a\nmerge_method: slerp\nparameters: {t: 1.5}\n",
        "t",
        1.5,
    ),
    (  # negative weights subtract a model: task arithmetic's "forgetting"
        "models: [{model: b, parameters: {weight: -0.5}}]\nbase_model: a\nmerge_method: task_arithmetic\n",
        "weight",
        (-0.5,),
    ),
    (
        "models: [{model: b, parameters: {weight: 1, density: 0}}]\nbase_model: a\nmerge_method: ties\n",
        "density",
        (0.0,),
    ),
    (
        "models: [{model: b, parameters: {weight: 1, density: 1}}]\nbase_model: a\nmerge_method: ties\n",
        "density",
        (1.0,),
    ),
    (
        "models: [{model: a}, {model: b}]\nmerge_method: karcher\nparameters: {max_iter: 0}\n",
        "max_iter",
        0,
    ),
    (  # nearswap's t <= 0 takes the base everywhere: harmless
        "models: [{model: a}, {model: b}]\nbase_model: a\nmerge_method: nearswap\nparameters: {t: -1}\n",
        "t",
        -1.0,
    ),
]


@pytest.mark.parametrize("recipe, name, value", ACCEPTED, ids=[f"accepted{i}" for i in range(len(ACCEPTED))])
def test_values_mergekit_computes_with_are_accepted(tmp_path, models, recipe, name, value):
    (tmp_path / "r.yaml").write_text(recipe)
    entry = plan(tmp_path / "r.yaml", model_paths=models).entries[0]
    assert dict(entry.params)[name] == value


def test_bounds_are_checked_on_each_value_of_a_gradient():
    density = Param("density", float, minimum=0.0, maximum=1.0)
    assert density.validate(0.25) == 0.25
    with pytest.raises(ValueError, match=r"^1\.0000001 is out of range: density takes values in \[0, 1\]$"):
        density.validate(1.0000001)
    with pytest.raises(ValueError, match="^expected a finite number, found -inf$"):
        density.validate(-math.inf)


def test_every_declared_range_is_ordered_and_sits_on_a_number_parameter():
    for name, (spec, _) in METHODS.items():
        for param in spec.params:
            if param.minimum is None and param.maximum is None:
                continue
            assert param.type in (int, float), (name, param.name)
            if param.minimum is not None and param.maximum is not None:
                assert param.minimum <= param.maximum, (name, param.name)
            if param.type is int:
                assert param.maximum is not None and param.maximum <= LARGEST_INT, (name, param.name)
            if param.default is not None:  # the default itself is in range
                assert param.validate(param.default) == param.default, (name, param.name)
