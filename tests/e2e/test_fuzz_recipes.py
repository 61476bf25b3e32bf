"""Fuzzing: generated recipes, well-formed and broken, are loaded and planned against real (tiny)
models; the only exceptions that may come out are mergesmith's own errors.

2,000 examples by default; MERGESMITH_FUZZ_EXAMPLES=10000 for a longer run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factory import build_model
from mergesmith.api import parse_recipe, plan
from mergesmith.errors import MergesmithError
from mergesmith.methods import METHODS

EXAMPLES = int(os.environ.get("MERGESMITH_FUZZ_EXAMPLES", "2000"))
MODELS = ("a", "b", "c")
PARAMETER_NAMES = sorted({p.name for spec, _ in METHODS.values() for p in spec.params}) + ["scael", "", "weight "]

numbers = st.one_of(
    st.integers(-3, 3), st.floats(-2, 2, allow_nan=False), st.sampled_from([0.0, 1.0, 0.5, float("nan"), 1e308])
)
scalars = st.one_of(numbers, st.booleans(), st.text(max_size=8), st.none())
filters = st.sampled_from([None, "*", "self_attn", "mlp", "down_proj", "embed_tokens", "lm_head", "", "[", 3])
settings_values = st.recursive(
    st.one_of(
        scalars,
        st.lists(numbers, max_size=5),
        st.lists(st.fixed_dictionaries({"filter": filters, "value": scalars}), max_size=3),
        st.fixed_dictionaries({"value": scalars}, optional={"filter": filters, "junk": scalars}),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=2)),
    max_leaves=6,
)
parameters = st.dictionaries(st.sampled_from(PARAMETER_NAMES), settings_values, max_size=4)
model_names = st.one_of(st.sampled_from(MODELS), st.sampled_from(["nowhere/x", "", "a+lora", "A"]))
layer_ranges = st.one_of(
    st.tuples(st.integers(-1, 5), st.integers(-1, 5)).map(list),
    st.lists(st.integers(0, 4), max_size=3),
    st.text(max_size=4),
)


@st.composite
def recipes(draw) -> str:
    recipe: dict = {"merge_method": draw(st.one_of(st.sampled_from(sorted(METHODS)), st.text(max_size=8)))}
    if draw(st.booleans()):
        recipe["models"] = draw(
            st.lists(
                st.fixed_dictionaries({"model": model_names}, optional={"parameters": parameters}),
                min_size=0,
                max_size=4,
            )
        )
    else:
        source = st.fixed_dictionaries(
            {"model": model_names, "layer_range": layer_ranges}, optional={"parameters": parameters}
        )
        recipe["slices"] = draw(
            st.lists(
                st.fixed_dictionaries(
                    {"sources": st.lists(source, max_size=3)},
                    optional={"parameters": parameters, "base_model": model_names},
                ),
                max_size=3,
            )
        )
    optional = {
        "base_model": model_names,
        "parameters": parameters,
        "dtype": st.sampled_from(["bfloat16", "float16", "float32", "bf16", "int8", ""]),
        "out_dtype": st.sampled_from(["bfloat16", "float32", "nope"]),
        "tokenizer_source": st.sampled_from(["base", "union", "a", "zzz"]),
        "chat_template": st.sampled_from(["auto", "chatml", "nope", "{{ x }}"]),
        "layer_rnage": st.just([0, 1]),
    }
    for key, strategy in optional.items():
        if draw(st.integers(0, 4)) == 0:
            recipe[key] = draw(strategy)
    text = yaml.safe_dump(recipe, sort_keys=False)
    if draw(st.integers(0, 5)) == 0:  # break the text itself: cut it, or splice junk in
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(["", ":", "\t", "- [", "}", "\n  x: 1\n", "'"])) + text[at + 1 :]
    return text


@st.composite
def plausible_recipes(draw) -> str:
    """Recipes that get past the schema: real methods, models and ranges, parameters of the
    method, with values that may still be out of range: planning gets to run its checks."""
    method = draw(st.sampled_from(sorted(METHODS)))
    spec = METHODS[method][0]
    names = [p.name for p in spec.params]
    values = st.one_of(numbers, st.lists(numbers, min_size=1, max_size=3), st.booleans())
    params = st.dictionaries(st.sampled_from(names), values, max_size=len(names)) if names else st.just({})
    recipe: dict = {"merge_method": method}
    if draw(st.booleans()):
        recipe["models"] = [
            {"model": m, "parameters": draw(params)}
            for m in draw(st.lists(st.sampled_from(MODELS), min_size=1, max_size=3))
        ]
    else:
        start = draw(st.integers(0, 2))
        end = draw(st.integers(start, 4))
        slices = []
        for _ in range(draw(st.integers(1, 3))):
            models = draw(st.lists(st.sampled_from(MODELS), min_size=1, max_size=3))
            slices.append(
                {"sources": [{"model": m, "layer_range": [start, end], "parameters": draw(params)} for m in models]}
            )
        recipe["slices"] = slices
    if draw(st.booleans()):
        recipe["base_model"] = draw(st.sampled_from(MODELS))
    if draw(st.booleans()):
        recipe["parameters"] = draw(params)
    if draw(st.booleans()):
        recipe["dtype"] = draw(st.sampled_from(["bfloat16", "float16", "float32"]))
    return yaml.safe_dump(recipe, sort_keys=False)


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("fuzz-models")
    return {name: build_model(folder / name, layers=3, seed=i) for i, name in enumerate(MODELS)}


@settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(text=st.one_of(recipes(), plausible_recipes()))
def test_loading_and_planning_raise_only_our_errors(text: str, model_paths_holder) -> None:
    try:
        plan(parse_recipe(text), model_paths=model_paths_holder)
    except MergesmithError as err:
        assert str(err).strip(), "an error without a message"


@pytest.fixture(scope="module")
def model_paths_holder(model_paths):
    return model_paths
