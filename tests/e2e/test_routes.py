"""Each plan entry carries one route, decided by the planner from the method's spec, and the
parameters are a read-only mapping with a named unset value."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from factory import build_model, resize_vocabulary, write_tokenizer
from mergesmith.api import plan
from mergesmith.methods.spec import UNSET, Unset
from mergesmith.plan import Params, Route


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("route-models")
    base = write_tokenizer(build_model(folder / "base", layers=2, vocab=64, seed=1))
    chat = write_tokenizer(resize_vocabulary(base, folder / "chat", 66, seed=2), added=("<a>", "<b>"))
    return {"base": base, "ft": build_model(folder / "ft", layers=2, vocab=64, seed=3), "chat": chat}


def routes(tmp_path: Path, models: dict[str, Path], recipe: str, **kwargs) -> dict[str, Route]:
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe)
    return {e.output: e.route for e in plan(path, model_paths=models, **kwargs).entries}


SCALED = "parameters: {scale: [{filter: o_proj, value: 2.0}, {value: 1.0}]}"


@pytest.mark.parametrize(
    "recipe, device, expected",
    [
        # bf16 stored and written, no scale: the bytes are copied
        ("slices: [{sources: [{model: base, layer_range: [0, 2]}]}]\nmerge_method: passthrough\n", "cpu", {"copy"}),
        # a scale of 1.0 is still a scaling (mergekit multiplies; the bits are the same)
        (
            f"slices: [{{sources: [{{model: base, layer_range: [0, 2], {SCALED}}}]}}]\nmerge_method: passthrough\n",
            "cpu",
            {"scale"},
        ),
        # a cast to float32 first: torch, in pieces
        (
            "slices: [{sources: [{model: base, layer_range: [0, 2]}]}]\nmerge_method: passthrough\ndtype: float32\n",
            "cpu",
            {"stream"},
        ),
        (
            "models: [{model: base, parameters: {weight: 1}}, {model: ft, parameters: {weight: 1}}]\n"
            "merge_method: linear\n",
            "cpu",
            {"stream"},
        ),
        (
            "models: [{model: ft, parameters: {weight: 1, density: 0.5}}]\nbase_model: base\nmerge_method: ties\n",
            "cpu",
            {"whole"},
        ),
        (
            "models: [{model: ft, parameters: {weight: 1, density: 0.5}}]\nbase_model: base\nmerge_method: ties\n",
            "cuda",
            {"device"},
        ),
        # elementwise methods stay on the CPU with a GPU: they are bound by reading and writing
        (
            "models: [{model: base, parameters: {weight: 1}}, {model: ft, parameters: {weight: 1}}]\n"
            "merge_method: linear\n",
            "cuda",
            {"stream"},
        ),
    ],
)
def test_each_entry_gets_the_route_its_method_and_dtypes_call_for(models, tmp_path, recipe, device, expected):
    found = routes(tmp_path, models, recipe, device=device)
    assert set(found.values()) == expected


def test_scaled_and_unscaled_tensors_of_one_slice(models, tmp_path):
    recipe = (
        "slices: [{sources: [{model: base, layer_range: [0, 2], "
        "parameters: {scale: [{filter: o_proj, value: 2.0}]}}]}]\nmerge_method: passthrough\n"
    )
    found = routes(tmp_path, models, recipe)
    assert found["model.layers.1.self_attn.o_proj.weight"] is Route.SCALE
    assert found["model.layers.1.mlp.down_proj.weight"] is Route.COPY


def test_embeddings_under_a_merged_vocabulary_are_aligned_whole(models, tmp_path):
    recipe = (
        "models: [{model: chat, parameters: {weight: 1, density: 0.5}}]\nbase_model: base\nmerge_method: ties\n"
        "tokenizer_source: union\n"
    )
    found = routes(tmp_path, models, recipe, device="cuda")
    assert found["model.embed_tokens.weight"] is Route.VOCABULARY and found["lm_head.weight"] is Route.VOCABULARY
    assert found["model.layers.0.mlp.up_proj.weight"] is Route.DEVICE


def test_params_are_a_read_only_hashable_mapping_and_unset_survives_pickling(models, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("slices: [{sources: [{model: base, layer_range: [0, 2]}]}]\nmerge_method: passthrough\n")
    entry = plan(path, model_paths=models).entries[0]
    assert dict(entry.params) == {"scale": UNSET} and repr(entry.params) == "Params(scale=unset)"
    with pytest.raises(TypeError):
        entry.params["scale"] = 2.0  # type: ignore[index]
    again = pickle.loads(pickle.dumps(entry))
    assert again == entry and hash(again) == hash(entry) and again.params["scale"] is UNSET
    assert Unset() is UNSET and Params([("a", (1.0,))]) != Params([("a", (2.0,))])
