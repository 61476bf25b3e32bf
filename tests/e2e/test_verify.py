"""mergesmith verify: a good folder passes; each kind of damage is reported by name."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from mergesmith.api import merge, plan
from mergesmith.checkpoints.safetensors_file import read_header
from mergesmith.cli import main
from mergesmith.execute import MergeOptions
from mergesmith.verify import verify_folder

RECIPE = "slices:\n- sources: [{model: m, layer_range: [0, 3], parameters: {scale: 2.0}}]\nmerge_method: passthrough\n"


@pytest.fixture
def merged(tmp_path: Path, make_model) -> tuple[Path, Path, dict[str, Path]]:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    models = {"m": make_model(layers=4)}
    out = tmp_path / "out"
    merge(recipe, out, model_paths=models, options=MergeOptions(out_shard_bytes=20_000))
    return out, recipe, models


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_a_merged_folder_verifies(capsys, merged) -> None:
    out, recipe, models = merged
    code, stdout, _ = run(capsys, "verify", str(out), str(recipe), "--model-path", f"m={models['m']}")
    assert code == 0 and "OK" in stdout
    report = verify_folder(out)
    assert report.ok and report.tensors == len(plan(recipe, model_paths=models).entries)
    assert report.bytes_read == sum(info.nbytes for p in out.glob("*.safetensors") for info in read_header(p).values())


def poke(path: Path, name: str, values: bytes) -> None:
    """Overwrite the first bytes of tensor `name` in shard `path`."""
    info = read_header(path)[name]
    with open(path, "r+b") as fh:
        fh.seek(info.start)
        fh.write(values)


def shard_of(out: Path, name: str) -> Path:
    index = json.loads((out / "model.safetensors.index.json").read_text())
    return out / index["weight_map"][name]


def test_nan_and_inf_are_reported_per_tensor(merged) -> None:
    out, _, _ = merged
    name = "model.layers.1.mlp.down_proj.weight"  # bf16
    nan, inf = struct.pack("<H", 0x7FC0), struct.pack("<H", 0x7F80)
    poke(shard_of(out, name), name, nan * 3 + inf)
    assert verify_folder(out).problems == [f"{name}: 3 NaN and 1 Inf values of {32 * 64}"]


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (
            lambda out: edit_json(out / "config.json", lambda c: c.update(num_hidden_layers=4)),
            "config.json: num_hidden_layers is 4, the weights have 3 layers",
        ),
        (
            lambda out: edit_json(out / "config.json", lambda c: c.update(vocab_size=99)),
            "config.json: vocab_size is 99, model.embed_tokens.weight has 128 rows",
        ),
        (
            lambda out: edit_json(out / "config.json", lambda c: c.update(tie_word_embeddings=True)),
            "config.json: tie_word_embeddings is true, but the weights hold lm_head.weight, which the tie replaces",
        ),
        (lambda out: (out / "config.json").unlink(), "config.json: missing"),
        (
            lambda out: edit_json(
                out / "model.safetensors.index.json",
                lambda i: i["weight_map"].update({"extra.weight": "model-00001-of-00009.safetensors"}),
            ),
            "model.safetensors.index.json: names shard model-00001-of-00009.safetensors, which is missing",
        ),
        (
            lambda out: edit_json(
                out / "model.safetensors.index.json", lambda i: i["weight_map"].pop("model.norm.weight")
            ),
            "model.norm.weight: in model-0000",
        ),
    ],
)
def test_damage_is_named(merged, damage, problem) -> None:
    out, _, _ = merged
    damage(out)
    problems = verify_folder(out).problems
    assert any(p.startswith(problem) for p in problems), problems


def test_a_truncated_shard_is_reported_and_the_cli_exits_1(capsys, merged) -> None:
    out, _, _ = merged
    shard = sorted(out.glob("model-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-100])
    code, stdout, err = run(capsys, "verify", str(out))
    assert code == 1 and f"problem: {shard.name}: " in err and "data lies outside the file" in err
    assert "problem(s)" in stdout


def test_a_folder_from_another_recipe_is_reported(merged, tmp_path: Path) -> None:
    out, _, models = merged
    other = tmp_path / "other.yaml"
    other.write_text(RECIPE.replace("[0, 3]", "[0, 4]").replace("2.0", "1.0") + "dtype: float32\n")
    problems = verify_folder(out, plan(other, model_paths=models)).problems
    assert "model.layers.3.mlp.down_proj.weight: the recipe's plan has it, the folder does not" in problems
    assert any(p.startswith("model.layers.0.mlp.down_proj.weight: the plan says F32") for p in problems)


def test_a_folder_without_weights(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()

    assert verify_folder(folder).problems == ["no safetensors weights in the folder", "config.json: missing"]
