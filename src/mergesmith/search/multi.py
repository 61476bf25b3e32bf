"""`mergesmith multi`: the stages of a multi-stage recipe (recipe/stages.py), run in dependency
order into OUT_DIR/<name>, each a normal merge reading earlier outputs by name.

A stage whose output exists, made by an earlier run from the same recipe text and the same inputs
(the digest recorded in OUT_DIR/mergesmith-multi.json), is skipped. An input's identity is its
files' paths, sizes and modification times (as `merge --resume` checks them), and a stage's digest
includes those of the stages it reads, so a change reruns everything after it. A folder under
OUT_DIR that no run of `multi` made is not replaced without --overwrite.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from mergesmith.checkpoints.checkpoint import Checkpoint
from mergesmith.checkpoints.fp8 import read_scheme
from mergesmith.checkpoints.reference import ModelReference, resolve_reference
from mergesmith.checkpoints.safetensors_file import TensorInfo
from mergesmith.errors import MergesmithError, OutputError, UnsupportedError
from mergesmith.execute import MergeOptions
from mergesmith.execute.run import input_paths
from mergesmith.plan import Plan
from mergesmith.recipe.load import LoadedRecipe
from mergesmith.recipe.stages import Stage

log = logging.getLogger(__name__)

STATE_FILE = "mergesmith-multi.json"


@dataclass(frozen=True)
class StageResult:
    name: str
    out: Path
    skipped: bool  # unchanged since the run that made it
    elapsed_s: float
    digest: str


def run_stages(
    stages: list[Stage],
    out_dir: Path,
    *,
    model_paths: Mapping[str, Path] | None = None,
    options: MergeOptions | None = None,
    merge: Callable[..., object],
    on_stage: Callable[[Stage, int, bool], None] | None = None,
) -> list[StageResult]:
    """Run `stages` (in order) into out_dir/<name>. `merge(loaded, out, model_paths=, options=)` runs
    one recipe (api.merge); `on_stage(stage, index, skipped)` is told before each."""
    options = options or MergeOptions()
    outputs = {s.name: out_dir / s.name for s in stages}
    paths = {**(model_paths or {}), **outputs}
    external = _open_external(stages, model_paths or {}, set(outputs))  # before anything runs
    state = _read_state(out_dir)
    _check_foreign_folders(outputs, state, options.overwrite)
    digests: dict[str, str] = {}
    results = []
    for index, stage in enumerate(stages):
        digests[stage.name] = _digest(stage, digests, external, options)
        out = outputs[stage.name]
        skipped = state.get(stage.name) == digests[stage.name] and out.is_dir()
        if on_stage is not None:
            on_stage(stage, index, skipped)
        started = time.perf_counter()
        if not skipped:
            state.pop(stage.name, None)  # a stage killed midway must not read as done
            _write_state(out_dir, state)
            try:
                merge(stage.loaded, out, model_paths=paths, options=replace(options, overwrite=True))
            except MergesmithError as err:
                raise type(err)(
                    f"stage {stage.name} (document {stage.document}): {err.message}", hint=err.hint
                ) from err
            state[stage.name] = digests[stage.name]
            _write_state(out_dir, state)
        results.append(StageResult(stage.name, out, skipped, time.perf_counter() - started, digests[stage.name]))
    return results


class PlannedCheckpoint(Checkpoint):
    """A stage's output before it is built, as its plan describes it (config, tensor names, shapes
    and dtypes): what `mergesmith plan` plans the stages that read it against. Nothing to read."""

    def __init__(self, name: str, plan: Plan, folder: Path) -> None:
        self.ref = ModelReference(name, folder, None, None)
        self.folder = folder
        self._roots = (folder,)
        self.config = dict(plan.config)
        self.fp8 = read_scheme(self.config, name)
        self.adapter = None
        weights = folder / "model.safetensors"
        infos = {e.output: TensorInfo(e.output, weights, e.written_dtype, e.shape, -1, e.nbytes) for e in plan.entries}
        self._headers = {weights.name: infos}
        self.weight_map = dict.fromkeys(infos, weights.name)

    def file_path(self, filename: str) -> Path | None:
        return None  # tokenizer and generation files: there when the stage is built


def plan_stages(
    stages: list[Stage],
    out_dir: Path,
    plan: Callable[[LoadedRecipe, Mapping[str, Checkpoint]], Plan],
    model_paths: Mapping[str, Path] | None = None,
) -> list[Plan]:
    """Each stage's plan, those that read other stages planned against their plans."""
    outputs = {s.name: out_dir / s.name for s in stages}
    external = _open_external(stages, model_paths or {}, set(outputs))
    planned: dict[str, Checkpoint] = {}
    plans = []
    for stage in stages:
        checkpoints = {**external, **{name: planned[name] for name in stage.depends}}
        missing = [r for r in stage.loaded.recipe.models_to_open() if r not in checkpoints]
        if missing:  # an adapter applied to a stage's output: planned when that output exists
            raise UnsupportedError(
                f"stage {stage.name} (document {stage.document}) reads {missing[0]!r}, a stage's output with an "
                "adapter: it can be planned once that stage is built",
                hint=f"run mergesmith multi, or plan the stage alone after building {stage.depends[0]}",
            )
        try:
            result = plan(stage.loaded, checkpoints)
        except MergesmithError as err:
            raise type(err)(f"stage {stage.name} (document {stage.document}): {err.message}", hint=err.hint) from err
        plans.append(result)
        planned[stage.name] = PlannedCheckpoint(stage.name, result, outputs[stage.name])
    return plans


def _open_external(stages: list[Stage], model_paths: Mapping[str, Path], outputs: set[str]) -> dict[str, Checkpoint]:
    """Every model the stages read that no stage makes, opened (config and index read): a missing
    or broken one fails here, before the first stage runs."""
    opened: dict[str, Checkpoint] = {}
    for stage in stages:
        for reference in stage.loaded.recipe.models_to_open():
            parts = reference.split("+")
            if any(p.rpartition("@")[0] in outputs or p in outputs for p in parts):
                for part in (p for p in parts if p not in outputs and p.rpartition("@")[0] not in outputs):
                    resolve_reference(part, model_paths)  # an adapter of a stage's output: checked to exist
                continue
            if reference not in opened:
                opened[reference] = Checkpoint(resolve_reference(reference, model_paths))
    return opened


def _digest(stage: Stage, digests: Mapping[str, str], external: Mapping[str, Checkpoint], options: MergeOptions) -> str:
    files = sorted(
        str(folder) for ref in stage.loaded.recipe.models_to_open() if ref in external
        for _, folder in input_paths({ref: external[ref]})
    )  # fmt: skip
    stats = [(path, [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(Path(path).iterdir())
              if f.is_file()]) for path in dict.fromkeys(files)]  # fmt: skip
    identity = {
        "recipe": stage.loaded.text,
        "reads": {name: digests[name] for name in stage.depends},
        "inputs": stats,
        "options": [options.out_shard_bytes, options.random_seed],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _check_foreign_folders(outputs: Mapping[str, Path], state: Mapping[str, str], overwrite: bool) -> None:
    for name, out in outputs.items():
        if out.exists() and name not in state and not overwrite:
            raise OutputError(
                f"{out} exists, and no run of mergesmith multi made it (stage {name!r} would be written there)",
                hint="pass --overwrite to replace it, or choose another OUT_DIR",
            )


def _read_state(out_dir: Path) -> dict[str, str]:
    path = out_dir / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        log.warning("%s is unreadable: every stage runs again", path)
        return {}
    stages = state.get("stages") if isinstance(state, dict) else None
    return {k: v for k, v in stages.items() if isinstance(v, str)} if isinstance(stages, dict) else {}


def _write_state(out_dir: Path, state: Mapping[str, str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / f".{STATE_FILE}.partial"
    partial.write_text(json.dumps({"stages": dict(state)}, indent=2) + "\n")
    os.replace(partial, out_dir / STATE_FILE)
