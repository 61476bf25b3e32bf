"""Recipes published on model cards and in mergekit's examples (real_recipes/*.yaml, each with its
source URL) merge with mergesmith as with mergekit 0.1.5, on stand-in models of the real models'
families and layer counts (real_recipes/real_models.py).

The outcome of each recipe under mergekit (accepted or refused, output tensors' sha256, config) was
recorded by make_compat_expected.py; mergekit is not run here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "real_recipes"))

from compare import check_scenario, with_pending_marks  # noqa: E402
from real_models import RECIPES, TIE_CHECKS, build_inputs, load_real_recipe  # noqa: E402
from scenarios import RANDOM_METHODS, TIES_METHODS, Scenario  # noqa: E402
from suite_models import folder_digest  # noqa: E402

EXPECTED = json.loads((HERE / "expected_real.json").read_text())

UNKNOWN_TOP_LEVEL_KEY = (
    "an unknown top-level key mergekit tolerates (name) must warn, not fail; and `lambda`, method-wide, set"
    " per model (mergekit ignores it there; an error today, docs/compatibility.md): without both it merges"
)
NAME_KEY = "an unknown top-level key mergekit tolerates (name, as mergekit-multi writes it) must warn, not fail"
PENDING_OTHER_BRANCH: dict[str, str] = {}  # every published recipe now behaves as mergekit's


def scenario_of(path: Path) -> Scenario:
    recipe = load_real_recipe(path)
    method = recipe["merge_method"]
    compare = "random" if method in RANDOM_METHODS else "ties" if method in TIES_METHODS else "exact"
    return Scenario(path.stem, recipe, compare=compare, tie_check=TIE_CHECKS.get(path.stem))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    built = build_inputs(tmp_path_factory.mktemp("real-inputs"))
    for name, digest in EXPECTED["inputs"].items():
        assert folder_digest(built[name]) == digest, f"stand-in {name} changed; rerun make_compat_expected.py"
    return built


@pytest.mark.mergekit
@pytest.mark.parametrize("path", with_pending_marks(list(RECIPES), [p.stem for p in RECIPES], PENDING_OTHER_BRANCH))
def test_real_recipe_as_mergekit(path: Path, inputs: dict[str, Path], tmp_path: Path) -> None:
    check_scenario(EXPECTED["scenarios"][path.stem], scenario_of(path), inputs, tmp_path)


def test_every_recipe_names_its_source_and_has_an_expected_outcome() -> None:
    assert len(RECIPES) >= 20
    assert sorted(EXPECTED["scenarios"]) == sorted(p.stem for p in RECIPES)
    for path in RECIPES:
        assert path.read_text().startswith("# source: https://"), path.name
