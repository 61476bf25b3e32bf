"""The line an error is about, for the page's editor: counted by hand in the texts below."""

from __future__ import annotations

import pytest

from mergesmith.recipe.locate import error_line

RECIPE = """\
slices:
  - sources:
      - model: a
        layer_range: [0, 4]
      - model: b
        layer_rnge: [0, 4]
merge_method: passthrough
parameters:
  scale: 2
"""

CARD = "# A merge\n\nSome prose.\n\n```yaml\n" + RECIPE + "```\n\nMore prose.\n"


@pytest.mark.parametrize(
    "message, line",
    [
        ("slices[0].sources[1].layer_rnge: unknown key", 6),
        ("slices[0].sources[0].layer_range: [0, 4] reaches layer 3", 4),
        ("slices[0].sources[1]: model 'b' has 2 layers", 5),
        ("merge_method: unknown method 'passthrough'", 7),
        ("parameters.scale: expected a number", 9),
        ("parameters.weight: not a parameter of this method", 8),  # the nearest key that exists
        ("recipe: line 3, column 7: invalid YAML", 3),
        ("model 'a': not in the local hub cache", None),  # no line, no key path
    ],
)
def test_error_line_of_a_recipe(message, line):
    assert error_line(RECIPE, message) == line


def test_error_line_in_a_card_counts_the_cards_lines():
    assert error_line(CARD, "slices[0].sources[1].layer_rnge: unknown key") == 5 + 6
    assert error_line(CARD, "merge_method: unknown method") == 5 + 7


def test_broken_yaml_gives_no_line_for_a_key_path():
    assert error_line("slices: [\n", "slices[0]: missing") is None
