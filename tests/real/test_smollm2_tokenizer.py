"""SmolLM2-135M and a variant with two added special tokens, merged back with `union`: the merge
loads in transformers, chats through its template and stops at its end-of-turn token."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from factory import resize_vocabulary
from mergesmith.api import merge

ADDED = ("<|tool_call|>", "<|tool_result|>")


@pytest.mark.real_model
def test_union_merge_of_an_extended_vocabulary_chats_and_stops(smollm2, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = json.loads((smollm2 / "config.json").read_text())["vocab_size"]
    variant = resize_vocabulary(smollm2, tmp_path / "variant", rows + len(ADDED), seed=7, scale=0.002)
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    tokenizer.add_special_tokens({"additional_special_tokens": list(ADDED)})
    tokenizer.save_pretrained(variant)
    (variant / "generation_config.json").write_bytes((smollm2 / "generation_config.json").read_bytes())

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "models:\n  - {model: smollm2, parameters: {weight: 0.5}}\n  - {model: variant, parameters: {weight: 0.5}}\n"
        "merge_method: linear\ntokenizer_source: union\ndtype: bfloat16\n"
    )
    out = merge(recipe, tmp_path / "out", model_paths={"smollm2": smollm2, "variant": variant}).out

    with safe_open(out / "model.safetensors", "pt") as f:
        embed = f.get_tensor("model.embed_tokens.weight")
    with safe_open(variant / "model.safetensors", "pt") as f:
        variant_embed = f.get_tensor("model.embed_tokens.weight")
    assert embed.shape[0] == rows + 2
    # only the variant has the new tokens: their rows are its rows (averaged with themselves)
    assert torch.equal(embed[rows:], variant_embed[rows:])

    merged_tokenizer = AutoTokenizer.from_pretrained(out)
    assert [merged_tokenizer.convert_tokens_to_ids(t) for t in ADDED] == [rows, rows + 1]
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert model.config.vocab_size == rows + 2
    prompt = merged_tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    generated = model.generate(**prompt, max_new_tokens=60, do_sample=False)[0, prompt["input_ids"].shape[1] :]
    eos = model.generation_config.eos_token_id
    assert merged_tokenizer.convert_ids_to_tokens(eos) == "<|im_end|>"
    assert generated[-1].item() == eos and len(generated) < 60, merged_tokenizer.decode(generated)
    assert "Paris" in merged_tokenizer.decode(generated)
