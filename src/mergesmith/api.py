"""The library's verbs: the CLI without argument parsing."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from mergesmith.checkpoints import open_checkpoints
from mergesmith.execute import MergeOptions, MergeReport, run_plan
from mergesmith.plan import Plan, plan_merge
from mergesmith.recipe import LoadedRecipe, load_recipe, parse_recipe

RecipeSource = str | os.PathLike[str] | LoadedRecipe


def plan(
    recipe: RecipeSource,
    *,
    model_paths: Mapping[str, Path] | None = None,
    allow_crimes: bool = False,
    strict: bool = False,
    unsafe_truncate_embeddings: bool = False,
) -> Plan:
    """Load and check a recipe and its models' headers; return the Plan. Reads no tensor data.
    Keys the merge ignores (another method's parameter, ...) are warnings in `Plan.warnings`;
    `strict=True` refuses them.

    Example:
        >>> p = plan("recipe.yaml", model_paths={"Sao10K/Fimbulvetr-11B-v2": Path("/models/f")})
        >>> len(p.entries)
    """
    loaded = _loaded(recipe)
    checkpoints = open_checkpoints(loaded.recipe.models_to_open(), model_paths)
    return plan_merge(
        loaded,
        checkpoints,
        allow_crimes=allow_crimes,
        strict=strict,
        unsafe_truncate_embeddings=unsafe_truncate_embeddings,
    )


def merge(
    recipe: RecipeSource,
    out: str | os.PathLike[str],
    *,
    model_paths: Mapping[str, Path] | None = None,
    options: MergeOptions | None = None,
    allow_crimes: bool = False,
    strict: bool = False,
    unsafe_truncate_embeddings: bool = False,
) -> MergeReport:
    """Run a recipe into the folder `out` (complete and valid, or not created at all).

    Example:
        >>> merge("recipe.yaml", "merged", options=MergeOptions(out_shard_bytes=2 * 10**9))
    """
    loaded = _loaded(recipe)
    out = Path(out)
    from mergesmith.write import check_output_folder

    check_output_folder(out, overwrite=bool(options and options.overwrite))  # before any model is opened
    checkpoints = open_checkpoints(loaded.recipe.models_to_open(), model_paths)
    planned = plan_merge(
        loaded,
        checkpoints,
        allow_crimes=allow_crimes,
        strict=strict,
        unsafe_truncate_embeddings=unsafe_truncate_embeddings,
    )
    return run_plan(planned, checkpoints, out, options or MergeOptions())


def recipe_from_hub_card(model_id: str) -> LoadedRecipe:
    """The recipe in the model card (README.md) of a hub model, fetched through the hub cache.

    Example:
        >>> recipe_from_hub_card("ClaudioItaly/some-merge").recipe.merge_method
    """
    from mergesmith.checkpoints import resolve_reference
    from mergesmith.checkpoints.hub import fetch_file
    from mergesmith.errors import RecipeError

    ref = resolve_reference(model_id)
    if ref.repo_id is None:
        raise RecipeError(f"--from-card {model_id}: not a hub model id", hint="give org/name, or pass the card's path")
    path = fetch_file(ref, "README.md")
    if path is None:
        raise RecipeError(f"--from-card {model_id}: the model has no card (README.md)")
    return parse_recipe(path.read_text(encoding="utf-8"), source=f"{model_id} (model card)")


def _loaded(recipe: RecipeSource) -> LoadedRecipe:
    return recipe if isinstance(recipe, LoadedRecipe) else load_recipe(recipe)
