"""A genotype as a recipe: mergekit-evolve's documented mapping, hand-worked for small genomes."""

from __future__ import annotations

import math

import pytest

from mergesmith.errors import RecipeError
from mergesmith.search.genome import Genome, GenomeDefinition, parse_config


def genome(layers: int = 4, **definition) -> Genome:
    return Genome(GenomeDefinition(**{"models": ["a", "b"], "merge_method": "linear", **definition}), layers)


def test_one_group_linear_weights_by_absolute_value_and_normalized():
    g = genome()
    assert g.shape == (1, 2, 1, 1) and g.initial() == [0.5, 0.5]
    assert g.recipe([0.25, -0.75]) == {
        "merge_method": "linear",
        "slices": [
            {
                "sources": [
                    {"model": "a", "layer_range": [0, 4], "parameters": {"weight": 0.25}},
                    {"model": "b", "layer_range": [0, 4], "parameters": {"weight": 0.75}},
                ]
            }
        ],
        "dtype": "bfloat16",
        "parameters": {"normalize": True},
    }


def test_negative_weights_kept_when_allowed():
    g = genome(allow_negative_weights=True, merge_method="task_arithmetic", base_model="base")
    recipe = g.recipe([0.5, -0.25])
    sources = recipe["slices"][0]["sources"]
    assert [s["parameters"] for s in sources[:2]] == [{"weight": 0.5}, {"weight": -0.25}]
    assert sources[2] == {"model": "base", "layer_range": [0, 4]}  # the base, not among the models, joins each slice
    assert recipe["parameters"] == {"normalize": False} and recipe["base_model"] == "base"


def test_layer_groups_filters_and_clamped_densities():
    g = genome(merge_method="ties", base_model="a", layer_granularity=2, filters=["mlp"])
    assert g.shape == (2, 2, 2, 2)
    # layout: [group][model][filter set][parameter]; set 0 is "mlp", set 1 everything else
    x = [float(i) / 10 for i in range(16)]
    x[3] = 1.7  # group 0, model a, other, density: clamped to 1
    x[2] = -0.4  # group 0, model a, other, weight: absolute value
    recipe = g.recipe(x)
    first, second = recipe["slices"]
    a0 = first["sources"][0]
    assert a0["layer_range"] == [0, 2]
    assert a0["parameters"] == {
        "weight": [{"filter": "mlp", "value": 0.0}, {"value": 0.4}],
        "density": [{"filter": "mlp", "value": 0.1}, {"value": 1.0}],
    }
    b1 = second["sources"][1]  # group 1, model b: values 12..15
    assert b1["layer_range"] == [2, 4]
    assert b1["parameters"]["weight"] == [{"filter": "mlp", "value": 1.2}, {"value": 1.4}]
    assert len(first["sources"]) == 2  # the base is one of the models


def test_smooth_makes_gradients_over_the_groups():
    g = genome(layer_granularity=2, smooth=True)
    recipe = g.recipe([0.1, 0.2, 0.3, 0.4])  # [group][model]
    assert recipe["models"] == [
        {"model": "a", "parameters": {"weight": [0.1, 0.3]}},
        {"model": "b", "parameters": {"weight": [0.2, 0.4]}},
    ]


def test_slerp_takes_the_two_heaviest_models_and_t_from_their_softmax():
    g = Genome(GenomeDefinition(models=["a", "b", "c"], merge_method="slerp"), 4)
    recipe = g.recipe([0.2, 1.0, 0.5])
    (only,) = recipe["slices"]
    assert only["base_model"] == "b" and [s["model"] for s in only["sources"]] == ["b", "c"]
    expected_t = math.exp(0.5) / (math.exp(1.0) + math.exp(0.5))
    assert only["parameters"]["t"] == pytest.approx(expected_t, rel=1e-12)
    assert "parameters" not in recipe  # slerp has no normalize


def test_genome_file_typos_name_the_closest_key():
    with pytest.raises(RecipeError) as err:
        parse_config("genome: {models: [a, b], merge_method: linear, smoth: true}\ntasks: [perplexity]\n", "g.yaml")
    assert err.value.message.startswith("g.yaml: genome.smoth: unknown key")
    assert err.value.hint == "did you mean 'smooth'?"


def test_genome_method_outside_the_search_space_is_refused():
    with pytest.raises(RecipeError) as err:
        parse_config("genome: {models: [a, b], merge_method: della}\ntasks: [{name: perplexity}]\n", "g.yaml")
    assert "genome.merge_method: input should be 'linear', 'task_arithmetic', 'ties', 'dare_ties' or 'slerp'" in (
        err.value.message
    )
