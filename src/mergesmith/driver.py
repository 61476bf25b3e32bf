"""The driver of a merge: a plan -> a finished output folder.

It takes OUT's staging folder (output/folder.py), opens the resume journal, hands the plan to the
executor (execute/: one task per shard, run by the backend the options name), hears each task's
events (progress, journaled tensors, shards to verify), and once every shard is complete writes
the index, config, tokenizer files, card and recipe; the folder is then renamed into place.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mergesmith.checkpoints import Checkpoint
from mergesmith.errors import OutputError
from mergesmith.execute import MergeOptions
from mergesmith.execute.run import Resume, input_paths, make_backend, merge_id, run_plan
from mergesmith.execute.tasks import ShardResult
from mergesmith.methods import get_method
from mergesmith.output.card import model_card
from mergesmith.output.files import write_output_files
from mergesmith.output.folder import STAGING_MARKER, staging_folder
from mergesmith.output.journal import Journal
from mergesmith.output.shards import ShardLayout, file_digest, layout_shards, remove_strays
from mergesmith.plan import Plan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MergeReport:
    out: Path
    tensors: int
    shards: tuple[str, ...]
    bytes_written: int
    elapsed_s: float
    files: tuple[str, ...] = field(default_factory=tuple)
    random_seed: int | None = None  # the seed random methods drew from
    warnings: tuple[str, ...] = ()  # the plan's: recipe keys the merge ignored
    shard_results: tuple[ShardResult, ...] = ()  # per shard written: where, when, how much


@dataclass(frozen=True)
class Progress:
    """How far a merge is, as `on_progress` hears it (from the executor's threads)."""

    bytes_done: int
    bytes_total: int
    tensors_done: int  # 0 throughout on backends that count only bytes (Ray)
    tensors_total: int


def merge_plan(
    plan: Plan,
    checkpoints: Mapping[str, Checkpoint],
    out: str | os.PathLike[str],
    options: MergeOptions | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> MergeReport:
    """Execute a plan into the folder `out`, atomically: the shards by the executor the options
    name, then (once every shard is complete and verified) the index, config, tokenizer files,
    card and recipe; then the folder is renamed into place.

    Example:
        >>> merge_plan(plan(recipe), open_checkpoints(models), "merged")
    """
    options = options or MergeOptions()
    out = Path(out)
    started = time.perf_counter()
    is_random = get_method(plan.method)[0].is_random
    layout = layout_shards(plan.entries, options.out_shard_bytes)
    copied = {name: checkpoints[model].file_path(name) for model, name in plan.copied_files}
    backend = make_backend(options)
    needed = sum(layout.sizes) + sum(path.stat().st_size for path in copied.values() if path is not None)
    with staging_folder(
        out, overwrite=options.overwrite, needed_bytes=needed, resume=options.resume, inputs=input_paths(checkpoints)
    ) as folder:
        journal = Journal(folder, merge_id(plan, layout, checkpoints), options.random_seed, resume=options.resume)
        ok = False
        try:
            if is_random and options.random_seed is None and not journal.resumed:
                log.warning(
                    "%s draws random numbers; no --random-seed given, so using %d (saved in the card)",
                    plan.method,
                    journal.seed,
                )
            resume = _resume(journal, folder, layout, len(plan.entries), options.resume)
            todo = [
                e
                for e in plan.entries
                if e.output not in resume.tensors
                and layout.filenames[layout.slots[e.output].shard] not in resume.shards
            ]
            remaining = sum(e.nbytes for e in todo)
            with _progress(remaining, options.progress) as bar:
                results = run_plan(
                    plan,
                    checkpoints,
                    folder,
                    layout,
                    options,
                    seed=journal.seed,
                    events=_Events(bar, journal, folder, _Counter(remaining, len(todo), on_progress)),
                    resume=resume,
                    backend=backend,
                )
            ok = True
        finally:
            journal.close(keep=not ok)
        remove_strays(folder, layout)
        card = model_card(plan, random_seed=journal.seed if is_random else None)
        write_output_files(folder, plan, layout, {k: v for k, v in copied.items() if v is not None}, card)
        files = tuple(sorted(p.name for p in folder.iterdir() if p.name != STAGING_MARKER))
    elapsed = time.perf_counter() - started
    total = sum(e.nbytes for e in plan.entries)
    log.info("wrote %d tensors, %.2f GB in %.1f s", len(plan.entries), total / 1e9, elapsed)
    seed = journal.seed if is_random else None
    return MergeReport(
        out, len(plan.entries), layout.filenames, total, elapsed, files, seed, plan.warnings, tuple(results)
    )


def _resume(journal: Journal, folder: Path, layout: ShardLayout, count: int, requested: bool) -> Resume:
    if not requested:
        return Resume()
    tensors, shards = set(), {}
    if journal.resumed:
        tensors, shards = journal.verified_tensors(folder, layout), journal.verified_shards(folder, layout)
    log.info(
        "resuming: %d of %d tensors and %d of %d shards already written and verified",
        len(tensors),
        count,
        len(shards),
        len(layout.filenames),
    )
    return Resume(tensors=tensors, shards=set(shards), keep=journal.resumed)


class _Events:
    """The driver's side of a run: the progress bar, the resume journal, and the check of every
    shard a task reports with a digest, as it arrives (while other tasks still run)."""

    def __init__(self, bar, journal: Journal, folder: Path, counter: _Counter) -> None:
        self.bar, self.journal, self.folder, self.counter = bar, journal, folder, counter

    def progress(self, nbytes: int, tensors: int = 0) -> None:
        self.bar.update(nbytes)
        self.counter.add(nbytes, tensors)

    def tensor_written(self, name: str, crc: int) -> None:
        self.journal.record(name, crc)

    def shard_written(self, result: ShardResult) -> None:
        """A shard written elsewhere holds the bytes its task wrote as this process reads them (a
        shared file system that lost a remote write shows it here, before OUT exists)."""
        if result.digest is None:
            return
        if file_digest(self.folder / result.filename) != result.digest:
            raise OutputError(
                f"{self.folder / result.filename}: the shard's bytes differ from those its task wrote "
                f"(on node {result.node})",
                hint="the storage shared by the nodes lost a write; run again (--resume keeps the verified shards)",
            )
        self.journal.record_shard(result.filename, result.digest)


class _Counter:
    """The running totals `on_progress` is told of."""

    def __init__(self, bytes_total: int, tensors_total: int, on_progress: Callable[[Progress], None] | None) -> None:
        self.bytes_total, self.tensors_total, self.on_progress = bytes_total, tensors_total, on_progress
        self.bytes_done = self.tensors_done = 0
        self.lock = threading.Lock()

    def add(self, nbytes: int, tensors: int) -> None:
        if self.on_progress is None:
            return
        with self.lock:  # held while it is told, so it hears the totals in order
            self.bytes_done += nbytes
            self.tensors_done += tensors
            self.on_progress(Progress(self.bytes_done, self.bytes_total, self.tensors_done, self.tensors_total))


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _progress(total: int, enabled: bool):
    if not (enabled and sys.stderr.isatty()):
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="merging", file=sys.stderr)
