"""Block-scaled FP8 checkpoints (DeepSeek-V3, Qwen3-FP8 layout) as inputs and as output.

The FP8 models are tiny Qwen3 models whose layer weights the factory quantizes block by block in
plain torch loops (factory.fp8_model, not mergesmith's code), in blocks of 24x24 that cut every
weight's last blocks short, or 16x16 where transformers must load the result (its dequantization
wants whole blocks). The same loops give the oracles: every output tensor is compared bit for bit
with the formula applied to the inputs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from factory import QUANTIZATION, fp8_model, is_fp8_quantized, reference_dequantize, reference_quantize
from mergesmith.api import merge, plan
from mergesmith.errors import CheckpointError, PlanError, RecipeError
from mergesmith.verify import verify_folder


def values_of(folder: Path, block: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """A model's tensors as their values: FP8 weights dequantized (float32) by the reference loops."""
    tensors = load_file(folder / "model.safetensors")
    out = {}
    for name, tensor in tensors.items():
        if name.endswith("_scale_inv"):
            continue
        if tensor.dtype == torch.float8_e4m3fn:
            assert block is not None
            out[name] = reference_dequantize(tensor, tensors[name + "_scale_inv"], block)
        else:
            out[name] = tensor
    return out


def read_output(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    return load_file(folder / "model.safetensors"), json.loads((folder / "config.json").read_text())


def write_recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def models(tmp_path, make_model):
    """Two tiny Qwen3 models (a "base" and a "fine-tune"), each in bf16 and as FP8 in 24x24 and 16x16 blocks."""
    from factory import derive_model

    base = make_model("base", "qwen3", layers=2)
    tune = derive_model(base, tmp_path / "models" / "tune", seed=1, scale=0.05)
    found = {"base": base, "tune": tune}
    for name, folder in [("base", base), ("tune", tune)]:
        found[f"{name}-fp8"] = fp8_model(folder, tmp_path / "models" / f"{name}-fp8", (24, 24))
        found[f"{name}-fp8-16"] = fp8_model(folder, tmp_path / "models" / f"{name}-fp8-16", (16, 16))
    return found


LINEAR = """merge_method: linear
models:
  - model: {a}
    parameters: {{weight: 0.5}}
  - model: {b}
    parameters: {{weight: 0.5}}
{extra}"""


def linear_recipe(tmp_path: Path, a: str, b: str, extra: str = "") -> Path:
    return write_recipe(tmp_path, LINEAR.format(a=a, b=b, extra=extra))


def half_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """linear with weights 0.5 and 0.5 in float32: each product exact, one rounding in the sum."""
    return a.float() * 0.5 + b.float() * 0.5


def test_linear_of_two_fp8_models_is_the_average_of_their_values(tmp_path, models, caplog):
    """No dtype: FP8 values are dequantized, cast to bfloat16 (said in a warning), averaged in
    float32 and written in bfloat16; no scales, no quantization_config."""
    recipe = linear_recipe(tmp_path, "base-fp8", "tune-fp8")
    with caplog.at_level(logging.WARNING, logger="mergesmith"):
        merge(recipe, tmp_path / "out", model_paths=models)
    assert "FP8 weights of base-fp8 are dequantized and merged in bfloat16, as the recipe sets no dtype" in caplog.text
    assert "FP8 weights of tune-fp8 are dequantized" in caplog.text
    a, b = values_of(models["base-fp8"], (24, 24)), values_of(models["tune-fp8"], (24, 24))
    out, config = read_output(tmp_path / "out")
    assert sorted(out) == sorted(a)  # no *_scale_inv
    for name, tensor in out.items():
        expected = half_sum(a[name].to(torch.bfloat16), b[name].to(torch.bfloat16)).to(torch.bfloat16)
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, expected), name
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"


def test_linear_in_float32_uses_the_exact_dequantized_values(tmp_path, models):
    recipe = linear_recipe(tmp_path, "base-fp8", "tune-fp8", "dtype: float32\nout_dtype: bfloat16\n")
    merge(recipe, tmp_path / "out", model_paths=models)
    a, b = values_of(models["base-fp8"], (24, 24)), values_of(models["tune-fp8"], (24, 24))
    out, config = read_output(tmp_path / "out")
    for name, tensor in out.items():
        assert torch.equal(tensor, half_sum(a[name], b[name]).to(torch.bfloat16)), name
    assert config["dtype"] == "bfloat16"


def test_passthrough_of_an_fp8_model_loads_in_transformers(tmp_path, models):
    """A frankenmerge of one FP8 model's layers (0, 1, 1) into bfloat16: a plain model that
    transformers loads with nothing missing or unexpected, holding the dequantized weights."""
    from transformers import AutoModelForCausalLM

    recipe = write_recipe(
        tmp_path,
        "merge_method: passthrough\nslices:\n"
        "  - sources: [{model: base-fp8, layer_range: [0, 2]}]\n"
        "  - sources: [{model: base-fp8, layer_range: [1, 2]}]\n",
    )
    merge(recipe, tmp_path / "out", model_paths=models)
    out, config = read_output(tmp_path / "out")
    source = values_of(models["base-fp8"], (24, 24))
    for name, tensor in out.items():
        name_in_source = name.replace("layers.2.", "layers.1.")
        assert torch.equal(tensor, source[name_in_source].to(torch.bfloat16)), name
    assert config["num_hidden_layers"] == 3 and "quantization_config" not in config
    model, info = AutoModelForCausalLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    state = model.state_dict()
    for name, tensor in out.items():
        assert torch.equal(state[name], tensor), name


def fp8_oracle(merged: dict[str, torch.Tensor], block: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The FP8 output the merged values should give: layer weights quantized by the reference loops."""
    expected = {}
    for name, tensor in merged.items():
        if is_fp8_quantized(name, tensor):
            expected[name], expected[name + "_scale_inv"] = reference_quantize(tensor.float(), block)
        else:
            expected[name] = tensor
    return expected


def assert_same_tensors(out: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(out) == sorted(expected)
    for name, tensor in out.items():
        want = expected[name]
        assert (tensor.dtype, tensor.shape) == (want.dtype, want.shape), name
        assert torch.equal(tensor.view(torch.uint8), want.view(torch.uint8)), name  # bytes: NaN-safe, FP8-safe


def test_fp8_output_is_the_merge_quantized_again_and_loads_in_transformers(tmp_path, models):
    """out_dtype float8_e4m3fn, dtype float32: the layer weights are the float32 average quantized
    in the donor's 16x16 blocks, each with its F32 scales; the rest float32; the donor's
    quantization_config. transformers (dequantizing on a CPU) loads exactly those values."""
    from transformers import AutoModelForCausalLM

    recipe = linear_recipe(tmp_path, "base-fp8-16", "tune-fp8-16", "dtype: float32\nout_dtype: float8_e4m3fn\n")
    merge(recipe, tmp_path / "out", model_paths=models)
    a, b = values_of(models["base-fp8-16"], (16, 16)), values_of(models["tune-fp8-16"], (16, 16))
    merged = {name: half_sum(a[name], b[name]) for name in a}
    out, config = read_output(tmp_path / "out")
    assert_same_tensors(out, fp8_oracle(merged, (16, 16)))
    assert out["model.layers.0.mlp.down_proj.weight_scale_inv"].shape == (2, 4)  # [32, 64] in 16x16 blocks
    donor = json.loads((models["base-fp8-16"] / "config.json").read_text())
    assert config["quantization_config"] == donor["quantization_config"] and config["dtype"] == "float32"
    model, info = AutoModelForCausalLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    state = model.state_dict()
    for name, tensor in out.items():
        if name.endswith("_scale_inv"):
            continue
        want = (
            reference_dequantize(tensor, out[name + "_scale_inv"], (16, 16))
            if tensor.dtype != torch.float32
            else tensor
        )
        assert torch.equal(state[name], want), name


def test_fp8_output_in_edge_blocks_from_bfloat16_values(tmp_path, models):
    """No dtype: the average is computed from bfloat16 values and written in bfloat16, then
    quantized in the donor's 24x24 blocks, whose last ones are cut short."""
    recipe = linear_recipe(tmp_path, "base-fp8", "tune-fp8", "out_dtype: fp8\n")
    merge(recipe, tmp_path / "out", model_paths=models)
    a, b = values_of(models["base-fp8"], (24, 24)), values_of(models["tune-fp8"], (24, 24))
    bf16 = torch.bfloat16
    merged = {name: half_sum(a[name].to(bf16), b[name].to(bf16)).to(bf16) for name in a}
    out, config = read_output(tmp_path / "out")
    assert_same_tensors(out, fp8_oracle(merged, (24, 24)))
    assert out["model.layers.0.mlp.down_proj.weight_scale_inv"].shape == (2, 3)  # [32, 64] in 24x24 blocks
    assert config["quantization_config"]["weight_block_size"] == [24, 24] and config["dtype"] == "bfloat16"
    report = verify_folder(tmp_path / "out", plan(recipe, model_paths=models))
    assert report.problems == [] and report.tensors == len(out)


def test_an_fp8_weight_and_its_scales_are_merged_once_or_each_alone(tmp_path, models):
    """The executor makes one unit of an FP8 weight's entry and its scales'; a unit of the scales
    alone (the weight in another shard of a Ray merge) merges the weight itself: the same scales."""
    from mergesmith.checkpoints import open_checkpoints
    from mergesmith.execute.routes import group_work, run_work
    from mergesmith.execute.tasks import TaskSettings
    from mergesmith.output.shards import ShardWriter, layout_shards

    recipe = linear_recipe(tmp_path, "base-fp8", "tune-fp8", "out_dtype: float8_e4m3fn\n")
    entries = plan(recipe, model_paths=models).entries
    units = group_work(entries)
    pairs = [unit for unit in units if unit[0].fp8 is not None]
    assert len(pairs) == 14 and all(
        [e.output for e in unit] == [unit[0].fp8.weight, unit[0].fp8.scales] for unit in pairs
    )
    assert len(units) == len(entries) - 14

    scales = pairs[0][1]
    checkpoints = open_checkpoints(["base-fp8", "tune-fp8"], models)
    inputs = {(s.model, t): checkpoints[s.model].tensor_info(t) for s in scales.sources for t in s.tensor_names}
    writer = ShardWriter([(tmp_path / "alone.safetensors", layout_shards([scales], 10**9).shard(0))])
    run_work((scales,), inputs, writer, TaskSettings(chunk_bytes=2**20, device="cpu", seed=0, sync=False))
    writer.close(sync=False)
    a, b = values_of(models["base-fp8"], (24, 24)), values_of(models["tune-fp8"], (24, 24))
    weight = scales.fp8.weight
    merged = half_sum(a[weight].to(torch.bfloat16), b[weight].to(torch.bfloat16)).to(torch.bfloat16)
    expected = reference_quantize(merged.float(), (24, 24))[1]
    written = load_file(tmp_path / "alone.safetensors")
    assert list(written) == [scales.output] and torch.equal(written[scales.output], expected)


def test_unchanged_fp8_passthrough_is_a_byte_copy(tmp_path, models, capsys):
    """An FP8 model passed through into FP8 of the same blocks: every tensor, weights and scales,
    the input's bytes (no dequantize-quantize round trip), every entry a copy."""
    recipe = write_recipe(
        tmp_path,
        "merge_method: passthrough\nout_dtype: float8_e4m3fn\nslices:\n"
        "  - sources: [{model: base-fp8, layer_range: [0, 2]}]\n",
    )
    planned = plan(recipe, model_paths=models)
    assert {entry.route for entry in planned.entries} == {"copy"}
    merge(recipe, tmp_path / "out", model_paths=models)
    out, config = read_output(tmp_path / "out")
    assert_same_tensors(out, load_file(models["base-fp8"] / "model.safetensors"))
    assert config["quantization_config"]["weight_block_size"] == [24, 24]


def test_fp8_model_merged_with_a_bfloat16_model(tmp_path, models):
    """DeepSeek-style FP8 base + a bf16 fine-tune: the FP8 model is dequantized, the other read as it is."""
    recipe = linear_recipe(tmp_path, "base-fp8", "tune")
    merge(recipe, tmp_path / "out", model_paths=models)
    a, b = values_of(models["base-fp8"], (24, 24)), values_of(models["tune"])
    out, config = read_output(tmp_path / "out")
    assert sorted(out) == sorted(b)
    for name, tensor in out.items():
        assert torch.equal(tensor, half_sum(a[name].to(torch.bfloat16), b[name]).to(torch.bfloat16)), name
    assert "quantization_config" not in config


def test_fp8_output_follows_the_donor_when_a_bfloat16_model_comes_first(tmp_path, models):
    """The FP8 donor (base_model) decides which tensors are FP8 in the output, even where the
    first model is a bf16 one and the other FP8 model has other blocks (16x16)."""
    extra = "  - model: base-fp8\n    parameters: {weight: 0.0}\nbase_model: base-fp8\nout_dtype: float8_e4m3fn\n"
    recipe = linear_recipe(tmp_path, "tune", "tune-fp8-16", extra)
    assert plan(recipe, model_paths=models).entries[5].sources[0].model == "tune"
    merge(recipe, tmp_path / "out", model_paths=models)
    a, b = values_of(models["tune"]), values_of(models["tune-fp8-16"], (16, 16))
    bf16 = torch.bfloat16
    merged = {name: half_sum(b[name].to(bf16), a[name]).to(bf16) for name in a}
    out, config = read_output(tmp_path / "out")
    assert_same_tensors(out, fp8_oracle(merged, (24, 24)))
    assert config["quantization_config"]["weight_block_size"] == [24, 24]


def damage(models: dict[str, Path], name: str, edit) -> dict[str, Path]:
    """A copy of the model set whose base-fp8 has `edit(tensors, config)` applied."""
    import shutil

    folder = models["base-fp8"].parent / name
    shutil.copytree(models["base-fp8"], folder)
    tensors = load_file(folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    edit(tensors, config)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config))
    return {**models, "a": folder}


WEIGHT = "model.layers.1.mlp.down_proj.weight"  # [32, 64]: scales [2, 3] in 24x24 blocks
DAMAGED = "the checkpoint is damaged or was not written by an FP8 quantizer; download it again"


@pytest.mark.parametrize(
    "case, edit, message",
    [
        (
            "missing scales",
            lambda t, c: t.pop(WEIGHT + "_scale_inv"),
            f"model 'a': {WEIGHT} is FP8 (F8_E4M3), but the checkpoint has no {WEIGHT}_scale_inv to dequantize it with",
        ),
        (
            "scales of a wrong shape",
            lambda t, c: t.update({WEIGHT + "_scale_inv": torch.ones(2, 2)}),
            f"model 'a': {WEIGHT}_scale_inv is F32 [2, 2], but {WEIGHT} [32, 64] in blocks of 24x24 "
            "(weight_block_size) needs float scales of shape [2, 3]",
        ),
        (
            "scales of another block size",  # the config says 16x16, the scales are 24x24 ones
            lambda t, c: c["quantization_config"].update(weight_block_size=[16, 16]),
            "model 'a': model.layers.0.mlp.down_proj.weight_scale_inv is F32 [2, 3], but "
            "model.layers.0.mlp.down_proj.weight [32, 64] in blocks of 16x16 (weight_block_size) needs float "
            "scales of shape [2, 4]",
        ),
        (
            "integer scales",
            lambda t, c: t.update({WEIGHT + "_scale_inv": torch.ones(2, 3, dtype=torch.int32)}),
            f"model 'a': {WEIGHT}_scale_inv is I32 [2, 3], but {WEIGHT} [32, 64] in blocks of 24x24 "
            "(weight_block_size) needs float scales of shape [2, 3]",
        ),
        (
            "scales for a weight that is not FP8",
            lambda t, c: t.update({WEIGHT: reference_dequantize(t[WEIGHT], t[WEIGHT + "_scale_inv"], (24, 24))}),
            f"model 'a': {WEIGHT}_scale_inv holds block scales for {WEIGHT}, but that tensor is F32, not F8_E4M3",
        ),
    ],
)
def test_damaged_fp8_checkpoints_are_refused_at_plan_time(tmp_path, models, case, edit, message):
    damaged = damage(models, "damaged", edit)
    recipe = linear_recipe(tmp_path, "a", "tune-fp8")
    with pytest.raises(CheckpointError) as err:
        merge(recipe, tmp_path / "out", model_paths=damaged)
    assert str(err.value) == f"{message}\n  hint: {DAMAGED}"
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_scales_stop_the_merge_and_leave_nothing(tmp_path, models, bad):
    def edit(tensors, config):
        tensors[WEIGHT + "_scale_inv"][1, 2] = bad

    damaged = damage(models, "damaged", edit)
    recipe = linear_recipe(tmp_path, "a", "tune-fp8")
    with pytest.raises(CheckpointError) as err:
        merge(recipe, tmp_path / "out", model_paths=damaged)
    assert str(err.value) == (
        f"model 'a': {WEIGHT}_scale_inv holds 1 NaN or inf scales of 6, so {WEIGHT} has no values there\n"
        "  hint: the checkpoint is damaged; download it again"
    )
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


SUPPORTED = (
    "mergesmith reads block-scaled FP8 (quant_method fp8, fmt e4m3, activation_scheme dynamic, "
    "weight_block_size [b0, b1], as DeepSeek-V3/R1 and Qwen3-FP8 ship); merge the model's bf16 release instead"
)


@pytest.mark.parametrize(
    "quantization, message, hint",
    [
        (
            {"quant_method": "compressed-tensors", "format": "float-quantized"},
            "its weights are quantized (compressed-tensors), and quantized weights cannot be merged",
            "merge the original (unquantized) model, then quantize the result",
        ),
        (
            {"quant_method": "gptq", "bits": 4},
            "its weights are quantized (gptq), and quantized weights cannot be merged",
            "merge the original (unquantized) model, then quantize the result",
        ),
        (
            {"quant_method": "bitsandbytes", "load_in_4bit": True},
            "its weights are quantized (bitsandbytes), and quantized weights cannot be merged",
            "merge the original (unquantized) model, then quantize the result",
        ),
        (
            {**QUANTIZATION, "weight_block_size": None},  # per-tensor scales
            "its weights are quantized (fp8), but its quantization_config cannot be read: "
            "it has no weight_block_size: FP8 with per-tensor scales",
            SUPPORTED,
        ),
        (
            {**QUANTIZATION, "activation_scheme": "static", "weight_block_size": [24, 24]},
            "its weights are quantized (fp8), but its quantization_config cannot be read: "
            "activation_scheme is 'static': static activation scales (input_scale tensors)",
            SUPPORTED,
        ),
    ],
)
def test_other_quantizations_are_refused(tmp_path, models, quantization, message, hint):
    damaged = damage(models, "other", lambda t, c: c.update(quantization_config=quantization))
    with pytest.raises(CheckpointError) as err:
        merge(linear_recipe(tmp_path, "a", "tune"), tmp_path / "out", model_paths=damaged)
    assert str(err.value) == f"model 'a': {message}\n  hint: {hint}"


def test_fp8_is_not_a_dtype_to_merge_in(tmp_path, models):
    with pytest.raises(RecipeError) as err:
        plan(linear_recipe(tmp_path, "base-fp8", "tune-fp8", "dtype: float8_e4m3fn\n"), model_paths=models)
    assert str(err.value) == (
        "dtype: float8_e4m3fn is a storage format; merges compute in bfloat16, float16 or float32\n"
        "  hint: set dtype: bfloat16 (or leave it out) and out_dtype: float8_e4m3fn to write FP8"
    )


def test_fp8_output_needs_an_fp8_donor(tmp_path, models):
    with pytest.raises(PlanError) as err:
        plan(linear_recipe(tmp_path, "tune", "base-fp8", "out_dtype: float8_e4m3fn\n"), model_paths=models)
    assert str(err.value) == (
        "out_dtype: float8_e4m3fn writes the FP8 layout of the donor model, but 'tune' is not a block-scaled "
        "FP8 checkpoint (no quantization_config)\n"
        "  hint: make a block-scaled FP8 model (DeepSeek-V3/R1, Qwen3-FP8) the base_model, or set out_dtype: bfloat16"
    )


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    from mergesmith.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_plan_shows_fp8_sources_and_outputs(tmp_path, models, capsys):
    recipe = linear_recipe(tmp_path, "a", "b", "out_dtype: float8_e4m3fn\n")
    paths = ["--model-path", f"a={models['base-fp8-16']}", "--model-path", f"b={models['tune']}"]
    code, out, _ = run_main(capsys, "plan", str(recipe), *paths)
    lines = out.splitlines()
    weight = "model.layers.0.mlp.down_proj.weight"
    merged = f"linear(weight=(0.5, 0.5), normalize=True) a:{weight}[fp8 16x16] b:{weight}"
    assert code == 0 and len(lines) == 3 + 2 * (4 + 2 * 7)  # per layer: 4 norms, 7 weights and their scales
    assert f"{weight} F8_E4M3 [32, 64] whole <- {merged} -> fp8 16x16" in lines
    assert f"{weight}_scale_inv F32 [2, 4] whole <- {merged} -> scales of {weight}" in lines
    norm = "model.norm.weight BF16 [32] stream <- linear(weight=(0.5, 0.5), normalize=True) a:model.norm.weight b:model.norm.weight"
    assert norm in lines

    code, out, _ = run_main(capsys, "plan", str(recipe), *paths, "--json")
    entries = {entry["output"]: entry for entry in json.loads(out)["entries"]}
    scales = {"tensor": f"{weight}_scale_inv", "block": [16, 16]}
    assert entries[weight]["sources"] == [
        {"model": "a", "tensor": weight, "fp8": scales},
        {"model": "b", "tensor": weight},  # a bf16 model's source: no fp8 key
    ]
    output = {
        "weight": weight,
        "scales": f"{weight}_scale_inv",
        "shape": [32, 64],
        "block": [16, 16],
        "power_of_two": False,
    }
    assert entries[weight]["fp8"] == entries[f"{weight}_scale_inv"]["fp8"] == output
    assert "fp8" not in entries["model.norm.weight"]


def test_merge_command_reports_a_damaged_fp8_model_without_a_traceback(tmp_path, models, capsys):
    damaged = damage(models, "damaged", lambda t, c: t.pop(WEIGHT + "_scale_inv"))
    recipe = linear_recipe(tmp_path, "a", "b")
    paths = ["--model-path", f"a={damaged['a']}", "--model-path", f"b={models['tune-fp8']}"]
    code, out, err = run_main(capsys, "merge", str(recipe), str(tmp_path / "out"), *paths)
    assert code == 1 and out == "" and "Traceback" not in err
    assert err.endswith(
        f"error: model 'a': {WEIGHT} is FP8 (F8_E4M3), but the checkpoint has no {WEIGHT}_scale_inv to dequantize "
        f"it with\n  hint: {DAMAGED}\n"
    )
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_scales_stored_in_bfloat16_are_read_as_floats(tmp_path, models):
    def to_bf16(tensors, config):
        for name in [n for n in tensors if n.endswith("_scale_inv")]:
            tensors[name] = tensors[name].to(torch.bfloat16)

    damaged = damage(models, "bf16-scales", to_bf16)
    merge(linear_recipe(tmp_path, "a", "tune", "dtype: float32\n"), tmp_path / "out", model_paths=damaged)
    tensors, b = load_file(damaged["a"] / "model.safetensors"), values_of(models["tune"])
    out, _ = read_output(tmp_path / "out")
    for name, tensor in out.items():
        a = tensors[name]
        if a.dtype == torch.float8_e4m3fn:
            a = reference_dequantize(a, tensors[name + "_scale_inv"].float(), (24, 24))
        assert torch.equal(tensor, half_sum(a, b[name])), name


def test_power_of_two_scales_for_a_ue8m0_donor(tmp_path, models):
    """scale_fmt ue8m0 (DeepSeek-V3.1): the output's scales are powers of two, each the smallest at
    or above amax / 448 of its block."""
    donor = damage(models, "ue8m0", lambda t, c: c["quantization_config"].update(scale_fmt="ue8m0"))
    recipe = linear_recipe(tmp_path, "a", "tune-fp8", "dtype: float32\nout_dtype: float8_e4m3fn\n")
    merge(recipe, tmp_path / "out", model_paths=donor)
    a, b = values_of(donor["a"], (24, 24)), values_of(models["tune-fp8"], (24, 24))
    out, config = read_output(tmp_path / "out")
    assert config["quantization_config"]["scale_fmt"] == "ue8m0"
    for name in [n for n in out if n.endswith("_scale_inv")]:
        weight = name.removesuffix("_scale_inv")
        merged = half_sum(a[weight], b[weight])
        power = 2.0 ** torch.ceil(torch.log2(reference_quantize(merged, (24, 24))[1]))
        assert torch.equal(out[name], power), name
        rows, cols = merged.shape
        per_element = power.repeat_interleave(24, 0)[:rows].repeat_interleave(24, 1)[:, :cols]
        expected = (merged / per_element).clamp(-448, 448).to(torch.float8_e4m3fn)
        assert torch.equal(out[weight].view(torch.uint8), expected.view(torch.uint8)), weight


def test_a_merge_killed_between_an_fp8_weight_and_its_scales_resumes_exactly(tmp_path, models):
    """Killed once the first FP8 weight is journaled and its scales are not: --resume keeps the
    weight and merges again for the scales alone, and the output is an uninterrupted merge's."""
    import subprocess
    import sys

    recipe = linear_recipe(tmp_path, "base-fp8", "tune-fp8", "out_dtype: float8_e4m3fn\n")
    merge(recipe, tmp_path / "whole", model_paths=models)
    paths = [arg for name in ("base-fp8", "tune-fp8") for arg in ("--model-path", f"{name}={models[name]}")]
    args = ["-q", "merge", str(recipe), str(tmp_path / "out"), "--resume", "--workers", "1", *paths]
    killed = (
        "import os, sys, mergesmith.driver as d\n"
        "record = d._Events.tensor_written\n"
        "def written(self, name, crc):\n"
        "    record(self, name, crc)\n"
        "    if name.endswith('_proj.weight'):\n"
        "        os._exit(9)\n"
        "d._Events.tensor_written = written\n"
        "from mergesmith.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    died = subprocess.run([sys.executable, "-c", killed, *args], capture_output=True, text=True)
    assert died.returncode == 9, died.stderr
    journal = (tmp_path / ".out.partial" / ".mergesmith-progress.jsonl").read_text()
    assert '_proj.weight"' in journal and "_scale_inv" not in journal  # the case this test is for
    resumed = subprocess.run([sys.executable, "-m", "mergesmith.cli", *args], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
