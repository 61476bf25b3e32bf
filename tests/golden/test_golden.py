"""mergesmith's output equals mergekit 0.1.5's, tensor for tensor, bit for bit.

The expected values were made by mergekit 0.1.5 in its own venv (tests/golden/make_expected.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from models import CASES, build_inputs, folder_digest, output_vocabulary, rendered_chat, tensor_digests  # noqa: E402

from mergesmith.api import merge  # noqa: E402


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    return build_inputs(tmp_path_factory.mktemp("golden-inputs"))


@pytest.mark.mergekit
@pytest.mark.parametrize("case", CASES)
def test_output_equals_mergekit(case: str, inputs: dict[str, Path], tmp_path: Path) -> None:
    expected = json.loads((HERE / case / "expected.json").read_text())
    for name, digest in expected["inputs"].items():
        assert folder_digest(inputs[name]) == digest, f"input model {name} changed; rerun make_expected.py"

    out = tmp_path / "out"
    merge(HERE / case / "recipe.yaml", out, model_paths=inputs)

    actual = tensor_digests(out)
    assert sorted(actual) == sorted(expected["tensors"]), "tensor names differ from mergekit's"
    differing = [name for name in actual if actual[name] != expected["tensors"][name]]
    assert not differing, f"{len(differing)} tensors differ from mergekit's, first: {differing[:3]}"
    config = json.loads((out / "config.json").read_text())
    for key, value in expected["config"].items():
        assert config[key] == value, key
    if "vocabulary" in expected:
        assert output_vocabulary(out) == expected["vocabulary"]
        assert rendered_chat(out) == expected["chat"]


def test_seed_output_loads_in_transformers_and_runs(inputs: dict[str, Path], tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    merge(HERE / "seed_passthrough" / "recipe.yaml", out, model_paths=inputs)
    model, info = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.num_hidden_layers == 47 and len(model.model.layers) == 47
    logits = model(torch.arange(16).unsqueeze(0)).logits
    assert logits.shape == (1, 16, 1024) and torch.isfinite(logits).all()
