"""Passthrough merges on tiny random models, each output tensor checked against plain torch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mergesmith.api import merge, plan
from mergesmith.errors import PlanError, RecipeError
from mergesmith.execute import MergeOptions


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    result = {}
    for path in sorted(folder.glob("*.safetensors")):
        result.update(load_file(path))
    return result


def run(tmp_path: Path, recipe: str, models: dict[str, Path], **options) -> Path:
    (tmp_path / "recipe.yaml").write_text(recipe)
    out = tmp_path / "out"
    merge(tmp_path / "recipe.yaml", out, model_paths=models, options=MergeOptions(**options))
    return out


@pytest.mark.parametrize(
    "dtype, out_dtype, compute, written",
    [
        ("float32", "bfloat16", torch.float32, torch.bfloat16),
        ("float32", None, torch.float32, torch.float32),
        ("float16", "bfloat16", torch.float16, torch.bfloat16),  # float16 rounds small values differently
        (None, None, torch.bfloat16, torch.bfloat16),  # the checkpoint's own dtype
    ],
)
def test_scale_is_applied_in_the_load_dtype_then_cast(tmp_path, make_model, dtype, out_dtype, compute, written):
    src = make_model("m", layers=2)
    recipe = (
        "slices: [{sources: [{model: m, layer_range: [0, 2], parameters: {scale: [{filter: o_proj, value: 1.1}]}}]}]\n"
    )
    recipe += (
        "merge_method: passthrough\n"
        + (f"dtype: {dtype}\n" if dtype else "")
        + (f"out_dtype: {out_dtype}\n" if out_dtype else "")
    )
    out, inp = tensors(run(tmp_path, recipe, {"m": src})), tensors(src)
    scaled, plain = "model.layers.1.self_attn.o_proj.weight", "model.layers.1.self_attn.q_proj.weight"
    assert torch.equal(out[scaled], (inp[scaled].to(compute) * 1.1).to(written))
    assert torch.equal(out[plain], inp[plain].to(compute).to(written))
    if compute == torch.float16:  # the test tells dtypes apart only if the answers differ
        assert not torch.equal(out[scaled], (inp[scaled] * 1.1).to(written))


def test_layers_are_renumbered_and_a_layer_can_repeat(tmp_path, make_model):
    src = make_model("m", layers=4)
    recipe = "slices:\n- sources: [{model: m, layer_range: [0, 2]}]\n- sources: [{model: m, layer_range: [1, 3]}]\nmerge_method: passthrough\n"
    out_dir = run(tmp_path, recipe, {"m": src})
    out, inp = tensors(out_dir), tensors(src)
    for out_layer, src_layer in enumerate([0, 1, 1, 2]):
        for name in ("mlp.down_proj.weight", "self_attn.q_proj.weight", "input_layernorm.weight"):
            assert torch.equal(out[f"model.layers.{out_layer}.{name}"], inp[f"model.layers.{src_layer}.{name}"])
    assert not any(n.startswith("model.layers.4.") for n in out)
    assert json.loads((out_dir / "config.json").read_text())["num_hidden_layers"] == 4


@pytest.mark.parametrize("shard_bytes", [5 * 10**9, 30_000])  # one shard; copies across shards
def test_a_repeated_layer_is_read_once_for_all_its_copies(tmp_path, make_model, monkeypatch, shard_bytes):
    """Depth up-scaling reads each input tensor once: layer 1 goes to three outputs (one scaled),
    layer 2 to two; every byte of the input is read exactly once (by either reading path)."""
    from mergesmith.execute import routes

    src = make_model("m", layers=4)
    recipe = (
        "slices:\n- sources: [{model: m, layer_range: [0, 2]}]\n"
        "- sources: [{model: m, layer_range: [1, 3], parameters: {scale: [{filter: o_proj, value: 2.0}]}}]\n"
        "- sources: [{model: m, layer_range: [1, 3]}]\nmerge_method: passthrough\n"
    )
    read: dict[str, int] = {}  # input tensor -> bytes of it read from its file
    read_into, read_bytes = routes.read_into, routes.read_tensor_bytes

    def counting_read_into(info, view, offset=0):
        read[info.name] = read.get(info.name, 0) + len(view)
        return read_into(info, view, offset)

    def counting_read_bytes(info, offset=0, nbytes=None):
        data = read_bytes(info, offset, nbytes)
        read[info.name] = read.get(info.name, 0) + len(data)
        return data

    monkeypatch.setattr(routes, "read_into", counting_read_into)
    monkeypatch.setattr(routes, "read_tensor_bytes", counting_read_bytes)
    out_dir = run(tmp_path, recipe, {"m": src}, workers=2, out_shard_bytes=shard_bytes)
    shards = len(list(out_dir.glob("*.safetensors")))
    assert shards == 1 if shard_bytes > 10**6 else shards > 2
    out, inp = tensors(out_dir), tensors(src)
    for out_layer, src_layer in enumerate([0, 1, 1, 2, 1, 2]):
        for name in ("mlp.down_proj.weight", "self_attn.q_proj.weight", "input_layernorm.weight"):
            assert torch.equal(out[f"model.layers.{out_layer}.{name}"], inp[f"model.layers.{src_layer}.{name}"])
        scaled = f"model.layers.{out_layer}.self_attn.o_proj.weight"
        factor = 2.0 if out_layer in (2, 3) else 1.0
        assert torch.equal(out[scaled], inp[f"model.layers.{src_layer}.self_attn.o_proj.weight"] * factor)
    used = {name: t.numel() * t.element_size() for name, t in inp.items() if ".layers.3." not in name}
    assert read == used


def test_embeddings_from_the_first_slice_head_from_the_last(tmp_path, make_model):
    a, b = make_model("a", layers=2, seed=1), make_model("b", layers=2, seed=2)
    recipe = "slices:\n- sources: [{model: a, layer_range: [0, 1]}]\n- sources: [{model: b, layer_range: [1, 2]}]\nmerge_method: passthrough\n"
    out, ta, tb = tensors(run(tmp_path, recipe, {"a": a, "b": b})), tensors(a), tensors(b)
    assert torch.equal(out["model.embed_tokens.weight"], ta["model.embed_tokens.weight"])
    assert torch.equal(out["model.norm.weight"], tb["model.norm.weight"])
    assert torch.equal(out["lm_head.weight"], tb["lm_head.weight"])
    assert torch.equal(out["model.layers.1.mlp.up_proj.weight"], tb["model.layers.1.mlp.up_proj.weight"])


@pytest.mark.parametrize(
    "first_tied, last_tied, expect_head",
    [(True, True, False), (False, True, False), (True, False, True), (False, False, True)],
)
def test_tied_embeddings_never_invent_a_head(tmp_path, make_model, first_tied, last_tied, expect_head):
    a = make_model("a", "llama", layers=2, tied=first_tied, seed=1)
    b = make_model("b", "llama", layers=2, tied=last_tied, seed=2)
    recipe = "slices:\n- sources: [{model: a, layer_range: [0, 1]}]\n- sources: [{model: b, layer_range: [1, 2]}]\nmerge_method: passthrough\n"
    out_dir = run(tmp_path, recipe, {"a": a, "b": b})
    assert ("lm_head.weight" in tensors(out_dir)) == expect_head
    assert json.loads((out_dir / "config.json").read_text())["tie_word_embeddings"] == (not expect_head)


def test_unmatched_tensors_are_copied_unchanged_and_scales_follow_filters(tmp_path, make_model):
    src = make_model("m", layers=3)
    recipe = """
slices:
  - sources: [{model: m, layer_range: [0, 3]}]
    parameters:
      scale:
        - {filter: down_proj, value: [1.0, 3.0]}
merge_method: passthrough
"""
    out, inp = tensors(run(tmp_path, recipe, {"m": src})), tensors(src)
    for layer, scale in enumerate([1.0, 2.0, 3.0]):
        name = f"model.layers.{layer}.mlp.down_proj.weight"
        assert torch.equal(out[name], inp[name] * scale), name
    for name in inp:
        if "down_proj" not in name:
            assert torch.equal(out[name], inp[name]), name


def test_shards_and_index(tmp_path, make_model):
    src = make_model("m", layers=4, vocab=512)
    recipe = "slices:\n- sources: [{model: m, layer_range: [0, 4]}]\nmerge_method: passthrough\n"
    out_dir = run(tmp_path, recipe, {"m": src}, out_shard_bytes=40_000)
    index = json.loads((out_dir / "model.safetensors.index.json").read_text())
    shards = sorted(out_dir.glob("model-*.safetensors"))
    assert len(shards) > 2 and set(index["weight_map"].values()) == {p.name for p in shards}
    out = tensors(out_dir)
    assert set(index["weight_map"]) == set(out) == set(tensors(src))
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in out.values())
    for shard in shards:
        data = sum(t.numel() * t.element_size() for t in load_file(shard).values())
        assert data <= 40_000 or len(load_file(shard)) == 1


def test_config_edits_layer_count_dtype_and_per_layer_lists(tmp_path, make_model):
    src = make_model("g", "gemma2", layers=6)
    config = json.loads((src / "config.json").read_text())
    config["layer_types"] = [f"type{i}" for i in range(6)]
    (src / "config.json").write_text(json.dumps(config))
    recipe = "slices:\n- sources: [{model: g, layer_range: [0, 2]}]\n- sources: [{model: g, layer_range: [3, 6]}]\nmerge_method: passthrough\ndtype: float32\n"
    out_config = json.loads((run(tmp_path, recipe, {"g": src}) / "config.json").read_text())
    assert out_config["num_hidden_layers"] == 5
    assert out_config["layer_types"] == ["type0", "type1", "type3", "type4", "type5"]
    assert out_config.get("dtype", out_config.get("torch_dtype")) == "float32"


def test_nested_text_config_layer_count(tmp_path, make_model):
    src = make_model("m", layers=4)
    config = json.loads((src / "config.json").read_text())
    config["text_config"] = {"num_hidden_layers": 4, "layer_types": ["a", "b", "c", "d"]}
    (src / "config.json").write_text(json.dumps(config))
    recipe = "slices:\n- sources: [{model: m, layer_range: [2, 4]}]\n- sources: [{model: m, layer_range: [0, 1]}]\nmerge_method: passthrough\n"
    out_config = json.loads((run(tmp_path, recipe, {"m": src}) / "config.json").read_text())
    assert out_config["num_hidden_layers"] == 3
    assert out_config["text_config"] == {"num_hidden_layers": 3, "layer_types": ["c", "d", "a"]}


def test_bin_and_sharded_inputs(tmp_path, make_model):
    binary = make_model("bin", layers=2, fmt="bin")
    sharded = make_model("sharded", layers=2, max_shard_bytes=5_000, seed=3)
    assert (sharded / "model.safetensors.index.json").is_file()
    recipe = "slices:\n- sources: [{model: bin, layer_range: [0, 1]}]\n- sources: [{model: sharded, layer_range: [1, 2]}]\nmerge_method: passthrough\n"
    out = tensors(run(tmp_path, recipe, {"bin": binary, "sharded": sharded}))
    state = torch.load(binary / "pytorch_model.bin", weights_only=True)
    assert torch.equal(out["model.layers.0.mlp.up_proj.weight"], state["model.layers.0.mlp.up_proj.weight"])
    assert torch.equal(out["lm_head.weight"], tensors(sharded)["lm_head.weight"])


def test_model_card_and_saved_recipe(tmp_path, make_model):
    hub_named, local = make_model("h", layers=2), make_model("l", layers=2, seed=5)
    recipe = (
        f"slices:\n- sources: [{{model: org/hub-model, layer_range: [0, 1]}}]\n"
        f"- sources: [{{model: {local}, layer_range: [1, 2]}}]\nmerge_method: passthrough\n"
    )
    out_dir = run(tmp_path, recipe, {"org/hub-model": hub_named})
    card = (out_dir / "README.md").read_text()
    assert card.startswith(
        "---\nbase_model:\n- org/hub-model\nlibrary_name: transformers\ntags:\n- merge\n- mergesmith\n---\n"
    )
    for heading in ("## Merge Details", "### Merge Method", "### Models Merged", "### Configuration"):
        assert heading in card
    assert "using the Passthrough merge method" in card
    assert "* [org/hub-model](https://huggingface.co/org/hub-model)" in card and f"* {local}\n" in card
    assert f"```yaml\n{recipe.rstrip()}\n```" in card
    assert (out_dir / "mergesmith_config.yml").read_text() == recipe


def test_donor_files_are_copied_from_the_first_model(tmp_path, make_model):
    a, b = make_model("a", layers=2), make_model("b", layers=2, seed=1)
    (a / "generation_config.json").write_text('{"eos_token_id": [2, 7]}')
    (a / "tokenizer_config.json").write_text('{"name": "a"}')
    (b / "tokenizer_config.json").write_text('{"name": "b"}')
    recipe = "slices:\n- sources: [{model: b, layer_range: [0, 1]}]\n- sources: [{model: a, layer_range: [1, 2]}]\nmerge_method: passthrough\n"
    out_dir = run(tmp_path, recipe, {"a": a, "b": b})
    assert (out_dir / "tokenizer_config.json").read_text() == '{"name": "b"}'  # b is named first
    assert not (out_dir / "generation_config.json").exists()  # b has none; a's is not mixed in


def test_plan_reads_headers_only(tmp_path, make_model):
    src = make_model("m", layers=4, vocab=8192)  # about 2.6 MB of weights
    weights = (src / "model.safetensors").stat().st_size
    (tmp_path / "recipe.yaml").write_text(
        "slices:\n- sources: [{model: m, layer_range: [0, 4], parameters: {scale: 2.0}}]\nmerge_method: passthrough\n"
    )
    before = _bytes_read()
    result = plan(tmp_path / "recipe.yaml", model_paths={"m": src})
    assert _bytes_read() - before < weights / 20
    assert len(result.entries) == len(tensors(src))


def _bytes_read() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.mark.parametrize(
    "recipe, error, message",
    [
        (
            "slices:\n- sources: [{model: m, layer_range: [2, 5]}]\nmerge_method: passthrough\n",
            RecipeError,
            "slices[0].sources[0].layer_range: [2, 5] reaches layer 4, but m has 4 layers (0-3)\n"
            "  hint: layer_range is half-open: [2, 4] already includes layer 3",
        ),
        (
            "slices:\n- sources: [{model: m, layer_range: [3, 1]}]\nmerge_method: passthrough\n",
            RecipeError,
            "slices[0].sources[0].layer_range: [3, 1] is empty or negative\n"
            "  hint: layer_range is [first, last + 1]: [0, 4] means layers 0, 1, 2 and 3",
        ),
        (
            "slices:\n- sources: [{model: m, layer_range: [0, 1], parameters: {scael: 2}}]\nmerge_method: passthrough\n",
            RecipeError,
            "slices[0].sources[0].parameters.scael: passthrough has no parameter 'scael'\n  hint: did you mean 'scale'?",
        ),
        (
            "slices:\n- sources: [{model: m, layer_range: [0, 1]}, {model: m2, layer_range: [1, 2]}]\nmerge_method: passthrough\n",
            PlanError,
            "slices[0]: passthrough takes exactly 1 model per slice, found 2 (m, m2)\n"
            "  hint: passthrough copies one model per slice: give each source its own slice",
        ),
    ],
)
def test_bad_recipes_fail_at_plan_time_naming_the_key(tmp_path, make_model, recipe, error, message):
    src = make_model("m", layers=4)
    (tmp_path / "recipe.yaml").write_text(recipe)
    with pytest.raises(error) as err:
        plan(tmp_path / "recipe.yaml", model_paths={"m": src, "m2": src})
    assert str(err.value) == message
