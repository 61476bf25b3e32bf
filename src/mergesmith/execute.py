"""Plan -> tensors on disk: read each entry's sources, apply its method, write it into its shard."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mergesmith.card import model_card
from mergesmith.checkpoints import Checkpoint
from mergesmith.dtypes import FLOATING, element_size, tensor_bytes, tensor_from_bytes, torch_dtype
from mergesmith.methods import get_method
from mergesmith.plan import Plan, PlanEntry
from mergesmith.write import ShardWriter, layout_shards, staging_folder, write_metadata

log = logging.getLogger(__name__)

DEFAULT_SHARD_BYTES = 5 * 10**9


@dataclass(frozen=True)
class MergeOptions:
    out_shard_bytes: int = DEFAULT_SHARD_BYTES
    overwrite: bool = False
    progress: bool = False  # a byte progress bar on stderr (only shown on a terminal)
    chunk_bytes: int = 64 * 2**20  # large tensors stream through in pieces of this size
    sync: bool = True  # fsync shards before the folder is renamed into place


@dataclass(frozen=True)
class MergeReport:
    out: Path
    tensors: int
    shards: tuple[str, ...]
    bytes_written: int
    elapsed_s: float
    files: tuple[str, ...] = field(default_factory=tuple)


def run_plan(
    plan: Plan, checkpoints: Mapping[str, Checkpoint], out: Path, options: MergeOptions | None = None
) -> MergeReport:
    """Execute `plan` into the folder `out`, atomically: complete and valid, or not there at all."""
    options = options or MergeOptions()
    started = time.perf_counter()
    layout = layout_shards(plan.entries, options.out_shard_bytes)
    copied = {name: checkpoints[model].file_path(name) for model, name in plan.copied_files}
    total = sum(e.nbytes for e in plan.entries)
    with staging_folder(out, overwrite=options.overwrite) as folder:
        writer = ShardWriter(folder, layout)
        ok = False
        try:
            with _progress(total, options.progress) as bar:
                for entry in plan.entries:
                    _run_entry(entry, checkpoints, writer, options.chunk_bytes)
                    bar.update(entry.nbytes)
            ok = True
        finally:
            writer.close(sync=ok and options.sync)
        write_metadata(folder, plan, layout, {k: v for k, v in copied.items() if v is not None}, model_card(plan))
        files = tuple(sorted(p.name for p in folder.iterdir()))
    elapsed = time.perf_counter() - started
    log.info("wrote %d tensors, %.2f GB in %.1f s", len(plan.entries), total / 1e9, elapsed)
    return MergeReport(out, len(plan.entries), layout.filenames, total, elapsed, files)


def _run_entry(entry: PlanEntry, checkpoints: Mapping[str, Checkpoint], writer: ShardWriter, chunk_bytes: int) -> None:
    spec, function = get_method(entry.method)
    params = dict(entry.params)
    readers = [checkpoints[s.model] for s in entry.sources]
    infos = [c.tensor_info(s.tensor) for c, s in zip(readers, entry.sources)]
    if _is_plain_copy(entry, params, infos[0].dtype):
        if infos[0].start >= 0:  # safetensors: the bytes move file to file
            writer.copy_from(entry.output, infos[0].path, infos[0].start, infos[0].nbytes)
            return
        for offset in range(0, entry.nbytes, chunk_bytes):
            writer.write(
                entry.output,
                offset,
                readers[0].read_bytes(entry.sources[0].tensor, offset, min(chunk_bytes, entry.nbytes - offset)),
            )
        return
    count = entry.nbytes // element_size(entry.dtype)
    widest = max(element_size(entry.dtype), *(element_size(i.dtype) for i in infos))
    step = max(1, chunk_bytes // widest) if spec.elementwise else max(count, 1)
    for first in range(0, count, step):
        n = min(step, count - first)
        tensors = [_read_elements(c, s.tensor, i.dtype, first, n) for c, s, i in zip(readers, entry.sources, infos)]
        if not spec.elementwise:
            tensors = [t.reshape(entry.shape) for t in tensors]
        if entry.load_dtype:
            tensors = [t.to(torch_dtype(entry.load_dtype)) for t in tensors]
        result = function(tensors, **params).to(torch_dtype(entry.dtype))
        writer.write(entry.output, first * element_size(entry.dtype), tensor_bytes(result))


def _is_plain_copy(entry: PlanEntry, params: dict, stored_dtype: str) -> bool:
    # Move raw bytes, never decoding them: passthrough without scale into the same dtype, and
    # integer buffers (position ids), which no method changes (mergekit would cast them to floats).
    if entry.dtype != stored_dtype:
        return False
    return stored_dtype not in FLOATING or (entry.method == "passthrough" and params["scale"] == (None,))


def _read_elements(checkpoint: Checkpoint, name: str, dtype: str, first: int, count: int):
    size = element_size(dtype)
    return tensor_from_bytes(checkpoint.read_bytes(name, first * size, count * size), dtype)


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
