"""The resume journal: what an interrupted merge already wrote into its staging folder.

One JSON line per record, appended as work completes: computed tensors with the CRC-32 of their
bytes (the local backend), and whole shards with their SHA-256 (backends that write a shard per
task). A merge run with --resume keeps what still verifies and redoes the rest.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
from pathlib import Path

from mergesmith.output.shards import ShardLayout, file_digest, slot_crc, writing

log = logging.getLogger(__name__)


class Journal:
    """The computed tensors already in the partial shards, one JSON line each, for --resume.

    The first line identifies the merge (a digest of the plan, its layout and its inputs) and the
    random seed; a resumed merge must match it. A line is appended once a tensor's bytes are
    written; on resume each listed tensor is re-read and kept only if its CRC-32 still matches.
    Copied tensors, and tensors passthrough only scales, are not listed: redoing them costs no more
    than checking them. Backends that write whole shards list those instead, with their digest.
    """

    FILENAME = ".mergesmith-progress.jsonl"
    MAX_BYTES = 64 * 2**20  # about 400,000 tensors' lines; a larger file is not one we wrote

    def __init__(self, folder: Path, merge_id: str, seed: int | None, *, resume: bool) -> None:
        """`seed`: the one asked for, or None to draw one (or take the interrupted merge's)."""
        self.path = folder / self.FILENAME
        self.done: dict[str, int] = {}  # tensor -> CRC-32
        self.done_shards: dict[str, str] = {}  # shard file name -> SHA-256
        header = self._read(merge_id, seed) if resume and os.path.lexists(self.path) else None
        self.resumed = header is not None
        self.seed: int = header["seed"] if header else (seed if seed is not None else secrets.randbits(32))
        self.lock = threading.Lock()
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if self.resumed else os.O_TRUNC)
        with writing(self.path):
            if not self.resumed:  # whatever is at its name (a link included) is replaced
                self.path.unlink(missing_ok=True)
            self.file = os.fdopen(os.open(self.path, flags, 0o644), "a", encoding="utf-8")
            if not self.resumed:
                self.file.write(json.dumps({"merge": merge_id, "seed": self.seed}) + "\n")
                self.file.flush()

    def _read(self, merge_id: str, seed: int | None) -> dict | None:
        """The interrupted merge's first line, with `done` filled from the others; None to start over.
        The file lies in the user's folder: every line is checked, and one that is not a record
        mergesmith writes is skipped (its tensor, if any, is written again)."""
        lines = self._lines()
        header = _json_line(lines[0]) if lines else None
        seed_found = header.get("seed") if isinstance(header, dict) else None
        if not _is_int(seed_found, -(2**128), 2**128) or not isinstance(header, dict) or "merge" not in header:
            log.warning("%s: the progress journal is not one mergesmith wrote; starting over", self.path.parent)
            return None
        if header["merge"] != merge_id:
            log.warning(
                "%s: the interrupted merge differs from this one (recipe, inputs or options); starting over",
                self.path.parent,
            )
            return None
        if seed is not None and seed_found != seed:
            log.warning("%s: the interrupted merge used --random-seed %d; starting over", self.path.parent, seed_found)
            return None
        skipped = 0
        for line in lines[1:]:
            record = _json_line(line)
            record = record if isinstance(record, dict) else {}
            tensor, crc, shard, digest = (record.get(k) for k in ("tensor", "crc32", "shard", "sha256"))
            if isinstance(tensor, str) and _is_int(crc, 0, 2**32):
                self.done[tensor] = crc
            elif isinstance(shard, str) and isinstance(digest, str) and len(digest) == 64:
                self.done_shards[shard] = digest
            else:
                skipped += 1
        if skipped:
            log.warning("%s: skipped %d unreadable lines of the progress journal", self.path.parent, skipped)
        return header

    def _lines(self) -> list[str]:
        try:
            with os.fdopen(os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as file:
                data = file.read(self.MAX_BYTES + 1)
        except OSError:
            return []
        return [] if len(data) > self.MAX_BYTES else data.decode("utf-8", errors="replace").splitlines()

    def verified_tensors(self, folder: Path, layout: ShardLayout) -> set[str]:
        """The listed tensors whose bytes in the shards still match their checksum."""
        verified = set()
        for name, crc in self.done.items():
            slot = layout.slots.get(name)
            if slot is not None and slot_crc(folder / layout.filenames[slot.shard], slot) == crc:
                verified.add(name)
        return verified

    def verified_shards(self, folder: Path, layout: ShardLayout) -> dict[str, str]:
        """The listed shards whose file still has its digest, and this layout's size and header
        (a record edited to match other bytes still cannot keep a shard of another shape):
        filename -> SHA-256."""
        kept = {}
        for name, digest in self.done_shards.items():
            if name not in layout.filenames:
                continue
            index = layout.filenames.index(name)
            if _has_layout(folder / name, layout.sizes[index], layout.headers[index]) and (
                file_digest(folder / name) == digest
            ):
                kept[name] = digest
        return kept

    def record(self, name: str, crc: int) -> None:
        self._append({"tensor": name, "crc32": crc})

    def record_shard(self, filename: str, digest: str) -> None:
        self._append({"shard": filename, "sha256": digest})

    def _append(self, record: dict) -> None:
        with self.lock, writing(self.path):
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()  # to the kernel: survives the process being killed

    def close(self, *, keep: bool = False) -> None:
        try:
            self.file.close()
        except OSError:
            pass  # nothing was left to flush: each line is flushed as it is recorded
        if not keep:
            self.path.unlink(missing_ok=True)


def _json_line(line: str) -> object:
    """A JSON value, or None for anything else: NaN and infinities, deep nesting, huge numbers."""
    try:
        return json.loads(line, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number a journal holds")


def _is_int(value: object, low: int, high: int) -> bool:
    """A JSON integer (not a boolean) in [low, high)."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value < high


def _has_layout(path: Path, size: int, header: bytes) -> bool:
    try:
        with open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NOFOLLOW)) as file:
            return os.fstat(file.fileno()).st_size == size and file.read(len(header)) == header
    except OSError:
        return False
