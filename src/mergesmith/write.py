"""Everything that creates files: the temporary output folder, shards, index, config, card.

Shards are laid out from the plan before any tensor exists: each header is final when the file is
created, and each tensor's bytes are written straight into place (`os.pwrite`) as soon as they are
ready. No shard is ever held in memory. The folder is built beside OUT and renamed into place only
when complete; on any error it is removed, and OUT is as it was.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import threading
import uuid
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
from mergesmith.errors import OutputError
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
        for filename, header, size in zip(layout.filenames, layout.headers, layout.sizes):
            flags = os.O_RDWR | os.O_CREAT | (0 if keep else os.O_TRUNC)
            fd = os.open(folder / filename, flags, 0o644)
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
        for fd in self.fds:
            if sync:
                os.fsync(fd)
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

    def __init__(self, folder: Path, merge_id: str, seed: int | None, *, resume: bool) -> None:
        """`seed`: the one asked for, or None to draw one (or take the interrupted merge's)."""
        self.path = folder / self.FILENAME
        self.done: dict[str, int] = {}
        header = self._read(merge_id, seed) if resume and self.path.exists() else None
        self.resumed = header is not None
        self.seed: int = header["seed"] if header else (seed if seed is not None else secrets.randbits(32))
        self.lock = threading.Lock()
        self.file = open(self.path, "a" if self.resumed else "w", encoding="utf-8")  # noqa: SIM115 (see close)
        if not self.resumed:
            self.file.write(json.dumps({"merge": merge_id, "seed": self.seed}) + "\n")
            self.file.flush()

    def _read(self, merge_id: str, seed: int | None) -> dict | None:
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        try:
            header = json.loads(lines[0])
        except (ValueError, IndexError):
            return None
        if not isinstance(header, dict) or header.get("merge") != merge_id or not isinstance(header.get("seed"), int):
            log.warning(
                "%s: the interrupted merge differs from this one (recipe, inputs or options); starting over",
                self.path.parent,
            )
            return None
        if seed is not None and header["seed"] != seed:
            log.warning(
                "%s: the interrupted merge used --random-seed %d; starting over", self.path.parent, header["seed"]
            )
            return None
        for line in lines[1:]:
            try:
                record = json.loads(line)
                self.done[str(record["tensor"])] = int(record["crc32"])
            except (ValueError, KeyError, TypeError):
                break  # a line torn by the kill: what follows it was never written
        return header

    def verified(self, writer: ShardWriter) -> set[str]:
        """The listed tensors whose bytes in the shards still match their checksum."""
        return {
            name for name, crc in self.done.items() if name in writer.layout.slots and writer.crc_on_disk(name) == crc
        }

    def record(self, name: str, crc: int) -> None:
        with self.lock:
            self.file.write(json.dumps({"tensor": name, "crc32": crc}) + "\n")
            self.file.flush()  # to the kernel: survives the process being killed

    def close(self, *, keep: bool = False) -> None:
        self.file.close()
        if not keep:
            self.path.unlink(missing_ok=True)


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
    (folder / CONFIG).write_text(json.dumps(plan.config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if len(layout.filenames) > 1:
        index = {
            "metadata": {"total_size": sum(e.nbytes for e in plan.entries)},
            "weight_map": {name: layout.filenames[slot.shard] for name, slot in sorted(layout.slots.items())},
        }
        (folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    written = _tokenizer_files(plan, copied)
    for filename, text in written.items():
        if text is not None:
            (folder / filename).write_text(text, encoding="utf-8")
    for filename, source in copied.items():
        if filename not in written:
            shutil.copyfile(source, folder / filename)
    (folder / "README.md").write_text(card, encoding="utf-8")
    (folder / "mergesmith_config.yml").write_text(plan.recipe_text, encoding="utf-8")


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


def check_output_folder(out: Path, *, overwrite: bool) -> None:
    """Refuse an existing non-empty OUT unless `overwrite`; refuse a file where a folder should be."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder", hint="choose another output path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputError(
            f"{out}: folder exists and is not empty", hint="choose another path, or pass --overwrite to replace it"
        )
    if not out.parent.exists():
        raise OutputError(f"{out.parent}: parent folder does not exist", hint=f"create it first: mkdir -p {out.parent}")


def check_free_space(folder: Path, needed_bytes: int) -> None:
    """Refuse to start a merge whose output cannot fit on the disk (checked before any work)."""
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise OutputError(
            f"{folder}: {needed_bytes / 1e9:.2f} GB needed for the merged model, {free / 1e9:.2f} GB free",
            hint="free some space or choose an output folder on another disk",
        )


def partial_folder(out: Path) -> Path:
    """Where a merge into `out` is built: left behind only if the process is killed (--resume)."""
    return out.parent / f".{out.name}.partial"


@contextmanager
def staging_folder(out: Path, *, overwrite: bool, needed_bytes: int = 0, resume: bool = False) -> Iterator[Path]:
    """A temporary folder beside `out`, renamed to `out` when the block ends without error.

    `out` and the free space for `needed_bytes` are checked first. On any exception
    (KeyboardInterrupt included) the temporary folder is removed and `out` is left exactly as it was;
    only a killed process leaves it, and `resume` then builds on it.
    """
    check_output_folder(out, overwrite=overwrite)
    staging = partial_folder(out)
    if staging.exists() and not resume:
        log.warning("%s: removing an interrupted merge's files (--resume continues one instead)", staging)
        shutil.rmtree(staging)
    fresh = not staging.exists()
    try:
        staging.mkdir(exist_ok=True)
    except OSError as err:
        raise OutputError(f"{out.parent}: cannot create the output there ({err.strerror or err})") from None
    try:
        if fresh:
            check_free_space(out.parent, needed_bytes)
        yield staging
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_into_place(staging: Path, out: Path) -> None:
    if not out.exists():
        os.rename(staging, out)
        return
    # OUT exists (empty, or --overwrite): move it aside, move ours in, then delete the old one.
    aside = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(out, aside)
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(aside, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)
