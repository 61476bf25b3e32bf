"""A plan executed into memory: the merged tensors as a dict, not shard files. What a search scores
each candidate with (search/evolve.py): the same routes as a merge to disk, so the same values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mergesmith.checkpoints.checkpoint import Checkpoint
from mergesmith.dtypes import tensor_from_bytes
from mergesmith.execute.routes import group_work, run_work
from mergesmith.execute.tasks import TaskSettings
from mergesmith.plan import Plan


class _MemoryWriter:
    """Takes what the routes write (a tensor's bytes, piece by piece) into one buffer per tensor."""

    def __init__(self, plan: Plan) -> None:
        self.buffers = {entry.output: bytearray(entry.nbytes) for entry in plan.entries}

    def write(self, name: str, offset: int, data: Any, checksum: bool = True) -> None:
        view = memoryview(data).cast("B")
        self.buffers[name][offset : offset + len(view)] = view


def merge_to_memory(plan: Plan, checkpoints: Mapping[str, Checkpoint], *, seed: int = 0) -> dict[str, Any]:
    """The plan's output tensors (torch, on the CPU), computed as `mergesmith merge` computes them."""
    settings = TaskSettings(
        chunk_bytes=2**20, device="cpu", seed=seed, sync=False, vocabulary=plan.vocabulary,
        vocabulary_base=plan.base_model,
    )  # fmt: skip
    writer = _MemoryWriter(plan)
    for unit in group_work(plan.entries):
        inputs = {
            (s.model, name): checkpoints[s.model].tensor_info(name)
            for entry in unit
            for s in entry.sources
            for name in s.tensor_names
        }
        run_work(unit, inputs, writer, settings)  # type: ignore[arg-type]
    return {
        e.output: tensor_from_bytes(writer.buffers[e.output], e.written_dtype).reshape(e.shape) for e in plan.entries
    }
