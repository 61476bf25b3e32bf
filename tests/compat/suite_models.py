"""The input models of the mergekit-suite scenarios, built from the one fixture factory.

Each stands in for a model that mergekit 0.1.5's own tests build (tests/common.py, test_tokenizer.py,
test_embedding_truncation.py, ...): same architecture, layer count and vocabulary shape, our seeded
values. Names are what the scenarios' recipes write ("suite/a"); mergekit gets them substituted by
folder paths (make_compat_expected.py), mergesmith reads them through model_paths.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS / "golden"))

from models import folder_digest, tensor_digests  # noqa: E402,F401  (re-exported for the suite)

from factory import build_model, write_tokenizer  # noqa: E402

CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
UNUSED_TOKENS = tuple(f"<UNUSED_{i}>" for i in range(4))
EXTRA_TOKENS = tuple(f"<extra_{i}>" for i in range(8))  # 64 + 8: a tokenizer for 72 rows


def _picollama(folder: Path, seed: int, *, vocab: int = 64) -> Path:
    # mergekit's make_picollama: llama, 2 layers, float32 (save_pretrained's default)
    return build_model(folder, "llama", layers=2, vocab=vocab, dtype="F32", seed=seed)


def _mixed_precision(folder: Path, seed: int) -> Path:
    """A picollama saved in bfloat16 except its norms, kept float32 (test_merge_dtypes.py)."""
    from safetensors.torch import load_file, save_file

    model = _picollama(folder, seed)
    path = model / "model.safetensors"
    tensors = load_file(path)
    tensors = {name: t if "norm" in name else t.bfloat16() for name, t in tensors.items()}
    save_file(tensors, path, metadata={"format": "pt"})
    return model


def _short_head(folder: Path, seed: int) -> Path:
    """64 embedding rows but a 63-row lm_head (test_embedding_truncation.py, independent truncation)."""
    from safetensors.torch import load_file, save_file

    model = _with_tokenizer(_picollama(folder, seed))
    path = model / "model.safetensors"
    tensors = load_file(path)
    tensors["lm_head.weight"] = tensors["lm_head.weight"][:63].clone()
    save_file(tensors, path, metadata={"format": "pt"})
    return model


def _with_tokenizer(model: Path, added: tuple[str, ...] = ()) -> Path:
    return write_tokenizer(model, added=added)


def _out_of_range_metadata(folder: Path, seed: int) -> Path:
    """72 rows, a 72-token tokenizer, and eos ids that only the 72-row vocabulary has."""
    model = _with_tokenizer(_picollama(folder, seed, vocab=72), EXTRA_TOKENS)
    config = json.loads((model / "config.json").read_text())
    config["eos_token_id"] = 71
    (model / "config.json").write_text(json.dumps(config, indent=2))
    generation = {"eos_token_id": [2, 71], "sequence_bias": [[[71], 1.0]]}
    (model / "generation_config.json").write_text(json.dumps(generation))
    return model


# name -> how to build it into a folder
BUILDERS: dict[str, Callable[[Path], Path]] = {
    # test_basic_merges.py: three independent picollamas, a 12-layer gpt2, granites, llavas
    "suite/a": lambda f: _picollama(f, 1),
    "suite/b": lambda f: _picollama(f, 2),
    "suite/c": lambda f: _picollama(f, 3),
    "suite/gpt2": lambda f: build_model(f, "gpt2", layers=12, vocab=64, dtype="F32", seed=4),
    "suite/granite_a": lambda f: build_model(f, "granite", layers=2, vocab=64, dtype="F32", seed=5),
    "suite/granite_b": lambda f: build_model(f, "granite", layers=2, vocab=64, dtype="F32", seed=6),
    "suite/vlm_a": lambda f: build_model(f, "llava", layers=2, vocab=64, dtype="F32", seed=7),
    "suite/vlm_b": lambda f: build_model(f, "llava", layers=2, vocab=64, dtype="F32", seed=8),
    "suite/vlm_c": lambda f: build_model(f, "llava", layers=2, vocab=64, dtype="F32", seed=9),
    # test_tokenizer.py / test_chat_template.py: a 64-token base, a chatml model with 66 rows, a
    # model whose tokenizer has 4 unused tokens beyond its 64 rows
    "suite/tok_base": lambda f: _with_tokenizer(_picollama(f, 10)),
    "suite/tok_chatml": lambda f: _with_tokenizer(_picollama(f, 11, vocab=66), CHAT_TOKENS),
    "suite/tok_padded": lambda f: _with_tokenizer(_picollama(f, 12), UNUSED_TOKENS),
    # test_embedding_truncation.py: vocab 8 and 10 there, 64 and 72 rows here
    "suite/small": lambda f: _with_tokenizer(_picollama(f, 13)),
    "suite/large": lambda f: _with_tokenizer(_picollama(f, 14, vocab=72)),
    "suite/large_tok": lambda f: _with_tokenizer(_picollama(f, 15, vocab=72), EXTRA_TOKENS),
    "suite/large_eos": lambda f: _out_of_range_metadata(f, 16),
    "suite/small_head": lambda f: _short_head(f, 17),
    "suite/small_bare": lambda f: _picollama(f, 18),
    "suite/large_bare": lambda f: _picollama(f, 19, vocab=72),
    # test_merge_dtypes.py: bfloat16 weights with float32 norms, and a float32 model
    "suite/mixed": lambda f: _mixed_precision(f, 20),
    "suite/f32": lambda f: _picollama(f, 21),
    # multi-module models (not in mergekit's own tests): T5 v1.1 (gated-GELU, untied), LLaVA with the
    # names real llava-1.5 files carry (language_model.model.*, a CLIP tower deeper than the text
    # stack), Whisper; 2 layers per stack (llava_deep's tower: 6), float32
    "suite/t5_a": lambda f: build_model(f, "t5_gated", layers=2, vocab=64, dtype="F32", seed=22),
    "suite/t5_b": lambda f: build_model(f, "t5_gated", layers=2, vocab=64, dtype="F32", seed=23),
    "suite/llava_deep_a": lambda f: build_model(f, "llava_deep", layers=2, vocab=64, dtype="F32", seed=24),
    "suite/llava_deep_b": lambda f: build_model(f, "llava_deep", layers=2, vocab=64, dtype="F32", seed=25),
    "suite/whisper_a": lambda f: build_model(f, "whisper", layers=2, vocab=64, dtype="F32", seed=26),
    "suite/whisper_b": lambda f: build_model(f, "whisper", layers=2, vocab=64, dtype="F32", seed=27),
}


def build_inputs(folder: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Build the named models (all when None) under `folder`; name -> model folder."""
    return {name: BUILDERS[name](folder / name.replace("/", "--")) for name in names or BUILDERS}
