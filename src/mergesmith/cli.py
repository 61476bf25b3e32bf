"""The command line: argument parsing, output modes and the one error boundary. No merge logic."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sys
import tempfile
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from mergesmith import __version__
from mergesmith.errors import MergesmithError
from mergesmith.execute.backend import BACKENDS
from mergesmith.methods.spec import Unset
from mergesmith.plan_json import json_default, plan_document

log = logging.getLogger("mergesmith")

MERGE_EXAMPLES = """
\b
Examples:
  mergesmith merge recipe.yaml ./merged
  mergesmith merge recipe.yaml ./merged --model-path Sao10K/Fimbulvetr-11B-v2=/models/fimbulvetr
  mergesmith merge recipe.yaml ./merged --out-shard-size 2G --overwrite
"""

PLAN_EXAMPLES = """
\b
Examples:
  mergesmith plan recipe.yaml
  mergesmith plan recipe.yaml --json | jq '.entries | length'
"""


def _parse_size(ctx: click.Context, param: click.Parameter, value: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", value, re.IGNORECASE)
    if not match:
        raise click.BadParameter(f"{value!r} is not a size; write bytes, or e.g. 500M, 5G, 2GiB")
    number, unit, binary = float(match[1]), match[2].upper(), bool(match[3])
    power = " KMGT".index(unit or " ")
    size = int(number * (1024 if binary else 1000) ** power)
    if size <= 0:
        raise click.BadParameter("the size must be positive")
    return size


def size_option(name: str, default: str, help: str):
    """An option holding a size in bytes, written 500M, 5G, 2GiB or plain bytes."""
    return click.option(name, default=default, show_default=True, callback=_parse_size, help=help)


def _parse_model_paths(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Path]:
    """NAME=DIR, split at the first '=': a model name never holds one (hub ids cannot). More '='
    are the folder's only when that folder exists; otherwise the value is refused, not guessed at."""
    mapping: dict[str, Path] = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep or not name or not folder:
            raise click.BadParameter(f"{value!r}: write NAME=DIR, e.g. Sao10K/Fimbulvetr-11B-v2=/models/fimbulvetr")
        if "=" in folder and not Path(folder).expanduser().is_dir():
            raise click.BadParameter(
                f"{value!r}: more than one '='. A model name has no '=', so this reads as NAME {name!r} and "
                f"DIR {folder!r}, which is not a folder; write NAME=DIR (a DIR whose path holds '=' must exist)"
            )
        if mapping.get(name, Path(folder)) != Path(folder):
            raise click.BadParameter(f"{name!r} is given two folders ({mapping[name]} and {folder}); give one")
        mapping[name] = Path(folder)
    return mapping


model_path_option = click.option(
    "--model-path",
    "model_paths",
    multiple=True,
    callback=_parse_model_paths,
    metavar="NAME=DIR",
    help="Read model NAME (as the recipe writes it) from the folder DIR. Repeatable.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mergesmith")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Build new language models out of existing ones, from mergekit-compatible recipes."""
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr)
    # Ray's own notices (its token file, its session folder) are for -v: the merge says what matters
    logging.getLogger("ray").setLevel(level if verbose else logging.ERROR)
    ctx.obj = {"quiet": quiet}


truncate_option = click.option(
    "--unsafe-truncate-embeddings",
    is_flag=True,
    help="UNSAFE (mergekit's flag): cut vocabularies of different sizes to the smallest; assumes the same token ids.",
)

strict_option = click.option(
    "--strict", is_flag=True, help="Refuse recipe keys that the merge ignores (another method's parameters, ...)."
)

device_option = click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="Where heavy methods (TIES/DARE family, slerp family, model_stock, ...) compute: cpu, cuda, cuda:N, auto.",
)

from_card_option = click.option(
    "--from-card", metavar="ID", help="Take the recipe from the model card of hub model ID (through the hub cache)."
)


@cli.command(epilog=MERGE_EXAMPLES)
@click.argument("paths", nargs=-1, metavar="RECIPE OUT", type=click.Path(path_type=Path))
@from_card_option
@model_path_option
@size_option("--out-shard-size", "5G", "Largest shard, in bytes (500M, 5G, 2GiB).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (built aside, swapped in at the end).")
@click.option("--allow-crimes", is_flag=True, help="Merge models of different architectures (follows the first).")
@strict_option
@truncate_option
@click.option(
    "--resume",
    is_flag=True,
    help="Continue a killed merge into OUT: keep the tensors it wrote whose checksums still match.",
)
@click.option(
    "--workers",
    type=click.IntRange(1),
    help="Threads running plan entries (default: min(4, CPUs); min(8, CPUs) on a GPU).",
)
@size_option(
    "--max-memory", "4G", "Estimated bytes of tensors in flight across workers (one entry always runs, however large)."
)
@click.option("--random-seed", type=int, help="Seed for random methods (DARE, DELLA, arcee_fusion); chosen if absent.")
@device_option
@click.option(
    "--executor",
    type=click.Choice(sorted(BACKENDS)),
    default="local",
    show_default=True,
    help="What runs the shard tasks: local threads, or a Ray cluster (pip install 'mergesmith[ray]').",
)
@click.option(
    "--ray-address",
    metavar="ADDR",
    help="The Ray cluster to join (with --executor ray); without it a local Ray instance is started.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.pass_context
def merge(
    ctx: click.Context,
    paths: tuple[Path, ...],
    from_card: str | None,
    model_paths: dict,
    out_shard_size: int,
    overwrite: bool,
    allow_crimes: bool,
    strict: bool,
    unsafe_truncate_embeddings: bool,
    resume: bool,
    workers: int | None,
    max_memory: int,
    random_seed: int | None,
    device: str,
    executor: str,
    ray_address: str | None,
    as_json: bool,
) -> None:
    """Merge the models of RECIPE into the folder OUT.

    RECIPE is a YAML recipe, or a model card (Markdown) holding one; with --from-card ID, give OUT alone.
    """
    from mergesmith.api import merge as run_merge
    from mergesmith.execute import MergeOptions

    options = MergeOptions(
        out_shard_bytes=out_shard_size,
        overwrite=overwrite,
        random_seed=random_seed,
        device=device,
        max_memory_bytes=max_memory,
        resume=resume,
        progress=not (ctx.obj["quiet"] or as_json),
        executor=executor,
        executor_address=ray_address,
    )
    if ray_address and executor != "ray":
        raise click.UsageError("--ray-address needs --executor ray")
    if workers:
        options = dataclasses.replace(options, workers=workers)
    if len(paths) != (1 if from_card else 2):
        raise click.UsageError("give OUT alone with --from-card" if from_card else "give RECIPE and OUT")
    out = paths[-1]
    recipe = _read_recipe(paths[0] if not from_card else None, from_card, quiet=ctx.obj["quiet"])
    report = run_merge(
        recipe,
        out,
        model_paths=model_paths,
        options=options,
        allow_crimes=allow_crimes,
        strict=strict,
        unsafe_truncate_embeddings=unsafe_truncate_embeddings,
    )
    if as_json:
        click.echo(json.dumps({**asdict(report), "out": str(report.out)}, indent=2))
    elif not ctx.obj["quiet"]:
        _echo_summary(report)


@cli.command(epilog=PLAN_EXAMPLES)
@click.argument("recipe", required=False, type=click.Path(dir_okay=False, path_type=Path))
@from_card_option
@model_path_option
@strict_option
@truncate_option
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print the plan as one JSON document.")
@click.option(
    "--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), help="Draw the plan into this PNG."
)
@click.pass_context
def plan(
    ctx: click.Context,
    recipe: Path | None,
    from_card: str | None,
    model_paths: dict,
    strict: bool,
    unsafe_truncate_embeddings: bool,
    device: str,
    as_json: bool,
    plot_path: Path | None,
) -> None:
    """Check RECIPE and print one line per output tensor. Reads only headers and configs."""
    from mergesmith.api import plan as make_plan

    if (recipe is None) == (from_card is None):
        raise click.UsageError("give RECIPE or --from-card ID")
    if recipe is not None and _is_multi_stage(recipe):
        _plan_stages(recipe, model_paths, strict, as_json)
        return
    loaded = _read_recipe(recipe, from_card, quiet=ctx.obj["quiet"])
    from mergesmith.execute.run import resolve_device

    result = make_plan(
        loaded,
        model_paths=model_paths,
        strict=strict,
        unsafe_truncate_embeddings=unsafe_truncate_embeddings,
        device=resolve_device(device),
    )
    if plot_path:
        from mergesmith.plots import plot_plan

        click.echo(f"wrote {plot_plan(result, plot_path)}", err=True)
    if as_json:
        click.echo(json.dumps(plan_document(result), indent=2, default=json_default))
        return
    _echo_plan(result)


def _is_multi_stage(path: Path) -> bool:
    from mergesmith.recipe.stages import is_multi_stage
    from mergesmith.recipe.yaml_text import read_text

    try:
        return is_multi_stage(read_text(path))
    except MergesmithError:
        return False  # the single-recipe reader reports it


def _plan_stages(path: Path, model_paths: dict, strict: bool, as_json: bool) -> None:
    """A multi-stage recipe's plan: each stage's, in the order they run (OUT_DIR/<name> as `multi` writes them)."""
    from mergesmith.api import plan_stages

    planned = plan_stages(path, model_paths=model_paths, strict=strict)
    if as_json:
        stages = [
            {"name": s.name, "document": s.document, "depends": list(s.depends), "plan": plan_document(p)}
            for s, p in planned
        ]
        click.echo(json.dumps({"stages": stages}, indent=2, default=json_default))
        return
    for stage, result in planned:
        reads = f", reads {', '.join(stage.depends)}" if stage.depends else ""
        click.echo(f"# stage {stage.name} (document {stage.document}){reads}: {len(result.entries)} tensors")
        _echo_plan(result)


def _echo_plan(result: Any) -> None:
    summary = plan_document(result)["vocabulary"] if result.vocabulary is not None else None
    if summary is not None:
        names: list[str] = summary["added"]
        added = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
        click.echo(
            f"vocabulary: {summary['tokens']} tokens in {summary['rows']} rows, tokenizer from "
            f"{summary['tokenizer_from']}" + (f"; added: {added}" if added else "")
        )
    if len(result.modules) > 1:  # which module plain slices build, and how the others are built
        for module in result.modules:
            click.echo(f"module {module.name}: {module.layers} layers, from {module.built_from}")
    for entry in result.entries:
        params = ", ".join(f"{k}={_show(v)}" for k, v in entry.params.items() if not isinstance(v, Unset))
        sources = " ".join(f"{s.model}:{s.tensor}" + _fp8_blocks(s.fp8) for s in entry.sources)
        shape = list(entry.shape)
        line = f"{entry.output} {entry.written_dtype} {shape} {entry.route} <- {entry.method}({params}) {sources}"
        click.echo(line + _fp8_output_note(entry))


def _fp8_blocks(scales: Any) -> str:
    """A block-scaled FP8 source: `[fp8 128x128]`, the blocks its scales cover."""
    return "" if scales is None else f"[fp8 {scales.block[0]}x{scales.block[1]}]"


def _fp8_output_note(entry: Any) -> str:
    fp8 = entry.fp8
    if fp8 is None:
        return ""
    return f" -> fp8 {fp8.block[0]}x{fp8.block[1]}" if entry.output == fp8.weight else f" -> scales of {fp8.weight}"


VERIFY_EXAMPLES = """
\b
Examples:
  mergesmith verify ./merged
  mergesmith verify ./merged recipe.yaml --model-path org/base=/models/base
"""


@cli.command(epilog=VERIFY_EXAMPLES)
@click.argument("folder", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("recipe", required=False, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@model_path_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON document.")
def verify(folder: Path, recipe: Path | None, model_paths: dict, as_json: bool) -> int:
    """Check the model folder FOLDER; with RECIPE, also that it holds what the recipe plans.

    Index against shards, every header, every tensor read (NaN/Inf reported per tensor), config
    against the tensors (layer count, vocab size, tie flag). Exit 1 when anything is wrong.
    """
    from mergesmith.api import plan as make_plan
    from mergesmith.verify import verify_folder

    planned = make_plan(recipe, model_paths=model_paths) if recipe else None
    report = verify_folder(folder, planned)
    if as_json:
        click.echo(json.dumps({**asdict(report), "folder": str(report.folder), "ok": report.ok}, indent=2))
    else:
        for problem in report.problems:
            click.echo(f"problem: {problem}", err=True)
        verdict = "OK" if report.ok else f"{len(report.problems)} problem(s)"
        click.echo(f"{folder}: {verdict}; {report.tensors} tensors, {report.bytes_read / 1e9:.3f} GB read")
    return 0 if report.ok else 1


EVALUATE_EXAMPLES = """
\b
Examples:
  mergesmith evaluate ./merged --base ./original
  mergesmith evaluate ./merged --base ./original --text book.txt --plot plots/ --json
"""


@cli.command(epilog=EVALUATE_EXAMPLES)
@click.argument("model", type=click.Path(file_okay=False, path_type=Path))
@click.option("--base", type=click.Path(file_okay=False, path_type=Path), help="Compare with this model.")
@click.option(
    "--text",
    "texts",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Measure on these files (default: public-domain prose shipped with mergesmith).",
)
@click.option("--max-tokens", default=2048, show_default=True, type=click.IntRange(2), help="Tokens of text used.")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False, path_type=Path), help="Write PNG plots here.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON document.")
def evaluate(
    model: Path, base: Path | None, texts: tuple[Path, ...], max_tokens: int, plot_dir: Path | None, as_json: bool
) -> None:
    """Measure MODEL: perplexity, per-layer profile, completions; against --base: KL and agreement."""
    from mergesmith import evaluate as measure

    text = measure.read_texts(list(texts)) if texts else None
    result = measure.evaluate(model, base_dir=base, text=text, max_tokens=max_tokens)
    if plot_dir:
        from mergesmith.plots import plot_evaluation

        for path in plot_evaluation(result, plot_dir):
            click.echo(f"wrote {path}", err=True)
    if as_json:
        click.echo(json.dumps(asdict(result), indent=2))
        return
    _echo_evaluation(result)


def _echo_evaluation(result) -> None:
    model, base = result.model, result.base
    click.echo(f"{'':24}{'model':>12}{'base':>12}" if base else f"{'':24}{'model':>12}")
    click.echo(f"{'perplexity':24}{model.perplexity:12.3f}" + (f"{base.perplexity:12.3f}" if base else ""))
    click.echo(f"{'tokens':24}{model.tokens:12d}")
    if base:
        click.echo(f"{'KL(base || model)':24}{result.kl_mean:12.5f}  nats/token")
        click.echo(f"{'top-1 agreement':24}{result.top1_agreement:12.1%}")
    click.echo("\nlayer  residual norm (model / base)   update ratio (model / base)   lens KL")
    for i, norm in enumerate(model.profile.residual_norm):
        other = base.profile.residual_norm[i] if base and i < len(base.profile.residual_norm) else None
        ratio = model.profile.update_ratio[i] if i < len(model.profile.update_ratio) else float("nan")
        other_ratio = base.profile.update_ratio[i] if base and i < len(base.profile.update_ratio) else None
        lens = result.logit_lens_kl[i] if i < len(result.logit_lens_kl) else None
        click.echo(
            f"{i:5d}  {norm:12.2f} / {_maybe(other):>10}   {ratio:12.3f} / {_maybe(other_ratio):>10}   {_maybe(lens)}"
        )
    click.echo("")
    for i, prompt in enumerate(result.prompts):
        click.echo(f"> {prompt}\n  model: {model.completions[i]}")
        if base:
            click.echo(f"  base:  {base.completions[i]}")


def _maybe(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@cli.group()
def recipe() -> None:
    """Work with recipes: take them out of model cards."""


@recipe.command("extract")
@click.argument("card", required=False, type=click.Path(dir_okay=False, path_type=Path))
@from_card_option
def recipe_extract(card: Path | None, from_card: str | None) -> None:
    """Print the recipe of a model card (its indentation restored if it was lost) on stdout."""
    if (card is None) == (from_card is None):
        raise click.UsageError("give CARD or --from-card ID")
    loaded = _read_recipe(card, from_card, quiet=False, echo=False)
    click.echo(loaded.text.rstrip())


def _read_recipe(path: Path | None, from_card: str | None, *, quiet: bool, echo: bool = True):
    """Load a recipe file or card; tell the user on stderr when its indentation was rebuilt."""
    from mergesmith.api import load_recipe, recipe_from_hub_card

    loaded = recipe_from_hub_card(from_card) if from_card else load_recipe(path)  # type: ignore[arg-type]
    if loaded.rebuilt and not quiet:
        click.echo(f"{loaded.source}: the recipe had lost its indentation; rebuilt from the schema:", err=True)
        for note in loaded.notes:
            click.echo(f"  note: {note}", err=True)
        for other in loaded.readings:  # plan and merge compare them (api.plan_readings)
            click.echo(f"  note: line {other.line}: {other.what} also reads as {other.where}'s", err=True)
        if echo:
            click.echo("\n".join("    " + line for line in loaded.text.rstrip().splitlines()), err=True)
    return loaded


def _show(value: object) -> str:
    if isinstance(value, tuple) and len(value) == 1:
        value = value[0]
    return repr(value) if isinstance(value, str) else str(value)


@cli.command()
@click.argument("recipes", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@model_path_option
@size_option("--out-shard-size", "5G", "Largest shard, in bytes (500M, 5G, 2GiB).")
@click.option("--overwrite", is_flag=True, help="Replace stage folders under OUT_DIR that no earlier run made.")
@click.option("--random-seed", type=int, help="Seed for random methods (DARE, DELLA, arcee_fusion) in every stage.")
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print each stage's result as JSON on stdout.")
@click.pass_context
def multi(
    ctx: click.Context,
    recipes: Path,
    out_dir: Path,
    model_paths: dict,
    out_shard_size: int,
    overwrite: bool,
    random_seed: int | None,
    device: str,
    as_json: bool,
) -> None:
    """Run a multi-stage recipe (mergekit-multi's YAML) into OUT_DIR.

    Each YAML document is a recipe; a `name` makes it a stage written to OUT_DIR/<name>, which
    later documents read by that name. The unnamed document, if any, goes to OUT_DIR/final.
    Stages run in dependency order; one unchanged since the run that made it is skipped.
    """
    from mergesmith.api import merge_stages
    from mergesmith.execute import MergeOptions

    quiet = ctx.obj["quiet"] or as_json
    options = MergeOptions(
        out_shard_bytes=out_shard_size, overwrite=overwrite, random_seed=random_seed, device=device, progress=not quiet
    )

    def announce(stage, index: int, skipped: bool) -> None:
        if not quiet:
            what = "unchanged, skipped" if skipped else "merging"
            click.echo(f"stage {index + 1} {stage.name} (document {stage.document}): {what}", err=True)

    results = merge_stages(recipes, out_dir, model_paths=model_paths, options=options, on_stage=announce)
    if as_json:
        click.echo(json.dumps([{**asdict(r), "out": str(r.out)} for r in results], indent=2))
    elif not ctx.obj["quiet"]:
        for result in results:
            click.echo(f"{result.name}: {result.out} ({'skipped' if result.skipped else f'{result.elapsed_s:.1f} s'})")


@cli.command()
@click.argument("genome", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--storage", required=True, type=click.Path(file_okay=False, path_type=Path), help="Search state and results."
)
@model_path_option
@click.option("--max-evals", default=100, show_default=True, type=click.IntRange(1), help="Evaluations in all.")
@click.option("--population", type=click.IntRange(2), help="Candidates per generation (default: CMA-ES's, 4 + 3 ln n).")
@click.option(
    "--sigma",
    default=0.2,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="CMA-ES's initial step size.",
)
@click.option(
    "--seed", default=1, show_default=True, type=int, help="Seed of the search: the same seed, the same search."
)
@click.option(
    "--workers",
    default=2,
    show_default=True,
    type=click.IntRange(0),
    help="Ray actors scoring candidates (0: in this process).",
)
@click.option(
    "--ray-address", metavar="ADDR", help="The Ray cluster to use; without it a local Ray instance is started."
)
@click.option("--no-merge", is_flag=True, help="Do not write the best merge into STORAGE/best-model.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.pass_context
def evolve(
    ctx: click.Context,
    genome: Path,
    storage: Path,
    model_paths: dict,
    max_evals: int,
    population: int | None,
    sigma: float,
    seed: int,
    workers: int,
    ray_address: str | None,
    no_merge: bool,
    as_json: bool,
) -> None:
    """Search GENOME's merge parameters (mergekit-evolve's genome file) with CMA-ES.

    Candidates are merged in memory and scored by the genome's tasks (perplexity, kl, agreement on
    text files; lm-eval tasks where lm-eval is installed), in parallel on Ray. STORAGE keeps the
    search state (a killed search resumes), best.yaml, evaluations.jsonl, fitness.png, best-model/.
    """
    from mergesmith.api import evolve as run_evolve
    from mergesmith.search.evolve import SearchSettings, summary

    settings = SearchSettings(max_evals, population, sigma, seed, workers, ray_address)

    def progress(state) -> None:
        if not (ctx.obj["quiet"] or as_json):
            done = summary(state)
            click.echo(
                f"generation {done['generation']}: {done['evaluations']}/{max_evals} evaluations, "
                f"best fitness {done['best_fitness']:.6g}",
                err=True,
            )

    state = run_evolve(
        genome, storage, settings=settings, model_paths=model_paths, merge_best=not no_merge, on_generation=progress
    )
    result = {**summary(state), "best_recipe": str(storage / "best.yaml"), "best_genotype": state.best["genotype"]}
    if as_json:
        click.echo(json.dumps(result, indent=2))
    elif not ctx.obj["quiet"]:
        best, count = result["best_fitness"], result["evaluations"]
        click.echo(f"best fitness {best:.6g} after {count} evaluations: {result['best_recipe']}")


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@model_path_option
@size_option("--out-shard-size", "5G", "Largest shard, in bytes (500M, 5G, 2GiB).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (built aside, swapped in at the end).")
@click.option("--random-seed", default=0, show_default=True, type=int, help="Seed of random and uniform_random gates.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.pass_context
def moe(
    ctx: click.Context,
    config: Path,
    out: Path,
    model_paths: dict,
    out_shard_size: int,
    overwrite: bool,
    random_seed: int,
    as_json: bool,
) -> None:
    """Build a mixture-of-experts model from dense ones (mergekit-moe's CONFIG) into OUT.

    Outputs Mixtral (from Llama/Mistral), Qwen2-MoE (from Qwen2, one shared expert) or Qwen3-MoE
    (from Qwen3); gate_mode hidden runs the base on the prompts (needs the eval extra).
    """
    from mergesmith.execute import MergeOptions
    from mergesmith.moe.assemble import build_moe
    from mergesmith.recipe.yaml_text import read_text

    options = MergeOptions(
        out_shard_bytes=out_shard_size, overwrite=overwrite, progress=not (ctx.obj["quiet"] or as_json)
    )
    report = build_moe(read_text(config), str(config), out, model_paths=model_paths, options=options, seed=random_seed)
    if as_json:
        click.echo(json.dumps({**asdict(report), "out": str(report.out)}, indent=2))
    elif not ctx.obj["quiet"]:
        _echo_summary(report)


@cli.group()
def lora() -> None:
    """LoRA adapters: apply them to a base (merge), extract one from a fine-tune (extract)."""


@lora.command("merge")
@click.argument("paths", nargs=-1, required=True, metavar="BASE ADAPTER... OUT")
@click.option("--weight", "weights", type=float, multiple=True, help="One per adapter, in order (default 1.0 each).")
@click.option("--dtype", help="The output's dtype (bfloat16, float16, float32); default: the base's.")
@model_path_option
@size_option("--out-shard-size", "5G", "Largest shard, in bytes (500M, 5G, 2GiB).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (built aside, swapped in at the end).")
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.pass_context
def lora_merge(
    ctx: click.Context,
    paths: tuple[str, ...],
    weights: tuple[float, ...],
    dtype: str | None,
    model_paths: dict,
    out_shard_size: int,
    overwrite: bool,
    device: str,
    as_json: bool,
) -> None:
    """Apply each ADAPTER (a PEFT LoRA folder or hub id) to BASE, weighted, streamed into OUT.

    One adapter at weight 1 gives exactly what PEFT's merge_and_unload gives; several add their
    weighted changes (task arithmetic over BASE+ADAPTER).
    """
    from mergesmith.api import merge as run_merge
    from mergesmith.api import parse_recipe
    from mergesmith.execute import MergeOptions
    from mergesmith.lora.merge import adapters_recipe

    if len(paths) < 3:
        raise click.UsageError("give BASE, at least one ADAPTER, and OUT")
    text = adapters_recipe(paths[0], paths[1:-1], weights, dtype)
    options = MergeOptions(
        out_shard_bytes=out_shard_size,
        overwrite=overwrite,
        device=device,
        progress=not (ctx.obj["quiet"] or as_json),
    )
    report = run_merge(
        parse_recipe(text, source="lora merge"), Path(paths[-1]), model_paths=model_paths, options=options
    )
    if as_json:
        click.echo(json.dumps({**asdict(report), "out": str(report.out)}, indent=2))
    elif not ctx.obj["quiet"]:
        _echo_summary(report)


@lora.command("extract")
@click.argument("out", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", "tuned", required=True, help="The fine-tune (a folder or hub id).")
@click.option("--base", "--base-model", "base", required=True, help="Its base model (a folder or hub id).")
@click.option("--out-path", type=click.Path(file_okay=False, path_type=Path), help="OUT, as mergekit names it.")
@click.option("--rank", "--max-rank", "rank", type=int, help="The rank of every module's LoRA.")
@click.option(
    "--energy", type=float, help="Instead of --rank: per module, the least rank keeping this share of sum(S^2)."
)
@click.option("-i", "--include", "--include-regex", "include", multiple=True, help="Only modules matching (regex).")
@click.option("-e", "--exclude", "--exclude-regex", "exclude", multiple=True, help="Not modules matching (regex).")
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "bfloat16", "float16"]))
@click.option("--device", default="cpu", show_default=True, help="Where the SVDs run: cpu, cuda, cuda:N.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@model_path_option
@click.option("--json", "as_json", is_flag=True, help="Print each module's rank and error as JSON on stdout.")
@click.pass_context
def lora_extract(
    ctx: click.Context,
    out: Path | None,
    tuned: str,
    base: str,
    out_path: Path | None,
    rank: int | None,
    energy: float | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    dtype: str,
    device: str,
    overwrite: bool,
    model_paths: dict,
    as_json: bool,
) -> None:
    """Extract a LoRA adapter (PEFT) approximating MODEL - BASE into OUT, module by module.

    Reports each module's relative reconstruction error ||delta - B A|| / ||delta||.
    """
    from mergesmith.checkpoints import open_checkpoints
    from mergesmith.lora.extract import ExtractSettings, extract_adapter

    if (out is None) == (out_path is None):
        raise click.UsageError("give OUT (or --out-path), once")
    target = out or out_path
    assert target is not None
    settings = ExtractSettings(rank, energy, include, exclude, device, dtype, overwrite)
    opened = open_checkpoints([tuned, base], model_paths)
    quiet = ctx.obj["quiet"] or as_json

    def progress(module: str, module_rank: int, error: float) -> None:
        if not quiet:
            click.echo(f"{module}: rank {module_rank}, relative error {error:.4f}", err=True)

    report = extract_adapter(opened[tuned], opened[base], target, settings, on_module=progress)
    if as_json:
        modules = {m: {"rank": r, "relative_error": e} for m, (r, e) in report.modules.items()}
        click.echo(
            json.dumps({"out": str(target), "modules": modules, "modules_to_save": report.saved_whole}, indent=2)
        )
    elif not ctx.obj["quiet"]:
        errors = [e for _, e in report.modules.values()]
        click.echo(
            f"{target}: {len(errors)} modules, relative error mean {sum(errors) / len(errors):.4f}, "
            f"worst {max(errors):.4f}; saved whole: {', '.join(report.saved_whole) or 'none'}"
        )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print every method's spec as one JSON document.")
def methods(as_json: bool) -> None:
    """List the merge methods with their parameters, defaults and input contracts."""
    from mergesmith.methods import METHODS

    described = [_describe_method(spec) for spec, _ in METHODS.values()]
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return
    for method in described:
        inputs = method["inputs"]
        low, high = inputs["min_count"], inputs["max_count"]
        counts = f"{low}+" if high is None else (f"{low}" if low == high else f"{low}-{high}")
        counts += " model" if counts == "1" else " models"
        if inputs["min_non_base"] is not None:
            counts = f"{inputs['min_non_base']}{'+' if inputs['max_non_base'] is None else ''} besides the base"
        reference = f" {method['reference']}" if method["reference"] else ""
        click.echo(f"{method['name']}: {method['summary']} (base {inputs['base']}, {counts}){reference}")
        for param in method["parameters"]:
            default = "required" if param["required"] else f"default {param['default']!r}"
            bounds = f", {param['range']}" if param["minimum"] is not None or param["maximum"] is not None else ""
            click.echo(f"    {param['name']} ({param['type']}, {param['scope']}, {default}{bounds}): {param['doc']}")


def _describe_method(spec) -> dict:
    return {
        "name": spec.name,
        "pretty_name": spec.pretty_name,
        "summary": spec.summary,
        "reference": spec.reference,
        "random": spec.is_random,
        "inputs": {
            "base": spec.inputs.base,
            "min_count": spec.inputs.min_count,
            "max_count": spec.inputs.max_count,
            "min_non_base": spec.inputs.min_non_base,
            "max_non_base": spec.inputs.max_non_base,
        },
        "parameters": [
            {
                "name": p.name,
                "type": p.type.__name__,
                "scope": p.scope,
                "required": p.required,
                "default": p.default,
                "minimum": p.minimum,
                "maximum": p.maximum,
                "range": p.valid_range if p.type in (int, float) else None,
                "doc": p.doc,
            }
            for p in spec.params
        ],
    }


@cli.command()
@click.option(
    "--keep", type=click.Path(file_okay=False, path_type=Path), help="Keep the demo model and the merge in this folder."
)
@click.pass_context
def demo(ctx: click.Context, keep: Path | None) -> None:
    """Run the seed recipe on a small random Fimbulvetr-shaped model, offline, and check the result."""
    from mergesmith import demo as seed_demo
    from mergesmith.api import merge as run_merge
    from mergesmith.execute import MergeOptions

    with tempfile.TemporaryDirectory(prefix="mergesmith-demo-") as tmp:
        work = keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        source = seed_demo.build_demo_model(work / "fimbulvetr-demo")
        recipe = work / seed_demo.SEED_RECIPE
        recipe.write_text(seed_demo.seed_recipe_text(), encoding="utf-8")
        click.echo(f"built a random 48-layer Mistral-shaped model in {source}", err=True)
        report = run_merge(
            recipe,
            work / "merged",
            model_paths={seed_demo.SEED_MODEL: source},
            options=MergeOptions(overwrite=True, progress=not ctx.obj["quiet"]),
        )
        check = seed_demo.check_demo_output(source, report.out)
        _echo_summary(report)
        click.echo(
            f"check: {check.layers} layers, {check.tensors} tensors: {check.scaled} scaled by the recipe's "
            f"1.5-4.0 ramp, {check.copied} copied byte for byte, all equal to an independent computation"
        )


SERVE_EXAMPLES = """
\b
Examples:
  mergesmith serve --root ~/models
  mergesmith serve --root ~/models --root /data/merges --port 8471
"""


@cli.command(epilog=SERVE_EXAMPLES)
@click.option("--port", default=8470, show_default=True, type=click.IntRange(0, 65535), help="The port to listen on.")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="The address to listen on. Anything but loopback lets this network read and write your roots.",
)
@click.option(
    "--root",
    "roots",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="A folder the page may read models from and write merges to (repeatable; default: the current folder).",
)
@click.option(
    "--history",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The SQLite file of past runs (default: FIRST_ROOT/.mergesmith/history.sqlite).",
)
def serve(port: int, host: str, roots: tuple[Path, ...], history: Path | None) -> None:
    """A local page to compose, see, run and compare merges (needs mergesmith[web])."""
    try:
        from mergesmith.web.app import serve as run_server
    except ImportError as err:
        raise MergesmithError("the page needs its web server", hint="pip install 'mergesmith[web]'") from err
    from mergesmith.web.roots import Roots

    allowed = Roots(roots or [Path.cwd()])
    click.echo(f"mergesmith serve: http://{host}:{port}/ (Ctrl-C stops)", err=True)
    run_server(allowed, host=host, port=port, history=history)


def _echo_summary(report) -> None:
    import resource

    rate = report.bytes_written / report.elapsed_s / 1e9 if report.elapsed_s else 0.0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    click.echo(
        f"wrote {report.out}: {report.tensors} tensors in {len(report.shards)} shard(s), "
        f"{report.bytes_written / 1e9:.3f} GB in {report.elapsed_s:.2f} s ({rate:.2f} GB/s), "
        f"peak memory {peak_mb:.0f} MB"
    )
    click.echo("files: " + ", ".join(report.files))


def main(argv: list[str] | None = None) -> None:
    """Entry point: the one error boundary. Exit codes: 0 ok, 1 user error, 2 usage, 3 bug, 130 Ctrl-C."""
    try:
        code = cli.main(args=argv, prog_name="mergesmith", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):  # Abort: click's form of Ctrl-C
        click.echo("interrupted; the output folder was left as it was", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except MergesmithError as err:
        click.echo(f"error: {err}", err=True)
        if os.environ.get("MERGESMITH_DEBUG"):
            traceback.print_exc()
        sys.exit(1)
    except Exception:
        traceback.print_exc()
        click.echo(f"\nmergesmith {__version__} hit a bug; please report it with this output and the recipe.", err=True)
        sys.exit(3)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
