"""`mergesmith multi`: mergekit-multi's multi-document recipes, run in dependency order, unchanged
stages skipped, bad files refused before anything runs; `plan` on the whole file. Oracles: plain
torch on the inputs, file modification times."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from factory import cached_model, derive_model
from mergesmith.cli import main

# final (unnamed, listed first: order follows the references) reads mid, which reads the two inputs
STAGES = """
slices:
  - sources: [{model: mid, layer_range: [0, 2]}]
  - sources: [{model: ft, layer_range: [2, 4]}]
merge_method: passthrough
---
name: mid
models:
  - {model: base, parameters: {weight: 0.25}}
  - {model: ft, parameters: {weight: 0.75}}
merge_method: linear
dtype: float32
"""


def run(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    base = cached_model("llama")
    return {"base": base, "ft": derive_model(base, tmp_path_factory.mktemp("multi") / "ft", seed=1)}


def multi(tmp_path: Path, inputs: dict[str, Path], capsys, text: str = STAGES, *extra: str) -> tuple[int, str, str]:
    (tmp_path / "stages.yaml").write_text(text)
    paths = [a for name, folder in inputs.items() for a in ("--model-path", f"{name}={folder}")]
    return run(["multi", str(tmp_path / "stages.yaml"), str(tmp_path / "out"), *paths, *extra], capsys)


def test_stages_run_in_dependency_order_and_read_each_other_by_name(tmp_path, inputs, capsys):
    code, _, err = multi(tmp_path, inputs, capsys)
    assert code == 0, err
    assert err.index("stage 1 mid (document 2): merging") < err.index("stage 2 final (document 1): merging")
    base, ft = (load_file(inputs[m] / "model.safetensors") for m in ("base", "ft"))
    mid = load_file(tmp_path / "out" / "mid" / "model.safetensors")
    name = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(mid[name], (0.25 * base[name].float() + 0.75 * ft[name].float()) / 1.0)
    final = load_file(tmp_path / "out" / "final" / "model.safetensors")
    assert torch.equal(final[name], mid[name])  # layers 0-1 from mid, unchanged
    assert torch.equal(final["model.layers.3.mlp.down_proj.weight"], ft["model.layers.3.mlp.down_proj.weight"])
    assert json.loads((tmp_path / "out" / "final" / "config.json").read_text())["num_hidden_layers"] == 4


def test_unchanged_stages_are_skipped_and_a_change_reruns_what_follows(tmp_path, inputs, capsys):
    assert multi(tmp_path, inputs, capsys)[0] == 0
    mid, final = (tmp_path / "out" / s / "model.safetensors" for s in ("mid", "final"))
    times = (mid.stat().st_mtime_ns, final.stat().st_mtime_ns)
    code, _, err = multi(tmp_path, inputs, capsys)
    assert code == 0 and "mid (document 2): unchanged, skipped" in err and "final (document 1): unchanged" in err
    assert (mid.stat().st_mtime_ns, final.stat().st_mtime_ns) == times
    # the final recipe changes: only it runs again
    code, _, err = multi(tmp_path, inputs, capsys, STAGES.replace("layer_range: [2, 4]", "layer_range: [3, 4]"))
    assert code == 0 and "mid (document 2): unchanged, skipped" in err and "final (document 1): merging" in err
    assert mid.stat().st_mtime_ns == times[0]
    assert json.loads((tmp_path / "out" / "final" / "config.json").read_text())["num_hidden_layers"] == 3
    # an input's file changes: every stage that reads it, directly or not, runs again
    os.utime(inputs["ft"] / "model.safetensors")
    code, _, err = multi(tmp_path, inputs, capsys)
    assert code == 0 and "mid (document 2): merging" in err and "final (document 1): merging" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "name: a\nmodels: [{model: b}]\nmerge_method: passthrough\n---\n"
            "name: b\nmodels: [{model: a}]\nmerge_method: passthrough\n",
            "the stages read each other's outputs in a cycle: a -> b -> a",
        ),
        (
            "name: a\nmodels: [{model: base}]\nmerge_method: passthrough\n---\n"
            "name: a\nmodels: [{model: ft}]\nmerge_method: passthrough\n",
            "documents 1 and 2 both have name 'a'",
        ),
        (
            "models: [{model: base}]\nmerge_method: passthrough\n---\nmodels: [{model: ft}]\nmerge_method: passthrough\n",
            "documents 1 and 2 both have no name (the final merge)",
        ),
        (
            "name: ../escape\nmodels: [{model: base}]\nmerge_method: passthrough\n",
            "document 1: name '../escape' cannot name a stage's output folder",
        ),
        (
            "name: a\nmodels: [{model: base}]\nmerge_method: passthrough\n---\nmodels: [{model: aa}]\nmerge_method: passthrough\n",
            "model 'aa': not in the local hub cache",
        ),
        (
            "name: a\nmodels: [{model: base}]\nmerge_method: passthrough\n---\nmodels: [{model: a}]\nmerge_methd: passthrough\n",
            "document 2 (final): merge_methd: unknown key",
        ),
    ],
    ids=["cycle", "duplicate", "two-unnamed", "path-name", "unknown-reference", "typo"],
)
def test_bad_files_are_refused_before_anything_runs(tmp_path, inputs, capsys, text, message):
    code, _, err = multi(tmp_path, inputs, capsys, text)
    assert code == 1 and "Traceback" not in err and err.count("error:") == 1, err
    assert message in err, err
    assert not (tmp_path / "out").exists()


def test_a_folder_no_run_made_is_not_replaced_without_overwrite(tmp_path, inputs, capsys):
    (tmp_path / "out" / "mid").mkdir(parents=True)
    (tmp_path / "out" / "mid" / "mine.txt").write_text("keep")
    code, _, err = multi(tmp_path, inputs, capsys)
    assert code == 1 and f"{tmp_path / 'out' / 'mid'} exists, and no run of mergesmith multi made it" in err
    assert (tmp_path / "out" / "mid" / "mine.txt").read_text() == "keep"
    code, _, err = multi(tmp_path, inputs, capsys, STAGES, "--overwrite")
    assert code == 0, err
    assert not (tmp_path / "out" / "mid" / "mine.txt").exists()


def test_plan_covers_every_stage_before_any_is_built(tmp_path, inputs, capsys):
    (tmp_path / "stages.yaml").write_text(STAGES)
    paths = [a for name, folder in inputs.items() for a in ("--model-path", f"{name}={folder}")]
    code, out, err = run(["plan", str(tmp_path / "stages.yaml"), *paths, "--json"], capsys)
    assert code == 0, err
    stages = json.loads(out)["stages"]
    assert [(s["name"], s["depends"]) for s in stages] == [("mid", []), ("final", ["mid"])]
    final = {e["output"]: e for e in stages[1]["plan"]["entries"]}
    # planned against mid's plan: float32 tensors (mid's dtype) for layers 0-1, ft's for 2-3
    assert final["model.layers.0.mlp.down_proj.weight"]["written_dtype"] == "F32"
    assert final["model.layers.0.mlp.down_proj.weight"]["sources"][0]["model"] == "mid"
    assert final["model.layers.3.mlp.down_proj.weight"]["sources"][0]["model"] == "ft"
    assert not (tmp_path / "out").exists()


def test_merge_of_a_multi_stage_file_points_to_multi(tmp_path, inputs, capsys):
    (tmp_path / "stages.yaml").write_text(STAGES)
    code, _, err = run(["merge", str(tmp_path / "stages.yaml"), str(tmp_path / "out")], capsys)
    assert code == 1
    assert "2 YAML documents: a multi-stage recipe (mergekit-multi's format)" in err
    assert f"hint: run it with mergesmith multi {tmp_path / 'stages.yaml'} OUT_DIR" in err
