"""The library's verbs: the CLI without argument parsing."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from mergesmith.checkpoints import open_checkpoints
from mergesmith.execute import MergeOptions, MergeReport, run_plan
from mergesmith.plan import Plan, plan_merge
from mergesmith.recipe import load_recipe


def plan(recipe: str | os.PathLike[str], *, model_paths: Mapping[str, Path] | None = None) -> Plan:
    """Load and check a recipe and its models' headers; return the Plan. Reads no tensor data.

    Example:
        >>> p = plan("recipe.yaml", model_paths={"Sao10K/Fimbulvetr-11B-v2": Path("/models/f")})
        >>> len(p.entries)
    """
    loaded = load_recipe(recipe)
    return plan_merge(loaded, open_checkpoints(loaded.recipe.referenced_models(), model_paths))


def merge(
    recipe: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model_paths: Mapping[str, Path] | None = None,
    options: MergeOptions | None = None,
) -> MergeReport:
    """Run a recipe into the folder `out` (complete and valid, or not created at all).

    Example:
        >>> merge("recipe.yaml", "merged", options=MergeOptions(out_shard_bytes=2 * 10**9))
    """
    loaded = load_recipe(recipe)
    out = Path(out)
    from mergesmith.write import check_output_folder

    check_output_folder(out, overwrite=bool(options and options.overwrite))  # before any model is opened
    checkpoints = open_checkpoints(loaded.recipe.referenced_models(), model_paths)
    return run_plan(plan_merge(loaded, checkpoints), checkpoints, out, options or MergeOptions())
