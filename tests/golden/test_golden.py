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


@pytest.mark.parametrize("case", CASES)
def test_output_metadata_agrees_with_its_tensors(case: str, inputs: dict[str, Path], tmp_path: Path) -> None:
    """Item 4 of the tokenizer issue, for every merge of this suite: the folder loads in
    transformers, and config, generation settings and tokenizer agree with the tensors."""
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergesmith.recipe import load_recipe

    out = tmp_path / "out"
    merge(HERE / case / "recipe.yaml", out, model_paths=inputs)
    shapes = {}
    for path in out.glob("*.safetensors"):
        with safe_open(path, "pt") as f:
            shapes.update({name: f.get_slice(name).get_shape() for name in f.keys()})
    config = json.loads((out / "config.json").read_text())
    embed = next(shape for name, shape in shapes.items() if "embed_tokens" in name)
    assert config["vocab_size"] == embed[0]
    assert config["tie_word_embeddings"] == ("lm_head.weight" not in shapes)
    if "lm_head.weight" in shapes:
        assert shapes["lm_head.weight"][0] == embed[0]
    model, info = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]

    recipe = load_recipe(HERE / case / "recipe.yaml").recipe
    donor = inputs[recipe.base_model or recipe.referenced_models()[0]]
    assert (out / "generation_config.json").exists() == (donor / "generation_config.json").exists()
    if not (out / "tokenizer.json").exists():
        return
    tokenizer, donor_tokenizer = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(donor)
    assert len(tokenizer) <= config["vocab_size"]
    settings = json.loads((out / "generation_config.json").read_text())
    donor_settings = json.loads((donor / "generation_config.json").read_text())
    for key in ("bos_token_id", "eos_token_id"):
        ids, donor_ids = settings[key], donor_settings[key]
        # the same tokens, and an eos list stays a list
        assert tokenizer.convert_ids_to_tokens(ids) == donor_tokenizer.convert_ids_to_tokens(donor_ids), key
        if config.get(key) is not None:
            donor_config = json.loads((donor / "config.json").read_text())
            assert tokenizer.convert_ids_to_tokens(config[key]) == donor_tokenizer.convert_ids_to_tokens(
                donor_config[key]
            )
