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

from compare import (  # noqa: E402
    check_loads_in_transformers,
    check_scenario,
    run_mergesmith,
    with_pending_marks,
    without_unused_parameters,
)
from scenarios import BY_NAME, REFERENCES, SCENARIOS  # noqa: E402
from suite_models import build_inputs, folder_digest  # noqa: E402

from mergesmith.checkpoints import resolve_reference  # noqa: E402
from mergesmith.errors import MergesmithError  # noqa: E402

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
# Scenarios where mergekit is right and mergesmith is not (yet): held to mergekit's outcome, marked
# xfail(strict=True) so that a fix shows as XPASS and the row must go.
MERGESMITH_FAILS: dict[str, str] = {}


# Multi-module scenarios where mergesmith differs from mergekit on purpose (docs/architectures.md,
# "Where mergekit 0.1.5 differs"): mergekit's recorded outcome is checked to be still the one named
# here, and mergesmith is held to its own behaviour instead. name -> (what mergekit does, why).
DIFFERS_ON_PURPOSE: dict[str, tuple[str, str]] = {
    # mergekit reads the model's names from transformers (model.language_model.*), not from the files
    # (language_model.model.*, as real llava-1.5 files): only the projector matches, under its
    # in-memory name; the other 124 tensors are left out without an error
    "modules/llava-linear": ("drops", "writes 4 of 128 tensors"),
    "modules/llava-slerp": ("drops", "writes 4 of 128 tensors"),
    # mergesmith's module names (text_decoder, vision_tower, multi_modal_projector); mergekit knows
    # a LLaVA's modules only by prefix. The same merge as vlm/linear: held to mergekit's tensors there.
    "modules/llava-modules-roles": ("refuses", "KeyError: 'text_decoder'"),
    # plain slices cut the text decoder; the vision tower and projector come whole from the first slice
    "modules/llava-slices": ("refuses", "Model has multiple modules, must use modules: config syntax"),
    # mergekit's whisper.json: weight_prefix "model.decoder" joined without a dot
    "modules/whisper-linear": ("refuses", "Tensor model.decoderembed_tokens.weight required but not present"),
    "modules/whisper-modules-linear": ("refuses", "Tensor model.decoderembed_tokens.weight required but not present"),
}
# mergekit's output names -> ours (transformers' in-memory names -> the files' names)
IN_MEMORY_TO_FILE = {"model.multi_modal_projector.": "multi_modal_projector."}
LLAVA_SLICES_LAYERS = [0, 1, 1]  # modules/llava-slices: text layers 0-1 then 1


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    built = build_inputs(tmp_path_factory.mktemp("suite-inputs"))
    for name, digest in EXPECTED["inputs"].items():
        assert folder_digest(built[name]) == digest, f"input model {name} changed; rerun make_compat_expected.py"
    return built


def _marked(scenarios) -> list:
    params = with_pending_marks(list(scenarios), [s.name for s in scenarios], PENDING_OTHER_BRANCH)
    return [
        pytest.param(*p.values, id=p.id, marks=pytest.mark.xfail(strict=True, reason=MERGESMITH_FAILS[p.id]))
        if p.id in MERGESMITH_FAILS
        else p
        for p in params
    ]


@pytest.mark.mergekit
@pytest.mark.parametrize("scenario", _marked([s for s in SCENARIOS if s.name not in DIFFERS_ON_PURPOSE]))
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


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return {name: t for path in sorted(folder.glob("*.safetensors")) for name, t in load_file(path).items()}


@pytest.mark.mergekit
@pytest.mark.parametrize("name", sorted(DIFFERS_ON_PURPOSE))
def test_scenario_differs_from_mergekit_on_purpose(name: str, inputs: dict[str, Path], tmp_path: Path) -> None:
    """mergekit still does what DIFFERS_ON_PURPOSE says; mergesmith merges, its output loads in
    transformers with every key, and holds what the scenario asks."""
    import torch
    from suite_models import tensor_digests

    scenario, (kind, what) = BY_NAME[name], DIFFERS_ON_PURPOSE[name]
    expected = EXPECTED["scenarios"][name]
    assert expected["accepted"] == (kind == "drops"), expected
    if kind == "refuses":
        assert what in expected["error"], expected["error"]
    out = tmp_path / "out"
    refusal = run_mergesmith(scenario.recipe, scenario.flags, inputs, out)
    assert refusal is None, refusal
    check_loads_in_transformers(out)
    actual = tensor_digests(out)
    if kind == "drops":
        # every tensor mergekit wrote is ours, bit for bit, under the file's name
        assert len(expected["tensors"]) < len(actual)
        renamed = {}
        for mk_name, digest in expected["tensors"].items():
            ours = next(
                (mk_name.replace(a, b, 1) for a, b in IN_MEMORY_TO_FILE.items() if mk_name.startswith(a)), mk_name
            )
            renamed[ours] = digest
        assert {n: actual.get(n) for n in renamed} == renamed
    elif name == "modules/llava-modules-roles":
        assert actual == EXPECTED["scenarios"]["vlm/linear"]["tensors"]
    elif name == "modules/llava-slices":
        config = json.loads((out / "config.json").read_text())
        assert config["text_config"]["num_hidden_layers"] == len(LLAVA_SLICES_LAYERS)
        source, merged = _tensors(inputs["suite/vlm_a"]), _tensors(out)
        layer = "model.language_model.layers."
        wanted = {}
        for src_name, t in source.items():
            if src_name.startswith(layer):
                index, rest = src_name[len(layer) :].split(".", 1)
                for i, s in enumerate(LLAVA_SLICES_LAYERS):
                    if s == int(index):
                        wanted[f"{layer}{i}.{rest}"] = t.to(torch.bfloat16)
            else:
                wanted[src_name] = t.to(torch.bfloat16)
        assert sorted(merged) == sorted(wanted)
        differing = [n for n in wanted if not torch.equal(merged[n], wanted[n])]
        assert not differing, differing[:3]
    else:  # whisper: every tensor finite (the merge itself is what e2e/test_families.py checks)
        assert all(_tensors(out)[n].float().isfinite().all() for n in actual)


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
    revision, and the adapter of a LoRA reference (model+adapter) to mergekit's; what mergekit
    rejects, mergesmith rejects."""
    expected = REFERENCES[text]
    if expected == "error":
        with pytest.raises(MergesmithError):
            resolve_reference(text)
        return
    path, revision, lora = expected
    ref = resolve_reference(text)
    assert (ref.repo_id, ref.revision) == (path, revision)
    adapter = ref.adapter
    if lora is None:
        assert adapter is None
        return
    assert adapter is not None
    assert adapter.repo_id == lora  # mergekit's test names the adapter's path
