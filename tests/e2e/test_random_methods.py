"""Random methods draw from a generator seeded by --random-seed and the tensor name."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from safetensors.torch import load_file

from mergesmith.api import load_recipe, merge, merge_plan
from mergesmith.checkpoints import open_checkpoints
from mergesmith.execute import MergeOptions
from mergesmith.plan import plan_merge

RECIPE = """
models:
  - {model: a, parameters: {weight: 0.6, density: 0.5}}
  - {model: b, parameters: {weight: 0.4, density: 0.3}}
base_model: base
merge_method: METHOD
"""


@pytest.fixture
def models(make_model) -> dict[str, Path]:
    return {name: make_model(name, layers=2, seed=i) for i, name in enumerate(("base", "a", "b"))}


def merged(
    tmp_path: Path, models, method: str, name: str, *, seed: int | None, reverse: bool = False, workers: int = 1
):
    recipe = tmp_path / f"{method}.yaml"
    recipe.write_text(RECIPE.replace("METHOD", method))
    loaded = load_recipe(recipe)
    checkpoints = open_checkpoints(loaded.recipe.referenced_models(), models)
    plan = plan_merge(loaded, checkpoints)
    if reverse:  # compute the tensors in the opposite order
        plan = dataclasses.replace(plan, entries=plan.entries[::-1])
    report = merge_plan(plan, checkpoints, tmp_path / name, MergeOptions(random_seed=seed, workers=workers))
    return load_file(tmp_path / name / "model.safetensors"), report


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear", "della", "della_linear"])
def test_same_seed_same_bytes_in_any_order_or_worker_count_and_other_seeds_differ(tmp_path, models, method):
    first, _ = merged(tmp_path, models, method, "one", seed=5)
    again, _ = merged(tmp_path, models, method, "two", seed=5, reverse=True, workers=3)
    other, _ = merged(tmp_path, models, method, "three", seed=6)
    assert first.keys() == again.keys()
    assert all(first[n].equal(again[n]) for n in first)
    assert any(not first[n].equal(other[n]) for n in first)


def test_without_a_seed_one_is_chosen_reported_and_carded(tmp_path, models):
    (tmp_path / "r.yaml").write_text(RECIPE.replace("METHOD", "dare_ties"))
    report = merge(tmp_path / "r.yaml", tmp_path / "out", model_paths=models)
    assert isinstance(report.random_seed, int)
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"`--random-seed {report.random_seed}`" in card
    assert (
        "[DARE TIES](https://arxiv.org/abs/2311.03099) merge method using [base](https://huggingface.co/base) as a base"
        in card
    )
