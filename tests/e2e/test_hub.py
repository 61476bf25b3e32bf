"""Hub model ids through a pre-filled local cache, offline: revisions, and only the needed shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from factory import fill_cache


def run_cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent / "hf-home")}
    return subprocess.run([sys.executable, "-m", "mergesmith.cli", *args], capture_output=True, text=True, env=env)


def test_hub_id_from_the_offline_cache_fetches_only_needed_shards(tmp_path, make_model):
    model = make_model("m", layers=4, max_shard_bytes=6_000)
    (model / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    (model / "generation_config.json").write_text('{"eos_token_id": [2, 3]}')
    index = json.loads((model / "model.safetensors.index.json").read_text())
    last_layer_shards = {f for n, f in index["weight_map"].items() if n.startswith("model.layers.3.")}
    needed = {f for n, f in index["weight_map"].items() if not n.startswith("model.layers.3.")}
    unused = tuple(last_layer_shards - needed)
    assert unused, "the fixture should put layer 3 in a shard of its own"
    fill_cache(tmp_path / "hub", "org/tiny", model, skip=unused)  # as if never downloaded

    (tmp_path / "r.yaml").write_text(
        "slices:\n- sources: [{model: org/tiny, layer_range: [0, 3]}]\nmerge_method: passthrough\n"
    )
    result = run_cli("merge", str(tmp_path / "r.yaml"), str(tmp_path / "out"), cache=tmp_path / "hub")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    merged = {}
    for shard in out.glob("*.safetensors"):
        merged.update(load_file(shard))
    assert len(merged) == 3 + 3 * 9
    first_shard = index["weight_map"]["model.embed_tokens.weight"]
    assert torch.equal(merged["model.embed_tokens.weight"], load_file(model / first_shard)["model.embed_tokens.weight"])
    assert json.loads((out / "generation_config.json").read_text()) == {"eos_token_id": [2, 3]}
    assert (out / "tokenizer_config.json").is_file()
    assert "base_model:\n- org/tiny\n" in (out / "README.md").read_text()


def test_revision_is_honoured(tmp_path, make_model):
    model = make_model("m", layers=2)
    fill_cache(tmp_path / "hub", "org/tiny", model, ref="v1")
    (tmp_path / "r.yaml").write_text(
        "slices:\n- sources: [{model: org/tiny@v1, layer_range: [0, 1]}]\nmerge_method: passthrough\n"
    )
    result = run_cli("plan", str(tmp_path / "r.yaml"), cache=tmp_path / "hub")
    assert result.returncode == 0, result.stderr
    assert "org/tiny@v1:model.layers.0.mlp.up_proj.weight" in result.stdout

    (tmp_path / "r2.yaml").write_text(
        "slices:\n- sources: [{model: org/tiny@v2, layer_range: [0, 1]}]\nmerge_method: passthrough\n"
    )
    result = run_cli("plan", str(tmp_path / "r2.yaml"), cache=tmp_path / "hub")
    assert result.returncode == 1
    assert "error: model 'org/tiny@v2': not in the local hub cache, and the hub cannot be reached" in result.stderr
    assert "hint: download it first, or map it to a folder with --model-path org/tiny=DIR" in result.stderr
    assert "Traceback" not in result.stderr
