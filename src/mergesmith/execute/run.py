"""Plan -> shard files in a folder: build one task per shard and hand them to the backend."""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from mergesmith.checkpoints import Checkpoint
from mergesmith.errors import MergesmithError
from mergesmith.execute.backend import Backend, Events, get_backend
from mergesmith.execute.options import MergeOptions
from mergesmith.execute.routes import needs_torch
from mergesmith.execute.tasks import ShardResult, ShardTask, TaskSettings, build_tasks
from mergesmith.methods import get_method
from mergesmith.output.shards import ShardLayout
from mergesmith.plan import Plan, Route

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resume:
    """What an interrupted merge already wrote into the folder, verified (output/journal.py)."""

    tensors: Collection[str] = ()  # computed tensors whose bytes are in place
    shards: Collection[str] = ()  # whole shard files complete, by file name
    keep: bool = False  # the folder's shard files are kept (only missing tensors are written)


def run_plan(
    plan: Plan,
    checkpoints: Mapping[str, Checkpoint],
    folder: Path,
    layout: ShardLayout,
    options: MergeOptions,
    *,
    seed: int,
    events: Events,
    resume: Resume | None = None,
    backend: Backend | None = None,
) -> list[ShardResult]:
    """Write the shards of `layout` into `folder` (a staging folder) with `backend`, by default the
    one the options name. Returns a result for every shard written (not those `resume` lists as
    complete)."""
    options = with_workers(options)
    resume = resume or Resume()
    if uses_device(plan) and not options.device.startswith("cuda"):
        raise MergesmithError(
            f"the plan routes entries to a GPU, but the merge runs with --device {options.device}",
            hint="plan and merge with the same --device",
        )
    if any(needs_torch(e) for e in plan.entries) and options.executor == "local":
        import_torch_in_background()
    settings = TaskSettings(
        chunk_bytes=options.chunk_bytes,
        device=options.device,
        seed=seed,
        sync=options.sync,
        vocabulary=plan.vocabulary,
        vocabulary_base=plan.base_model,
        torch_threads=_torch_threads(plan),
    )
    backend = backend or get_backend(options)
    tasks = [
        _without_done(task, resume) if backend.resumes_tensors else task
        for task in build_tasks(plan, checkpoints, layout, folder, settings)
        if task.shard.filename not in resume.shards
    ]
    return backend.run(tasks, events)


def make_backend(options: MergeOptions) -> Backend:
    """The backend the options name, built (and so checked: Ray installed, something at
    --ray-address) before the driver takes OUT's staging folder: an error inside it removes the
    folder, and with --resume that would be the interrupted merge's verified work."""
    return get_backend(with_workers(options))


def _torch_threads(plan: Plan) -> int | None:
    """This process's torch thread count when some entry's result depends on it (the local backend
    computes such methods with it), else None (torch is then not imported for it)."""
    if not any(get_method(e.method)[0].threads_change_result for e in plan.entries if needs_torch(e)):
        return None
    import torch

    return torch.get_num_threads()


def _without_done(task: ShardTask, resume: Resume) -> ShardTask:
    if not resume.keep:
        return task
    entries = tuple(e for e in task.entries if e.output not in resume.tensors)
    return dataclasses.replace(task, entries=entries, keep=True)


def with_workers(options: MergeOptions) -> MergeOptions:
    """The options with the worker count chosen: min(4, CPUs) on the CPU, min(8, CPUs) with a GPU."""
    if options.workers is not None:
        return options
    workers = min(4 if options.device == "cpu" else 8, os.cpu_count() or 1)
    return dataclasses.replace(options, workers=workers)


def resolve_device(requested: str) -> str:
    """ "auto" -> "cuda" when a GPU is usable, else "cpu"; "cuda" without one is an error."""
    if requested == "cpu":
        return "cpu"
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not requested.startswith("cuda"):
        raise MergesmithError(f"--device {requested}: expected cpu, cuda, cuda:N or auto")
    if not torch.cuda.is_available():
        raise MergesmithError(
            f"--device {requested}: no CUDA device is available to torch",
            hint="use --device cpu (or auto), or install a CUDA build of torch",
        )
    return requested


def uses_device(plan: Plan) -> bool:
    return any(entry.route is Route.DEVICE for entry in plan.entries)


def import_torch_in_background() -> None:
    """torch takes seconds to import; copies (and raw-scaled tensors) need none of it, so they
    run while it loads. A merge that needs no torch never imports it."""
    threading.Thread(target=importlib.import_module, args=("torch",), daemon=True, name="import-torch").start()


def input_paths(checkpoints: Mapping[str, Checkpoint]) -> list[tuple[str, Path]]:
    """Every folder a merge reads, by model: the model's folder, the folders its weight files
    really lie in (shards linked from elsewhere), and for a hub model its whole cache folder
    (models--org--name, whose snapshots link into its blobs). OUT must keep apart from all of them."""
    paths = []
    for name, checkpoint in checkpoints.items():
        what = f"model {name!r}"
        paths.append((what, checkpoint.folder))
        if checkpoint.ref.folder is None and checkpoint.folder.parent.name == "snapshots":
            paths.append((what, checkpoint.folder.parent.parent))
        for filename in sorted(set(checkpoint.weight_map.values())):
            weights = checkpoint.folder / filename
            if weights.exists():
                paths.append((what, weights.resolve().parent))
        if checkpoint.adapter is not None:
            folders = {info.path.resolve().parent for info in checkpoint.adapter.infos.values()}
            paths += [(f"the adapter of {what}", folder) for folder in sorted(folders)]
    return paths


def merge_id(plan: Plan, layout: ShardLayout, checkpoints: Mapping[str, Checkpoint]) -> str:
    """What an interrupted merge must share with this one to be resumed: the plan, the shard
    layout, and the input files (path, size, modification time)."""
    import hashlib

    inputs = sorted(
        {str(checkpoints[s.model].tensor_info(t).path) for e in plan.entries for s in e.sources for t in s.tensor_names}
    )
    stats = [(p, st.st_size, st.st_mtime_ns) for p in inputs for st in [os.stat(p)]]
    # repr of the frozen entries (names, tuples, numbers): deterministic, and ten times faster than
    # JSON of dataclasses.asdict, which deep-copies every entry
    identity = repr((plan.entries, layout.filenames, layout.headers, stats))
    return hashlib.sha256(identity.encode()).hexdigest()
