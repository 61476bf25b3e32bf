"""Every input-contract and parameter error is found at plan time, with a message naming the place."""

from __future__ import annotations

import pytest
import torch

from mergesmith.api import plan
from mergesmith.errors import PlanError, RecipeError
from mergesmith.methods.sparsify import rank_window, rank_window_by_sort

ERRORS = [
    # (recipe, error type, exact message)
    (
        "models: [{model: a, parameters: {weight: 1}}, {model: b, parameters: {weight: 1}}]\nmerge_method: ties\n",
        PlanError,
        "models: ties needs a base model\n  hint: set base_model: at the top of the recipe",
    ),
    (  # t under a model is ignored (as mergekit ignores it, with a warning), so slerp has no t
        "models: [{model: a, parameters: {t: 0.5}}]\nbase_model: b\nmerge_method: slerp\n",
        PlanError,
        "parameters: parameter 't' has no value for tensor model.embed_tokens.weight\n"
        "  hint: set t in the slice's or the top-level parameters (it is method-wide)",
    ),
    (
        "models: [{model: a, parameters: {weight: 1}}, {model: b}]\nmerge_method: linear\n",
        PlanError,
        "models[1]: parameter 'weight' has no value for tensor model.embed_tokens.weight\n"
        "  hint: set weight under the model, the slice or the top-level parameters",
    ),
    (
        "models: [{model: a}, {model: b}, {model: c}]\nbase_model: a\nmerge_method: slerp\nparameters: {t: 0.5}\n",
        PlanError,
        "models: slerp takes exactly 2 models per slice, found 3 (a, b, c)",
    ),
    (
        "slices:\n- sources: [{model: a, layer_range: [0, 2]}, {model: c, layer_range: [0, 2]}]\n"
        "base_model: b\nmerge_method: slerp\nparameters: {t: 0.5}\n",
        PlanError,
        "slices[0]: the base model 'b' is not among this slice's sources (a, c)\n"
        "  hint: add it as a source, or use a `models:` recipe, which adds the base by itself",
    ),
    (
        "models: [{model: a, parameters: {weight: 1}}, {model: b, parameters: {weight: 1}}]\nbase_model: a\n"
        "merge_method: nuslerp\n",
        PlanError,
        "models: nuslerp takes exactly 2 models besides the base per slice, found 1 (a, b)",
    ),
    (
        "models: [{model: a, parameters: {weight: abc}}]\nmerge_method: linear\n",
        RecipeError,
        "models[0].parameters.weight: expected a number, found 'abc'",
    ),
    (
        "models: [{model: a, parameters: {weight: 1, densty: 0.5}}]\nbase_model: b\nmerge_method: ties\n",
        RecipeError,
        "models[0].parameters.densty: ties has no parameter 'densty'\n  hint: did you mean 'density'?",
    ),
    (
        "models: [{model: a, parameters: {weight: 1, density: 0.5, epsilon: 0.6}}]\nbase_model: b\nmerge_method: della\n",
        PlanError,
        "models: della for model.embed_tokens.weight: epsilon 0.6 with density 0.5: "
        "density - epsilon and density + epsilon must lie in (0, 1)",
    ),
    (
        "models: [{model: a, parameters: {weight: 1}}, {model: b, parameters: {weight: -1}}]\nmerge_method: linear\n",
        PlanError,
        "models: linear for model.embed_tokens.weight: the weights sum to 0, so normalize: true would divide by zero",
    ),
    (
        "models: [{model: a}, {model: a}]\nmerge_method: karcher\n",
        PlanError,
        "models: model 'a' is named twice\n  hint: each model may be an input of a slice once",
    ),
    (
        "models: [{model: a}, {model: b}]\nmerge_method: karcher\nparameters: {max_iter: 2.5}\n",
        RecipeError,
        "parameters.max_iter: expected a whole number, found 2.5",
    ),
    (
        "models: [{model: a}, {model: wide}]\nmerge_method: karcher\n",
        PlanError,
        "models: the models have vocabularies of different sizes (model.embed_tokens.weight rows: a: 128, wide: 256)\n"
        "  hint: set tokenizer_source: union (every model's tokens), base, or one model's name, "
        "so that rows are matched by token (--unsafe-truncate-embeddings cuts them to the smallest)",
    ),
    (
        "models: [{model: a}, {model: b}]\nbase_model: a\nmerge_method: model_stock\n",
        PlanError,
        "models: model_stock takes at least 3 models per slice, found 2 (a, b)",
    ),
]


@pytest.mark.parametrize("recipe, error, message", ERRORS, ids=[f"error{i}" for i in range(len(ERRORS))])
def test_plan_time_errors(tmp_path, make_model, recipe, error, message):
    models = {name: make_model(name, layers=2, seed=i) for i, name in enumerate("abc")}
    models["wide"] = make_model("wide", layers=2, vocab=256)
    (tmp_path / "r.yaml").write_text(recipe)
    with pytest.raises(error) as err:
        plan(tmp_path / "r.yaml", model_paths=models)
    assert str(err.value) == message


@pytest.mark.parametrize("select", [rank_window, rank_window_by_sort])
def test_rank_window_ranks_ties_by_position_like_a_stable_sort(select):
    values = torch.tensor([3, 1, 2, 3, 1, 2, 3, 0, 2, 2], dtype=torch.float32).repeat(500)
    order = torch.sort(values, stable=True).indices
    for start, stop in ((0, 7), (1003, 2998), (4990, 5000), (2500, 2500), (0, 5000)):
        expected = torch.zeros(values.numel(), dtype=torch.bool)
        expected[order[start:stop]] = True
        assert torch.equal(select(values, start, stop), expected), (start, stop)
