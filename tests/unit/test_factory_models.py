"""Every fixture architecture builds, and its transformers Auto class loads it with every key in place."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from factory import ARCHITECTURES, AUTO_CLASS, cached_model

# configs the golden tests pin as they were written, token ids outside the vocabulary included
PINNED_TOKEN_IDS = {"gpt2", "llava"}


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


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_builds_and_loads(arch):
    folder = cached_model(arch)
    config = json.loads((folder / "config.json").read_text())
    assert sum(p.stat().st_size for p in folder.glob("*.safetensors")) < 1_000_000
    if arch not in PINNED_TOKEN_IDS:
        assert [(k, v) for k, v in _token_ids(config) if not 0 <= v < 128] == []
    model = _load(folder, arch)
    assert type(model).__name__ == config["architectures"][0]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_tied_builds_and_loads(arch):
    model = _load(cached_model(arch, tied=True), arch)
    if model.all_tied_weights_keys:  # the architecture can tie: the file left the copy out, loading tied it
        output, embed = model.get_output_embeddings(), model.get_input_embeddings()
        assert output.weight.data_ptr() == embed.weight.data_ptr()
