"""Flattened recipes that read two ways, through the CLI on tiny models: the plans of both readings
are compared; equal plans merge, different plans are an error naming the line and both readings,
and a reading that does not plan gives way to one that does."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mergesmith.cli import main


def flat(text: str) -> str:
    """What a web page copy does to a recipe: every line loses its indentation."""
    return "\n".join(line.strip() for line in text.splitlines()) + "\n"


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def digest(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


@pytest.fixture
def models(make_model) -> list[str]:
    a = make_model("a", layers=2, seed=1)
    b = make_model("b", layers=2, seed=2)
    c = make_model("c", layers=2, seed=3)
    return ["--model-path", f"org/a={a}", "--model-path", f"org/b={b}", "--model-path", f"org/c={c}"]


# The seed card's shape (and the 70B card's, with models): the list ends with a source without
# parameters, then `parameters:`. Flattened, the block reads as that source's or as the recipe's;
# both readings plan (scale defaults to 1) but the recipe's also scales slice 0.
LAST_SOURCE_THEN_TOP = """
slices:
  - sources:
      - model: org/a
        layer_range: [0, 1]
  - sources:
      - model: org/b
        layer_range: [1, 2]
parameters:
  scale: 0.5
merge_method: passthrough
"""


def test_a_block_that_reads_two_ways_with_different_plans_is_an_error(tmp_path, models, capsys):
    recipe = tmp_path / "flat.yaml"
    recipe.write_text(flat(LAST_SOURCE_THEN_TOP))
    out = tmp_path / "out"
    code, _, err = run_main(capsys, "merge", str(recipe), str(out), *models)
    assert code == 1, err
    assert (
        f"{recipe}: line 9: 'parameters' could belong to slices[1].sources[0] or to the top level, and the readings "
        "give different merges\n  hint: restore the indentation of that part of the recipe so that only one reading "
        "remains"
    ) in err
    assert "Traceback" not in err and not out.exists()


# The 70B card's shape: the models list ends with a model without parameters, then top-level
# `parameters:` holding `normalize`, which only the recipe level takes: the reading that gives the
# block to org/c does not plan, so the recipe-level reading is taken (with a warning).
LAST_MODEL_THEN_TOP = """
models:
  - model: org/a
    parameters:
      weight: 0.2
  - model: org/b
    parameters:
      weight: 0.3
  - model: org/c
parameters:
  weight: 0.5
  normalize: false
merge_method: linear
dtype: float32
"""


def test_the_last_model_does_not_take_the_recipes_parameters(tmp_path, models, capsys, caplog):
    (tmp_path / "flat.yaml").write_text(flat(LAST_MODEL_THEN_TOP))
    (tmp_path / "indented.yaml").write_text(LAST_MODEL_THEN_TOP)
    code, _, err = run_main(capsys, "merge", str(tmp_path / "flat.yaml"), str(tmp_path / "from-flat"), *models)
    assert code == 0, err
    assert "line 10: 'parameters' read as the top level's: the reading that puts it under models[2] does not plan" in (
        caplog.text
    )
    code, _, err = run_main(capsys, "merge", str(tmp_path / "indented.yaml"), str(tmp_path / "indented"), *models)
    assert code == 0, err
    assert digest(tmp_path / "from-flat") == digest(tmp_path / "indented")


def test_the_indented_recipe_of_that_shape_merges(tmp_path, models, capsys):
    recipe = tmp_path / "indented.yaml"
    recipe.write_text(LAST_SOURCE_THEN_TOP)
    code, _, err = run_main(capsys, "merge", str(recipe), str(tmp_path / "out"), *models)
    assert code == 0, err


# Two sources that each carry weight: 0.5. The last block reads as the second source's or as the
# slice's; the slice's weight reaches only the second source (the first has its own), so both
# readings merge alike and the flattened recipe gives the indented recipe's model.
EQUAL_WEIGHTS = """
slices:
  - sources:
      - model: org/a
        layer_range: [0, 2]
        parameters:
          weight: 0.5
      - model: org/b
        layer_range: [0, 2]
        parameters:
          weight: 0.5
merge_method: linear
dtype: float32
"""


def test_readings_with_equal_plans_merge_as_the_indented_recipe(tmp_path, models, capsys):
    (tmp_path / "flat.yaml").write_text(flat(EQUAL_WEIGHTS))
    (tmp_path / "indented.yaml").write_text(EQUAL_WEIGHTS)
    code, _, err = run_main(capsys, "merge", str(tmp_path / "flat.yaml"), str(tmp_path / "from-flat"), *models)
    assert code == 0, err
    assert "line 10: 'parameters' could belong to the slice or to its last source" in err
    code, _, err = run_main(capsys, "merge", str(tmp_path / "indented.yaml"), str(tmp_path / "indented"), *models)
    assert code == 0, err
    assert digest(tmp_path / "from-flat") == digest(tmp_path / "indented")


# The block reads as org/c's (then org/a and org/b have no weight: linear refuses to plan) or as the
# recipe's (every model gets weight 1): only the second plans, and it is taken, with a warning.
ONLY_ONE_PLANS = """
models:
  - model: org/a
  - model: org/b
  - model: org/c
parameters:
  weight: 1.0
merge_method: linear
dtype: float32
"""


def test_a_reading_that_does_not_plan_gives_way_to_one_that_does(tmp_path, models, capsys, caplog):
    (tmp_path / "flat.yaml").write_text(flat(ONLY_ONE_PLANS))
    (tmp_path / "indented.yaml").write_text(ONLY_ONE_PLANS)
    code, _, err = run_main(capsys, "merge", str(tmp_path / "flat.yaml"), str(tmp_path / "from-flat"), *models)
    assert code == 0, err
    assert "line 6: 'parameters' read as the top level's: the reading that puts it under models[2] does not plan" in (
        caplog.text
    )
    code, _, err = run_main(capsys, "merge", str(tmp_path / "indented.yaml"), str(tmp_path / "indented"), *models)
    assert code == 0, err
    assert digest(tmp_path / "from-flat") == digest(tmp_path / "indented")


def test_plan_compares_the_readings_too(tmp_path, models, capsys):
    recipe = tmp_path / "flat.yaml"
    recipe.write_text(flat(LAST_SOURCE_THEN_TOP))
    code, out, err = run_main(capsys, "plan", str(recipe), *models)
    assert code == 1 and out == ""
    assert "line 9: 'parameters' could belong to slices[1].sources[0] or to the top level" in err


def test_a_card_with_a_flattened_recipe_in_a_details_block_merges(tmp_path, models, capsys):
    card = tmp_path / "README.md"
    card.write_text(
        "---\nlicense: mit\n---\n# merged\n\n<details>\n<summary>Merge configuration</summary>\n\n"
        "  ```yaml\n" + "".join(f"  {line}\n" for line in flat(EQUAL_WEIGHTS).splitlines()) + "  ```\n</details>\n"
    )
    (tmp_path / "indented.yaml").write_text(EQUAL_WEIGHTS)
    code, _, err = run_main(capsys, "merge", str(card), str(tmp_path / "from-card"), *models)
    assert code == 0, err
    code, _, err = run_main(capsys, "merge", str(tmp_path / "indented.yaml"), str(tmp_path / "indented"), *models)
    assert code == 0, err
    assert digest(tmp_path / "from-card") == digest(tmp_path / "indented")


def test_restoring_one_blocks_indentation_settles_it(tmp_path, models, capsys):
    # The hint's fix: indent the block that reads two ways; an indented key is never a top-level key.
    lines = flat(LAST_SOURCE_THEN_TOP).split("\n")
    assert lines[8:10] == ["parameters:", "scale: 0.5"]
    lines[8:10] = ["    parameters:", "      scale: 0.5"]
    (tmp_path / "partly.yaml").write_text("\n".join(lines))
    # the indented recipe with the block under the last source, as the restored indentation says
    on_last_source = LAST_SOURCE_THEN_TOP.replace("parameters:\n  scale", "        parameters:\n          scale")
    (tmp_path / "indented.yaml").write_text(on_last_source)
    code, _, err = run_main(capsys, "merge", str(tmp_path / "partly.yaml"), str(tmp_path / "partly"), *models)
    assert code == 0, err
    code, _, err = run_main(capsys, "merge", str(tmp_path / "indented.yaml"), str(tmp_path / "indented"), *models)
    assert code == 0, err
    assert digest(tmp_path / "partly") == digest(tmp_path / "indented")
