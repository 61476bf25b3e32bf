"""mergekit 0.1.5's own test scenarios (scenarios.py) merge with mergesmith as they do with mergekit.

The expected outcome of each scenario (accepted or refused, output tensors' sha256, config) was
recorded by running mergekit 0.1.5 on the same stand-in models (make_compat_expected.py); mergekit is not
run here. Scenarios mergekit accepts must be accepted and, for deterministic methods, give the same
bytes; scenarios mergekit refuses must be refused with a clear error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from compare import check_scenario, run_mergesmith, with_pending_marks, without_unused_parameters  # noqa: E402
from scenarios import BY_NAME, REFERENCES, SCENARIOS  # noqa: E402
from suite_models import build_inputs, folder_digest  # noqa: E402

from mergesmith.checkpoints import resolve_reference  # noqa: E402
from mergesmith.errors import MergesmithError, UnsupportedError  # noqa: E402

EXPECTED = json.loads((HERE / "expected_suite.json").read_text())

# Scenarios that give some method a parameter it does not use (mergekit ignores it; we warn).
IGNORED_PARAMETER = "a parameter the method does not use (weight under slerp/nuslerp...)"
WITH_IGNORED_PARAMETER: dict[str, str] = {
    **{
        name: IGNORED_PARAMETER
        for name in (
            "basic/slerp",
            "basic/model_stock",
            "basic/model_stock-filter_wise",
            "basic/sce",
            "basic/ram",
            "basic/ramplus_tl",
            "basic/arcee_fusion",
            "basic/nearswap",
            "basic/karcher",
            "vlm/slerp",
            "vlm/model_stock",
            "vlm/model_stock-filter_wise",
            "tokenizer/slerp-union",  # weight: 1.0 under slerp
        )
    },
}
# Every scenario now behaves as mergekit's; a row added here would run as xfail(strict=False).
PENDING_OTHER_BRANCH: dict[str, str] = {}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    built = build_inputs(tmp_path_factory.mktemp("suite-inputs"))
    for name, digest in EXPECTED["inputs"].items():
        assert folder_digest(built[name]) == digest, f"input model {name} changed; rerun make_compat_expected.py"
    return built


@pytest.mark.mergekit
@pytest.mark.parametrize(
    "scenario", with_pending_marks(list(SCENARIOS), [s.name for s in SCENARIOS], PENDING_OTHER_BRANCH)
)
def test_scenario_as_mergekit(scenario, inputs: dict[str, Path], tmp_path: Path) -> None:
    expected = EXPECTED["scenarios"][scenario.name]
    if scenario.name in REFUSED_ON_PURPOSE:
        refusal = run_mergesmith(scenario.recipe, scenario.flags, inputs, tmp_path / "out")
        assert refusal is not None and REFUSED_ON_PURPOSE[scenario.name] in str(refusal), refusal
        assert not (tmp_path / "out").exists()
        return
    check_scenario(expected, scenario, inputs, tmp_path)


# mergekit merges these; we refuse them on purpose (docs/errors.md: a model whose config and
# embeddings disagree cannot be loaded by transformers, issue #14).
REFUSED_ON_PURPOSE = {
    "truncation/head-independent": "config.json says vocab_size 64, but lm_head.weight has 63 rows",
}


@pytest.mark.mergekit
@pytest.mark.parametrize("name", sorted(WITH_IGNORED_PARAMETER))
def test_pending_scenario_merges_as_mergekit_without_its_unused_parameters(name: str, inputs, tmp_path: Path) -> None:
    """Until unused parameters warn: the same recipe without them gives mergekit's output (mergekit
    ignores them), so the only difference left in these scenarios is the refusal."""
    scenario = BY_NAME[name]
    recipe = without_unused_parameters(scenario.recipe)
    assert recipe != scenario.recipe, "no unused parameter to remove: not pending for that cause"
    check_scenario(EXPECTED["scenarios"][name], scenario, inputs, tmp_path, recipe=recipe)


def test_every_scenario_has_an_expected_outcome() -> None:
    assert sorted(EXPECTED["scenarios"]) == sorted(s.name for s in SCENARIOS)


@pytest.mark.parametrize("text", sorted(REFERENCES))
def test_model_reference_as_mergekit_parses_it(text: str) -> None:
    """tests/test_modelref.py: what mergekit parses, mergesmith resolves to the same name and
    revision; LoRA references (model+adapter) are refused as not supported yet (docs/compatibility.md);
    what mergekit rejects, mergesmith rejects."""
    expected = REFERENCES[text]
    if expected == "error":
        with pytest.raises(MergesmithError):
            resolve_reference(text)
        return
    path, revision, lora = expected
    if lora is not None:
        with pytest.raises(UnsupportedError, match=r"LoRA references \(model\+adapter\) are not supported"):
            resolve_reference(text)
        return
    ref = resolve_reference(text)
    assert (ref.repo_id, ref.revision) == (path, revision)
