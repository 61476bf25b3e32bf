"""Flag parameters written as numbers, as published recipes write them (`normalize: 1.0` in
real_recipes/llama31-della-modules-default.yaml): mergekit 0.1.5 reads them by truth value."""

from __future__ import annotations

import pytest

from mergesmith.methods.spec import as_bool


@pytest.mark.parametrize(
    ("value", "expected"), [(True, True), (False, False), (1, True), (0, False), (1.0, True), (0.0, False)]
)
def test_flag_accepts_booleans_and_one_or_zero(value, expected) -> None:
    assert as_bool(value) is expected


@pytest.mark.parametrize("value", [0.5, 2, -1, "true", "yes", None, [1]])
def test_flag_refuses_other_values(value) -> None:
    with pytest.raises(ValueError) as err:
        as_bool(value)
    assert str(err.value) == f"expected true or false (or 1, 0), found {value!r}"
