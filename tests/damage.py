"""Ways to damage a model folder's files for bad-input tests (one copy, imported by the tables)."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def rewrite_header(path: Path, change: Callable[[dict], None], *, raw: bytes | None = None) -> None:
    """Edit a safetensors header in place (offsets are relative to the data, which does not move)."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    change(header)
    body = raw if raw is not None else json.dumps(header, separators=(",", ":")).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + data[8 + length :])


def first_tensor(header: dict) -> str:
    return next(k for k in header if k != "__metadata__")
