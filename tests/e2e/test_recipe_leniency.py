"""Recipes as people write them (issue 14): keys mergekit 0.1.5 ignores are warnings, not errors,
and the merge equals the one without them; --strict refuses them; typos still fail;
--unsafe-truncate-embeddings cuts vocabularies as mergekit does. Through the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from factory import build_model
from mergesmith.api import merge

TIMEOUT_S = 300  # a merge of these tiny models takes seconds; never hang the suite


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("leniency-models")
    found = {name: build_model(tmp / name, layers=2, seed=i, dtype="F32") for i, name in enumerate("abcd")}
    found["wide"] = build_model(tmp / "wide", layers=2, vocab=136, seed=7, dtype="F32")
    return found


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mergesmith.cli", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def model_paths(models: dict[str, Path]) -> list[str]:
    return [arg for name, folder in models.items() for arg in ("--model-path", f"{name}={folder}")]


def warnings_of(stderr: str) -> list[str]:
    return [line.removeprefix("WARNING: ") for line in stderr.splitlines() if line.startswith("WARNING: ")]


def tensors_of(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for path in sorted(folder.glob("*.safetensors")) for k, v in load_file(path).items()}


@dataclass
class Ignored:
    id: str
    recipe: str  # as people write it
    clean: str  # the same recipe without the ignored keys: the oracle
    warnings: tuple[str, ...]  # exactly the warnings, in order


CASES = [
    # slerp with a weight per model (mergekit's own tests give every method `weight`)
    Ignored(
        "slerp-weight",
        "models: [{model: a, parameters: {weight: 0.3}}, {model: b, parameters: {weight: 0.7}}]\n"
        "base_model: a\nmerge_method: slerp\nparameters: {t: 0.4}\n",
        "models: [{model: a}, {model: b}]\nbase_model: a\nmerge_method: slerp\nparameters: {t: 0.4}\n",
        ("slerp ignores 'weight' (models[0].parameters)", "slerp ignores 'weight' (models[1].parameters)"),
    ),
    # sce with weights (published sce recipes carry them)
    Ignored(
        "sce-weight",
        "models: [{model: b, parameters: {weight: 1.0}}, {model: c, parameters: {weight: 0.5}}]\n"
        "base_model: a\nmerge_method: sce\nparameters: {select_topk: 0.5}\n",
        "models: [{model: b}, {model: c}]\nbase_model: a\nmerge_method: sce\nparameters: {select_topk: 0.5}\n",
        ("sce ignores 'weight' (models[0].parameters)", "sce ignores 'weight' (models[1].parameters)"),
    ),
    # linear with slerp's t at the top level
    Ignored(
        "linear-t",
        "models: [{model: a, parameters: {weight: 0.3}}, {model: b, parameters: {weight: 0.7}}]\n"
        "merge_method: linear\nparameters: {t: 0.5}\n",
        "models: [{model: a, parameters: {weight: 0.3}}, {model: b, parameters: {weight: 0.7}}]\nmerge_method: linear\n",
        ("linear ignores 't' (parameters)",),
    ),
    # model_stock with normalize (a task-arithmetic parameter)
    Ignored(
        "model-stock-normalize",
        "models: [{model: b}, {model: c}, {model: d}]\nbase_model: a\nmerge_method: model_stock\n"
        "parameters: {normalize: true}\n",
        "models: [{model: b}, {model: c}, {model: d}]\nbase_model: a\nmerge_method: model_stock\n",
        ("model_stock ignores 'normalize' (parameters)",),
    ),
    # a LazyMergekit-style template: weight and density on every model, a name at the top
    Ignored(
        "lazymergekit-template",
        "name: my-merge\nmodels:\n  - model: a\n    parameters: {weight: 0.5, density: 0.53}\n"
        "  - model: b\n    parameters: {weight: 0.5, density: 0.53}\nmerge_method: linear\ndtype: float32\n",
        "models:\n  - model: a\n    parameters: {weight: 0.5}\n  - model: b\n    parameters: {weight: 0.5}\n"
        "merge_method: linear\ndtype: float32\n",
        (
            "name: unknown top-level key, ignored (as mergekit ignores it)",
            "linear ignores 'density' (models[0].parameters)",
            "linear ignores 'density' (models[1].parameters)",
        ),
    ),
    # a method-wide parameter under a model: mergekit reads it only at the slice or top level
    Ignored(
        "method-wide-under-model",
        "models: [{model: b, parameters: {weight: 1.0, normalize: false}}, {model: c, parameters: {weight: 0.5}}]\n"
        "base_model: a\nmerge_method: task_arithmetic\nparameters: {normalize: true}\n",
        "models: [{model: b, parameters: {weight: 1.0}}, {model: c, parameters: {weight: 0.5}}]\n"
        "base_model: a\nmerge_method: task_arithmetic\nparameters: {normalize: true}\n",
        (
            "task_arithmetic ignores 'normalize' (models[0].parameters): it is method-wide, read only from the "
            "slice's or the top-level parameters",
        ),
    ),
    # residual_weight: mergekit 0.1.5 reads it and never uses it
    Ignored(
        "residual-weight",
        "slices:\n  - residual_weight: 0.5\n    sources: [{model: a, layer_range: [0, 2]}]\nmerge_method: passthrough\n",
        "slices:\n  - sources: [{model: a, layer_range: [0, 2]}]\nmerge_method: passthrough\n",
        ("passthrough ignores 'residual_weight' (slices[0])",),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_ignored_keys_warn_once_and_merge_as_without_them(case: Ignored, models, tmp_path):
    (tmp_path / "recipe.yaml").write_text(case.recipe)
    (tmp_path / "clean.yaml").write_text(case.clean)
    result = run_cli("merge", str(tmp_path / "recipe.yaml"), str(tmp_path / "out"), *model_paths(models))
    assert result.returncode == 0, result.stderr
    assert warnings_of(result.stderr) == list(case.warnings)
    merge(tmp_path / "clean.yaml", tmp_path / "clean", model_paths=models)
    merged, expected = tensors_of(tmp_path / "out"), tensors_of(tmp_path / "clean")
    assert merged.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(merged[name], tensor), name


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_strict_refuses_every_ignored_key(case: Ignored, models, tmp_path):
    (tmp_path / "recipe.yaml").write_text(case.recipe)
    result = run_cli("plan", str(tmp_path / "recipe.yaml"), "--strict", *model_paths(models))
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"error: {case.warnings[0]}\n  hint: "), result.stderr
    assert "(--strict refuses keys that the merge ignores)" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("command", ["plan", "merge"])
def test_json_lists_the_warnings(command, models, tmp_path):
    (tmp_path / "recipe.yaml").write_text(CASES[0].recipe)
    out = [str(tmp_path / "out")] if command == "merge" else []
    result = run_cli(command, str(tmp_path / "recipe.yaml"), *out, "--json", *model_paths(models))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["warnings"] == list(CASES[0].warnings)


REFUSED = [
    # (id, recipe, exact stderr): names no method knows are typos, and still fail
    (
        "parameter-typo",
        "models: [{model: a, parameters: {wieght: 0.3}}, {model: b, parameters: {weight: 0.7}}]\nbase_model: a\n"
        "merge_method: slerp\nparameters: {t: 0.4}\n",
        "error: models[0].parameters.wieght: slerp has no parameter 'wieght'\n  hint: did you mean 'weight'?\n",
    ),
    (
        "top-level-typo",
        "models: [{model: a, parameters: {weight: 1}}]\nmerge_method: linear\nbase_modle: a\n",
        "error: base_modle: unknown key\n  hint: did you mean 'base_model'?\n",
    ),
    (  # a key of a deeper level at the top is misplaced, not tolerated
        "top-level-parameter",
        "models: [{model: a, parameters: {weight: 1}}]\nmerge_method: linear\nweight: 1\n",
        "error: weight: unknown key\n",
    ),
    (  # mergekit 0.1.5 ignores `revision` and merges the default revision
        "revision",
        "models: [{model: a, revision: main, parameters: {weight: 1}}]\nmerge_method: linear\n",
        "error: models[0].revision: unknown key\n  hint: write the revision into the reference: model: org/name@rev\n",
    ),
    (  # mergekit 0.1.5 takes 'model:b' for a model of that name, which does not exist
        "tokenizer-source-old-spelling",
        "models: [{model: a, parameters: {weight: 1}}]\nmerge_method: linear\ntokenizer_source: model:b\n",
        "error: tokenizer_source: 'model:b' is an old spelling that mergekit 0.1.5 no longer reads; "
        "write tokenizer_source: b\n",
    ),
    (  # the adapter is neither a folder nor in the hub cache
        "lora",
        "models: [{model: a+org/adapter, parameters: {weight: 1}}]\nmerge_method: linear\n",
        "error: adapter 'org/adapter' of model 'a+org/adapter': no adapter_config.json in hub repository "
        "'org/adapter' (or, offline, not in the local hub cache)\n",
    ),
]


@pytest.mark.parametrize("case_id, recipe, expected", REFUSED, ids=[r[0] for r in REFUSED])
def test_typos_and_unsupported_references_are_refused(case_id, recipe, expected, models, tmp_path):
    (tmp_path / "recipe.yaml").write_text(recipe)
    result = run_cli("merge", str(tmp_path / "recipe.yaml"), str(tmp_path / "out"), *model_paths(models))
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(expected), result.stderr
    assert not (tmp_path / "out").exists()


TRUNCATE = (
    "models: [{model: wide, parameters: {weight: 0.7}}, {model: a, parameters: {weight: 0.3}}]\nmerge_method: linear\n"
)


def test_vocabularies_of_different_sizes_need_the_flag(models, tmp_path):
    (tmp_path / "recipe.yaml").write_text(TRUNCATE)
    result = run_cli("plan", str(tmp_path / "recipe.yaml"), *model_paths(models))
    assert result.returncode == 1
    assert result.stderr == (
        "error: models: the models have vocabularies of different sizes "
        "(model.embed_tokens.weight rows: wide: 136, a: 128)\n"
        "  hint: set tokenizer_source: union (every model's tokens), base, or one model's name, so that rows are "
        "matched by token (--unsafe-truncate-embeddings cuts them to the smallest)\n"
    )


def test_unsafe_truncate_embeddings_keeps_the_first_common_rows(models, tmp_path):
    # Oracle: the same merge with the wide model's vocabulary tensors cut to 128 rows by hand.
    cut = tmp_path / "wide-cut"
    cut.mkdir()
    (cut / "config.json").write_text((models["wide"] / "config.json").read_text().replace("136", "128"))
    wide = tensors_of(models["wide"])
    cut_tensors = {k: (v[:128].contiguous() if v.shape[0] == 136 else v) for k, v in wide.items()}
    save_file(cut_tensors, str(cut / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "recipe.yaml").write_text(TRUNCATE)
    result = run_cli(
        "merge",
        str(tmp_path / "recipe.yaml"),
        str(tmp_path / "out"),
        "--unsafe-truncate-embeddings",
        *model_paths(models),
    )
    assert result.returncode == 0, result.stderr
    assert [w.split(" (")[0] for w in warnings_of(result.stderr)] == [
        "--unsafe-truncate-embeddings: model.embed_tokens.weight cut to its first 128 rows",
        "--unsafe-truncate-embeddings: lm_head.weight cut to its first 128 rows",
    ]
    merge(tmp_path / "recipe.yaml", tmp_path / "oracle", model_paths={"wide": cut, "a": models["a"]})
    merged, expected = tensors_of(tmp_path / "out"), tensors_of(tmp_path / "oracle")
    assert merged.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(merged[name], tensor), name
    # and the formula, in plain torch: 0.7 * wide[:128] + 0.3 * a, over the sum of weights
    a = tensors_of(models["a"])["model.embed_tokens.weight"].double()
    formula = (0.7 * wide["model.embed_tokens.weight"][:128].double() + 0.3 * a) / 1.0
    torch.testing.assert_close(merged["model.embed_tokens.weight"].double(), formula, rtol=1e-6, atol=1e-6)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == 128
