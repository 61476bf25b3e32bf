"""Every fixture architecture builds, its transformers Auto class loads it with every key in place and
runs it, and its stacks of layers are those STACKS says (checked against transformers itself)."""

from __future__ import annotations

import functools
import json
import re

import pytest
import torch
import transformers
from safetensors import safe_open

from factory import ARCHITECTURES, AUTO_CLASS, STACKS, derived_stacks

# configs the golden tests pin as they were written, token ids outside the vocabulary included
PINNED_TOKEN_IDS = {"gpt2", "llava"}
ROLES = {
    "text_decoder",
    "text_encoder",
    "vision_tower",
    "vision_global",
    "vision_deepstack",
    "audio_tower",
    "encoder",
    "decoder",
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Matmuls of 32 columns gain nothing from threads; two OpenMP threads on busy cores take ~10 ms each."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def _names(folder) -> list[str]:
    with safe_open(folder / "model.safetensors", "pt") as f:
        return list(f.keys())


def _inputs(arch: str, model) -> dict:
    ids = torch.tensor([[1, 7, 8, 9, 10, 11]])  # (batch 1, 6 tokens), no image/special tokens
    if arch == "whisper":  # (batch, mel bins, frames): the encoder takes exactly 2 * max_source_positions
        frames = 2 * model.config.max_source_positions
        return dict(input_features=torch.zeros(1, model.config.num_mel_bins, frames), decoder_input_ids=ids)
    if arch in ("t5", "t5_gated"):
        return dict(input_ids=ids, decoder_input_ids=ids)
    return dict(input_ids=ids)  # vision-language models: text only


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_builds_loads_and_runs(arch, model_cache):
    folder = model_cache(arch)
    config = json.loads((folder / "config.json").read_text())
    assert sum(p.stat().st_size for p in folder.glob("*.safetensors")) < 1_000_000
    if arch not in PINNED_TOKEN_IDS:
        assert [(k, v) for k, v in _token_ids(config) if not 0 <= v < 128] == []
    model = _load(folder, arch)
    assert type(model).__name__ == config["architectures"][0]
    # transformers 5.24's Llama4ForConditionalGeneration.forward reads outputs.image_outputs, which its
    # language model's output lacks (AttributeError, with or without pixel_values): run that model
    runner = model.language_model if arch == "llama4" else model
    with torch.no_grad():
        logits = runner(**_inputs(arch, model)).logits
    assert logits.shape == (1, 6, 128) and logits.isfinite().all()


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_tied_builds_and_loads(arch, model_cache):
    model = _load(model_cache(arch, tied=True), arch)
    if model.all_tied_weights_keys:  # the architecture can tie: the file left the copy out, loading tied it
        output, embed = model.get_output_embeddings(), model.get_input_embeddings()
        assert output.weight.data_ptr() == embed.weight.data_ptr()


# architectures that cannot tie (transformers has no tied keys for them; their checkpoints say false)
NEVER_TIED = {"mllama", "nemotron_h", "qwen2_audio"}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_untied_keeps_its_output_embedding(arch, model_cache):
    untied, tied = set(_names(model_cache(arch))), set(_names(model_cache(arch, tied=True)))
    assert (untied == tied) == (arch in NEVER_TIED), sorted(untied ^ tied)


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
    "qwen3_vl": [
        "model.visual.deepstack_merger_list.1.linear_fc1.weight",
        "model.language_model.layers.3.mlp.up_proj.weight",
    ],
    "smolvlm": [
        "model.vision_model.encoder.layers.5.mlp.fc1.weight",
        "model.connector.modality_projection.proj.weight",
    ],
    "qwen2_audio": ["audio_tower.layers.5.fc1.weight", "language_model.model.layers.3.mlp.up_proj.weight"],
    "olmoe": ["model.layers.3.mlp.experts.3.gate_proj.weight"],
    "t5": ["shared.weight", "lm_head.weight"],
    "t5_gated": [
        "encoder.block.0.layer.1.DenseReluDense.wi_0.weight",
        "decoder.block.3.layer.2.DenseReluDense.wi_1.weight",
    ],
}


@pytest.mark.parametrize("arch", sorted(SAVED_NAMES))
def test_saved_names(arch, model_cache):
    names = set(_names(model_cache(arch)))
    assert [name for name in SAVED_NAMES[arch] if name not in names] == []


@functools.cache
def _derived(arch: str) -> list[tuple[str, str, str]]:
    return derived_stacks(arch)


def test_stacks_cover_every_architecture():
    assert set(STACKS) == set(ARCHITECTURES)
    assert {role for stacks in STACKS.values() for role, _, _ in stacks} == ROLES


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_stacks_are_transformers_own(arch, model_cache):
    """The hand-written STACKS row is what transformers derives; each stack has as many layers as its
    count key says in config.json, in the file and in the loaded model."""
    derived = _derived(arch)
    assert sorted((saved, key) for _, saved, key in derived) == sorted((p, key) for _, p, key in STACKS[arch])
    folder = model_cache(arch)
    config, names = json.loads((folder / "config.json").read_text()), _names(folder)
    model = _load(folder, arch)
    for in_memory, saved, key in derived:
        count = _count(config, key)
        indices = {int(m.group(1)) for n in names if (m := re.match(re.escape(saved) + r"\.(\d+)\.", n))}
        assert (sorted(indices), len(model.get_submodule(in_memory))) == (list(range(count)), count), saved


def _count(config: dict, key: str) -> int:
    value = functools.reduce(dict.get, key.split("."), config)
    return len(value) if isinstance(value, list) else value


TOWERS = ("vision_tower", "audio_tower")


@pytest.mark.parametrize(
    "arch", sorted(a for a, st in STACKS.items() if a != "llava" and {r for r, *_ in st} & {*TOWERS})
)
def test_towers_are_deeper_than_the_text_decoder(arch, model_cache):
    """As in real checkpoints (llava keeps the 2-layer tower golden tests pin; llava_deep has 6)."""
    config = json.loads((model_cache(arch) / "config.json").read_text())
    counts = {role: _count(config, key) for role, _, key in STACKS[arch]}
    assert all(counts[role] > counts["text_decoder"] for role in TOWERS if role in counts), counts


# Layers not all built alike, visible with 4 layers: by the tensors each layer holds, or by a per-layer
# config list (a key path on the loaded config) holding more than one kind.
UNLIKE_LAYERS = {
    **dict.fromkeys(("jamba", "bamba", "nemotron_h", "lfm2", "deepseek_v3", "qwen2_moe", "qwen3_moe"), "tensors"),
    **dict.fromkeys(("llama4", "mllama", "qwen3_next", "granitemoehybrid"), "tensors"),
    **dict.fromkeys(("gemma2", "gemma3_text", "cohere2", "gpt_oss", "modernbert", "gemma3n", "exaone4"), "layer_types"),
    "gemma3": "text_config.layer_types",
    "gpt_neo": "attention_layers",
    "smollm3": "no_rope_layers",
}


@pytest.mark.parametrize("arch", sorted(UNLIKE_LAYERS))
def test_layers_differ(arch, model_cache):
    folder = model_cache(arch)
    if UNLIKE_LAYERS[arch] == "tensors":
        ((_, decoder, _),) = [stack for stack in STACKS[arch] if stack[0] == "text_decoder"]
        layers: dict[str, set[str]] = {}
        for name in _names(folder):
            if m := re.match(re.escape(decoder) + r"\.(\d+)\.(.*)", name):
                layers.setdefault(m.group(1), set()).add(m.group(2))
        assert len({frozenset(kinds) for kinds in layers.values()}) > 1
    else:
        config = transformers.AutoConfig.from_pretrained(folder)
        kinds = functools.reduce(getattr, UNLIKE_LAYERS[arch].split("."), config)
        assert len(set(kinds)) > 1, kinds
