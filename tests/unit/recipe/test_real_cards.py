"""Recipes published on real model cards (tests/data/real_cards/, each naming its source), flattened
as a web page copy does and rebuilt: the rebuilt recipe equals the indented one, and where the
flattened text reads two ways the planner compares the readings on stand-in models."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergesmith.api import parse_recipe, plan
from mergesmith.errors import RecipeError

CARDS = Path(__file__).resolve().parents[2] / "data" / "real_cards"


def flat(text: str) -> str:
    """What a web page copy does to a recipe: every line loses its indentation."""
    return "\n".join(line.strip() for line in text.splitlines()) + "\n"


# Cards whose indented recipe mergesmith refuses today; the flattened copy must not be taken for
# something else silently. Each row says what the flattened copy gives, and why.
REFUSED = {
    # `revision:` in a source is refused (the hint says `model: org/name@rev`); flattened, the rebuild
    # cannot place the key at all.
    "dpopenhermes_11b_revision.yaml": "cannot place 'layer_range'",
    # `normalize` at the top level (mergekit ignores it) is an unknown key either way.
    "model_stock_top_level_normalize.yaml": "normalize: unknown key",
}
# Flattened, `normalize: false` after the `parameters:` block reads as one of its parameters; the
# indented card has it at the top level, where mergekit ignores it and mergesmith refuses it today.
# The rebuild never reads a parameter's name as a top-level key (mergekit would ignore it there, so
# that is never what the author meant), so this card's copy reads as the author presumably intended.
READS_DIFFERENTLY = {"task_arithmetic_negative_lambda.yaml"}

ALL = sorted(path.name for path in CARDS.glob("*.yaml"))


def test_there_are_twenty_real_cards():
    assert len(ALL) >= 20


@pytest.mark.parametrize("name", [n for n in ALL if n not in REFUSED and n not in READS_DIFFERENTLY])
def test_a_flattened_real_card_rebuilds_to_its_recipe(name):
    text = (CARDS / name).read_text(encoding="utf-8")
    indented = parse_recipe(text)
    rebuilt = parse_recipe(flat(text))  # some flattened recipes are still valid YAML: no rebuild needed
    assert rebuilt.recipe == indented.recipe


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_refused_real_card_is_refused_flattened_too(name):
    text = (CARDS / name).read_text(encoding="utf-8")
    with pytest.raises(RecipeError):
        parse_recipe(text)
    with pytest.raises(RecipeError) as err:
        parse_recipe(flat(text))
    assert REFUSED[name] in str(err.value)


def test_the_card_that_reads_differently_is_documented():
    text = (CARDS / "task_arithmetic_negative_lambda.yaml").read_text(encoding="utf-8")
    with pytest.raises(RecipeError):
        parse_recipe(text)
    assert parse_recipe(flat(text)).recipe.parameters["normalize"].value is False


# Flattened, the last model's `parameters:` also reads as the recipe's: planned on stand-in models,
# both readings give the indented recipe's plan.
TWO_READINGS = {
    "orca2flat_task_arithmetic.yaml": (7, ["TheBloke/Llama-2-13B-fp16", "microsoft/Orca-2-13b"]),
    # arcee_fusion_filters_gradients.yaml reads two ways too (line 14), but arcee_fusion refuses
    # `weight` today (issue #14's leniency makes it a warning), so neither reading plans yet.
}


@pytest.mark.parametrize("name", sorted(TWO_READINGS))
def test_two_readings_of_a_real_card_plan_alike(name, make_model):
    line, models = TWO_READINGS[name]
    paths = {model: make_model(f"m{i}", layers=2, seed=i) for i, model in enumerate(models)}
    text = (CARDS / name).read_text(encoding="utf-8")
    rebuilt = parse_recipe(flat(text))
    assert [(r.line, r.where) for r in rebuilt.readings] == [(line, "the top level")]
    planned = plan(rebuilt, model_paths=paths)
    assert planned.entries == plan(parse_recipe(text), model_paths=paths).entries
