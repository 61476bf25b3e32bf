"""Safetensors headers and single-tensor reads with `os.pread`.

We do not memory-map shards (as `safetensors.safe_open` does): pages of a mapping stay in the
process's resident set while it is open, so reading a 5 GB shard through one would make a merge's
memory grow with the shard. A positioned read of one tensor's bytes keeps memory bounded by that
tensor, and the same reader gives the raw bytes for copies that need no decoding.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mergesmith.dtypes import SAFETENSORS_DTYPES, element_size
from mergesmith.errors import CheckpointError

_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes are: file, dtype code ('BF16'), shape and absolute byte range."""

    name: str
    path: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offset in the file
    nbytes: int


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and check a safetensors header: dtypes known, sizes match shapes, ranges inside the file."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(_MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(
                    f"{path}: corrupt safetensors file (header length {header_len} exceeds the file)",
                    hint="the file is truncated or not safetensors; download it again",
                )
            raw = fh.read(header_len)
    except CheckpointError:
        raise
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: corrupt safetensors header ({err})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_start = 8 + header_len
    infos = {
        name: _tensor_info(path, name, entry, data_start, size)
        for name, entry in header.items()
        if name != "__metadata__"
    }
    # Tensors must not share bytes: a crafted header could make one write show through another.
    spans = sorted((i.start, i.start + i.nbytes, i.name) for i in infos.values() if i.nbytes)
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            raise CheckpointError(f"{path}: corrupt safetensors header (tensors {first} and {second} overlap)")
    return infos


def _tensor_info(path: Path, name: str, entry: object, data_start: int, file_size: int) -> TensorInfo:
    where = f"{path}: tensor {name}"
    if not isinstance(entry, dict):
        raise CheckpointError(f"{where}: corrupt header entry")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPES:
        raise CheckpointError(
            f"{where}: unsupported dtype {dtype!r}",
            hint="mergesmith reads "
            + ", ".join(SAFETENSORS_DTYPES)
            + "; quantized checkpoints must be dequantized first",
        )
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise CheckpointError(f"{where}: corrupt shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise CheckpointError(f"{where}: corrupt data_offsets {offsets!r}")
    begin, end = offsets
    count = 1
    for dim in shape:
        count *= dim
    if end - begin != count * element_size(dtype) or begin < 0:
        raise CheckpointError(f"{where}: data_offsets {offsets} do not match shape {shape} of {dtype}")
    if data_start + end > file_size:
        raise CheckpointError(
            f"{where}: data lies outside the file (ends at byte {data_start + end}, file has {file_size})",
            hint="the file is truncated; download it again",
        )
    return TensorInfo(name, path, dtype, tuple(shape), data_start + begin, end - begin)


def piece_spans(info: TensorInfo, piece_bytes: int) -> Iterator[tuple[int, int]]:
    """(offset, nbytes) of the pieces a tensor is streamed in: at most `piece_bytes` each (at least
    one element), cut at element boundaries."""
    size = element_size(info.dtype)
    step = max(size, piece_bytes // size * size)
    for offset in range(0, info.nbytes, step):
        yield offset, min(step, info.nbytes - offset)


def read_range(info: TensorInfo, offset: int = 0, nbytes: int | None = None) -> bytearray:
    """Read `nbytes` of a tensor's data starting `offset` bytes into it (all of it by default)."""
    buffer = bytearray(info.nbytes - offset if nbytes is None else nbytes)
    read_into(info, memoryview(buffer), offset)
    return buffer


def read_into(info: TensorInfo, view: memoryview, offset: int = 0) -> None:
    """Fill the writable buffer `view` (pinned memory, say) with a tensor's data from `offset` on."""
    view = view.cast("B")
    fd = os.open(info.path, os.O_RDONLY)
    try:
        done = 0
        while done < len(view):
            got = os.preadv(fd, [view[done:]], info.start + offset + done)
            if got == 0:
                raise CheckpointError(f"{info.path}: tensor {info.name}: file ended early (truncated?)")
            done += got
    finally:
        os.close(fd)
