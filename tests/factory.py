"""The one fixture factory: tiny random Hugging Face models of real architectures.

Names and shapes come from transformers itself (the model class built on the meta device), values
from mergesmith.synthetic's per-name seeded generator, so a model is the same bytes on every run.
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
LAYER_KEY = {"gpt2": "n_layer"}


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
    tensors = [SyntheticTensor(name, shape, dtype) for name, shape in _state_shapes(config)]
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
    if "text_config" in kwargs:  # the vocabulary and layer count belong to the text model
        kwargs["text_config"].update(vocab_size=vocab, num_hidden_layers=layers)
    else:
        kwargs[LAYER_KEY.get(arch, "num_hidden_layers")] = layers
    config = AutoConfig.for_model(arch, vocab_size=vocab, tie_word_embeddings=tied, **kwargs)
    config.architectures = [_causal_lm_class(arch)]
    return config


def _causal_lm_class(arch: str) -> str:
    return _model_class(arch).__name__


def _model_class(arch: str):
    """The causal LM class of `arch`, else its image-text-to-text class (llava)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config_class = type(AutoConfig.for_model(arch))
    if config_class in AutoModelForCausalLM._model_mapping:
        return AutoModelForCausalLM._model_mapping[config_class]
    return AutoModelForImageTextToText._model_mapping[config_class]


def _state_shapes(config) -> list[tuple[str, tuple[int, ...]]]:
    import torch

    with torch.device("meta"):
        model = _model_class(config.model_type)._from_config(config)
    state = model.state_dict()
    tied = set(model.all_tied_weights_keys)  # the tensors transformers ties (none when untied); not saved
    return [(name, tuple(t.shape)) for name, t in state.items() if name not in tied]


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
