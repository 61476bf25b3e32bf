"""The backend interface: what runs a merge's shard tasks, and the registry of backends.

A backend gets the run's tasks (execute/tasks.py: each a shard to write, with everything it
needs) and an Events sink, runs every task, and returns each shard's ShardResult; a task's
MergesmithError reaches the caller unchanged. Output bytes must not depend on the backend.

Adding a backend: write one module with a class taking MergeOptions and having `run`, and add
one line to BACKENDS.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from mergesmith.errors import MergesmithError
from mergesmith.execute.options import MergeOptions

if TYPE_CHECKING:  # the command line reads BACKENDS without importing the executor
    from mergesmith.execute.tasks import ShardResult, ShardTask


class Events(Protocol):
    """What the driver hears while tasks run (called from any thread of the driver's process)."""

    def progress(self, nbytes: int, tensors: int = 0) -> None:
        """`nbytes` more of the output are written, in `tensors` more tensors (0: not counted)."""

    def tensor_written(self, name: str, crc: int) -> None:
        """A computed tensor's bytes are in its shard (the CRC-32 of them): --resume may keep it."""

    def shard_written(self, result: ShardResult) -> None:
        """A shard is complete (renamed into place, if the backend writes it under another name)."""


class Backend(Protocol):
    # True: shards are written in place and a resumed merge keeps each verified tensor (tasks may
    # hold only the entries still missing); False: a shard is resumed only when complete.
    resumes_tensors: bool

    def __init__(self, options: MergeOptions) -> None: ...

    def run(self, tasks: Sequence[ShardTask], events: Events) -> list[ShardResult]:
        """Run every task; return their results in task order. On the first failure, stop what can
        be stopped and raise it; nothing a task left in the staging folder needs cleaning (the
        driver removes the folder)."""
        ...


# name -> "module:class", imported on use (Ray takes seconds to import)
BACKENDS: dict[str, str] = {
    "local": "mergesmith.execute.local:LocalBackend",
    "ray": "mergesmith.execute.ray_backend:RayBackend",
}


def get_backend(options: MergeOptions) -> Backend:
    if options.executor not in BACKENDS:
        raise MergesmithError(
            f"--executor {options.executor}: unknown executor", hint=f"choose one of: {', '.join(BACKENDS)}"
        )
    module, name = BACKENDS[options.executor].split(":")
    backend: Backend = getattr(importlib.import_module(module), name)(options)
    return backend
