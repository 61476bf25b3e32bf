"""A red-team pass on the structure finder (checkpoints/structure.py), `modules:` recipes and the
output config of multi-stack and mixed-depth merges, through `mergesmith merge` / `plan`. Each case
here was found wrong: a corrupt output written with exit 0, or a refusal that named no real key.
Oracles: the source tensors, the sources' config.json, transformers loading the output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from factory import AUTO_CLASS, cached_model
from mergesmith.cli import main

LLAVA_VISION = "model.vision_tower.encoder.layers"


def run(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, capsys.readouterr().err


def merge(tmp_path: Path, recipe: str, models: dict[str, Path], capsys) -> tuple[int, str, Path]:
    (tmp_path / "r.yaml").write_text(recipe)
    out = tmp_path / "out"
    paths = [a for name, folder in models.items() for a in ("--model-path", f"{name}={folder}")]
    code, err = run(["merge", str(tmp_path / "r.yaml"), str(out), *paths], capsys)
    return code, err, out


def refused(code: int, err: str, out: Path, *expected: str) -> None:
    assert code == 1, err
    assert "Traceback" not in err and err.count("error:") == 1, err
    for part in expected:
        assert part in err, f"{part!r} not in:\n{err}"
    assert not out.exists() and not list(out.parent.glob(f"{out.name}*"))


def loads_cleanly(out: Path, arch: str) -> None:
    auto = getattr(transformers, AUTO_CLASS[arch])
    _, info = auto.from_pretrained(out, output_loading_info=True, dtype=torch.float32)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info


def renamed(source: Path, folder: Path, rename) -> Path:
    """A copy of `source` whose tensor names pass through rename (None drops the tensor)."""
    shutil.copytree(source, folder)
    tensors = load_file(folder / "model.safetensors")
    kept = {rename(n): t for n, t in tensors.items() if rename(n) is not None}
    save_file(kept, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


# --- layer indices with a leading zero: "01" read as layer 1, written back as "1"


def test_leading_zero_index_is_not_a_layer_number(tmp_path, capsys):
    # model.layers.01.* was read as layer 1 and planned as model.layers.1.*, which the model lacks
    folder = renamed(cached_model("llama"), tmp_path / "a", lambda n: n.replace("model.layers.1.", "model.layers.01."))
    code, err, out = merge(tmp_path, "models: [{model: a}]\nmerge_method: passthrough\n", {"a": folder}, capsys)
    refused(
        code,
        err,
        out,
        "model 'a': layer 1 has no tensors, but the tensor names go up to layer 3 (1 of 4 layers have none)",
    )


def test_leading_zero_copies_beside_the_layers_stay_apart(tmp_path, capsys):
    # with both model.layers.1.x and model.layers.01.x, layer 1 listed each tensor twice: the plan
    # wrote model.layers.1.x twice, and the output file had holes that safetensors refuses (exit 0)
    source = cached_model("llama")
    folder = renamed(source, tmp_path / "a", lambda n: n)
    tensors = load_file(folder / "model.safetensors")
    copies = {n.replace(".layers.1.", ".layers.01."): t * 2 for n, t in tensors.items() if ".layers.1." in n}
    save_file({**tensors, **copies}, folder / "model.safetensors", metadata={"format": "pt"})
    code, err, out = merge(tmp_path, "models: [{model: a}]\nmerge_method: passthrough\n", {"a": folder}, capsys)
    assert code == 0, err
    merged = load_file(out / "model.safetensors")  # safetensors refused the file before the fix
    assert merged.keys() == {**tensors, **copies}.keys()
    for name, tensor in {**tensors, **copies}.items():
        assert torch.equal(merged[name], tensor), name


# --- modules: a module named twice, once by mergekit's alias


def test_module_named_by_its_alias_and_its_name_is_refused(tmp_path, capsys):
    # default and text_decoder both built the text decoder: every tensor of it was written twice,
    # and the output file had holes that safetensors refuses (exit 0)
    a = cached_model("llava")
    recipe = (
        "modules:\n  default: {models: [{model: a}]}\n  text_decoder: {models: [{model: a}]}\n"
        "  vision_tower: {models: [{model: a}]}\n  multi_modal_projector: {models: [{model: a}]}\n"
        "merge_method: passthrough\n"
    )
    code, err, out = merge(tmp_path, recipe, {"a": a}, capsys)
    refused(
        code,
        err,
        out,
        "modules.text_decoder: module 'text_decoder' is built by modules.default already",
        "hint: list each module once ('default' is mergekit's name for the text_decoder)",
    )


# --- a tower's config part: its layer count keys were read, but never checked (text_config's are)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda c: c["vision_config"].update(num_hidden_layers="2"),
            'vision_config.num_hidden_layers is a string ("2")',
        ),
        (lambda c: c["vision_config"].update(num_hidden_layers=True), "vision_config.num_hidden_layers is true"),
        (
            lambda c: c["vision_config"].update(num_hidden_layers=-2),
            "vision_config.num_hidden_layers is an integer (-2)",
        ),
        (
            lambda c: c["vision_config"].update(num_hidden_layers=2.0),
            "vision_config.num_hidden_layers is a number (2.0)",
        ),
        (lambda c: c.update(vision_config=[c["vision_config"]]), "vision_config is a list"),
        (
            lambda c: c.update(vision_config="clip"),
            'vision_config is a string ("clip"), expected an object of settings',
        ),
    ],
    ids=["string", "bool", "negative", "float", "list", "name"],
)
def test_vision_config_count_of_the_wrong_type_is_refused(tmp_path, capsys, change, expected):
    # each was merged with exit 0 into an output transformers cannot build, and verify passed it
    folder = shutil.copytree(cached_model("llava"), tmp_path / "a")
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))
    code, err, out = merge(tmp_path, "models: [{model: a}]\nmerge_method: passthrough\n", {"a": folder}, capsys)
    refused(code, err, out, f"model 'a': {folder / 'config.json'}: {expected}", "hint: fix vision_config")


def test_audio_config_count_of_the_wrong_type_is_refused(tmp_path, capsys):
    folder = shutil.copytree(cached_model("qwen2_audio"), tmp_path / "a")
    config = json.loads((folder / "config.json").read_text())
    config["audio_config"]["encoder_layers"] = "4"
    (folder / "config.json").write_text(json.dumps(config))
    code, err, out = merge(tmp_path, "models: [{model: a}]\nmerge_method: passthrough\n", {"a": folder}, capsys)
    refused(
        code, err, out, 'config.json: audio_config.encoder_layers is a string ("4"), expected a whole number of layers'
    )


# --- a frankenmerge taking layers beyond the donor's depth from a deeper model: the output's
# per-layer config was remapped against the donor's layer count, refusing a plain Llama merge


def test_layers_beyond_the_donors_depth_from_a_deeper_llama_merge(tmp_path, capsys):
    shallow, deep = cached_model("llama", layers=4), cached_model("llama", layers=6, seed=1)
    recipe = """
merge_method: passthrough
dtype: float32
slices:
  - sources: [{model: shallow, layer_range: [0, 3]}]
  - sources: [{model: deep, layer_range: [4, 6]}]
"""
    code, err, out = merge(tmp_path, recipe, {"shallow": shallow, "deep": deep}, capsys)
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 5
    written, source = load_file(out / "model.safetensors"), load_file(deep / "model.safetensors")
    assert torch.equal(written["model.layers.4.mlp.down_proj.weight"], source["model.layers.5.mlp.down_proj.weight"])
    loads_cleanly(out, "llama")


def test_layers_beyond_the_donors_depth_take_the_config_of_a_donor_layer_built_alike(tmp_path, capsys):
    # gemma2 alternates sliding and full attention: the deep model's layer 5 is a full-attention
    # layer, described in the output like the donor's layer 1 (also full attention)
    shallow, deep = cached_model("gemma2", layers=4), cached_model("gemma2", layers=6, seed=1)
    recipe = """
merge_method: passthrough
dtype: float32
slices:
  - sources: [{model: shallow, layer_range: [0, 2]}]
  - sources: [{model: deep, layer_range: [4, 6]}]
"""
    code, err, out = merge(tmp_path, recipe, {"shallow": shallow, "deep": deep}, capsys)
    assert code == 0, err
    deep_types = json.loads((deep / "config.json").read_text())["layer_types"]
    shallow_types = json.loads((shallow / "config.json").read_text())["layer_types"]
    written = json.loads((out / "config.json").read_text())
    assert written["num_hidden_layers"] == 4
    assert written["layer_types"] == shallow_types[:2] + deep_types[4:6]
    loads_cleanly(out, "gemma2")
