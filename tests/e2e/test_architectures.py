"""Every supported architecture: slice, repeat and drop layers; transformers loads the result and runs it."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from factory import ARCHITECTURES, LAYER_KEY
from mergesmith.api import merge

# Text decoders whose layers live under model.layers (gpt2: transformer.h); llava (a vision-language
# model: its layers live under text_config and model.language_model) is merged by tests/compat, and its
# stacks are issue #16's. The factory's other architectures are loaded by tests/unit/test_factory_models.py.
TEXT_DECODERS = ("gemma2", "gpt2", "granite", "llama", "mistral", "phi3", "qwen2", "qwen3")
assert set(TEXT_DECODERS) <= set(ARCHITECTURES)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("arch", TEXT_DECODERS)
def test_merged_model_loads_and_runs(tmp_path, make_model, arch, tied):
    src = make_model(arch, arch, layers=4, tied=tied)
    # Output layers come from source layers 0, 1, 1, 3: one repeated, one dropped.
    (tmp_path / "r.yaml").write_text(
        "slices:\n- sources: [{model: m, layer_range: [0, 2]}]\n- sources: [{model: m, layer_range: [1, 2]}]\n"
        "- sources: [{model: m, layer_range: [3, 4]}]\nmerge_method: passthrough\n"
    )
    out = tmp_path / "out"
    merge(tmp_path / "r.yaml", out, model_paths={"m": src})

    config = json.loads((out / "config.json").read_text())
    assert config[LAYER_KEY.get(arch, "num_hidden_layers")] == 4
    merged, source = load_file(out / "model.safetensors"), load_file(src / "model.safetensors")
    layer = "transformer.h" if arch == "gpt2" else "model.layers"
    for out_layer, src_layer in enumerate([0, 1, 1, 3]):
        names = [n for n in source if n.startswith(f"{layer}.{src_layer}.")]
        assert names
        for name in names:
            out_name = name.replace(f"{layer}.{src_layer}.", f"{layer}.{out_layer}.", 1)
            assert torch.equal(merged[out_name], source[name]), out_name

    model, info = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert len(model.get_decoder().layers if arch != "gpt2" else model.transformer.h) == 4
    if tied:
        assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    logits = model(torch.arange(8).unsqueeze(0)).logits
    assert logits.shape == (1, 8, 128) and torch.isfinite(logits).all()
