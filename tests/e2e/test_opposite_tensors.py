"""Models whose tensors are a, -a and 0: the spherical methods give mergekit's result, or a clear
error (exit 1) naming the tensor and the method, never a crash (exit 3).

The expected values are worked by hand from the methods' definitions (mergekit 0.1.5 writes the same
for every merge here that it completes; for multislerp over a, -a and 0 it stops with a ValueError).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergesmith.cli import main


@pytest.fixture
def models(make_model, tmp_path: Path) -> dict[str, Path]:
    a = make_model("a", layers=1, dtype="F32", seed=7)

    def variant(name: str, change) -> Path:
        folder = tmp_path / "models" / name
        folder.mkdir()
        shutil.copy(a / "config.json", folder / "config.json")
        tensors = {k: change(v) for k, v in load_file(a / "model.safetensors").items()}
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        return folder

    return {"a": a, "neg": variant("neg", torch.neg), "zero": variant("zero", torch.zeros_like)}


def merged(models: dict[str, Path], tmp_path: Path, recipe: str, capsys) -> dict[str, torch.Tensor]:
    path = tmp_path / "r.yaml"
    path.write_text(recipe)
    args = ["merge", str(path), str(tmp_path / "out")] + [f"--model-path={k}={v}" for k, v in models.items()]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0, capsys.readouterr().err
    return load_file(tmp_path / "out" / "model.safetensors")


CASES = [
    # (recipe, expected output as a function of a)
    # dot = -1: nearly collinear, so slerp interpolates linearly: 0.5 a - 0.5 a
    ("models: [{model: a}, {model: neg}]\nbase_model: a\nmerge_method: slerp\nparameters: {t: 0.5}\n", lambda a: 0 * a),
    # a zero norm counts as 1, so dot = 0 and theta = pi/2: sin(pi/4) a + sin(pi/4) 0
    (
        "models: [{model: a}, {model: zero}]\nbase_model: a\nmerge_method: slerp\nparameters: {t: 0.5}\n",
        lambda a: math.sin(math.pi / 4) / math.sin(math.pi / 2) * a,
    ),
    # collinear (1 - cos^2 = 0): linear, 0.5 a - 0.5 a
    (
        "models: [{model: a, parameters: {weight: 0.5}}, {model: neg, parameters: {weight: 0.5}}]\nmerge_method: nuslerp\n",
        lambda a: 0 * a,
    ),
    # two models whose directions cancel: multislerp falls back to their weighted sum
    (
        "models: [{model: a, parameters: {weight: 0.5}}, {model: neg, parameters: {weight: 0.5}}]\nmerge_method: multislerp\n",
        lambda a: 0 * a,
    ),
]


@pytest.mark.parametrize("recipe, expected", CASES)
def test_opposite_and_zero_tensors_merge_as_defined(models, tmp_path, capsys, recipe, expected) -> None:
    original = load_file(models["a"] / "model.safetensors")
    for name, tensor in merged(models, tmp_path, recipe, capsys).items():
        torch.testing.assert_close(tensor, expected(original[name]), rtol=1e-6, atol=1e-7, msg=name)


def test_karcher_of_opposite_and_zero_tensors_is_finite_and_scaled_by_the_mean_norm(models, tmp_path, capsys) -> None:
    # a and -a have no unique mean direction; the zero model is left out of the directions, but its
    # norm (0) still counts in the scale: the result's norm is (|a| + |a| + 0) / 3 per tensor
    recipe = "models: [{model: a}, {model: neg}, {model: zero}]\nmerge_method: karcher\n"
    original = load_file(models["a"] / "model.safetensors")
    for name, tensor in merged(models, tmp_path, recipe, capsys).items():
        assert torch.isfinite(tensor).all(), name
        expected_norm = 2 * original[name].norm() / 3
        torch.testing.assert_close(tensor.norm(), expected_norm, rtol=1e-4, atol=0, msg=name)


def test_multislerp_of_cancelling_directions_is_a_merge_error(models, tmp_path, capsys) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "models: [{model: a, parameters: {weight: 0.3}}, {model: neg, parameters: {weight: 0.3}}, "
        "{model: zero, parameters: {weight: 0.4}}]\nmerge_method: multislerp\n"
    )
    out = tmp_path / "out"
    args = ["merge", str(recipe), str(out)] + [f"--model-path={k}={v}" for k, v in models.items()]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 1, err
    assert "multislerp: the weighted sum of the models' directions is zero" in err
    assert "tensor model." in err  # names the tensor it met first (workers decide which)
    assert "hint: change the weights so they do not cancel, or merge these models with linear" in err
    assert "Traceback" not in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == sorted(["models", "r.yaml"])
