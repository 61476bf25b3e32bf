"""The library's verbs: the CLI without argument parsing."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import yaml

from mergesmith.checkpoints import Checkpoint, open_checkpoints
from mergesmith.driver import MergeReport, Progress, merge_plan
from mergesmith.errors import MergesmithError, RecipeError
from mergesmith.execute import MergeOptions
from mergesmith.execute.run import input_paths, resolve_device, uses_device
from mergesmith.methods import METHODS
from mergesmith.output.folder import check_output_folder, prepare_output
from mergesmith.plan import Plan, plan_merge, routed_to_cpu
from mergesmith.recipe import LoadedRecipe, MethodNames
from mergesmith.recipe import load as recipe_load
from mergesmith.recipe.load import Reading
from mergesmith.recipe.schema import Recipe
from mergesmith.recipe.stages import Stage, parse_stages
from mergesmith.search.evolve import SearchSettings, SearchState
from mergesmith.search.multi import StageResult, run_stages
from mergesmith.search.multi import plan_stages as plan_stages_of

log = logging.getLogger(__name__)

RecipeSource = str | os.PathLike[str] | LoadedRecipe


def load_recipe(path: str | os.PathLike[str]) -> LoadedRecipe:
    """Read and validate a recipe file (or a model card holding one).

    Example:
        >>> loaded = load_recipe("examples/fimbulvetr-11b-v2-47-layers.yaml")
        >>> loaded.recipe.merge_method
        'passthrough'
    """
    return recipe_load.load_recipe(path, methods=method_names())


def parse_recipe(text: str, *, source: str = "<string>") -> LoadedRecipe:
    """Validate recipe text, or a model card holding one. Raises RecipeError naming the line or key path.

    A recipe whose indentation was lost (every line at column 0) is rebuilt from the schema.

    Example:
        >>> parse_recipe(Path("README.md").read_text(), source="README.md").recipe.merge_method
        'slerp'
    """
    return recipe_load.parse_recipe(text, methods=method_names(), source=source)


def load_stages(path: str | os.PathLike[str]) -> list[Stage]:
    """Read a multi-stage recipe file (mergekit-multi's: one recipe per YAML document, named by
    `name`), in the order its stages must run. Raises RecipeError for a bad document, duplicate
    names or a cycle.
    """
    from mergesmith.recipe.yaml_text import read_text

    text = read_text(path)
    return parse_stages(
        text,
        str(path),
        lambda document, line: recipe_load.parse_document(document, line, methods=method_names(), source=str(path)),
    )


def merge_stages(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    model_paths: Mapping[str, Path] | None = None,
    options: MergeOptions | None = None,
    on_stage=None,
) -> list[StageResult]:
    """Run every stage of a multi-stage recipe into out_dir/<name> (the unnamed one into
    out_dir/final), skipping those unchanged since the run that made them (search/multi.py).

    Example:
        >>> merge_stages("stages.yaml", "merges")[-1].out
        PosixPath('merges/final')
    """
    return run_stages(
        load_stages(path), Path(out_dir), model_paths=model_paths, options=options, merge=merge, on_stage=on_stage
    )


def plan_stages(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] = ".",
    *,
    model_paths: Mapping[str, Path] | None = None,
    allow_crimes: bool = False,
    strict: bool = False,
) -> list[tuple[Stage, Plan]]:
    """Plan every stage of a multi-stage recipe before any is built: a stage that reads another's
    output is planned against that stage's plan (its config, tensor names, shapes and dtypes)."""
    stages = load_stages(path)
    plans = plan_stages_of(
        stages,
        Path(out_dir),
        lambda loaded, checkpoints: plan_readings(loaded, checkpoints, allow_crimes=allow_crimes, strict=strict)[1],
        model_paths,
    )
    return list(zip(stages, plans))


def evolve(
    genome_path: str | os.PathLike[str],
    storage: str | os.PathLike[str],
    *,
    settings: SearchSettings | None = None,
    model_paths: Mapping[str, Path] | None = None,
    merge_best: bool = True,
    on_generation=None,
) -> SearchState:
    """Search a genome's merge parameters with CMA-ES (search/evolve.py), scoring each candidate
    merged in memory; write STORAGE/best.yaml, evaluations.jsonl, fitness.png and, with
    `merge_best`, the best merge into STORAGE/best-model. Everything the genome needs is checked
    before the first evaluation: its keys, its tasks' data, and a plan of its starting point.
    """
    from mergesmith.recipe.yaml_text import read_text
    from mergesmith.search import evolve as search
    from mergesmith.search.fitness import Scorer, check_tasks
    from mergesmith.search.genome import Genome, parse_config

    settings = settings or SearchSettings()
    storage = Path(storage)
    text = read_text(genome_path)
    config = parse_config(text, str(genome_path))
    check_tasks(config, str(genome_path))
    definition = config.genome
    models = list(dict.fromkeys([*definition.models, *([definition.base_model] if definition.base_model else [])]))
    checkpoints = open_checkpoints(models, model_paths)
    layers = checkpoints[definition.models[0]].structure.main.count
    if definition.layer_granularity and layers % definition.layer_granularity:
        raise RecipeError(
            f"{genome_path}: genome.layer_granularity {definition.layer_granularity} does not divide "
            f"{definition.models[0]!r}'s {layers} layers",
            hint="choose a divisor of the layer count, or 0 (one group)",
        )
    genome = Genome(definition, layers)

    def to_loaded(recipe: dict) -> LoadedRecipe:
        return parse_recipe(yaml.safe_dump(recipe, sort_keys=False), source="genome candidate")

    def plan_candidate(loaded: LoadedRecipe, opened: Mapping[str, Checkpoint]) -> Plan:
        return plan_merge(loaded, opened)

    try:  # the starting point must plan: a genome whose models cannot be merged fails here
        plan_candidate(to_loaded(genome.recipe(genome.initial())), checkpoints)
    except MergesmithError as err:
        raise type(err)(f"{genome_path}: the genome's models cannot be merged: {err.message}", hint=err.hint) from err
    paths = dict(model_paths or {})

    def make_scorer():
        return Scorer(config, plan_candidate, paths)

    state = search.run_search(config, text, genome, storage, settings, make_scorer, to_loaded, on_generation)
    recipe_path = search.write_results(state, genome, storage)
    search.plot_fitness(state, storage / "fitness.png")
    if merge_best:
        merge(recipe_path, storage / "best-model", model_paths=model_paths, options=MergeOptions(overwrite=True))
    return state


@functools.cache
def method_names() -> MethodNames:
    """The registry's parameter names, as the plain data recipe loading takes (recipe/ imports no
    method code)."""
    return MethodNames(
        parameters={name: frozenset(p.name for p in spec.params) for name, (spec, _) in METHODS.items()},
        per_model={name: frozenset(p.name for p in spec.params if p.per_input) for name, (spec, _) in METHODS.items()},
    )


def plan(
    recipe: RecipeSource,
    *,
    model_paths: Mapping[str, Path] | None = None,
    allow_crimes: bool = False,
    strict: bool = False,
    unsafe_truncate_embeddings: bool = False,
    device: str = "cpu",
) -> Plan:
    """Load and check a recipe and its models' headers; return the Plan. Reads no tensor data.
    Keys the merge ignores (another method's parameter, ...) are warnings in `Plan.warnings`;
    `strict=True` refuses them.

    Example:
        >>> p = plan("recipe.yaml", model_paths={"Sao10K/Fimbulvetr-11B-v2": Path("/models/f")})
        >>> len(p.entries)
    """
    loaded = _loaded(recipe)
    checkpoints = open_checkpoints(models_to_open(loaded), model_paths)
    return plan_readings(
        loaded,
        checkpoints,
        allow_crimes=allow_crimes,
        strict=strict,
        unsafe_truncate_embeddings=unsafe_truncate_embeddings,
        device=device,
    )[1]


def merge(
    recipe: RecipeSource,
    out: str | os.PathLike[str],
    *,
    model_paths: Mapping[str, Path] | None = None,
    options: MergeOptions | None = None,
    allow_crimes: bool = False,
    strict: bool = False,
    unsafe_truncate_embeddings: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
) -> MergeReport:
    """Run a recipe into the folder `out` (complete and valid, or not created at all).
    `on_progress` hears how far it is, from the executor's threads.

    Example:
        >>> merge("recipe.yaml", "merged", options=MergeOptions(out_shard_bytes=2 * 10**9))
    """
    loaded = _loaded(recipe)
    out = Path(out)
    options = options or MergeOptions()
    check_output_folder(out, overwrite=True)  # where OUT would go, before any model is opened
    checkpoints = open_checkpoints(models_to_open(loaded), model_paths)
    inputs = input_paths(checkpoints)
    if os.path.isfile(loaded.source):
        inputs.append(("the recipe", Path(loaded.source)))
    prepare_output(out, overwrite=options.overwrite, inputs=inputs)  # before the plan reads headers
    # "auto" plans as for a GPU, and looks for one (importing torch) only if an entry would use it
    planned_device = "cuda" if options.device == "auto" else resolve_device(options.device)
    planned = plan_readings(
        loaded,
        checkpoints,
        allow_crimes=allow_crimes,
        strict=strict,
        unsafe_truncate_embeddings=unsafe_truncate_embeddings,
        device=planned_device,
    )[1]
    if options.device == "auto":
        found = resolve_device("auto") if uses_device(planned) else "cpu"
        planned = planned if found != "cpu" else routed_to_cpu(planned)
        planned_device = found
    return merge_plan(planned, checkpoints, out, dataclasses.replace(options, device=planned_device), on_progress)


def recipe_from_hub_card(model_id: str) -> LoadedRecipe:
    """The recipe in the model card (README.md) of a hub model, fetched through the hub cache.

    Example:
        >>> recipe_from_hub_card("ClaudioItaly/some-merge").recipe.merge_method
    """
    from mergesmith.checkpoints import resolve_reference
    from mergesmith.checkpoints.hub import fetch_file

    ref = resolve_reference(model_id)
    if ref.repo_id is None:
        raise RecipeError(f"--from-card {model_id}: not a hub model id", hint="give org/name, or pass the card's path")
    path = fetch_file(ref, "README.md")
    if path is None:
        raise RecipeError(f"--from-card {model_id}: the model has no card (README.md)")
    from mergesmith.recipe.yaml_text import read_text

    return parse_recipe(read_text(path, what="model card"), source=f"{model_id} (model card)")


def plan_readings(
    loaded: LoadedRecipe,
    checkpoints: Mapping[str, Checkpoint],
    *,
    allow_crimes: bool = False,
    strict: bool = False,
    unsafe_truncate_embeddings: bool = False,
    device: str = "cpu",
) -> tuple[LoadedRecipe, Plan]:
    """Plan a recipe, and every other reading of a rebuilt one (see LoadedRecipe.readings).

    Readings that fail to plan are dropped; the rest must give the same plan, else a RecipeError
    names the line and both readings. Returns the reading taken and its plan.
    """
    candidates = [(None, loaded)] + [
        (reading, dataclasses.replace(loaded, recipe=reading.recipe, text=reading.text, readings=()))
        for reading in loaded.readings
    ]
    planned, failures = [], []
    for reading, candidate in candidates:
        try:
            planned.append(
                (
                    reading,
                    candidate,
                    plan_merge(
                        candidate,
                        checkpoints,
                        allow_crimes=allow_crimes,
                        strict=strict,
                        unsafe_truncate_embeddings=unsafe_truncate_embeddings,
                        device=device,
                    ),
                )
            )
        except MergesmithError as err:
            failures.append(err)
    if not planned:
        raise failures[0]
    # A reading under which the merge ignores a key (a method-wide parameter under a model) is not
    # what the author wrote when another reading uses every key.
    if any(not p.warnings for *_, p in planned) and any(p.warnings for *_, p in planned):
        failures += [RecipeError(p.warnings[0]) for *_, p in planned if p.warnings]
        planned = [item for item in planned if not item[2].warnings]
    first_reading, first, first_plan = planned[0]
    for reading, _, other in planned[1:]:
        if _merge_of(other) != _merge_of(first_plan):
            assert reading is not None  # only the main reading has none, and it comes first
            if first_reading is None and _continues_previous_slice(first.recipe, reading):
                log.warning(
                    "%s: line %d: %s read as %s's, as the slice before it has the same parameters; "
                    "under %s it would give another merge",
                    loaded.source,
                    reading.line,
                    reading.what,
                    reading.chosen,
                    reading.where,
                )
                continue
            raise RecipeError(
                f"{loaded.source}: line {reading.line}: {reading.what} could belong to {reading.chosen} or to "
                f"{reading.where}, and the readings give different merges",
                hint="restore the indentation of that part of the recipe so that only one reading remains",
            )
    if first_reading is not None:
        log.warning(
            "%s: line %d: %s read as %s's: the reading that puts it under %s does not plan (%s)",
            loaded.source,
            first_reading.line,
            first_reading.what,
            first_reading.where,
            first_reading.chosen,
            failures[0].message,
        )
    return first, first_plan


def _continues_previous_slice(recipe: Recipe, reading: Reading) -> bool:
    """A flattened block read as a slice source's parameters when the source of the slice before
    it sets the same parameters, against a reading as the top level's (the seed card's last slice:
    a per-slice pattern of scales, which a person reads as one more slice of the pattern). A block
    after a `models:` list has no such pattern to follow and stays ambiguous."""
    match = re.fullmatch(r"slices\[(\d+)\]\.sources\[(\d+)\]", reading.chosen)
    if match is None or reading.where != "the top level" or not recipe.slices:
        return False
    index, source = int(match[1]), int(match[2])
    if index == 0 or index >= len(recipe.slices) or source >= len(recipe.slices[index].sources):
        return False
    previous = recipe.slices[index - 1].sources
    own = recipe.slices[index].sources[source].parameters
    return bool(own) and source < len(previous) and set(previous[source].parameters or ()) == set(own)


def _merge_of(planned: Plan) -> tuple[object, ...]:
    """What two readings must agree on: every output tensor's recipe, and the output config."""
    return (planned.entries, dict(planned.config), planned.base_model, planned.donor, planned.vocabulary)


def models_to_open(loaded: LoadedRecipe) -> list[str]:
    """Every model a recipe reads, under any of its readings (a rebuilt recipe may have several)."""
    models = loaded.recipe.models_to_open()
    for reading in loaded.readings:
        models += [model for model in reading.recipe.models_to_open() if model not in models]
    return models


def _loaded(recipe: RecipeSource) -> LoadedRecipe:
    return recipe if isinstance(recipe, LoadedRecipe) else load_recipe(recipe)
