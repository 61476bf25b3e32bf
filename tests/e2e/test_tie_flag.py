"""The output's tie_word_embeddings follows the architecture's tied tensors, not a prefix guess.

The oracle is transformers itself: the source model is built and saved by it, and the merged folder
must load with nothing missing or newly initialised and give the source model's logits.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import LlamaForCausalLM, LlavaForConditionalGeneration, RobertaConfig, RobertaForMaskedLM

from factory import _config
from mergesmith.api import merge
from mergesmith.verify import verify_folder

IDS = torch.tensor([[0, 5, 17, 3, 42, 9, 1, 2]])


def _roberta(tied: bool):
    config = RobertaConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=40,
        tie_word_embeddings=tied,
    )
    config.architectures = ["RobertaForMaskedLM"]
    return RobertaForMaskedLM(config)


def _llama(tied: bool):
    return LlamaForCausalLM(_config("llama", layers=2, tied=tied, vocab=128))


def _llava(tied: bool):
    return LlavaForConditionalGeneration(_config("llava", layers=2, tied=tied, vocab=128))


# (id, model builder, tied, save_original_format, the tied tensor the source folder holds or None)
CASES = [
    # the masked-LM head keeps lm_head.dense / layer_norm / bias; only lm_head.decoder.* is tied
    ("roberta-tied", _roberta, True, True, None),
    ("roberta-untied", _roberta, False, True, "lm_head.decoder.bias"),
    ("llama-tied", _llama, True, True, None),
    ("llama-untied", _llama, False, True, "lm_head.weight"),
    # LLaVA saved in its original layout (language_model.lm_head.weight) and in transformers 5's
    ("llava-tied", _llava, True, True, None),
    ("llava-untied-original-layout", _llava, False, True, "language_model.lm_head.weight"),
    ("llava-untied", _llava, False, False, "lm_head.weight"),
]


@pytest.mark.parametrize(
    ("build", "tied", "original_format", "tied_written"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_merged_model_loads_with_the_source_logits(tmp_path, build, tied, original_format, tied_written):
    torch.manual_seed(0)
    source = build(tied).eval()
    src = tmp_path / "src"
    source.save_pretrained(src, save_original_format=original_format)
    with safe_open(src / "model.safetensors", "pt") as f:
        assert tied_written is None or tied_written in f.keys()  # the case is what its id says
    (tmp_path / "r.yaml").write_text("models: [{model: a, parameters: {weight: 1.0}}]\nmerge_method: linear\n")
    out = tmp_path / "out"
    merge(tmp_path / "r.yaml", out, model_paths={"a": src})

    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is tied
    assert verify_folder(out).problems == []
    merged, info = type(source).from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    with torch.no_grad():
        assert torch.equal(merged.eval()(IDS).logits, source(IDS).logits)
