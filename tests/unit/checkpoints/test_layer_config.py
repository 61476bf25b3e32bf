"""checkpoints/layer_config.py: per-layer settings follow a passthrough's layer order.

Expected values are worked out by hand in each test; the last section checks the remapped configs
with transformers itself (its config classes derive the per-layer lists from what we wrote)."""

from __future__ import annotations

import copy
import pickle
import typing

import pytest

from mergesmith.checkpoints.layer_config import (
    KNOWN_KEYS,
    Kind,
    LayerConfigError,
    layer_kinds,
    remap_layer_config,
)
from mergesmith.checkpoints.layer_rules import RULES

S, F, L = "sliding_attention", "full_attention", "linear_attention"


def remap(part, sources, count, **kwargs):
    return remap_layer_config(part, sources, count, **kwargs).config


def error_text(part, sources, count, **kwargs) -> str:
    with pytest.raises(LayerConfigError) as err:
        remap_layer_config(part, sources, count, **kwargs)
    return str(err.value)


# --- the table -------------------------------------------------------------------------------------------
def test_every_row_has_a_kind_and_a_source_file():
    kinds = set(typing.get_args(Kind))
    for key, known in KNOWN_KEYS.items():
        assert known.kind in kinds, key
        assert known.where, key


def test_rules_name_their_model_types_and_source():
    for rule in RULES:
        assert rule.model_types and rule.where
        assert rule.list_key is not None or (rule.keys and rule.why and rule.hint), rule.keys
        # a rule setting that is also a table row is remapped first, then checked by the rule
        assert set(rule.keys) & set(KNOWN_KEYS) <= {"mlp_only_layers"}, rule.keys


# --- lists with one entry per layer ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "sources, expected",
    [
        ([0, 1, 1, 3], [S, F, F, F]),  # repeat layer 1, drop layer 2
        ([3, 2, 1, 0], [F, S, F, S]),  # reorder
        ([0, 2], [S, S]),  # drop
    ],
)
def test_layer_types_follow_the_sources(sources, expected):
    assert remap({"layer_types": [S, F, S, F]}, sources, 4) == {"layer_types": expected}


def test_per_layer_lists_and_a_scalar_that_holds_for_all_layers():
    part = {
        "no_rope_layers": [1, 1, 1, 0],
        "activation_sparsity_pattern": [0.95, 0.95, 0.0, 0.0],
        "intermediate_size": [8, 16, 24, 32],  # Gemma3n: one size per layer
        "hidden_size": 64,
    }
    assert remap(part, [3, 0, 0], 4) == {
        "no_rope_layers": [0, 1, 1],
        "activation_sparsity_pattern": [0.0, 0.95, 0.95],
        "intermediate_size": [32, 8, 8],
        "hidden_size": 64,
    }
    assert remap({"intermediate_size": 16}, [3, 0, 0], 4) == {"intermediate_size": 16}


def test_nemotron_pattern_string_has_one_character_per_layer():
    assert remap({"hybrid_override_pattern": "M-M*-"}, [0, 3, 3, 4], 5) == {"hybrid_override_pattern": "M**-"}


def test_the_input_is_left_untouched():
    part = {"layer_types": [S, F], "per_layer_config": {"1": {"head_dim": 8}}}
    before = copy.deepcopy(part)
    out = remap(part, [1, 1], 2)
    out["per_layer_config"]["0"]["head_dim"] = 99
    assert part == before


# --- lists of layer indices -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sources, expected",
    [
        ([0, 1, 1, 3], [1, 2, 3]),  # repeated layer 1 is MoE twice; layer 3 moves nowhere
        ([3, 2, 1, 0], [0, 2]),  # reordered
        ([0, 2], []),  # both MoE layers dropped
    ],
)
def test_moe_layers_list_the_output_layers_from_listed_sources(sources, expected):
    assert remap({"moe_layers": [1, 3]}, sources, 4) == {"moe_layers": expected}


def test_indices_counted_from_one_and_inside_a_nested_dict():
    part = {"ple_layer_ids": [2, 4], "linear_attn_config": {"kda_layers": [1, 2, 3], "full_attn_layers": [4]}}
    # sources [0, 1, 1, 3] are layers 1, 2, 2, 4 counted from one
    assert remap(part, [0, 1, 1, 3], 4) == {
        "ple_layer_ids": [2, 3, 4],
        "linear_attn_config": {"kda_layers": [1, 2, 3], "full_attn_layers": [4]},
    }


def test_an_index_outside_the_layers_is_an_inconsistent_source():
    assert error_text({"moe_layers": [1, 4]}, [0, 1], 4) == (
        "moe_layers: 4 is not a layer index of the 4 layers (0-3)\n"
        "  hint: the source config.json disagrees with itself; fix it in the source model before merging"
    )


def test_a_per_layer_list_of_the_wrong_length_is_an_inconsistent_source():
    assert error_text({"layer_types": [S, F, S]}, [0, 1], 4) == (
        "layer_types: has 3 entries, but the model has 4 layers (one entry per layer)\n"
        "  hint: the source config.json disagrees with itself; fix it in the source model before merging"
    )


def test_layer_sources_outside_the_model():
    assert error_text({}, [0, 4], 4) == "layer_sources: output layer 1 names source layer 4, but the model has 4 layers"


# --- taps, pointers, per-layer overrides ---------------------------------------------------------------------
def test_taps_move_with_their_layer():
    # Mllama's vision tower concatenates hidden_states[3] and [7]; dropping layer 5 moves 7 to 6
    part = {"intermediate_layers_indices": [3, 7]}
    assert remap(part, [0, 1, 2, 3, 4, 6, 7, 8], 9) == {"intermediate_layers_indices": [3, 6]}


@pytest.mark.parametrize(
    "sources, message",
    [
        ([0, 1, 2, 4, 5, 6, 7, 8], "source layer 3 feeds another module, but the output has it not at all"),
        (
            list(range(8)) + [3],
            "source layer 3 feeds another module, but the output has it 2 times (output layers [3, 8])",
        ),
        ([7, 3], "the tapped layers [3, 7] come out in another order: [1, 0]"),
    ],
)
def test_taps_refuse_a_dropped_repeated_or_reordered_layer(sources, message):
    assert error_text({"intermediate_layers_indices": [3, 7]}, sources, 9) == (
        f"intermediate_layers_indices: {message}\n"
        "  hint: keep each of the layers [3, 7] exactly once and in this order, or leave this stack uncut"
    )


def test_kv_source_layers_point_to_the_latest_copy_of_their_owner():
    # layers 0 and 2 own a cache; 1 reuses 0's, 3 reuses 2's
    part = {"kv_source_layers": [0, 0, 2, 2]}
    assert remap(part, [0, 1, 1, 2, 3], 4) == {"kv_source_layers": [0, 0, 0, 3, 3]}
    assert remap(part, [0, 2, 0, 1], 4) == {"kv_source_layers": [0, 1, 2, 2]}


def test_kv_source_layers_refuse_a_layer_whose_owner_is_not_before_it():
    assert error_text({"kv_source_layers": [0, 0, 2, 2]}, [1, 0], 4) == (
        "kv_source_layers: output layer 0 comes from source layer 1, which reuses the cache of source layer 0, "
        "but no earlier output layer is a copy of layer 0\n"
        "  hint: keep layer 0 before layer 1 in the slices"
    )


def test_per_layer_config_keys_follow_their_layer_zero_padded():
    part = {"per_layer_config": {"0": {"head_dim": 8}, "2": {"skip": ["mlp"]}}}
    assert remap(part, [2, 0, 1, 2], 3) == {
        "per_layer_config": {"0": {"skip": ["mlp"]}, "1": {"head_dim": 8}, "3": {"skip": ["mlp"]}}
    }
    out = remap(part, [1] * 10 + [0], 3)  # transformers zero-pads keys to the widest index
    assert out == {"per_layer_config": {"10": {"head_dim": 8}}}
    out = remap({"per_layer_config": {"0": {"head_dim": 8}}}, [0] * 11, 1)
    assert list(out["per_layer_config"]) == [f"{i:02d}" for i in range(11)]


# --- encoded forms ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sources, attention_types, attention_layers",
    [
        ([0, 1, 1, 3], [[["global", "local", "local", "local"], 1]], ["global", "local", "local", "local"]),
        ([0, 1, 0, 1, 0, 1], [[["global", "local"], 3]], ["global", "local"] * 3),
        ([1, 3], [[["local"], 2]], ["local", "local"]),
    ],
)
def test_gpt_neo_attention_types_are_encoded_again(sources, attention_types, attention_layers):
    part = {"attention_types": [[["global", "local"], 2]], "attention_layers": ["global", "local"] * 2}
    out = remap(part, sources, 4)
    assert out == {"attention_types": attention_types, "attention_layers": attention_layers}


def test_recurrent_gemma_block_types_cycle():
    part = {"block_types": ["recurrent", "recurrent", "attention"]}  # 6 layers: r r a r r a
    assert remap(part, [0, 1, 2, 3, 4, 5, 0, 1], 6) == part  # r r a r r a r r: the same cycle
    assert remap(part, [2, 0, 1], 6) == {"block_types": ["attention", "recurrent", "recurrent"]}
    # r a a r: the unit r a a, cycled, gives it
    assert remap(part, [0, 2, 2, 1], 6) == {"block_types": ["recurrent", "attention", "attention"]}


# --- the identity, unrelated and unsupported keys --------------------------------------------------------------
def test_the_identity_returns_an_equal_copy_and_checks_nothing():
    part = {"layer_types": [S, F, S], "out_indices": [1, 2], "weird_layers": [[1]], "moe_layers": [9]}
    result = remap_layer_config(part, [0, 1, 2], 3)
    assert result.config == part and result.config is not part
    assert result.warnings == () and result.rewrites == ()


def test_unrelated_keys_stay_and_unsupported_keys_refuse():
    part = {"mtp_layer_types": [F], "vision_feature_layer": [-2, -5], "image_grid_pinpoints": [[336, 672]]}
    assert remap(part, [1, 0], 2) == part
    assert error_text({"out_indices": [1, 2]}, [1, 0], 2) == (
        "out_indices: [1, 2] depends on the layers in a way mergesmith cannot rewrite for a changed layer order\n"
        "  hint: keep this stack's layers as they are, or edit the key in the output config.json yourself"
    )


# --- keys mergesmith does not know ------------------------------------------------------------------------------
def test_an_unknown_per_layer_list_is_remapped_with_a_warning():
    result = remap_layer_config({"layer_scales": [0.1, 0.2, 0.3, 0.4], "rope_theta": 1e4}, [3, 3, 0], 4)
    assert result.config == {"layer_scales": [0.4, 0.4, 0.1], "rope_theta": 1e4}
    assert result.warnings == (
        "layer_scales: unknown to mergesmith; read as one entry per layer and rewritten to [0.4, 0.4, 0.1]. "
        "Check it against the model's code",
    )


def test_an_unknown_index_list_is_remapped_with_a_warning():
    result = remap_layer_config({"global_block_idxs": [1, 3]}, [0, 1, 1, 3], 4)
    assert result.config == {"global_block_idxs": [1, 2, 3]}
    assert result.warnings == (
        "global_block_idxs: unknown to mergesmith; read as layer indices and rewritten to [1, 2, 3]. "
        "Check it against the model's code",
    )


@pytest.mark.parametrize(
    "value, reads_as",
    [
        ([[0, 1], [2]], "neither"),  # nested
        ([3, 1], "neither"),  # not ascending
        ([0, 1, 2, 3], "both one entry per layer and a list of layer indices"),  # every index, one per layer
    ],
)
def test_an_unknown_layer_list_of_no_clear_shape_is_refused(value, reads_as):
    assert error_text({"extra_layers": value}, [1, 0], 4) == (
        f"extra_layers: mergesmith cannot tell how this key relates to the 4 layers: {value!r} reads as {reads_as}\n"
        "  hint: if the model's code reads it per layer, keep the layers in place (no passthrough of this stack);"
        " if it has nothing to do with layers, report it so mergesmith can learn the key"
    )


def test_unknown_lists_whose_name_says_nothing_of_layers_stay():
    part = {"architectures": ["X"], "eos_token_id": [1, 2], "time_step_limit": [0.0, 1.0], "some_layers": []}
    assert remap_layer_config(part, [1, 0], 2) == type(remap_layer_config(part, [1, 0], 2))(part)


# --- rules: kept, rewritten, refused ----------------------------------------------------------------------------
JAMBA = {"model_type": "jamba", "attn_layer_period": 2, "attn_layer_offset": 1}


def test_jamba_period_kept_by_whole_cycles():
    # mamba attention mamba attention; [0, 1] + [0, 1, 2, 3] keeps every layer's place in the 2-cycle
    result = remap_layer_config({**JAMBA, "expert_layer_period": 2, "expert_layer_offset": 1}, [0, 1, 0, 1, 2, 3], 4)
    assert result.config == {**JAMBA, "expert_layer_period": 2, "expert_layer_offset": 1}
    assert result.rewrites == () and result.warnings == ()


def test_jamba_offset_rewritten_when_the_cycle_shifts():
    part = {"model_type": "jamba", "attn_layer_period": 4, "attn_layer_offset": 1}  # experts: default 2 / 1
    # dropping layer 0 moves attention (source 1, 5) to output 0 and 4; MoE (source 1, 3, 5, 7) to 0, 2, 4, 6
    result = remap_layer_config(part, [1, 2, 3, 4, 5, 6, 7], 8)
    assert result.config == {**part, "attn_layer_offset": 0, "expert_layer_period": 2, "expert_layer_offset": 0}
    assert result.rewrites == (
        "attn_layer_period: 4, attn_layer_offset: 0 (output layer 0 comes from source layer 1, an attention layer, "
        "but attn_layer_period 4 / attn_layer_offset 1 makes layer 0 a mamba layer)",
        "expert_layer_period: 2, expert_layer_offset: 0 (output layer 0 comes from source layer 1, a moe layer, "
        "but expert_layer_period 2 / expert_layer_offset 1 makes layer 0 a dense layer)",
    )


def test_jamba_refuses_a_cut_no_period_describes():
    assert error_text({**JAMBA, "expert_layer_period": 1, "expert_layer_offset": 0}, [0, 2, 1, 3], 4) == (
        "attn_layer_period: output layer 1 comes from source layer 2, a mamba layer, but attn_layer_period 2 / "
        "attn_layer_offset 1 makes layer 1 an attention layer; JambaConfig computes layers_block_type from these "
        "two settings and has no per-layer list to write instead\n"
        "  hint: keep each layer at its place in the 2-layer cycle: start every slice at a multiple of 2 and make "
        "it a whole number of cycles long (layer_range [0, 2], [2, ...])"
    )


QWEN_MOE = {"model_type": "qwen2_moe", "decoder_sparse_step": 2, "mlp_only_layers": [], "num_experts": 4}


def test_qwen_moe_step_kept_and_rewritten():
    # step 2: layers 1 and 3 are MoE. [0, 1, 2, 3, 2, 3] keeps the cycle.
    assert remap_layer_config(QWEN_MOE, [0, 1, 2, 3, 2, 3], 4).rewrites == ()
    # [0, 1, 1, 3]: output 2 is a MoE copy at an even place; step 1 with layer 0 listed dense says it
    result = remap_layer_config(QWEN_MOE, [0, 1, 1, 3], 4)
    assert result.config == {**QWEN_MOE, "decoder_sparse_step": 1, "mlp_only_layers": [0]}
    assert result.rewrites == (
        "decoder_sparse_step: 1, mlp_only_layers: [0] (output layer 2 comes from source layer 1, a sparse layer, "
        "but decoder_sparse_step 2 / mlp_only_layers [] / num_experts 4 makes layer 2 a dense layer)",
    )


def test_qwen_moe_mlp_only_layers_follow_their_layers_without_a_rewrite():
    part = {**QWEN_MOE, "decoder_sparse_step": 1, "mlp_only_layers": [0]}
    assert remap_layer_config(part, [0, 0, 2], 3).config == {**part, "mlp_only_layers": [0, 1]}


DEEPSEEK = {"model_type": "deepseek_v3", "first_k_dense_replace": 3, "moe_layer_freq": 1}


def test_first_k_dense_replace_kept_rewritten_and_refused():
    assert remap_layer_config(DEEPSEEK, [0, 1, 2, 3, 4, 3, 4], 5).rewrites == ()
    assert remap(DEEPSEEK, [0, 2, 3, 4], 5) == {**DEEPSEEK, "first_k_dense_replace": 2}
    assert remap({"model_type": "deepseek_v3"}, [0, 3], 5) == {"model_type": "deepseek_v3", "first_k_dense_replace": 1}
    assert error_text(DEEPSEEK, [0, 3, 1, 4], 5) == (
        "first_k_dense_replace: output layer 1 comes from source layer 3, a sparse layer, but first_k_dense_replace "
        "3 / moe_layer_freq 1 makes layer 1 a dense layer; the model has no per-layer list of MoE layers, and "
        "first_k_dense_replace can only say 'the first k layers are dense, all later ones MoE'\n"
        "  hint: put the 3 dense layers first, each at most once, and only MoE layers after them"
    )


def test_lfm2_moe_and_ernie_moe_spans_are_rewritten():
    assert remap({"model_type": "lfm2_moe"}, [1, 2, 3], 4) == {"model_type": "lfm2_moe", "num_dense_layers": 1}
    # Ernie saves moe_layer_end_index as the last layer: repeating layers past it needs a new end
    ernie = {"model_type": "ernie4_5_moe", "moe_layer_start_index": 1, "moe_layer_end_index": 3}
    assert remap(ernie, [0, 1, 2, 3, 3, 3], 4) == {**ernie, "moe_layer_end_index": 5}


def test_list_written_when_the_built_in_pattern_breaks():
    # Gemma2 without layer_types: sliding, full, sliding, full by position
    result = remap_layer_config({"model_type": "gemma2"}, [0, 2, 1, 3], 4)
    assert result.config == {"model_type": "gemma2", "layer_types": [S, S, F, F]}
    assert result.rewrites == (
        "layer_types: ['sliding_attention', 'sliding_attention', 'full_attention', 'full_attention'] (output layer 1 "
        "comes from source layer 2, a sliding_attention layer, but the built-in layer_types pattern makes layer 1 a "
        "full_attention layer)",
    )
    assert remap({"model_type": "gemma2"}, [0, 1, 0, 1], 4) == {"model_type": "gemma2"}  # pattern kept


def test_a_rule_setting_that_a_saved_list_overrides_warns_when_it_goes_stale():
    # transformers 5.24 reads layer_types; older versions read sliding_window_pattern, and no pattern fits
    part = {"model_type": "gemma3_text", "sliding_window_pattern": 2, "layer_types": [S, F, S, F]}
    result = remap_layer_config(part, [1, 0], 4)
    assert result.config == {**part, "layer_types": [F, S]}
    assert result.warnings == (
        "sliding_window_pattern: output layer 0 comes from source layer 1, a full_attention layer, but "
        "sliding_window_pattern 2 makes layer 0 a sliding_attention layer. transformers 5.24 reads layer_types "
        "instead, but transformers versions before layer_types, and modeling code copied from them, build the "
        "output wrongly: load it with a transformers version that reads layer_types",
    )


def test_a_rule_setting_beside_a_saved_list_is_kept_true_where_it_can_be():
    part = {"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 2}
    part["layer_types"] = [F, F, S, S]
    result = remap_layer_config(part, [0, 2, 3], 4)  # full, sliding, sliding: sliding from layer 1
    assert result.config == {**part, "max_window_layers": 1, "layer_types": [F, S, S]}
    assert result.warnings == ()
    # a setting no tool reads instead of the list may go stale: SmolLM3 always saves no_rope_layers
    smollm3 = {"model_type": "smollm3", "no_rope_layer_interval": 2, "no_rope_layers": [1, 0, 1, 0]}
    assert remap_layer_config(smollm3, [1, 0], 4) == type(result)({**smollm3, "no_rope_layers": [0, 1]})


def test_llama4_moe_layers_and_no_rope_layers_written_when_derived():
    part = {"model_type": "llama4_text", "interleave_moe_layer_step": 2, "no_rope_layer_interval": 2}
    # step 2: MoE at 1, 3; no_rope_layers [1, 0, 1, 0]
    assert remap(part, [1, 1, 2], 4) == {**part, "moe_layers": [0, 1], "no_rope_layers": [0, 0, 1]}


GEMMA3N = {"model_type": "gemma3n_text", "layer_types": [S, F, S, F, S, F], "num_kv_shared_layers": 2}


def test_gemma3n_kv_sharing_kept_rewritten_and_refused():
    # layers 4 and 5 reuse the caches stored by layer 2 (sliding) and layer 3 (full)
    assert remap(GEMMA3N, [1, 2, 3, 4, 5], 6) == {**GEMMA3N, "layer_types": [F, S, F, S, F]}
    assert remap(GEMMA3N, [0, 1, 2, 3, 4, 5, 4, 5], 6)["num_kv_shared_layers"] == 4
    assert error_text(GEMMA3N, [0, 1, 4, 5, 2, 3], 6) == (
        "num_kv_shared_layers: output layer 2 comes from source layer 4, a shares_kv layer, but num_kv_shared_layers "
        "2 makes layer 2 a stores_kv layer; the config can only say 'the last k layers reuse the key/value states of "
        "the last earlier layer of their attention type'\n"
        "  hint: keep the last 2 layers (they have no k_proj/v_proj) at the end, in order, right after the layers "
        "whose key/value states they reuse"
    )


def test_gemma4_assistant_shares_every_layer_and_stays_so():
    part = {"model_type": "gemma4_text", "layer_types": [S, F, S], "num_kv_shared_layers": 3}
    result = remap_layer_config(part, [2, 1], 3)
    assert result.config == {**part, "layer_types": [S, F], "num_kv_shared_layers": 2}


def test_zamba_layers_block_type_written_when_derived():
    part = {"model_type": "zamba", "attn_layer_period": 2, "attn_layer_offset": 0}
    # mamba, mamba, hybrid, then hybrid where (i - 3) % 2 == 0: 3 and 5 hybrid, 4 mamba
    assert remap(part, [0, 1, 2, 4, 3], 6) == {**part, "layers_block_type": [L, L, "hybrid", L, "hybrid"]}


def test_a_rule_setting_in_a_model_type_without_the_rule_warns():
    result = remap_layer_config({"model_type": "my_moe", "first_k_dense_replace": 1}, [1, 0], 2)
    assert result.config == {"model_type": "my_moe", "first_k_dense_replace": 1}
    assert result.warnings == (
        "first_k_dense_replace: decides layer kinds in deepseek_v2, deepseek_v3, dots1, glm4_moe, glm4v_moe_text, "
        "mistral4, but mergesmith does not know how model type 'my_moe' reads it, so the output's layers were not "
        "checked against it",
    )
    # a saved list that decides the same thing (transformers' convention) is remapped and decides instead
    part = {"model_type": "my_qwen", "max_window_layers": 1, "layer_types": [F, S]}
    assert remap_layer_config(part, [1, 0], 2).warnings == ()
    part = {"model_type": "deepseek_v32", "first_k_dense_replace": 1, "mlp_layer_types": ["dense", "sparse"]}
    assert remap_layer_config(part, [1, 0], 2) == type(remap_layer_config(part, [1, 0], 2))(
        {**part, "mlp_layer_types": ["sparse", "dense"]}
    )


# --- layer_kinds ---------------------------------------------------------------------------------------------
def test_layer_kinds_describe_each_layer():
    assert layer_kinds({"hidden_size": 8}, 2) is None
    assert layer_kinds({"layer_types": [S, F], "moe_layers": [1], "intermediate_size": 8}, 2) == (
        "layer_types=sliding_attention, moe_layers=no",
        "layer_types=full_attention, moe_layers=yes",
    )
    assert layer_kinds(JAMBA, 3) == (
        "attn_layer_period=mamba, expert_layer_period=dense",
        "attn_layer_period=attention, expert_layer_period=moe",
        "attn_layer_period=mamba, expert_layer_period=dense",
    )
    assert layer_kinds({"model_type": "gemma2"}, 2) == ("layer_types=sliding_attention", "layer_types=full_attention")


# --- the error -------------------------------------------------------------------------------------------------
def test_the_error_survives_pickle():
    err = LayerConfigError("moe_layers", "9 is not a layer index", hint="fix config.json")
    back = pickle.loads(pickle.dumps(err))
    assert (back.key, back.message, back.hint, str(back)) == (err.key, err.message, err.hint, str(err))
    assert isinstance(back, ValueError)


# --- transformers as the oracle --------------------------------------------------------------------------------
# Each case builds a transformers config, saves it as config.json would (to_dict), remaps it, builds the
# config class again from the result and compares what transformers derives for each output layer with
# what it derives for that layer's source.
TINY = {"hidden_size": 16, "intermediate_size": 16, "num_attention_heads": 2, "num_key_value_heads": 2}
TINY_MOE = {**TINY, "moe_intermediate_size": 8, "num_experts_per_tok": 2}


def _drop(*keys):
    return lambda d: {k: v for k, v in d.items() if k not in keys}


def _mlp_classes(module, layer_class):
    """The MLP class each decoder layer builds: the modeling code's own MoE decision."""

    def probe(config):
        import importlib

        cls = getattr(importlib.import_module(f"transformers.models.{module}.modeling_{module}"), layer_class)
        return [type(cls(config, i).mlp).__name__ for i in range(config.num_hidden_layers)]

    return probe


ORACLE_CASES = [
    # (id, model_type, settings, edit of the saved dict (an older config.json), layer_sources, probe)
    (
        "jamba",
        "jamba",
        {"num_hidden_layers": 8, "attn_layer_period": 4, "attn_layer_offset": 1},
        None,
        [1, 2, 3, 4, 5, 6, 7],
        lambda c: list(zip(c.layers_block_type, c.layers_num_experts)),
    ),
    (
        "gpt_neo",
        "gpt_neo",
        {"num_layers": 4, "attention_types": [[["global", "local"], 2]]},
        None,
        [0, 1, 1, 3, 2],
        lambda c: c.attention_layers,
    ),
    ("gemma2", "gemma2", {"num_hidden_layers": 4}, _drop("layer_types"), [0, 2, 1, 3], lambda c: c.layer_types),
    (
        "gemma3_text",
        "gemma3_text",
        {"num_hidden_layers": 6, "sliding_window_pattern": 3},
        _drop("layer_types", "_sliding_window_pattern"),
        [0, 1, 2, 4, 5, 5],
        lambda c: c.layer_types,
    ),
    (
        "qwen2",
        "qwen2",
        {"num_hidden_layers": 4, "use_sliding_window": True, "max_window_layers": 2},
        _drop("layer_types"),
        [3, 0, 2],
        lambda c: c.layer_types,
    ),
    (
        "llama4_text",
        "llama4_text",
        {"num_hidden_layers": 4, "interleave_moe_layer_step": 2, "no_rope_layer_interval": 2},
        _drop("moe_layers", "no_rope_layers", "layer_types"),
        [1, 1, 2],
        lambda c: list(zip([i in c.moe_layers for i in range(c.num_hidden_layers)], c.no_rope_layers, c.layer_types)),
    ),
    (
        "smollm3",
        "smollm3",
        {"num_hidden_layers": 4, "no_rope_layer_interval": 2, "use_sliding_window": True, "sliding_window": 8},
        None,
        [1, 1, 0, 2],
        lambda c: list(zip(c.no_rope_layers, c.layer_types)),
    ),
    (
        "zamba",
        "zamba",
        {"num_hidden_layers": 8, "attn_layer_period": 2, "attn_layer_offset": 0},
        _drop("layers_block_type"),
        [0, 1, 2, 4, 3, 7],
        lambda c: c.layers_block_type,
    ),
    (
        "zamba2",
        "zamba2",
        {"num_hidden_layers": 54},
        None,
        [0, 6, 6, 12, 1],
        lambda c: list(zip(c.layers_block_type, [i in c.hybrid_layer_ids for i in range(c.num_hidden_layers)])),
    ),
    (
        "recurrent_gemma",
        "recurrent_gemma",
        {"num_hidden_layers": 6},
        None,
        [2, 0, 1, 5, 5],
        lambda c: c.layers_block_type,
    ),
    (
        "bamba",
        "bamba",
        {"num_hidden_layers": 4, "attn_layer_indices": [1, 3]},
        None,
        [3, 3, 0],
        lambda c: c.layers_block_type,
    ),
    (
        "lfm2 without layer_types",
        "lfm2",
        {"num_hidden_layers": 4, "full_attn_idxs": [1, 3]},
        _drop("layer_types"),
        [1, 0, 0, 3],
        lambda c: c.layer_types,
    ),
    (
        "gemma3n_text",
        "gemma3n_text",
        {
            "num_hidden_layers": 6,
            "layer_types": [S, F, S, F, S, F],
            "num_kv_shared_layers": 2,
            "intermediate_size": [8, 8, 16, 16, 24, 24],
        },
        None,
        [0, 1, 2, 3, 4, 5, 4, 5],
        lambda c: list(zip(c.kv_sharing_modes, c.layer_types, c.intermediate_size, c.activation_sparsity_pattern)),
    ),
    (
        "mistral_large4_text",
        "mistral_large4_text",
        {"num_hidden_layers": 4, "kv_source_layers": [0, 0, 2, 2]},
        None,
        [0, 1, 1, 2, 3],
        lambda c: [m if m != "store" else None for m in c.kv_sharing_modes],
    ),
    (
        "per_layer_config",
        "llama",
        {"num_hidden_layers": 3, "per_layer_config": {"0": {"intermediate_size": 8}}},
        None,
        [1, 0, 0],
        lambda c: [c.per_layer_config[i].intermediate_size for i in range(c.num_hidden_layers)],
    ),
    (
        "qwen2_moe",
        "qwen2_moe",
        {
            **TINY_MOE,
            "num_hidden_layers": 4,
            "num_experts": 4,
            "decoder_sparse_step": 2,
            "shared_expert_intermediate_size": 8,
        },
        None,
        [0, 1, 1, 3],
        _mlp_classes("qwen2_moe", "Qwen2MoeDecoderLayer"),
    ),
    (
        "deepseek_v3",
        "deepseek_v3",
        {
            **TINY_MOE,
            "num_hidden_layers": 5,
            "n_routed_experts": 4,
            "n_group": 1,
            "topk_group": 1,
            "q_lora_rank": 8,
            "kv_lora_rank": 8,
            "qk_rope_head_dim": 4,
            "qk_nope_head_dim": 4,
            "v_head_dim": 4,
        },
        None,
        [0, 2, 3, 4, 4],
        _mlp_classes("deepseek_v3", "DeepseekV3DecoderLayer"),
    ),
    (
        "ernie4_5_moe",
        "ernie4_5_moe",
        {**TINY, "num_hidden_layers": 4, "moe_intermediate_size": 8, "moe_num_experts": 4, "moe_k": 2},
        None,
        [0, 1, 2, 3, 3, 3],
        _mlp_classes("ernie4_5_moe", "Ernie4_5_MoeDecoderLayer"),
    ),
]


@pytest.mark.parametrize("case", ORACLE_CASES, ids=[case[0] for case in ORACLE_CASES])
def test_transformers_derives_each_output_layer_like_its_source(case):
    transformers = pytest.importorskip("transformers")
    _, model_type, settings, edit, sources, probe = case
    source = transformers.AutoConfig.for_model(model_type, **settings)
    saved = source.to_dict()
    saved = edit(saved) if edit else saved
    out = remap_layer_config(saved, sources, source.num_hidden_layers).config
    for key in ("num_hidden_layers", "num_layers"):
        if key in out:
            out[key] = len(sources)  # the caller's job (metadata.output_config)
    output = transformers.AutoConfig.for_model(model_type, **_drop("model_type", "transformers_version")(out))
    assert output.num_hidden_layers == len(sources)
    assert probe(output) == [probe(source)[s] for s in sources]


def test_transformers_nemotron_h_reads_the_remapped_legacy_pattern():
    transformers = pytest.importorskip("transformers")
    part = {"model_type": "nemotron_h", "hybrid_override_pattern": "M-M*-E"}
    out = remap(part, [3, 3, 0, 5], 6)
    config = transformers.AutoConfig.for_model("nemotron_h", hybrid_override_pattern=out["hybrid_override_pattern"])
    assert config.layers_block_type == ["full_attention", "full_attention", "linear_attention", "moe"]
