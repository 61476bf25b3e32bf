"""Model structure from tensor names and config: stacks, their roles, modules and count keys.
Expected values are written by hand from the names of real checkpoints."""

from __future__ import annotations

import pytest

from mergesmith.checkpoints import find_structure
from mergesmith.checkpoints.structure import LayerGapError, count_mismatches


def test_llama_names():
    names = ["lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"] + [
        f"model.layers.{i}.{rest}" for i in range(3) for rest in ("mlp.down_proj.weight", "input_layernorm.weight")
    ]
    structure = find_structure(names, {"num_hidden_layers": 3})
    (main,) = structure.modules
    assert (main.name, main.stack.prefix, main.count) == ("text_decoder", "model.layers", 3)
    assert main.pre_layer == ("model.embed_tokens.weight",)
    assert main.post_layer == ("lm_head.weight", "model.norm.weight")
    assert main.stack.layer_tensors[2] == ("input_layernorm.weight", "mlp.down_proj.weight")
    assert main.stack.layer_name(7, "mlp.down_proj.weight") == "model.layers.7.mlp.down_proj.weight"
    assert (main.config_paths, main.count_keys) == (((),), (((), "num_hidden_layers"),))
    assert structure.module("default") is main  # mergekit's name for a single-module architecture


def test_gpt2_names_and_numeric_ordering():
    names = ["transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"] + [
        f"transformer.h.{i}.attn.c_attn.weight" for i in range(12)
    ]
    main = find_structure(names, {"n_layer": 12}).main
    assert (main.stack.prefix, main.count, main.count_keys) == ("transformer.h", 12, (((), "n_layer"),))
    assert main.pre_layer == ("transformer.wpe.weight", "transformer.wte.weight")
    assert main.post_layer == ("transformer.ln_f.weight",)


def _qwen2_vl_names(text: int, vision: int) -> list[str]:
    # transformers 5's saved layout of Qwen2-VL: 12 tensors per text layer, 10 per vision block
    text_rests = [
        f"{m}.{p}" for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj") for p in ("weight", "bias")
    ]
    text_rests += ["self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"]
    text_rests += ["input_layernorm.weight", "post_attention_layernorm.weight"]
    vision_rests = [
        f"{m}.{p}" for m in ("norm1", "norm2", "attn.qkv", "attn.proj", "mlp.fc1") for p in ("weight", "bias")
    ]
    return (
        ["model.language_model.embed_tokens.weight", "model.language_model.norm.weight", "lm_head.weight"]
        + [f"model.language_model.layers.{i}.{r}" for i in range(text) for r in text_rests]
        + ["model.visual.patch_embed.proj.weight"]
        + [f"model.visual.blocks.{i}.{r}" for i in range(vision) for r in vision_rests]
        + [f"model.visual.merger.{m}.{p}" for m in ("ln_q", "mlp.0", "mlp.2") for p in ("weight", "bias")]
    )


def test_a_vision_tower_with_more_tensors_than_the_text_model_is_not_the_main_stack():
    # Qwen2-VL-7B: 32 vision blocks x 10 tensors against 28 text layers x 12
    config = {"text_config": {"num_hidden_layers": 28}, "vision_config": {"depth": 32}}
    structure = find_structure(_qwen2_vl_names(28, 32), config)
    assert structure.names == ("text_decoder", "vision_tower", "multi_modal_projector")
    text, vision, projector = structure.modules
    assert (text.stack.prefix, text.count, text.count_keys) == (
        "model.language_model.layers",
        28,
        ((("text_config",), "num_hidden_layers"),),
    )
    assert (vision.stack.prefix, vision.count, vision.count_keys) == (
        "model.visual.blocks",
        32,
        ((("vision_config",), "depth"),),
    )
    assert vision.pre_layer == ("model.visual.patch_embed.proj.weight",) and vision.post_layer == ()
    # merger.mlp.0 and .2 are numbered but not a stack (no .1): the projector's loose tensors
    assert projector.stack is None and len(projector.post_layer) == 6
    assert text.pre_layer == ("model.language_model.embed_tokens.weight",)
    assert text.post_layer == ("lm_head.weight", "model.language_model.norm.weight")


def test_t5_encoder_and_decoder_and_their_count_keys():
    names = ["shared.weight", "encoder.final_layer_norm.weight", "decoder.final_layer_norm.weight", "lm_head.weight"]
    names += [f"encoder.block.{i}.layer.0.SelfAttention.q.weight" for i in range(3)]
    names += [f"decoder.block.{i}.layer.0.SelfAttention.q.weight" for i in range(2)]
    config = {"is_encoder_decoder": True, "num_layers": 3, "num_decoder_layers": 2}
    structure = find_structure(names, config)
    assert structure.names == ("decoder", "encoder")
    decoder, encoder = structure.modules
    assert (decoder.count, decoder.count_keys, encoder.count, encoder.count_keys) == (
        2,
        (((), "num_decoder_layers"),),
        3,
        (((), "num_layers"),),
    )
    assert encoder.post_layer == ("encoder.final_layer_norm.weight",)
    assert set(decoder.post_layer) == {"decoder.final_layer_norm.weight", "lm_head.weight", "shared.weight"}


def test_t5_with_equal_counts_keeps_each_key_to_its_stack():
    names = [f"{s}.block.{i}.layer.0.w" for s in ("encoder", "decoder") for i in range(2)]
    structure = find_structure(names, {"is_encoder_decoder": True, "num_layers": 2, "num_decoder_layers": 2})
    assert structure.module("encoder").count_keys == (((), "num_layers"),)
    assert structure.module("decoder").count_keys == (((), "num_decoder_layers"),)


def test_mllama_two_vision_stacks_have_their_own_count_keys():
    names = [f"model.language_model.layers.{i}.mlp.w" for i in range(4)]
    # Llama-3.2-11B-Vision: 32 transformer layers, 8 global ones (with gates); both counts 3 here
    names += [f"model.vision_model.transformer.layers.{i}.{r}" for i in range(3) for r in ("a", "b", "c", "d")]
    names += [f"model.vision_model.global_transformer.layers.{i}.{r}" for i in range(3) for r in ("a", "b", "gate")]
    names += ["model.vision_model.patch_embedding.weight", "model.multi_modal_projector.weight"]
    config = {
        "text_config": {"num_hidden_layers": 4},
        "vision_config": {"num_hidden_layers": 3, "num_global_layers": 3},
    }
    structure = find_structure(names, config)
    by_name = {m.name: m for m in structure.modules}
    assert set(by_name) == {"text_decoder", "vision_tower", "vision_tower.global_transformer", "multi_modal_projector"}
    assert by_name["vision_tower"].stack.prefix == "model.vision_model.transformer.layers"  # more tensors
    # each vision stack takes only its own key, though both equal 3
    assert by_name["vision_tower"].count_keys == ((("vision_config",), "num_hidden_layers"),)
    assert by_name["vision_tower.global_transformer"].count_keys == ((("vision_config",), "num_global_layers"),)
    assert by_name["multi_modal_projector"].post_layer == ("model.multi_modal_projector.weight",)


def test_count_mismatches_name_the_nested_key():
    names = [f"model.language_model.layers.{i}.w" for i in range(2)] + [f"model.visual.blocks.{i}.w" for i in range(3)]
    config = {"text_config": {"num_hidden_layers": 5}, "vision_config": {"depth": 3}}
    assert count_mismatches(find_structure(names, config), config) == [("text_config.num_hidden_layers", 5, 2)]


def test_no_layers():
    structure = find_structure(["embed.weight", "head.weight"])
    assert structure.main.count == 0 and structure.main.pre_layer == ("embed.weight",)


def test_a_layer_without_tensors_below_the_highest_is_a_gap() -> None:
    names = ["model.layers.0.w", "model.layers.1.w", "model.layers.3.w"]
    with pytest.raises(LayerGapError) as err:
        find_structure(names)
    assert (err.value.first_missing, err.value.count, err.value.missing) == (2, 4, 1)


def test_a_wild_layer_index_is_a_gap_found_without_building_the_layers() -> None:
    with pytest.raises(LayerGapError) as err:
        find_structure(["model.layers.0.w", "model.layers.999999999.w"])
    assert (err.value.first_missing, err.value.count) == (1, 10**9)


def test_an_index_of_more_than_nine_digits_is_not_a_layer() -> None:
    structure = find_structure(["model.layers.0.w", "model.layers." + "1" * 5000 + ".w"])
    assert structure.main.count == 1 and len(structure.main.post_layer) == 1
