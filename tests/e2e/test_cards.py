"""Recipes from model cards, end to end: the seed card as it is, --from-card, our cards round-trip."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from factory import fill_cache
from mergesmith.api import load_recipe
from mergesmith.cli import main
from mergesmith.demo import SEED_MODEL, build_demo_model

REPO = Path(__file__).resolve().parents[2]
SEED = REPO.parent / "shared" / "seed" / "000_75b09b5f9d0ce7e0.txt"
EXAMPLE = REPO / "examples" / "fimbulvetr-11b-v2-47-layers.yaml"


def digest(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_the_seed_card_merges_as_written(tmp_path, capsys):
    if not SEED.is_file():
        pytest.skip(f"{SEED} not found")
    model = build_demo_model(tmp_path / "fimbulvetr")
    mapping = f"{SEED_MODEL}={model}"
    # Issue #14: the last slice's flattened `parameters:` also reads as the recipe's (it would scale
    # layers 0-3 too). The slice before it sets the same parameters on its source, so the card is
    # read as that pattern, as written, and the other reading is named in a warning.
    code, _, err = run_main(capsys, "merge", str(SEED), str(tmp_path / "from-card"), "--model-path", mapping)
    assert code == 0, err
    assert "the recipe had lost its indentation; rebuilt from the schema" in err
    assert "    - model: Sao10K/Fimbulvetr-11B-v2" in err  # the rebuilt YAML is shown
    code, _, err = run_main(capsys, "merge", str(EXAMPLE), str(tmp_path / "indented"), "--model-path", mapping)
    assert code == 0, err
    assert digest(tmp_path / "from-card") == digest(tmp_path / "indented")


def test_recipe_extract_prints_the_rebuilt_yaml(capsys):
    if not SEED.is_file():
        pytest.skip(f"{SEED} not found")
    code, out, _ = run_main(capsys, "recipe", "extract", str(SEED))
    assert code == 0 and out.startswith(
        "slices:\n- sources:\n  - model: Sao10K/Fimbulvetr-11B-v2\n    layer_range: [0, 4]\n"
    )


def test_our_cards_round_trip(tmp_path, make_model, capsys):
    model = make_model("m", layers=2)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "# depth up-scaling, commented\nslices:\n  - sources: [{model: org/m, layer_range: [0, 2]}]\n"
        "  - sources: [{model: org/m, layer_range: [1, 2], parameters: {scale: 0.5}}]\nmerge_method: passthrough\n"
    )
    code, _, err = run_main(capsys, "merge", str(recipe), str(tmp_path / "out"), "--model-path", f"org/m={model}")
    assert code == 0, err
    again = load_recipe(tmp_path / "out" / "README.md")
    assert again.from_card and not again.rebuilt
    assert again.text == recipe.read_text() and again.recipe == load_recipe(recipe).recipe


def test_from_card_reads_the_card_through_the_hub_cache(tmp_path, make_model):
    model = make_model("m", layers=2)
    card_model = tmp_path / "card-model"
    card_model.mkdir()
    (card_model / "README.md").write_text(
        "---\nlibrary_name: transformers\n---\n### Configuration\n\n```yaml\nslices:\n- sources:\n- model: org/m\n"
        "layer_range: [0, 1]\nmerge_method: passthrough\n```\n"
    )
    fill_cache(tmp_path / "hub", "org/merged", card_model)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    result = subprocess.run(
        [sys.executable, "-m", "mergesmith.cli", "plan", "--from-card", "org/merged", "--model-path", f"org/m={model}"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "org/merged (model card): the recipe had lost its indentation" in result.stderr
    assert (
        "model.layers.0.mlp.up_proj.weight BF16 [64, 32] copy <- passthrough() org/m:model.layers.0.mlp.up_proj.weight"
        in result.stdout
    )
