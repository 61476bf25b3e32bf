"""The one fixture factory: tiny random Hugging Face models of real architectures.

Names and shapes come from transformers itself (the model class built on the meta device; the names
save_pretrained writes, except for the first nine architectures, which golden tests pin with
transformers' in-memory names), values from mergesmith.synthetic's per-name seeded generator, so a
model is the same bytes on every run. AUTO_CLASS names the transformers Auto class that loads each;
STACKS its stacks of numbered layers (checked against derived_stacks, which asks transformers alone);
cached_model / tests/conftest.py's model_cache build each model once per session.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from mergesmith.synthetic import SyntheticTensor, random_values, standard_normal, write_synthetic_model

# model_type -> config keywords of a tiny model of that family
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2),
    "mistral": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2),
    "qwen2": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2),
    "qwen3": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8),
    "gemma2": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8),
    "phi3": dict(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=4,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    ),
    "gpt2": dict(n_embd=32, n_head=4, n_positions=64),
    "granite": dict(hidden_size=32, intermediate_size=48, num_attention_heads=2, num_key_value_heads=2),
    # a vision-language model (mergekit's tests/common.py make_picoLlaVa): the text model's layers
    # and a CLIP vision tower; `layers` sets the text model's layer count
    "llava": dict(
        vision_config=dict(
            model_type="clip_vision_model",
            image_size=32,
            patch_size=4,
            num_hidden_layers=2,
            num_attention_heads=2,
            hidden_size=64,
            intermediate_size=128,
        ),
        text_config=dict(model_type="llama", hidden_size=32, intermediate_size=48, num_attention_heads=16),
        image_seq_length=16,
    ),
}
# The architectures below were added after the ones above (whose bytes golden tests pin). Token ids
# stay inside the 128-token vocabulary; per-layer kinds (MoE/dense, sliding/full, mamba/attention)
# alternate so that 4 layers show each kind; vision towers are deeper than the text stack.
_LM = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)
_TOKENS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
_VISION_TOKENS = dict(image_token_id=3, video_token_id=4, vision_start_token_id=5, vision_end_token_id=6)
ARCHITECTURES.update(
    {
        "mixtral": dict(**_LM, num_local_experts=4, num_experts_per_tok=2),
        "qwen2_moe": dict(
            **_LM,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=64,
            num_experts=4,
            num_experts_per_tok=2,
            decoder_sparse_step=1,
            mlp_only_layers=[1],
            **_TOKENS,
        ),
        "qwen3_moe": dict(
            **_LM,
            head_dim=8,
            moe_intermediate_size=32,
            num_experts=4,
            num_experts_per_tok=2,
            decoder_sparse_step=1,
            mlp_only_layers=[1],
            **_TOKENS,
        ),
        "deepseek_v3": dict(
            hidden_size=32,
            intermediate_size=64,
            moe_intermediate_size=16,
            num_attention_heads=4,
            num_key_value_heads=4,
            n_shared_experts=1,
            n_routed_experts=4,
            num_experts_per_tok=2,
            n_group=2,
            topk_group=1,
            first_k_dense_replace=1,
            kv_lora_rank=16,
            q_lora_rank=24,
            qk_rope_head_dim=4,
            qk_nope_head_dim=8,
            v_head_dim=8,
            **_TOKENS,
        ),
        "gemma": dict(**_LM, head_dim=8, **_TOKENS),
        "gemma3_text": dict(
            **_LM, head_dim=8, query_pre_attn_scalar=8, sliding_window=16, sliding_window_pattern=2, **_TOKENS
        ),
        # text-only Gemma3nForCausalLM (model_type gemma3n_text): see MODEL_TYPE
        "gemma3n": dict(
            **_LM,
            head_dim=8,
            sliding_window=16,
            vocab_size_per_layer_input=128,
            hidden_size_per_layer_input=8,
            altup_num_inputs=2,
            laurel_rank=4,
            **_TOKENS,
        ),
        "gpt_neox": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, bos_token_id=1, eos_token_id=2),
        "gpt_neo": dict(hidden_size=32, num_heads=4, max_position_embeddings=64, window_size=16, **_TOKENS),
        "falcon": dict(hidden_size=32, num_attention_heads=4, new_decoder_architecture=True, num_kv_heads=2, **_TOKENS),
        "olmo": dict(**_LM, **_TOKENS),
        "olmo2": dict(**_LM, **_TOKENS),
        "cohere": dict(**_LM, **_TOKENS),
        "cohere2": dict(**_LM, sliding_window=16, sliding_window_pattern=2, **_TOKENS),
        "granitemoe": dict(**_LM, num_local_experts=4, num_experts_per_tok=2, **_TOKENS),
        "mamba": dict(hidden_size=32, state_size=8, expand=2, conv_kernel=4, time_step_rank=4, **_TOKENS),
        "jamba": dict(
            **_LM,
            num_experts=4,
            num_experts_per_tok=2,
            attn_layer_period=2,
            attn_layer_offset=1,
            expert_layer_period=2,
            expert_layer_offset=1,
            mamba_d_state=8,
            mamba_dt_rank=4,
            **_TOKENS,
        ),
        "bamba": dict(
            **_LM,
            mamba_n_heads=4,
            mamba_d_head=16,
            mamba_n_groups=1,
            mamba_d_state=8,
            mamba_chunk_size=16,
            **_TOKENS,
        ),
        "lfm2": dict(**_LM, block_multiple_of=16, **_TOKENS),
        "smollm3": dict(**_LM, no_rope_layer_interval=2, **_TOKENS),
        "gpt_oss": dict(**_LM, head_dim=8, num_local_experts=4, num_experts_per_tok=2, sliding_window=16, **_TOKENS),
        "nemotron_h": dict(
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            mamba_num_heads=4,
            mamba_head_dim=16,
            n_groups=1,
            ssm_state_size=8,
            chunk_size=16,
            n_routed_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            moe_shared_expert_intermediate_size=16,
            **_TOKENS,
        ),
        "bert": dict(
            hidden_size=32, intermediate_size=64, num_attention_heads=4, max_position_embeddings=64, pad_token_id=0
        ),
        "roberta": dict(
            hidden_size=32, intermediate_size=64, num_attention_heads=4, max_position_embeddings=64, **_TOKENS
        ),
        "modernbert": dict(
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            global_attn_every_n_layers=2,
            local_attention=16,
            max_position_embeddings=64,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            cls_token_id=1,
            sep_token_id=2,
        ),
        "t5": dict(d_model=32, d_kv=8, d_ff=64, num_heads=4, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0),
        # T5 v1.1 / flan-t5: gated-GELU feed-forward (wi_0, wi_1), the layout mergekit 0.1.5's t5.json assumes
        "t5_gated": dict(
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_heads=4,
            feed_forward_proj="gated-gelu",
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        ),
        "whisper": dict(
            d_model=32,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            num_mel_bins=16,
            max_source_positions=32,
            max_target_positions=32,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=1,
            begin_suppress_tokens=[2],
            suppress_tokens=[],
        ),
        # a llava whose CLIP tower is deeper than the text stack, as in real checkpoints
        "llava_deep": dict(
            vision_config=dict(
                model_type="clip_vision_model",
                image_size=32,
                patch_size=8,
                num_hidden_layers=6,
                num_attention_heads=2,
                hidden_size=32,
                intermediate_size=64,
            ),
            text_config=dict(model_type="llama", **_LM, **_TOKENS),
            image_token_index=3,
            image_seq_length=16,
        ),
        "qwen2_vl": dict(
            vision_config=dict(depth=6, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=8),
            text_config=dict(
                **_LM, rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[1, 1, 2]), **_TOKENS
            ),
            **_VISION_TOKENS,
        ),
        "qwen2_5_vl": dict(
            vision_config=dict(
                depth=6,
                hidden_size=32,
                intermediate_size=64,
                num_heads=2,
                out_hidden_size=32,
                patch_size=8,
                window_size=32,
                fullatt_block_indexes=[2, 5],
            ),
            text_config=dict(
                **_LM, rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[1, 1, 2]), **_TOKENS
            ),
            **_VISION_TOKENS,
        ),
        "mllama": dict(
            vision_config=dict(
                hidden_size=32,
                num_hidden_layers=6,
                num_global_layers=2,
                attention_heads=2,
                intermediate_size=64,
                intermediate_layers_indices=[1, 3],
                vision_output_dim=96,  # hidden_size * (1 + len(intermediate_layers_indices))
                image_size=16,
                patch_size=8,
                max_num_tiles=4,  # the only value the default supported_aspect_ratios allow
            ),
            text_config=dict(**_LM, **_TOKENS),
            image_token_index=3,
        ),
        "gemma3": dict(
            vision_config=dict(
                model_type="siglip_vision_model",
                vision_use_head=False,  # as Gemma 3's SigLIP tower
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=6,
                num_attention_heads=2,
                image_size=32,
                patch_size=8,
            ),
            text_config=dict(
                **_LM, head_dim=8, query_pre_attn_scalar=8, sliding_window=16, sliding_window_pattern=2, **_TOKENS
            ),
            mm_tokens_per_image=4,
            boi_token_index=3,
            eoi_token_index=4,
            image_token_index=5,
        ),
        "mistral3": dict(
            vision_config=dict(
                model_type="pixtral",
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=6,
                num_attention_heads=2,
                head_dim=16,
                image_size=32,
                patch_size=8,
            ),
            text_config=dict(model_type="mistral", **_LM, head_dim=8, **_TOKENS),
            image_token_index=3,
        ),
        "llama4": dict(
            vision_config=dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=6,
                num_attention_heads=2,
                image_size=32,
                patch_size=8,
                vision_output_dim=32,
                projector_input_dim=32,
                projector_output_dim=32,
            ),
            text_config=dict(
                **_LM,
                intermediate_size_mlp=64,
                head_dim=8,
                num_local_experts=2,
                interleave_moe_layer_step=2,
                no_rope_layer_interval=2,
                attention_chunk_size=16,
                **_TOKENS,
            ),
            boi_token_index=3,
            eoi_token_index=4,
            image_token_index=5,
        ),
    }
)
# More families people merge: older decoders, hybrids of the Qwen3-Next and Granite 4 kind, an encoder,
# VLMs of the Qwen3-VL and SmolVLM kind, and an audio-language model (its audio tower deeper than text).
_MROPE = dict(rope_type="default", rope_theta=10000.0, mrope_section=[1, 1, 2])
_MAMBA2 = dict(mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=1, mamba_d_state=8, mamba_chunk_size=16)
ARCHITECTURES.update(
    {
        "phi": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, partial_rotary_factor=0.5, **_TOKENS),
        "gptj": dict(n_embd=32, n_head=4, rotary_dim=4, n_positions=64, **_TOKENS),
        "stablelm": dict(**_LM, **_TOKENS),
        "starcoder2": dict(**_LM, **_TOKENS),
        "glm4": dict(**_LM, head_dim=8, **_TOKENS),
        "exaone4": dict(**_LM, sliding_window=16, sliding_window_pattern=2, **_TOKENS),
        "olmoe": dict(**_LM, num_experts=4, num_experts_per_tok=2, **_TOKENS),
        # every 4th layer full attention, the others gated delta-net (the default full_attention_interval)
        "qwen3_next": dict(
            **_LM,
            head_dim=8,
            linear_key_head_dim=8,
            linear_value_head_dim=8,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=32,
            num_experts=4,
            num_experts_per_tok=2,
            **_TOKENS,
        ),
        "granitemoehybrid": dict(
            **_LM, num_local_experts=4, num_experts_per_tok=2, shared_intermediate_size=32, **_MAMBA2, **_TOKENS
        ),
        "falcon_h1": dict(**_LM, head_dim=8, mamba_d_ssm=64, **_MAMBA2, **_TOKENS),
        "xlm-roberta": dict(
            hidden_size=32, intermediate_size=64, num_attention_heads=4, max_position_embeddings=64, **_TOKENS
        ),
        "qwen3_vl": dict(
            vision_config=dict(
                depth=6,
                hidden_size=32,
                intermediate_size=64,
                num_heads=2,
                out_hidden_size=32,
                patch_size=8,
                num_position_embeddings=16,
                deepstack_visual_indexes=[1, 3],
            ),
            text_config=dict(**_LM, head_dim=8, rope_parameters=dict(_MROPE, mrope_interleaved=True), **_TOKENS),
            **_VISION_TOKENS,
        ),
        "smolvlm": dict(
            vision_config=dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=6,
                num_attention_heads=2,
                image_size=32,
                patch_size=8,
            ),
            text_config=dict(model_type="llama", **_LM, **_TOKENS),
            image_token_id=3,
            scale_factor=2,
            pad_token_id=0,
        ),
        "qwen2_audio": dict(
            audio_config=dict(
                d_model=32,
                encoder_layers=6,
                encoder_attention_heads=2,
                encoder_ffn_dim=64,
                num_mel_bins=16,
                max_source_positions=16,
            ),
            text_config=dict(model_type="qwen2", **_LM, **_TOKENS),
            audio_token_index=3,
        ),
    }
)
LAYER_KEY = {"gpt2": "n_layer", "gpt_neo": "num_layers", "gptj": "n_layer"}


def _alternate(layers: int, first: str, second: str) -> list[str]:
    return [second if i % 2 else first for i in range(layers)]


# arch -> the config keywords that depend on the layer count (the text config's, when nested)
LAYERED: dict[str, Any] = {
    "gpt_neo": lambda n: dict(
        num_layers=n, attention_types=[[["global", "local"], n // 2]] + ([[["global"], 1]] if n % 2 else [])
    ),
    "t5": lambda n: dict(num_layers=n, num_decoder_layers=n),
    "t5_gated": lambda n: dict(num_layers=n, num_decoder_layers=n),
    "whisper": lambda n: dict(encoder_layers=n, decoder_layers=n),
    "lfm2": lambda n: dict(num_hidden_layers=n, full_attn_idxs=list(range(1, n, 2))),
    "bamba": lambda n: dict(num_hidden_layers=n, attn_layer_indices=list(range(1, n, 2))),
    "nemotron_h": lambda n: dict(
        layers_block_type=[("linear_attention", "full_attention", "mlp", "moe")[i % 4] for i in range(n)]
    ),
    "mllama": lambda n: dict(num_hidden_layers=n, cross_attention_layers=list(range(1, n, 2))),
    "granitemoehybrid": lambda n: dict(num_hidden_layers=n, layer_types=_alternate(n, "mamba", "attention")),
    "gemma3n": lambda n: dict(
        num_hidden_layers=n,
        layer_types=_alternate(n, "sliding_attention", "full_attention"),
        # the last layers reuse earlier layers' key/values; those left must hold both kinds
        num_kv_shared_layers=max(0, min(n // 2, n - 2)),
    ),
}

# arch -> model_type where the two differ
MODEL_TYPE = {"llava_deep": "llava", "gemma3n": "gemma3n_text", "t5_gated": "t5"}

# arch -> the transformers Auto class that loads it
AUTO_CLASS: dict[str, str] = {arch: "AutoModelForCausalLM" for arch in ARCHITECTURES} | {
    **dict.fromkeys(
        (
            "llava",
            "llava_deep",
            "qwen2_vl",
            "qwen2_5_vl",
            "mllama",
            "gemma3",
            "mistral3",
            "llama4",
            "qwen3_vl",
            "smolvlm",
        ),
        "AutoModelForImageTextToText",
    ),
    **dict.fromkeys(("bert", "roberta", "modernbert", "xlm-roberta"), "AutoModelForMaskedLM"),
    "qwen2_audio": "AutoModelForMultimodalLM",
    "t5": "AutoModelForSeq2SeqLM",
    "t5_gated": "AutoModelForSeq2SeqLM",
    "whisper": "AutoModelForSpeechSeq2Seq",
}
# the architectures written before LAYERED, MODEL_TYPE, nested tying and save_pretrained names existed:
# their files stay as they were (llava keeps in-memory names: model.language_model.*, not language_model.model.*)
_PINNED = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "phi3", "gpt2", "granite", "llava")

# arch -> the stacks of numbered layers in its checkpoint: (role, the layers' tensor-name prefix as the
# file spells it, the config key path of their count). Written by hand from real checkpoints' layouts;
# tests/unit/test_factory_models.py checks it against transformers (derived_stacks) and the loaded model.
# nemotron_h has no count key: its layer count is the length of layers_block_type, one entry per layer.
_TEXT_DECODER = (("text_decoder", "model.layers", "num_hidden_layers"),)


def _vlm(text: str, vision: str, vision_count: str = "vision_config.num_hidden_layers") -> tuple:
    return (("text_decoder", text, "text_config.num_hidden_layers"), ("vision_tower", vision, vision_count))


STACKS: dict[str, tuple[tuple[str, str, str], ...]] = {
    **dict.fromkeys(
        """llama mistral mixtral qwen2 qwen3 qwen2_moe qwen3_moe deepseek_v3 gemma gemma2 gemma3_text phi3
        olmo olmo2 cohere cohere2 granite granitemoe jamba bamba lfm2 smollm3 gpt_oss phi stablelm starcoder2
        glm4 exaone4 olmoe qwen3_next granitemoehybrid falcon_h1""".split(),
        _TEXT_DECODER,
    ),
    "gpt2": (("text_decoder", "transformer.h", "n_layer"),),
    "gpt_neo": (("text_decoder", "transformer.h", "num_layers"),),
    "gptj": (("text_decoder", "transformer.h", "n_layer"),),
    "falcon": (("text_decoder", "transformer.h", "num_hidden_layers"),),
    "gpt_neox": (("text_decoder", "gpt_neox.layers", "num_hidden_layers"),),
    "mamba": (("text_decoder", "backbone.layers", "num_hidden_layers"),),
    "nemotron_h": (("text_decoder", "backbone.layers", "layers_block_type"),),
    # the text model of Gemma3nForConditionalGeneration checkpoints, whose names it keeps
    "gemma3n": (("text_decoder", "model.language_model.layers", "num_hidden_layers"),),
    "bert": (("text_encoder", "bert.encoder.layer", "num_hidden_layers"),),
    "roberta": (("text_encoder", "roberta.encoder.layer", "num_hidden_layers"),),
    "xlm-roberta": (("text_encoder", "roberta.encoder.layer", "num_hidden_layers"),),
    "modernbert": (("text_encoder", "model.layers", "num_hidden_layers"),),
    "t5": (("encoder", "encoder.block", "num_layers"), ("decoder", "decoder.block", "num_decoder_layers")),
    "t5_gated": (("encoder", "encoder.block", "num_layers"), ("decoder", "decoder.block", "num_decoder_layers")),
    "whisper": (
        ("encoder", "model.encoder.layers", "encoder_layers"),
        ("decoder", "model.decoder.layers", "decoder_layers"),
    ),
    # pinned: transformers 5's in-memory names (real llava-1.5 files: those of llava_deep)
    "llava": _vlm("model.language_model.layers", "model.vision_tower.encoder.layers"),
    "llava_deep": _vlm("language_model.model.layers", "vision_tower.vision_model.encoder.layers"),
    "gemma3": _vlm("language_model.model.layers", "vision_tower.vision_model.encoder.layers"),
    "mistral3": _vlm("language_model.model.layers", "vision_tower.transformer.layers"),
    "llama4": _vlm("language_model.model.layers", "vision_model.model.layers"),
    "qwen2_vl": _vlm("model.layers", "visual.blocks", "vision_config.depth"),
    "qwen2_5_vl": _vlm("model.layers", "visual.blocks", "vision_config.depth"),
    # Qwen3-VL files keep transformers 5's names; deepstack_merger_list holds one merger (not a layer) per
    # entry of deepstack_visual_indexes, numbered like a stack
    "qwen3_vl": (
        *_vlm("model.language_model.layers", "model.visual.blocks", "vision_config.depth"),
        ("vision_deepstack", "model.visual.deepstack_merger_list", "vision_config.deepstack_visual_indexes"),
    ),
    "smolvlm": _vlm("model.text_model.layers", "model.vision_model.encoder.layers"),
    "qwen2_audio": (
        ("text_decoder", "language_model.model.layers", "text_config.num_hidden_layers"),
        ("audio_tower", "audio_tower.layers", "audio_config.encoder_layers"),
    ),
    # text layers 1 and 3 are cross-attention layers, counted in num_hidden_layers
    "mllama": (
        *_vlm("language_model.model.layers", "vision_model.transformer.layers"),
        ("vision_global", "vision_model.global_transformer.layers", "vision_config.num_global_layers"),
    ),
}


def build_model(
    folder: Path,
    arch: str = "mistral",
    *,
    layers: int = 4,
    tied: bool = False,
    vocab: int = 128,
    max_shard_bytes: int = 5 * 10**9,
    fmt: str = "safetensors",
    dtype: str = "BF16",
    seed: int = 0,
) -> Path:
    """Write a random model of `arch` into `folder` (config.json + weights) and return the folder."""
    config = _config(arch, layers=layers, tied=tied, vocab=vocab)
    tensors = [SyntheticTensor(name, shape, dtype) for name, shape in _state_shapes(arch, config)]
    if fmt == "safetensors":
        write_synthetic_model(folder, config.to_dict(), tensors, seed=seed, max_shard_bytes=max_shard_bytes)
    elif fmt == "bin":
        _write_bin(folder, config.to_dict(), tensors, seed)
    else:
        raise ValueError(fmt)
    return folder


def _config(arch: str, *, layers: int, tied: bool, vocab: int):
    from transformers import AutoConfig

    kwargs = copy.deepcopy(ARCHITECTURES[arch])
    layered = LAYERED[arch](layers) if arch in LAYERED else {LAYER_KEY.get(arch, "num_hidden_layers"): layers}
    if "text_config" in kwargs:  # the vocabulary and layer count belong to the text model
        kwargs["text_config"].update(vocab_size=vocab, **layered)
        if arch not in _PINNED:
            kwargs["text_config"]["tie_word_embeddings"] = tied
    else:
        kwargs.update(layered)
    config = AutoConfig.for_model(MODEL_TYPE.get(arch, arch), vocab_size=vocab, tie_word_embeddings=tied, **kwargs)
    if arch not in _PINNED:
        # T5Config forces tie_word_embeddings=True; untied T5 checkpoints (v1.1, flan-t5) say false and
        # carry lm_head.weight, which transformers 5 then loads untied
        config.tie_word_embeddings = tied
    config.architectures = [_causal_lm_class(arch)]
    return config


def _causal_lm_class(arch: str) -> str:
    return _model_class(arch).__name__


def _model_class(arch: str):
    """The class that AUTO_CLASS[arch] loads `arch`'s config with."""
    import transformers
    from transformers import AutoConfig

    auto = getattr(transformers, AUTO_CLASS[arch])
    return auto._model_mapping[type(AutoConfig.for_model(MODEL_TYPE.get(arch, arch)))]


# tensors that real checkpoints leave out even untied: T5's encoder and decoder read `shared` (flan-t5
# files hold shared.weight and lm_head.weight); transformers 5 ties them back on load
_SHARED = {arch: {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"} for arch in ("t5", "t5_gated")}


def _meta_model(arch: str, config):
    import torch

    with torch.device("meta"):
        return _model_class(arch)._from_config(config)


def _state_shapes(arch: str, config) -> list[tuple[str, tuple[int, ...]]]:
    model = _meta_model(arch, config)
    tied = set(model.all_tied_weights_keys) | _SHARED.get(arch, set())  # tied by transformers; not saved
    state = {name: t for name, t in model.state_dict().items() if name not in tied}
    return [(name, tuple(t.shape)) for name, t in _saved_names(arch, model, state).items()]


def _saved_names(arch: str, model, state: dict) -> dict:
    """`state` (in-memory names) under the names save_pretrained writes."""
    if arch not in _PINNED:
        # the names real checkpoints carry, as save_pretrained writes back a model from_pretrained loaded:
        # transformers 5 renames and fuses some on load (per-expert MoE tensors -> one 3D tensor,
        # language_model.model.* -> model.language_model.*, vision_tower.vision_model.* -> vision_tower.*)
        # and reverts that on save. A model built from scratch would drop the prefix changes
        # (vision_model., gemma3n's language_model.); with the loading mapping attached, save keeps them.
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import revert_weight_conversion

        model._weight_conversions = get_model_conversion_mapping(model, add_legacy=False)
        state = revert_weight_conversion(model, state)
    return state


def derived_stacks(arch: str, layers: int = 4) -> list[tuple[str, str, str]]:
    """(in-memory prefix, prefix as saved, config key path) of each stack of `arch`'s model, found in
    transformers alone (the oracle for STACKS): the top-level nn.ModuleLists on the meta device whose
    length some count in the config equals and, raised by one, lengthens by one. A list with one entry
    per layer counts by its length."""
    import re

    config = _config(arch, layers=layers, tied=False, vocab=128)
    model = _meta_model(arch, config)
    lengths = _layer_lists(model)
    stacks = []
    for path, count in _counts(config.to_dict()):
        if count not in lengths.values():
            continue
        for prefix in sorted(_lengthened(arch, config, path, count)):
            if lengths.get(prefix) == count:
                # the saved prefix: layer 0's tensors under the names save_pretrained writes
                layer0 = {n: t for n, t in model.state_dict().items() if n.startswith(f"{prefix}.0.")}
                (saved,) = {re.match(r"(.*?)\.0\.", n).group(1) for n in _saved_names(arch, model, layer0)}
                stacks.append((prefix, saved, path))
    return stacks


def _layer_lists(model) -> dict[str, int]:
    """In-memory name -> length of each non-empty nn.ModuleList outside any numbered layer."""
    import re

    from torch import nn

    return {
        name: len(module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) and not re.search(r"\.\d+(\.|$)", name)
    }


def _counts(config: dict, prefix: str = ""):
    """(key path, count) of the config's integers and lists, sub-configs included."""
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _counts(value, f"{prefix}{key}.")
        elif isinstance(value, list) or (isinstance(value, int) and not isinstance(value, bool)):
            yield f"{prefix}{key}", len(value) if isinstance(value, list) else value


def _lengthened(arch: str, config, path: str, count: int) -> set[str]:
    """The layer lists of length count + 1 once the count at `path` is count + 1. A config that
    refuses that alone (gemma3n: layer_types must match) gets its sibling per-layer lists grown too."""
    import functools

    def grow(value):  # a per-layer list grows by the entry two back, keeping a period-2 pattern
        return value + (value[-2:-1] or value[-1:]) if isinstance(value, list) else value + 1

    *parents, key = path.split(".")
    for siblings in (False, True):
        grown = copy.deepcopy(config)
        owner = functools.reduce(getattr, parents, grown)
        try:
            if siblings:
                for name, value in owner.to_dict().items():
                    if name != key and isinstance(value, list) and len(value) == count:
                        setattr(owner, name, grow(value))
            setattr(owner, key, grow(getattr(owner, key)))
            return {p for p, n in _layer_lists(_meta_model(arch, grown)).items() if n == count + 1}
        except Exception:  # noqa: BLE001 - a config or model refusing the change: not this count
            continue
    return set()


class ModelCache:
    """build_model(arch, ...) once per (arch, layers, tied, vocab, seed), each under `root`.
    Callers must not write into the folders it returns: other tests read them."""

    def __init__(self, root: Path):
        self.root = root
        self._built: dict[tuple[str, int, bool, int, int], Path] = {}

    def __call__(self, arch: str, *, layers: int = 4, tied: bool = False, vocab: int = 128, seed: int = 0) -> Path:
        key = (arch, layers, tied, vocab, seed)
        if key not in self._built:
            folder = self.root / f"{arch}-{layers}{'-tied' if tied else ''}-v{vocab}-s{seed}"
            self._built[key] = build_model(folder, arch, layers=layers, tied=tied, vocab=vocab, seed=seed)
        return self._built[key]


_SESSION: list[ModelCache] = []


def session_cache(root: Path | None = None) -> ModelCache:
    """The process's one ModelCache: under `root` when the first call gives one (tests/conftest.py's
    model_cache fixture gives pytest's session folder), else under a temporary folder removed at exit."""
    if not _SESSION:
        if root is None:
            import atexit
            import shutil
            import tempfile

            root = Path(tempfile.mkdtemp(prefix="mergesmith-models-"))
            atexit.register(shutil.rmtree, root, ignore_errors=True)
        _SESSION.append(ModelCache(root))
    return _SESSION[0]


def cached_model(arch: str, *, layers: int = 4, tied: bool = False, vocab: int = 128, seed: int = 0) -> Path:
    """build_model(arch, ...) built once per test session (per process); see session_cache."""
    return session_cache()(arch, layers=layers, tied=tied, vocab=vocab, seed=seed)


def _write_bin(folder: Path, config: dict, tensors: list[SyntheticTensor], seed: int) -> None:
    import torch

    from mergesmith.dtypes import torch_dtype

    folder.mkdir(parents=True, exist_ok=True)
    state = {t.output: random_values(t.output, t.shape, seed=seed).to(torch_dtype(t.written_dtype)) for t in tensors}
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def derive_model(source: Path, folder: Path, *, seed: int, scale: float = 0.01) -> Path:
    """A "fine-tune" of `source`: every floating tensor plus seeded noise N(0, scale²)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = load_file(source / "model.safetensors")
    generator = torch.Generator().manual_seed(seed)
    for name in sorted(tensors):
        t = tensors[name]
        if t.is_floating_point():
            noise = standard_normal(t.shape, generator) * scale
            tensors[name] = (t.float() + noise).to(t.dtype)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    shutil.copy(source / "config.json", folder / "config.json")
    return folder


def lora_adapter(base: Path, folder: Path, arch: str, *, seed: int, **settings: Any) -> Path:
    """A PEFT LoRA adapter of `base` saved into `folder`, with random (nonzero) A and B:
    `settings` are peft.LoraConfig's (r, lora_alpha, target_modules, rank_pattern, ...)."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    auto = getattr(transformers, AUTO_CLASS[arch])
    model = auto.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(init_lora_weights=False, **settings))
    with torch.no_grad():  # PEFT's non-default init leaves B small; make the change clearly visible
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                param.normal_(0.0, 0.05)
    peft_model.save_pretrained(folder)
    return folder


HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill_cache(cache: Path, repo_id: str, model: Path, *, ref: str = "main", skip: tuple[str, ...] = ()) -> Path:
    """Lay out `model`'s files as huggingface_hub's cache holds a downloaded snapshot."""
    import shutil

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / HUB_COMMIT
    snapshot.mkdir(parents=True)
    for path in model.iterdir():
        if path.name not in skip:
            shutil.copy(path, snapshot / path.name)
    (repo / "refs").mkdir()
    (repo / "refs" / ref).write_text(HUB_COMMIT)
    return snapshot


# A synthetic byte-free BPE vocabulary of 64 tokens: 3 specials, the 26 letters, 35 letter pairs.
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
PAIRS = tuple(
    "th he in er an re on at en nd ti es or te of ed is it al ar st to nt ng se ha as ou io le ve co me de hi".split()
)


def write_tokenizer(
    folder: Path,
    *,
    added: tuple[str, ...] = (),
    chat_template: str | None = None,
    eos: tuple[str, ...] = ("</s>",),
) -> Path:
    """Write tokenizer files (tokenizer.json, tokenizer_config.json, ...) and generation_config.json:
    the 64-token vocabulary, then `added` special tokens (ids 64, 65, ...)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *letters, *PAIRS])}
    merges = [(pair[0], pair[1]) for pair in PAIRS]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tokenizer.add_special_tokens({"additional_special_tokens": list(added)})
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    ids = tokenizer.get_vocab()
    eos_ids = [ids[t] for t in eos]
    generation = {"bos_token_id": ids["<s>"], "eos_token_id": eos_ids[0] if len(eos_ids) == 1 else eos_ids}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))
    return folder


def resize_vocabulary(source: Path, folder: Path, rows: int, *, seed: int, scale: float = 0.01) -> Path:
    """A "fine-tune" of `source` (seeded noise) whose embeddings and lm_head have `rows` rows: rows
    beyond the source's are new random ones. Copies the config with vocab_size = rows."""
    import torch
    from safetensors.torch import load_file, save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = load_file(source / "model.safetensors")
    generator = torch.Generator().manual_seed(seed)
    for name in sorted(tensors):
        t = tensors[name]
        if not t.is_floating_point():
            continue
        t = t.float() + standard_normal(t.shape, generator) * scale
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            extra = standard_normal((max(rows - t.shape[0], 0), *t.shape[1:]), generator) * 0.02
            t = torch.cat([t[:rows], extra])
        tensors[name] = t.to(tensors[name].dtype)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((source / "config.json").read_text())
    config["vocab_size"] = rows
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


# Block-scaled FP8 checkpoints (DeepSeek-V3, Qwen3-FP8), made here in plain torch loops: the tests'
# inputs and oracles for mergesmith's checkpoints/fp8.py, which they must not share code with.
FP8_MAX = 448.0
QUANTIZATION = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic"}


def reference_quantize(weight, block: tuple[int, int]):
    """DeepSeek-V3's scheme, one block at a time: scale = amax / 448, values = weight / scale
    clamped to +-448 (an all-zero block: scale 1). Returns (values float8_e4m3fn, scales float32)."""
    import math

    import torch

    rows, cols = weight.shape
    scales = torch.empty(math.ceil(rows / block[0]), math.ceil(cols / block[1]))
    values = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(scales.shape[0]):
        for j in range(scales.shape[1]):
            tile = weight[i * block[0] : (i + 1) * block[0], j * block[1] : (j + 1) * block[1]].float()
            amax = tile.abs().max()
            scales[i, j] = amax / FP8_MAX if amax > 0 else 1.0
            quantized = (tile / scales[i, j]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
            values[i * block[0] : (i + 1) * block[0], j * block[1] : (j + 1) * block[1]] = quantized
    return values, scales


def reference_dequantize(values, scales, block: tuple[int, int]):
    """Each block's FP8 values times its scale, in float32."""
    import torch

    out = torch.empty(values.shape)
    for i in range(scales.shape[0]):
        for j in range(scales.shape[1]):
            rows, cols = slice(i * block[0], (i + 1) * block[0]), slice(j * block[1], (j + 1) * block[1])
            out[rows, cols] = values[rows, cols].float() * scales[i, j]
    return out


def is_fp8_quantized(name: str, tensor) -> bool:
    """What fp8_model quantizes: every Linear weight of the layers; norms, embeddings, lm_head stay."""
    return ".layers." in name and tensor.ndim == 2


def fp8_model(source: Path, folder: Path, block: tuple[int, int], **quantization: Any) -> Path:
    """`source` (a model folder) with its layer weights quantized in blocks of `block`: the
    checkpoint a DeepSeek-style FP8 release is, config.json's quantization_config included."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(source / "model.safetensors")
    out = {}
    for name, tensor in tensors.items():
        if is_fp8_quantized(name, tensor):
            out[name], out[name + "_scale_inv"] = reference_quantize(tensor, block)
        else:
            out[name] = tensor
    folder.mkdir(parents=True)
    save_file(out, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((source / "config.json").read_text())
    config["quantization_config"] = {**QUANTIZATION, "weight_block_size": list(block), **quantization}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def build_wide_model(folder: Path, *, layers: int = 24, hidden: int = 512, seed: int = 0) -> Path:
    """A Mistral-shaped model wide enough (about 160 MB in bf16 by default) that merging it takes
    seconds, not milliseconds: what a test that watches or cancels a running merge needs."""
    from mergesmith.synthetic import llama_style_tensors, mistral_config

    config = mistral_config(layers=layers, hidden=hidden, intermediate=hidden * 7 // 2, heads=8, kv_heads=2, vocab=1024)
    return write_synthetic_model(folder, config, llama_style_tensors(config), seed=seed)
