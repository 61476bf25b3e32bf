"""Models of several stacks (a vision-language model): which stack plain slices cut, `modules:`
recipes, and each stack's own gradient positions. Oracles: the source tensors, plain torch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from factory import derive_model
from mergesmith.api import merge, plan
from mergesmith.errors import RecipeError

TEXT = "model.language_model.layers"
VISION = "model.vision_tower.encoder.layers"


def _run(tmp_path: Path, recipe: str, models: dict[str, Path]) -> Path:
    (tmp_path / "r.yaml").write_text(recipe)
    out = tmp_path / "out"
    merge(tmp_path / "r.yaml", out, model_paths=models)
    return out


def _loads_cleanly(out: Path) -> None:
    _, info = AutoModelForImageTextToText.from_pretrained(out, output_loading_info=True, dtype=torch.float32)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info


def test_plain_slices_cut_the_text_model_and_copy_the_vision_tower(tmp_path, make_model):
    src = make_model("v", "llava", layers=4)
    recipe = (
        "slices:\n- sources: [{model: v, layer_range: [0, 2]}]\n- sources: [{model: v, layer_range: [1, 2]}]\n"
        "- sources: [{model: v, layer_range: [3, 4]}]\nmerge_method: passthrough\n"
    )
    out = _run(tmp_path, recipe, {"v": src})
    merged, source = load_file(out / "model.safetensors"), load_file(src / "model.safetensors")
    for out_layer, src_layer in enumerate([0, 1, 1, 3]):
        names = [n for n in source if n.startswith(f"{TEXT}.{src_layer}.")]
        for name in names:
            assert torch.equal(merged[name.replace(f".{src_layer}.", f".{out_layer}.", 1)], source[name])
    not_text = [n for n in source if not n.startswith(TEXT + ".")]
    assert any(n.startswith(VISION) for n in not_text)
    for name in not_text:  # the vision tower, projector, embeddings and head, unchanged
        assert torch.equal(merged[name], source[name]), name
    assert set(merged) == {n for n in source if not n.startswith(f"{TEXT}.2.")} | {
        n.replace(f"{TEXT}.1.", f"{TEXT}.2.") for n in source if n.startswith(f"{TEXT}.1.")
    }
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["num_hidden_layers"] == 4
    assert config["vision_config"]["num_hidden_layers"] == 2  # the vision tower's own count, untouched
    _loads_cleanly(out)


def test_plan_names_the_module_each_part_of_the_recipe_builds(tmp_path, make_model):
    src = make_model("v", "llava", layers=4)
    (tmp_path / "r.yaml").write_text(
        "slices:\n- sources: [{model: v, layer_range: [0, 3]}]\nmerge_method: passthrough\n"
    )
    result = plan(tmp_path / "r.yaml", model_paths={"v": src})
    assert [(m.name, m.built_from, m.layers) for m in result.modules] == [
        ("text_decoder", "slices", 3),
        ("vision_tower", "slices[0]'s models, whole", 2),
        ("multi_modal_projector", "slices[0]'s models, whole", 0),
    ]


def test_modules_recipe_builds_each_module_its_own_way(tmp_path, make_model):
    a = make_model("a", "llava", layers=4)
    b = derive_model(a, tmp_path / "models" / "b", seed=1)
    recipe = """
modules:
  text_decoder:
    slices:
    - sources: [{model: a, layer_range: [0, 2]}]
    - sources: [{model: b, layer_range: [2, 4]}]
  vision_tower:
    models:
    - {model: a, parameters: {weight: 0.25}}
    - {model: b, parameters: {weight: 0.75}}
  multi_modal_projector:
    models:
    - {model: b, parameters: {weight: 1.0}}
merge_method: linear
parameters: {weight: 1.0}
dtype: float32
out_dtype: bfloat16
"""
    out = _run(tmp_path, recipe, {"a": a, "b": b})
    merged, ta, tb = (
        load_file(out / "model.safetensors"),
        load_file(a / "model.safetensors"),
        load_file(b / "model.safetensors"),
    )
    vision = [n for n in ta if n.startswith("model.vision_tower.")]
    assert len(vision) > 10
    for name in vision:  # linear: (0.25 a + 0.75 b) / (0.25 + 0.75), in float32, written bf16
        expected = ((0.25 * ta[name].float() + 0.75 * tb[name].float()) / 1.0).to(torch.bfloat16)
        assert torch.equal(merged[name], expected), name
    for name in (n for n in ta if n.startswith("model.multi_modal_projector.")):
        assert torch.equal(merged[name], tb[name]), name
    for out_layer, (model, src_layer) in enumerate([(ta, 0), (ta, 1), (tb, 2), (tb, 3)]):
        for name in (n for n in model if n.startswith(f"{TEXT}.{src_layer}.")):
            assert torch.equal(merged[name.replace(f".{src_layer}.", f".{out_layer}.", 1)], model[name])
    # embeddings come from the text module's first slice (a), the head from its last (b)
    assert torch.equal(
        merged["model.language_model.embed_tokens.weight"], ta["model.language_model.embed_tokens.weight"]
    )
    assert torch.equal(merged["lm_head.weight"], tb["lm_head.weight"])
    _loads_cleanly(out)


def test_each_stack_has_its_own_gradient_positions(tmp_path, make_model):
    src = make_model("v", "llava", layers=3)
    recipe = "models:\n- model: v\n  parameters: {scale: [1.0, 2.0]}\nmerge_method: passthrough\n"
    out = _run(tmp_path, recipe, {"v": src})
    merged, source = load_file(out / "model.safetensors"), load_file(src / "model.safetensors")
    # t runs 0..1 over each stack's own layers: text layers 0, 1, 2 -> 1.0, 1.5, 2.0; vision 0, 1 -> 1.0, 2.0
    for prefix, scales in ((TEXT, [1.0, 1.5, 2.0]), (VISION, [1.0, 2.0])):
        for layer, scale in enumerate(scales):
            for name in (n for n in source if n.startswith(f"{prefix}.{layer}.")):
                expected = (source[name].float() * scale).to(torch.bfloat16)
                assert torch.equal(merged[name], expected), (name, scale)


@pytest.mark.parametrize(
    ("modules", "message"),
    [
        (
            "  text_decoder:\n    models: [{model: v}]\n",
            "modules: the recipe builds text_decoder but not vision_tower, multi_modal_projector; "
            "the output would lack those tensors",
        ),
        ("  vision_towr:\n    models: [{model: v}]\n", "modules.vision_towr: the models have no module 'vision_towr'"),
        (
            "  text_decoder:\n    models: [{model: v}]\n  vision_tower:\n    models: [{model: v}]\n"
            "  multi_modal_projector:\n    slices: [{sources: [{model: v, layer_range: [0, 2]}]}]\n",
            "modules.multi_modal_projector.slices: module 'multi_modal_projector' has no numbered layers "
            "for a layer_range to count",
        ),
    ],
    ids=["missing", "unknown", "projector-slices"],
)
def test_modules_recipe_errors(tmp_path, make_model, modules, message):
    src = make_model("v", "llava", layers=2)
    (tmp_path / "r.yaml").write_text(f"modules:\n{modules}merge_method: passthrough\n")
    with pytest.raises(RecipeError) as err:
        plan(tmp_path / "r.yaml", model_paths={"v": src})
    assert err.value.message == message


def test_cli_plan_prints_the_modules_first(tmp_path, make_model, capsys):
    from mergesmith.cli import main

    src = make_model("v", "llava", layers=4)
    (tmp_path / "r.yaml").write_text(
        "slices:\n- sources: [{model: v, layer_range: [1, 4]}]\nmerge_method: passthrough\n"
    )
    with pytest.raises(SystemExit) as exit_:
        main(["plan", str(tmp_path / "r.yaml"), "--model-path", f"v={src}"])
    assert exit_.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [
        "module text_decoder: 3 layers, from slices",
        "module vision_tower: 2 layers, from slices[0]'s models, whole",
        "module multi_modal_projector: 0 layers, from slices[0]'s models, whole",
    ]


def test_plain_slices_of_an_encoder_decoder_are_refused(tmp_path):
    from factory import cached_model

    (tmp_path / "r.yaml").write_text(
        "slices:\n- sources: [{model: t, layer_range: [0, 2]}]\nmerge_method: passthrough\n"
    )
    with pytest.raises(RecipeError) as err:
        plan(tmp_path / "r.yaml", model_paths={"t": cached_model("t5")})
    assert err.value.message == (
        "slices: an encoder-decoder model has two stacks of layers (encoder and decoder); "
        "plain slices cannot say which one their layer_range counts"
    )
    assert err.value.hint.startswith("write the recipe with modules: (encoder:")


def _linear(ta: dict, tb: dict, name: str, wa: float, wb: float) -> torch.Tensor:
    return ((wa * ta[name].float() + wb * tb[name].float()) / (wa + wb)).to(torch.bfloat16)


def test_mergekit_layer_prefix_names_with_default_holding_everything_outside_the_layers(tmp_path, make_model):
    # mergekit names the modules of a model it has no file for by their layer prefix; "default" is
    # then every tensor outside the layers: embeddings, norms, head, projector, vision embeddings
    a = make_model("a", "llava", layers=2)
    b = derive_model(a, tmp_path / "models" / "b", seed=1)
    recipe = f"""
modules:
  {TEXT}:
    models: [{{model: a, parameters: {{weight: 0.25}}}}, {{model: b, parameters: {{weight: 0.75}}}}]
  {VISION}:
    models: [{{model: a, parameters: {{weight: 0.5}}}}, {{model: b, parameters: {{weight: 0.5}}}}]
  default:
    models: [{{model: a, parameters: {{weight: 0.875}}}}, {{model: b, parameters: {{weight: 0.125}}}}]
merge_method: linear
dtype: float32
out_dtype: bfloat16
"""
    out = _run(tmp_path, recipe, {"a": a, "b": b})
    merged, ta, tb = (load_file(p / "model.safetensors") for p in (out, a, b))
    assert set(merged) == set(ta)
    for name in ta:
        weights = (
            (0.25, 0.75)
            if name.startswith(TEXT + ".")
            else (0.5, 0.5)
            if name.startswith(VISION + ".")
            else (0.875, 0.125)
        )
        assert torch.equal(merged[name], _linear(ta, tb, name, *weights)), name
    _loads_cleanly(out)


def test_mergekit_layer_prefix_names_without_default_are_refused(tmp_path, make_model):
    src = make_model("v", "llava", layers=2)
    (tmp_path / "r.yaml").write_text(
        f"modules:\n  {TEXT}: {{models: [{{model: v}}]}}\n  {VISION}: {{models: [{{model: v}}]}}\nmerge_method: passthrough\n"
    )
    with pytest.raises(RecipeError) as err:
        plan(tmp_path / "r.yaml", model_paths={"v": src})
    assert err.value.message == (
        f"modules: the recipe builds {TEXT}, {VISION} but not text_decoder's tensors outside its layers, "
        "vision_tower's tensors outside its layers, multi_modal_projector; the output would lack those tensors"
    )


def test_t5_shared_module_holds_the_tensors_outside_both_stacks(tmp_path):
    # mergekit's T5 file: encoder, decoder and "shared" (shared.weight, lm_head.weight)
    from factory import cached_model

    a = cached_model("t5_gated")
    b = derive_model(a, tmp_path / "models" / "b", seed=1)
    recipe = """
modules:
  encoder:
    models: [{model: a, parameters: {weight: 0.25}}, {model: b, parameters: {weight: 0.75}}]
  decoder:
    slices:
    - sources: [{model: a, layer_range: [0, 2], parameters: {weight: 0.625}}, {model: b, layer_range: [0, 2], parameters: {weight: 0.375}}]
  shared:
    models: [{model: a, parameters: {weight: 0.875}}, {model: b, parameters: {weight: 0.125}}]
merge_method: linear
dtype: float32
out_dtype: bfloat16
"""
    out = _run(tmp_path, recipe, {"a": a, "b": b})
    merged, ta, tb = (load_file(p / "model.safetensors") for p in (out, a, b))
    assert {"shared.weight", "lm_head.weight"} <= set(ta)
    kept = {n for n in ta if not n.startswith("decoder.block.") or int(n.split(".")[2]) < 2}
    assert set(merged) == kept
    for name in kept:
        weights = (
            (0.25, 0.75)
            if name.startswith("encoder.")
            else (0.625, 0.375)
            if name.startswith("decoder.")
            else (0.875, 0.125)
        )
        assert torch.equal(merged[name], _linear(ta, tb, name, *weights)), name


def test_a_tensor_named_by_two_schemes_is_refused(tmp_path, make_model):
    src = make_model("v", "llava", layers=2)
    (tmp_path / "r.yaml").write_text(
        f"modules:\n  text_decoder: {{models: [{{model: v}}]}}\n  {VISION}: {{models: [{{model: v}}]}}\n"
        "  default: {models: [{model: v}]}\nmerge_method: passthrough\n"
    )
    with pytest.raises(RecipeError) as err:
        plan(tmp_path / "r.yaml", model_paths={"v": src})
    assert err.value.message == (
        "modules.default builds the text_decoder's model.language_model.embed_tokens.weight, "
        "which modules.text_decoder builds already"
    )
