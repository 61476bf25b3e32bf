"""Multi-model recipes end to end: per-slice base models, models: syntax with the base added."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from mergesmith.api import merge


def test_each_slice_can_name_its_own_base(tmp_path, make_model):
    models = {name: make_model(name, layers=2, seed=i) for i, name in enumerate(("base1", "base2", "a"))}
    (tmp_path / "r.yaml").write_text(
        "slices:\n"
        "  - sources: [{model: base1, layer_range: [0, 1]}, {model: a, layer_range: [0, 1]}]\n"
        "    base_model: base1\n"
        "  - sources: [{model: base2, layer_range: [1, 2]}, {model: a, layer_range: [1, 2]}]\n"
        "    base_model: base2\n"
        "merge_method: task_arithmetic\nparameters: {weight: 0.5}\n"
    )
    merge(tmp_path / "r.yaml", tmp_path / "out", model_paths=models)
    out = load_file(tmp_path / "out" / "model.safetensors")
    t = {name: load_file(folder / "model.safetensors") for name, folder in models.items()}
    for layer, base in ((0, "base1"), (1, "base2")):
        name = f"model.layers.{layer}.mlp.up_proj.weight"
        expected = t[base][name].float() + 0.5 * (t["a"][name].float() - t[base][name].float())
        torch.testing.assert_close(out[name].float(), expected, atol=2e-3, rtol=1e-2)
    embed = "model.embed_tokens.weight"  # pre-layer tensors follow the first slice
    expected = t["base1"][embed].float() + 0.5 * (t["a"][embed].float() - t["base1"][embed].float())
    torch.testing.assert_close(out[embed].float(), expected, atol=2e-3, rtol=1e-2)


def test_models_syntax_adds_the_base(tmp_path, make_model):
    models = {name: make_model(name, layers=2, seed=i) for i, name in enumerate(("base", "a", "b"))}
    (tmp_path / "r.yaml").write_text(
        "models:\n  - {model: a, parameters: {weight: 1.0}}\n  - {model: b, parameters: {weight: 1.0}}\n"
        "base_model: base\nmerge_method: task_arithmetic\ndtype: float32\n"
    )
    merge(tmp_path / "r.yaml", tmp_path / "out", model_paths=models)
    out = load_file(tmp_path / "out" / "model.safetensors")
    t = {name: load_file(folder / "model.safetensors") for name, folder in models.items()}
    name = "model.layers.1.self_attn.q_proj.weight"
    base, a, b = (t[m][name].float() for m in ("base", "a", "b"))
    torch.testing.assert_close(out[name], base + ((a - base) + (b - base)))
    assert out[name].dtype == torch.float32
