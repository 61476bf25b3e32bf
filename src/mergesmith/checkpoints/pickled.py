"""Tensors of pickled (.bin) checkpoints, loaded once per process and read by TensorInfo.

A .bin file has no byte offsets to read a tensor from (TensorInfo.start is -1): the whole file is
loaded (memory-mapped where torch can) and kept, so that the planner's load serves the executor
in the same process, and a worker process elsewhere loads it once for all the tensors it reads.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mergesmith.checkpoints.safetensors_file import TensorInfo, read_range

_states: dict[Path, Mapping[str, Any]] = {}
_lock = threading.Lock()


def load_state(path: Path) -> Mapping[str, Any]:
    """The file's tensors. weights_only: a pickle can run code on load; this refuses anything but
    tensors (the caller turns torch's errors into messages). mmap keeps memory low, but only
    zip-format files (torch >= 1.6) can be mapped."""
    with _lock:
        if path in _states:
            return _states[path]
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        state = torch.load(path, map_location="cpu", weights_only=True)
    with _lock:
        return _states.setdefault(path, state)


def read_tensor_bytes(info: TensorInfo, offset: int = 0, nbytes: int | None = None) -> bytes | bytearray:
    """Raw little-endian bytes of a tensor (or `nbytes` of them from `offset`), from either kind of file."""
    if info.start >= 0:
        return read_range(info, offset, nbytes)
    import torch

    flat = load_state(info.path)[info.name].contiguous().reshape(-1).view(torch.uint8)
    end = info.nbytes if nbytes is None else offset + nbytes
    return flat[offset:end].numpy().tobytes()
