"""Everything that creates files in the output: shards, index, config, card, the resume journal.

Shards are laid out from the plan before any tensor exists: each header is final when the file is
created, and each tensor's bytes are written straight into place (`os.pwrite`) as soon as they are
ready. No shard is ever held in memory. The files are written into the staging folder that
output.py makes beside OUT and renames into place only when complete.

Files are opened with O_NOFOLLOW: a staging folder that is resumed is the user's to edit, and a
link planted at a shard's name must not make the merge write through it into another file.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import threading
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mergesmith.checkpoints.names import (
    CONFIG,
    GENERATION_FILES,
    LEGACY_TOKENIZER_FILES,
    SAFETENSORS_INDEX,
    shard_name,
)
from mergesmith.checkpoints.tokenizer import CHAT_TEMPLATE_JINJA, CHAT_TEMPLATE_JSON, TOKENIZER_CONFIG, TOKENIZER_JSON
from mergesmith.errors import MergesmithError, OutputError
from mergesmith.output import write_error
from mergesmith.plan import Plan
from mergesmith.vocabulary import Vocabulary

log = logging.getLogger(__name__)


class TensorSlotSpec(Protocol):
    """What the shard layout needs of a tensor: a PlanEntry, or a synthetic tensor."""

    @property
    def output(self) -> str: ...

    @property
    def dtype(self) -> str: ...

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def nbytes(self) -> int: ...


@dataclass(frozen=True)
class ShardSlot:
    """Where one output tensor's bytes go."""

    shard: int
    offset: int  # absolute, in the shard file
    nbytes: int


@dataclass(frozen=True)
class ShardLayout:
    filenames: tuple[str, ...]
    headers: tuple[bytes, ...]  # 8-byte length + JSON, padded to 8 bytes
    sizes: tuple[int, ...]  # whole file sizes
    slots: dict[str, ShardSlot]  # output tensor name -> slot


def layout_shards(entries: Sequence[TensorSlotSpec], max_shard_bytes: int) -> ShardLayout:
    """Cut the plan into shards of at most `max_shard_bytes` of tensor data, in plan order."""
    groups: list[list[TensorSlotSpec]] = [[]]
    used = 0
    for entry in entries:
        if groups[-1] and used + entry.nbytes > max_shard_bytes:
            groups.append([])
            used = 0
        groups[-1].append(entry)
        used += entry.nbytes
    filenames = tuple(shard_name(i, len(groups)) for i in range(len(groups)))
    headers, sizes, slots = [], [], {}
    for shard, group in enumerate(groups):
        header, data_offsets = _header(group)
        headers.append(header)
        sizes.append(len(header) + sum(e.nbytes for e in group))
        for entry, begin in zip(group, data_offsets):
            slots[entry.output] = ShardSlot(shard, len(header) + begin, entry.nbytes)
    return ShardLayout(filenames, tuple(headers), tuple(sizes), slots)


def _header(group: list[TensorSlotSpec]) -> tuple[bytes, list[int]]:
    meta: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offsets, position = [], 0
    for entry in group:
        meta[entry.output] = {
            "dtype": entry.dtype,
            "shape": list(entry.shape),
            "data_offsets": [position, position + entry.nbytes],
        }
        offsets.append(position)
        position += entry.nbytes
    body = json.dumps(meta, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 8)  # the data section starts 8-byte aligned
    return len(body).to_bytes(8, "little") + body, offsets


class ShardWriter:
    """Open shard files with final headers; `write(name, offset, data)` puts bytes in place.

    `keep=True` keeps what the files already hold (resuming an interrupted merge). The CRC-32 of
    each tensor's written bytes is kept in `crcs` (pieces are written in order), for the journal.
    """

    def __init__(self, folder: Path, layout: ShardLayout, *, keep: bool = False) -> None:
        self.layout = layout
        self.fds: list[int] = []
        self.crcs: dict[str, int] = {}
        self.paths = [folder / filename for filename in layout.filenames]
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | (0 if keep else os.O_TRUNC)
        for path, header, size in zip(self.paths, layout.headers, layout.sizes):
            with writing(path):
                if not keep or os.path.islink(path):  # a link is replaced, never written through
                    path.unlink(missing_ok=True)
                fd = os.open(path, flags, 0o644)
                self.fds.append(fd)
                os.ftruncate(fd, size)
                _pwrite_all(fd, header, 0)
        self.writeback = _Writeback(self.fds)

    def write(self, name: str, offset: int, data: bytes | bytearray | memoryview, *, checksum: bool = True) -> None:
        """Write `data` at byte `offset` within tensor `name`'s slot (and keep its CRC-32 in `crcs`
        unless `checksum` is False)."""
        slot = self.layout.slots[name]
        if offset + len(data) > slot.nbytes:
            raise ValueError(f"{name}: {offset + len(data)} bytes exceed its {slot.nbytes}-byte slot")
        if checksum:
            self.crcs[name] = zlib.crc32(data, self.crcs.get(name, 0) if offset else 0)
        with writing(self.paths[slot.shard]):
            _pwrite_all(self.fds[slot.shard], data, slot.offset + offset)

    def crc_on_disk(self, name: str, chunk: int = 64 * 2**20) -> int:
        """CRC-32 of the bytes a tensor's slot holds now."""
        slot, crc = self.layout.slots[name], 0
        for position in range(0, slot.nbytes, chunk):
            crc = zlib.crc32(
                os.pread(self.fds[slot.shard], min(chunk, slot.nbytes - position), slot.offset + position), crc
            )
        return crc

    def close(self, *, sync: bool) -> None:
        self.writeback.stop()
        try:
            for path, fd in zip(self.paths, self.fds):
                if sync:
                    with writing(path):
                        os.fsync(fd)  # a full disk can show itself only here
        finally:
            for fd in self.fds:
                os.close(fd)
            self.fds = []


class Journal:
    """The computed tensors already in the partial shards, one JSON line each, for --resume.

    The first line identifies the merge (a digest of the plan, its layout and its inputs) and the
    random seed; a resumed merge must match it. A line is appended once a tensor's bytes are
    written; on resume each listed tensor is re-read and kept only if its CRC-32 still matches.
    Copied tensors, and tensors passthrough only scales, are not listed: redoing them costs no more
    than checking them.
    """

    FILENAME = ".mergesmith-progress.jsonl"
    MAX_BYTES = 64 * 2**20  # about 400,000 tensors' lines; a larger file is not one we wrote

    def __init__(self, folder: Path, merge_id: str, seed: int | None, *, resume: bool) -> None:
        """`seed`: the one asked for, or None to draw one (or take the interrupted merge's)."""
        self.path = folder / self.FILENAME
        self.done: dict[str, int] = {}
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
            tensor, crc = (record.get("tensor"), record.get("crc32")) if isinstance(record, dict) else (None, None)
            if isinstance(tensor, str) and _is_int(crc, 0, 2**32):
                self.done[tensor] = crc
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

    def verified(self, writer: ShardWriter) -> set[str]:
        """The listed tensors whose bytes in the shards still match their checksum."""
        return {
            name for name, crc in self.done.items() if name in writer.layout.slots and writer.crc_on_disk(name) == crc
        }

    def record(self, name: str, crc: int) -> None:
        with self.lock, writing(self.path):
            self.file.write(json.dumps({"tensor": name, "crc32": crc}) + "\n")
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


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """OSErrors met writing `path` become OutputErrors naming it (a full disk says how to fix it)."""
    try:
        yield
    except MergesmithError:
        raise
    except OSError as err:
        raise write_error(path, err) from err


class _Writeback:
    """A thread that asks the kernel, every `interval` seconds, to start writing the shards' dirty
    pages to disk (sync_file_range with SYNC_FILE_RANGE_WRITE: it starts the writes and returns).

    Left alone, a machine with memory to spare holds the whole output dirty until the final fsync,
    and the merge then waits for all of it (seed recipe, 1.44 GB: 2.1 s). Earlier versions started
    writeback from the workers after every write (POSIX_FADV_DONTNEED), which made each worker
    submit disk writes itself, in small pieces; one thread now does it for all of them, and the
    workers only compute and copy. Where the call does not exist (not Linux), the final fsync does
    all the writing.
    """

    SYNC_FILE_RANGE_WRITE = 2

    def __init__(self, fds: list[int], interval: float = 0.1) -> None:
        self.fds, self.interval = list(fds), interval
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None
        start_writing = _sync_file_range()
        if start_writing is not None and self.fds:
            self.thread = threading.Thread(target=self._run, args=(start_writing,), daemon=True, name="writeback")
            self.thread.start()

    def _run(self, start_writing) -> None:
        while not self.stopped.wait(self.interval):
            for fd in self.fds:
                start_writing(fd, 0, 0, self.SYNC_FILE_RANGE_WRITE)  # 0, 0: the whole file

    def stop(self) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()


def _sync_file_range():
    """libc's sync_file_range (Linux), which Python's os module does not offer; None elsewhere.
    (CDLL(None): the symbols already loaded into this process, libc's among them.)"""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


def _pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def write_metadata(folder: Path, plan: Plan, layout: ShardLayout, copied: dict[str, Path], card: str) -> None:
    """config.json, the index (when sharded), copied donor files, the card and the recipe."""
    _write_text(folder / CONFIG, json.dumps(plan.config, indent=2, sort_keys=True) + "\n")
    if len(layout.filenames) > 1:
        index = {
            "metadata": {"total_size": sum(e.nbytes for e in plan.entries)},
            "weight_map": {name: layout.filenames[slot.shard] for name, slot in sorted(layout.slots.items())},
        }
        _write_text(folder / SAFETENSORS_INDEX, json.dumps(index, indent=2) + "\n")
    written = _tokenizer_files(plan, copied)
    for filename, text in written.items():
        if text is not None:
            _write_text(folder / filename, text)
    for filename, source in copied.items():
        if filename not in written:
            with writing(folder / filename):
                (folder / filename).unlink(missing_ok=True)  # see _write_text
                shutil.copyfile(source, folder / filename)
    _write_text(folder / "README.md", card)
    _write_text(folder / "mergesmith_config.yml", plan.recipe_text)


def _write_text(path: Path, text: str) -> None:
    """A new file `path` (whatever a resumed folder held at that name is replaced, links not followed)."""
    with writing(path):
        path.unlink(missing_ok=True)
        path.write_text(text, encoding="utf-8")


def _tokenizer_files(plan: Plan, copied: dict[str, Path]) -> dict[str, str | None]:
    """Tokenizer and generation files that are written rather than copied (None: left out)."""
    written: dict[str, str | None] = {}
    vocabulary = plan.vocabulary
    if plan.generation_config is not None:
        written[GENERATION_FILES[0]] = _json(plan.generation_config)
    edited = vocabulary is not None and bool(vocabulary.dropped or vocabulary.appended)
    config_path = copied.get(TOKENIZER_CONFIG)
    tokenizer_config = _read_json(config_path) if config_path is not None else None
    if edited and TOKENIZER_JSON in copied:
        assert vocabulary is not None
        written[TOKENIZER_JSON] = _json(_edit_tokenizer_json(_read_json(copied[TOKENIZER_JSON]), vocabulary))
        if tokenizer_config is not None and "added_tokens_decoder" in tokenizer_config:
            dropped = set(vocabulary.dropped)
            decoder = {k: v for k, v in tokenizer_config["added_tokens_decoder"].items() if int(k) not in dropped}
            decoder.update({str(e["id"]): {k: v for k, v in e.items() if k != "id"} for e in vocabulary.appended})
            tokenizer_config["added_tokens_decoder"] = dict(sorted(decoder.items(), key=lambda kv: int(kv[0])))
        # the slow tokenizer's files describe the old vocabulary: transformers would prefer them
        written.update({name: None for name in LEGACY_TOKENIZER_FILES if name in copied})
    if plan.chat_template is not None:
        written[CHAT_TEMPLATE_JINJA] = plan.chat_template
        if tokenizer_config is not None:
            tokenizer_config.pop("chat_template", None)  # the .jinja file is the one place for it
        if CHAT_TEMPLATE_JSON in copied:
            written[CHAT_TEMPLATE_JSON] = None
    if tokenizer_config is not None and (edited or plan.chat_template is not None):
        written[TOKENIZER_CONFIG] = _json(tokenizer_config)
    return written


def _edit_tokenizer_json(data: dict, vocabulary: Vocabulary) -> dict:
    dropped = set(vocabulary.dropped)
    if dropped:
        model = data["model"]
        if isinstance(model["vocab"], dict):
            gone = {token for token, i in model["vocab"].items() if i in dropped}
            model["vocab"] = {token: i for token, i in model["vocab"].items() if i not in dropped}
        else:
            gone = {entry[0] for i, entry in enumerate(model["vocab"]) if i in dropped}
            model["vocab"] = [entry for i, entry in enumerate(model["vocab"]) if i not in dropped]
        if isinstance(model.get("merges"), list):
            model["merges"] = [m for m in model["merges"] if not gone & set(m.split(" ") if isinstance(m, str) else m)]
        data["added_tokens"] = [e for e in data.get("added_tokens") or [] if e["id"] not in dropped]
    data["added_tokens"] = [*(data.get("added_tokens") or []), *vocabulary.appended]
    return data


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise OutputError(f"{path}: cannot read it to write the merged tokenizer ({err})") from None


def _json(data: object) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
