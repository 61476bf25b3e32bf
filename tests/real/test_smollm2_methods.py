"""TIES and SLERP on the real SmolLM2-135M and two seeded "fine-tunes": the merges load and stay fluent."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from factory import derive_model
from mergesmith.api import merge
from mergesmith.evaluate import perplexity

RECIPES = {
    "ties": "models:\n  - {model: ft1, parameters: {weight: 1.0, density: 0.5}}\n"
    "  - {model: ft2, parameters: {weight: 1.0, density: 0.5}}\nbase_model: smollm2\nmerge_method: ties\n",
    "slerp": "models:\n  - model: ft1\n  - model: ft2\nbase_model: ft1\nmerge_method: slerp\nparameters: {t: 0.5}\n",
}


@pytest.fixture(scope="module")
def fine_tunes(smollm2, tmp_path_factory):
    folder = tmp_path_factory.mktemp("smol-fts")
    models = {"smollm2": smollm2}
    for seed in (1, 2):
        ft = derive_model(smollm2, folder / f"ft{seed}", seed=seed, scale=0.004)
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
            (ft / name).write_bytes((smollm2 / name).read_bytes())
        models[f"ft{seed}"] = ft
    return models


@pytest.mark.real_model
@pytest.mark.parametrize("method", sorted(RECIPES))
def test_merge_of_real_weights_loads_and_stays_fluent(method, fine_tunes, tmp_path, gpl3_text):
    (tmp_path / "r.yaml").write_text(RECIPES[method])
    out = tmp_path / method
    merge(tmp_path / "r.yaml", out, model_paths=fine_tunes)

    merged = load_file(out / "model.safetensors")
    inputs = [load_file(fine_tunes[m] / "model.safetensors") for m in ("ft1", "ft2")]
    name = "model.layers.3.mlp.down_proj.weight"
    assert not merged[name].equal(inputs[0][name]) and not merged[name].equal(inputs[1][name])
    assert "lm_head.weight" not in merged  # SmolLM2 ties its embeddings; so does the merge

    base = perplexity(fine_tunes["smollm2"], gpl3_text, max_tokens=512).value
    result = perplexity(out, gpl3_text, max_tokens=512).value
    assert torch.isfinite(torch.tensor(result)) and result < 1.5 * base, (result, base)
