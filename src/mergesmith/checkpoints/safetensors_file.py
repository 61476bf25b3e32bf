"""Safetensors headers and single-tensor reads with `os.pread`.

We do not memory-map shards (as `safetensors.safe_open` does): pages of a mapping stay in the
process's resident set while it is open, so reading a 5 GB shard through one would make a merge's
memory grow with the shard. A positioned read of one tensor's bytes keeps memory bounded by that
tensor, and the same reader gives the raw bytes for copies that need no decoding.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple, NoReturn

from mergesmith.checkpoints.safe_json import json_type, parse_json
from mergesmith.dtypes import SAFETENSORS_DTYPES, element_size
from mergesmith.errors import CheckpointError

_MAX_HEADER_BYTES = 100 * 1000 * 1000  # the safetensors library's own limit (100 MB)
_INT = frozenset({int})
_INT64_MAX = 2**63 - 1  # torch and the safetensors library count elements and bytes in 64 bits
_REDOWNLOAD = "the file is damaged or was not written by a safetensors library; download it again"


class TensorInfo(NamedTuple):
    """Where one tensor's bytes are: file, dtype code ('BF16'), shape and absolute byte range.
    A named tuple: a header can hold a million of these, and a tuple is built fastest and smallest."""

    name: str
    path: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offset in the file
    nbytes: int


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and check a safetensors header: dtypes known, sizes match shapes, ranges inside the file."""
    raw, file_size = _header_bytes(path)
    header = parse_json(raw, f"{path}: corrupt safetensors header", count_keys=_entry_keys)
    if not isinstance(header, dict):
        raise CheckpointError(
            f"{path}: corrupt safetensors header (it is {json_type(header)}, not a JSON object)", hint=_REDOWNLOAD
        )
    _check_metadata(path, header.get("__metadata__"))
    data_start = 8 + len(raw)
    header.pop("__metadata__", None)
    # Entries are taken out as they are checked, so that the parsed JSON and the TensorInfos are
    # not both held whole (a 100 MB header parses to about 1 GB of objects).
    backwards = []
    while header:
        name, entry = header.popitem()
        backwards.append(_tensor_info(path, name, entry, data_start, file_size))
    infos = {info.name: info for info in reversed(backwards)}
    # Tensors must not share bytes: a crafted header could make one write show through another.
    spans = sorted((i.start, i.start + i.nbytes, i.name) for i in infos.values() if i.nbytes)
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            raise CheckpointError(
                f"{path}: corrupt safetensors header (tensors {first} and {second} overlap)", hint=_REDOWNLOAD
            )
    return infos


def _entry_keys(header: object) -> int:
    """The keys of a header and of its entries (and of __metadata__): all of them, in a valid one."""
    if type(header) is not dict:
        return 0
    return len(header) + sum(len(entry) for entry in header.values() if type(entry) is dict)


def _header_bytes(path: Path) -> tuple[bytes, int]:
    """The header's JSON bytes (its length checked against the file first) and the file's size."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)", hint=_REDOWNLOAD)
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(_MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(
                    f"{path}: corrupt safetensors file (header length {header_len} exceeds "
                    + ("the file" if header_len > size - 8 else "the format's limit of 100 MB")
                    + ")",
                    hint="the file is truncated or not safetensors; download it again",
                )
            return fh.read(header_len), size
    except CheckpointError:
        raise
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror or err})") from None


def _check_metadata(path: Path, metadata: object) -> None:
    """`__metadata__` is a string-to-string map in the format (the safetensors library refuses others)."""
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise CheckpointError(
            f"{path}: corrupt safetensors header (__metadata__ is {json_type(metadata)}, not an object of strings)",
            hint=_REDOWNLOAD,
        )
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise CheckpointError(
                f"{path}: corrupt safetensors header (__metadata__.{key} is {json_type(value)}, not a string)",
                hint=_REDOWNLOAD,
            )


def _tensor_info(path: Path, name: str, entry: object, data_start: int, file_size: int) -> TensorInfo:
    # Called once per tensor of a header that may list a million: the common case is a few checks.
    if type(entry) is not dict:
        raise CheckpointError(
            f"{path}: tensor {name}: corrupt header entry ({json_type(entry)}, not an object)", hint=_REDOWNLOAD
        )
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if type(dtype) is not str or dtype not in SAFETENSORS_DTYPES:
        _bad_dtype(path, name, dtype)
    # `type(v) is int` refuses true/false; map/min/max keep the loops in C
    if type(shape) is not list or not _INT.issuperset(map(type, shape)) or (shape and not 0 <= min(shape)):
        _bad_field(path, name, "shape", shape, "a list of integers from 0 to 2**63-1")
    if shape and max(shape) > _INT64_MAX:
        _bad_field(path, name, "shape", shape, "a list of integers from 0 to 2**63-1")
    if type(offsets) is not list or len(offsets) != 2 or not _INT.issuperset(map(type, offsets)) or min(offsets) < 0:
        _bad_field(path, name, "data_offsets", offsets, "two integers [begin, end], both 0 or more")
    begin, end = offsets
    size = SAFETENSORS_DTYPES[dtype][1]
    nbytes = math.prod(shape) * size
    # torch multiplies the dimensions other than 0 too (for strides), so a 0 does not make it safe
    if nbytes > _INT64_MAX or (nbytes == 0 and math.prod(d or 1 for d in shape) * size > _INT64_MAX):
        raise CheckpointError(
            f"{path}: tensor {name}: shape {shape} of {dtype} is too large: its size in bytes overflows int64",
            hint=_REDOWNLOAD,
        )
    if end - begin != nbytes:
        raise CheckpointError(
            f"{path}: tensor {name}: data_offsets {offsets} do not match shape {shape} of {dtype}", hint=_REDOWNLOAD
        )
    if data_start + end > file_size:
        raise CheckpointError(
            f"{path}: tensor {name}: data lies outside the file "
            f"(ends at byte {data_start + end}, file has {file_size})",
            hint="the file is truncated; download it again",
        )
    return TensorInfo(name, path, dtype, tuple(shape), data_start + begin, nbytes)


def _bad_dtype(path: Path, name: str, dtype: object) -> NoReturn:
    raise CheckpointError(
        f"{path}: tensor {name}: unsupported dtype {dtype!r}",
        hint="mergesmith reads " + ", ".join(SAFETENSORS_DTYPES) + "; quantized checkpoints must be dequantized first",
    )


def _bad_field(path: Path, name: str, field: str, value: object, expected: str) -> NoReturn:
    shown = json.dumps(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    raise CheckpointError(f"{path}: tensor {name}: corrupt {field} {shown} (expected {expected})", hint=_REDOWNLOAD)


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
                raise CheckpointError(
                    f"{info.path}: tensor {info.name}: file ended early (truncated?)", hint=_REDOWNLOAD
                )
            done += got
    finally:
        os.close(fd)
