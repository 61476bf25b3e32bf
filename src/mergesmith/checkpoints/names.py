"""Tensor-name and config-key conventions across architectures, as data. One place for each."""

from __future__ import annotations

import re
from typing import Any

# "<prefix>.<N>.<rest>": model.layers.5.mlp.down_proj.weight, transformer.h.5.attn.c_attn.weight
# The index is ASCII digits, at most 9 of them: int() of a hostile 5000-digit index would raise. No
# leading zero: "01" is not layer 1, whose name the plan would write as "1" (a tensor read twice).
LAYER_NAME = re.compile(r"^(?P<prefix>.+?)\.(?P<index>0|[1-9][0-9]{0,8})\.(?P<rest>.+)$")

# Non-layer tensors whose name holds one of these come before the layers (embeddings); the other
# non-layer tensors (final norm, lm_head) come after them.
PRE_LAYER_MARKERS = ("embed", "wte", "wpe", "word_embeddings", "position_embeddings", "token_type_embeddings")

# The output projection of a causal LM; absent when it is tied to the input embeddings.
HEAD_PREFIXES = ("lm_head.", "embed_out.")

# Tensors that `tie_word_embeddings: true` replaces with the input embeddings, used when transformers
# cannot name them for the config's architecture (checkpoints/ties.py asks it first). Each is a key
# of a transformers class's `_tied_weights_keys`, or that key in an older checkpoint layout.
TIED_OUTPUT_NAMES = (
    "lm_head.weight",  # LlamaForCausalLM, MistralForCausalLM, GPT2LMHeadModel, LlavaForConditionalGeneration ...
    "embed_out.weight",  # GPTNeoXForCausalLM checkpoints (Pythia) name the head embed_out
    "language_model.lm_head.weight",  # LLaVA checkpoints saved before transformers 4.52
    "lm_head.decoder.weight",  # RobertaForMaskedLM, RobertaForCausalLM (tied to word_embeddings)
    "lm_head.decoder.bias",  # ... and its bias, tied to lm_head.bias
    "cls.predictions.decoder.weight",  # BertForMaskedLM, BertLMHeadModel, BertForPreTraining
    "cls.predictions.decoder.bias",  # ... and its bias, tied to cls.predictions.bias
)

# A block-scaled FP8 weight's scales are a tensor of its own, named after it (DeepSeek-V3, Qwen3-FP8,
# transformers' finegrained_fp8): model.layers.0.mlp.down_proj.weight -> ...down_proj.weight_scale_inv.
FP8_SCALE_SUFFIX = "_scale_inv"

# Tensors whose rows are tokens: input embeddings and the output projection.
VOCABULARY_MARKERS = ("embed_tokens", "wte", "word_embeddings")

# config.json / generation_config.json keys that hold token ids (an int or a list of ints).
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")

# config.json keys that hold the number of layers (Llama/Mistral/Qwen/Gemma/Phi: num_hidden_layers;
# GPT-2: n_layer; some others: num_layers, n_layers), also inside a nested "text_config".
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
NESTED_CONFIG_KEYS = ("text_config",)

# Stacks of layers besides the text decoder, by a word of their prefix (model.visual.blocks,
# model.vision_tower.vision_model.encoder.layers, model.audio_tower.layers); checked in this order.
STACK_ROLES = (
    ("vision_tower", ("vision", "visual", "image")),
    ("audio_tower", ("audio", "speech")),
)
# An encoder-decoder's (config is_encoder_decoder: T5, Whisper, BART) two stacks, by a word of the prefix.
ENCODER_DECODER_ROLES = ("encoder", "decoder")
# Tensors of the projector between a tower and the text model (LLaVA's multi_modal_projector,
# Qwen2-VL's visual.merger), by a word of their name: mergekit's `multi_modal_projector` module.
PROJECTOR_MARKERS = ("multi_modal_projector", "mm_projector", "merger", "connector")
# mergekit names the module of a single-module architecture "default".
MAIN_MODULE_ALIASES = ("default",)
# The config parts that describe a stack of each role, those present taken (none: the top level).
# A text model's count may be at the top and in text_config both (configs that mirror it).
ROLE_CONFIG_PARTS = {
    "text_decoder": (("text_config",), ()),
    "vision_tower": (("vision_config",),),
    "audio_tower": (("audio_config",),),
}
# The keys of that config part that count the stack's layers; every one equal to the count is kept
# in step with it (Whisper writes encoder_layers and num_hidden_layers, both the encoder's).
ROLE_COUNT_KEYS = {
    "text_decoder": LAYER_COUNT_KEYS,
    "vision_tower": ("depth", "num_hidden_layers", "num_layers", "num_global_layers"),
    "audio_tower": ("num_hidden_layers", "encoder_layers", "num_layers"),
    "encoder": ("encoder_layers", "num_layers", "num_hidden_layers"),  # T5's num_layers is its encoder's
    "decoder": ("decoder_layers", "num_decoder_layers"),
}
# A count key with one of these words counts only the stack whose prefix has it (Mllama's
# vision_config: num_global_layers for global_transformer.layers, num_hidden_layers for transformer.layers).
COUNT_KEY_WORDS = ("global",)

# Tensors that a stack's first layer holds for every layer: T5's relative position bias
# (encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight, in no other block). The
# output's first layer takes them from the first source's layer 0; no other output layer has them.
FIRST_LAYER_SHARED_MARKERS = ("relative_attention_bias",)
# Tensors outside the layers with one block per layer (Gemma 3n's embed_tokens_per_layer and
# per_layer_model_projection): their shape follows the layer count, so a cut cannot keep them.
PER_LAYER_BLOCK_MARKERS = ("per_layer",)

# config.json lists with one entry per layer, kept in step with the output's layer order.
PER_LAYER_KEYS = ("layer_types",)

# Files copied from the donor model (tokenizer, generation settings, chat templates).
TOKENIZER_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
)
# A slow tokenizer's files: left out when the merged vocabulary differs from the one they describe.
LEGACY_TOKENIZER_FILES = ("tokenizer.model", "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt")
GENERATION_FILES = ("generation_config.json",)
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
DONOR_FILES = TOKENIZER_FILES + GENERATION_FILES + CHAT_TEMPLATE_FILES

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
CONFIG = "config.json"


def shard_name(index: int, count: int) -> str:
    """transformers' shard naming: model-00001-of-00003.safetensors."""
    return SAFETENSORS_SINGLE if count == 1 else f"model-{index + 1:05d}-of-{count:05d}.safetensors"


def config_parts(config: dict[str, Any]) -> list[dict[str, Any]]:
    """A config and the nested configs (NESTED_CONFIG_KEYS) that hold the same kinds of keys."""
    return [config, *(config[k] for k in NESTED_CONFIG_KEYS if isinstance(config.get(k), dict))]


def is_head(name: str) -> bool:
    return name.startswith(HEAD_PREFIXES)


def is_vocabulary_tensor(name: str) -> bool:
    """Input embeddings and the output projection: one row per token."""
    return is_head(name) or (LAYER_NAME.match(name) is None and any(m in name for m in VOCABULARY_MARKERS))


# The modules whose weight has exactly one row per token of config.json's vocab_size (transformers
# builds them from it); `embed_tokens_per_layer` and the like are sized by other keys.
TOKEN_ROW_MODULES = ("embed_tokens", "wte", "word_embeddings", "lm_head", "embed_out")


# Input embeddings with rows beyond vocab_size, by config model_type: Mllama's text model builds
# embed_tokens with vocab_size + 8 rows (its image tokens; transformers' MllamaTextModel).
EXTRA_INPUT_EMBEDDING_ROWS = {"mllama": 8}


def token_rows(name: str, vocab_size: int, model_type: object) -> int:
    """The rows transformers builds a token-row tensor (is_token_rows) with for this vocab_size."""
    extra = EXTRA_INPUT_EMBEDDING_ROWS.get(model_type, 0) if isinstance(model_type, str) else 0
    return vocab_size + extra if name.split(".")[-2] in VOCABULARY_MARKERS else vocab_size


def is_token_rows(name: str) -> bool:
    """model.embed_tokens.weight, lm_head.weight, transformer.wte.weight: not layer tensors."""
    parts = name.split(".")
    return len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in TOKEN_ROW_MODULES and not LAYER_NAME.match(name)


def fp8_scale_name(tensor: str) -> str:
    """The name of an FP8 weight's block-scale tensor: `...proj.weight` -> `...proj.weight_scale_inv`."""
    return tensor + FP8_SCALE_SUFFIX
