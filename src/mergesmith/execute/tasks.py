"""What a backend runs: one task per output shard, carrying everything it needs.

A task holds plain, picklable data: the shard's file name, header and slots, the plan entries to
write into it, where each of their inputs lies (TensorInfo: file, dtype, shape, byte range), and
the settings of the run. It closes over no open file, writer or journal, so it runs as well in a
thread of this process as in a worker on another node that sees the same files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mergesmith.checkpoints import Checkpoint
from mergesmith.checkpoints.safetensors_file import TensorInfo
from mergesmith.output.shards import ShardFile, ShardLayout
from mergesmith.plan import Plan, PlanEntry
from mergesmith.vocabulary import Vocabulary

InputKey = tuple[str, str]  # (model reference, tensor name): a source's tensor, or an FP8 weight's scales


@dataclass(frozen=True)
class TaskSettings:
    """What every task of a run shares."""

    chunk_bytes: int
    device: str  # where DEVICE-routed entries compute: "cuda", "cuda:N" (or "cpu" when none are)
    seed: int  # random methods draw from a generator seeded by this and the tensor name
    sync: bool  # fsync the shard before reporting it complete
    vocabulary: Vocabulary | None = None  # for VOCABULARY-routed entries
    vocabulary_base: str | None = None  # the model whose rows fill tokens others lack
    # torch's thread count in the driver, for methods whose result depends on it (a sum split
    # between threads rounds by the split); a task run in another process (a Ray worker starts
    # with one thread) computes them with it. None: no entry's method depends on it.
    torch_threads: int | None = None


@dataclass(frozen=True)
class ShardTask:
    shard: ShardFile
    folder: Path  # the staging folder: every node running tasks must see it
    entries: tuple[PlanEntry, ...]  # the shard's entries still to write, in plan order
    inputs: Mapping[InputKey, TensorInfo]  # every input the entries read
    settings: TaskSettings
    keep: bool = False  # resuming: the file's bytes are kept, only `entries` are written again

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in self.entries)


@dataclass(frozen=True)
class ShardResult:
    """What a task reports when its shard is complete."""

    filename: str
    digest: str | None  # SHA-256 of the complete file, from backends that verify shards
    node: str | None = None  # where it ran (a Ray node id)
    started_s: float = 0.0  # time.time() when the task started and finished
    finished_s: float = 0.0
    bytes_written: int = 0
    bytes_read: int = 0


def build_tasks(
    plan: Plan,
    checkpoints: Mapping[str, Checkpoint],
    layout: ShardLayout,
    folder: Path,
    settings: TaskSettings,
) -> list[ShardTask]:
    """One task per shard of `layout`, with every entry of that shard."""
    by_shard: list[list[PlanEntry]] = [[] for _ in layout.filenames]
    for entry in plan.entries:
        by_shard[layout.slots[entry.output].shard].append(entry)
    tasks = []
    for shard, entries in zip(layout.shards(), by_shard):
        inputs = {
            (s.model, name): checkpoints[s.model].tensor_info(name)
            for entry in entries
            for s in entry.sources
            for name in s.tensor_names
        }
        tasks.append(ShardTask(shard, folder, tuple(entries), inputs, settings))
    return tasks


def input_bytes(task: ShardTask) -> int:
    """Bytes a task reads: each distinct input once."""
    return sum(info.nbytes for info in task.inputs.values())
