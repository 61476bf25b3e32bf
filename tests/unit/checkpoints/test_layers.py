"""Layer structure from tensor names."""

from __future__ import annotations

import pytest

from mergesmith.checkpoints import find_layers
from mergesmith.checkpoints.layers import LayerGapError


def test_llama_names():
    names = ["lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"] + [
        f"model.layers.{i}.{rest}" for i in range(3) for rest in ("mlp.down_proj.weight", "input_layernorm.weight")
    ]
    layout = find_layers(names)
    assert (layout.prefix, layout.count) == ("model.layers", 3)
    assert layout.pre_layer == ("model.embed_tokens.weight",)
    assert layout.post_layer == ("lm_head.weight", "model.norm.weight")
    assert layout.layer_tensors[2] == ("input_layernorm.weight", "mlp.down_proj.weight")
    assert layout.layer_name(7, "mlp.down_proj.weight") == "model.layers.7.mlp.down_proj.weight"


def test_gpt2_names_and_numeric_ordering():
    names = ["transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"] + [
        f"transformer.h.{i}.attn.c_attn.weight" for i in range(12)
    ]
    layout = find_layers(names)
    assert (layout.prefix, layout.count) == ("transformer.h", 12)
    assert layout.pre_layer == ("transformer.wpe.weight", "transformer.wte.weight")
    assert layout.post_layer == ("transformer.ln_f.weight",)


def test_the_prefix_with_most_tensors_wins():
    names = [f"model.layers.{i}.w" for i in range(4)] + ["model.vision.blocks.0.w"]
    layout = find_layers(names)
    assert layout.prefix == "model.layers" and "model.vision.blocks.0.w" in layout.post_layer


def test_no_layers():
    layout = find_layers(["embed.weight", "head.weight"])
    assert layout.count == 0 and layout.pre_layer == ("embed.weight",)


def test_a_layer_without_tensors_below_the_highest_is_a_gap() -> None:
    names = ["model.layers.0.w", "model.layers.1.w", "model.layers.3.w"]
    with pytest.raises(LayerGapError) as err:
        find_layers(names)
    assert (err.value.first_missing, err.value.count, err.value.missing) == (2, 4, 1)


def test_a_wild_layer_index_is_a_gap_found_without_building_the_layers() -> None:
    with pytest.raises(LayerGapError) as err:
        find_layers(["model.layers.0.w", "model.layers.999999999.w"])
    assert (err.value.first_missing, err.value.count) == (1, 10**9)


def test_an_index_of_more_than_nine_digits_is_not_a_layer() -> None:
    layout = find_layers(["model.layers.0.w", "model.layers." + "1" * 5000 + ".w"])
    assert layout.count == 1 and len(layout.post_layer) == 1
