"""Settings: gradients, filters and lists, against values worked out by hand."""

from __future__ import annotations

import pytest

from mergesmith.methods.spec import as_float
from mergesmith.recipe.settings import (
    Conditional,
    Scalar,
    ScalarList,
    SettingError,
    evaluate_setting,
    parse_setting,
)


def value(raw, t=0.0, name="model.layers.0.self_attn.o_proj.weight"):
    return evaluate_setting(parse_setting(raw), name, t, validate=as_float)


@pytest.mark.parametrize(
    "raw, t, expected",
    [
        (1.5, 0.3, 1.5),  # a scalar ignores t
        ([1.0, 3.0], 0.0, 1.0),
        ([1.0, 3.0], 1.0, 3.0),
        ([1.0, 3.0], 0.25, 1.5),  # 0.75 * 1 + 0.25 * 3
        ([0.0, 10.0, 20.0], 0.5, 10.0),  # s = 1.0: exactly the middle anchor
        ([0.0, 10.0, 20.0], 0.75, 15.0),  # s = 1.5: halfway between anchors 1 and 2
        ([2.0, 4.0, 8.0, 16.0], 1 / 3, 4.0),  # s = 1 (up to rounding)
        ([5], 0.7, 5.0),  # one anchor
        ([1, 2], 0.5, 1.5),  # integers interpolate as numbers
        ("1e-3", 0.0, 0.001),  # YAML reads 1e-3 as a string
    ],
)
def test_gradient_values(raw, t, expected):
    assert value(raw, t) == pytest.approx(expected, rel=1e-15)


def test_gradient_uses_mergekit_operation_order():
    # (1 - frac) * a + frac * b, not a + frac * (b - a): the two differ in the last bit here.
    t, a, b = 0.1, 0.1, 0.7
    assert value([a, b], t) == (1 - t) * a + t * b


def test_first_matching_filter_wins_and_substring_matches():
    raw = [{"filter": "o_proj", "value": 2.0}, {"filter": "self_attn", "value": 3.0}]
    assert value(raw, name="model.layers.0.self_attn.o_proj.weight") == 2.0
    assert value(raw, name="model.layers.0.self_attn.q_proj.weight") == 3.0


def test_filter_is_not_a_regex():
    assert value([{"filter": "layers.*.o_proj", "value": 2.0}]) is None


@pytest.mark.parametrize("entry", [{"value": 7.0}, {"filter": "*", "value": 7.0}])
def test_missing_or_star_filter_matches_everything(entry):
    assert value([{"filter": "mlp", "value": 1.0}, entry]) == 7.0


def test_no_matching_filter_gives_nothing():
    assert value([{"filter": "mlp", "value": 1.0}]) is None


def test_empty_list_gives_nothing():
    assert value([]) is None


def test_gradient_inside_a_filter():
    assert value([{"filter": "o_proj", "value": [0.0, 4.0]}], t=0.5) == 2.0


def test_single_conditional_mapping():
    assert parse_setting({"filter": "a", "value": 1}) == Conditional((("a", Scalar(1)),))


def test_non_numeric_list_picks_by_position():
    setting = ScalarList(("a", "b", "c"))
    assert evaluate_setting(setting, "x", 0.6, validate=str) == "b"  # int(0.6 * 2) = 1


@pytest.mark.parametrize(
    "raw, subpath, message",
    [
        ([{"filtr": "a", "value": 1}], "[0].filtr", "unknown key (did you mean 'filter'?)"),
        ([{"filter": "a"}], "[0]", "a conditional entry needs a 'value' (and optionally a 'filter')"),
        ([{"filter": 3, "value": 1}], "[0].filter", "expected a string (a substring of tensor names), found 3"),
        ([1, [2]], "[1]", "expected a number, boolean or string, found a list"),
        (None, "", "expected a number, boolean, string, list or filter list, found nothing (null)"),
    ],
)
def test_malformed_settings_name_the_place(raw, subpath, message):
    with pytest.raises(SettingError) as err:
        parse_setting(raw)
    assert (err.value.subpath, err.value.message) == (subpath, message)


@pytest.mark.parametrize("bad", [True, "abc", "nan"])
def test_as_float_rejects_non_numbers(bad):
    with pytest.raises(ValueError):
        as_float(bad)
