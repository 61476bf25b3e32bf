"""Every fixture architecture builds, and its transformers Auto class loads it with every key in place."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from factory import ARCHITECTURES, AUTO_CLASS, cached_model

# configs the golden tests pin as they were written, token ids outside the vocabulary included
PINNED_TOKEN_IDS = {"gpt2", "llava"}


def _token_ids(config: dict, prefix: str = ""):
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _token_ids(value, f"{prefix}{key}.")
        elif ("token_id" in key or "token_index" in key) and value is not None:
            yield from ((f"{prefix}{key}", v) for v in (value if isinstance(value, list) else [value]))


def _load(folder, arch):
    auto = getattr(transformers, AUTO_CLASS[arch])
    model, info = auto.from_pretrained(folder, output_loading_info=True, dtype=torch.float32)
    problems = {key: info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys") if info[key]}
    assert not problems, problems
    return model


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_builds_and_loads(arch):
    folder = cached_model(arch)
    config = json.loads((folder / "config.json").read_text())
    assert sum(p.stat().st_size for p in folder.glob("*.safetensors")) < 1_000_000
    if arch not in PINNED_TOKEN_IDS:
        assert [(k, v) for k, v in _token_ids(config) if not 0 <= v < 128] == []
    model = _load(folder, arch)
    assert type(model).__name__ == config["architectures"][0]


# names real checkpoints carry (transformers 5 renames or fuses them on load; the factory writes them
# as save_pretrained writes back a loaded model), and per-layer kinds that 4 layers show
SAVED_NAMES = {
    "mixtral": ["model.layers.3.block_sparse_moe.experts.3.w1.weight"],
    "qwen2_moe": ["model.layers.0.mlp.experts.3.gate_proj.weight", "model.layers.1.mlp.gate_proj.weight"],
    "deepseek_v3": ["model.layers.0.mlp.gate_proj.weight", "model.layers.1.mlp.experts.3.down_proj.weight"],
    "granitemoe": ["model.layers.0.block_sparse_moe.input_linear.weight"],
    "jamba": ["model.layers.1.self_attn.q_proj.weight", "model.layers.1.feed_forward.experts.3.up_proj.weight"],
    "nemotron_h": ["backbone.layers.0.mixer.A_log", "backbone.layers.1.mixer.q_proj.weight"],
    "qwen2_vl": ["visual.blocks.5.attn.qkv.weight", "model.layers.3.self_attn.q_proj.weight", "lm_head.weight"],
    "qwen2_5_vl": ["visual.blocks.5.attn.qkv.weight", "model.layers.3.self_attn.q_proj.weight"],
    "llava_deep": [
        "vision_tower.vision_model.encoder.layers.5.self_attn.q_proj.weight",
        "language_model.model.layers.3.self_attn.q_proj.weight",
        "language_model.lm_head.weight",
    ],
    "gemma3": [
        "vision_tower.vision_model.encoder.layers.5.mlp.fc1.weight",
        "language_model.model.layers.3.mlp.up_proj.weight",
    ],
    "mistral3": [
        "vision_tower.transformer.layers.5.attention.q_proj.weight",
        "language_model.model.layers.3.mlp.up_proj.weight",
    ],
    "mllama": [
        "vision_model.transformer.layers.5.mlp.fc1.weight",
        "vision_model.global_transformer.layers.1.mlp.fc1.weight",
        "language_model.model.layers.1.cross_attn.q_proj.weight",
    ],
    "llama4": [
        "vision_model.model.layers.5.mlp.fc1.weight",
        "language_model.model.layers.1.feed_forward.experts.gate_up_proj",
        "language_model.model.layers.0.feed_forward.gate_proj.weight",
    ],
    "gemma3n": ["model.language_model.layers.3.mlp.up_proj.weight"],
    "gpt_neox": ["embed_out.weight"],
}


@pytest.mark.parametrize("arch", sorted(SAVED_NAMES))
def test_saved_names(arch):
    from safetensors import safe_open

    with safe_open(cached_model(arch) / "model.safetensors", "pt") as f:
        names = set(f.keys())
    assert [name for name in SAVED_NAMES[arch] if name not in names] == []


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_tied_builds_and_loads(arch):
    model = _load(cached_model(arch, tied=True), arch)
    if model.all_tied_weights_keys:  # the architecture can tie: the file left the copy out, loading tied it
        output, embed = model.get_output_embeddings(), model.get_input_embeddings()
        assert output.weight.data_ptr() == embed.weight.data_ptr()
