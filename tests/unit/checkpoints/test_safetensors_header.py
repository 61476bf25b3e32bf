"""Header checks on hand-built safetensors files: what the safetensors library itself reads must be
read the same, and what it (or torch) refuses must be refused here, with the field named."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from mergesmith.checkpoints.safetensors_file import read_header
from mergesmith.errors import CheckpointError


def write(path: Path, header: dict, data: bytes) -> Path:
    body = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)
    return path


def test_a_file_safetensors_writes_is_read_alike(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    tensors = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "e": torch.zeros(0, 4, dtype=torch.bfloat16)}
    save_file(tensors, tmp_path / "m.safetensors", metadata={"format": "pt"})
    infos = read_header(tmp_path / "m.safetensors")
    assert {n: (i.dtype, i.shape, i.nbytes) for n, i in infos.items()} == {
        "w": ("F32", (2, 3), 24),
        "e": ("BF16", (0, 4), 0),
    }


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}, "unsupported dtype ['F32']"),
        ({"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}, "corrupt shape [true]"),
        ({"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}, "corrupt shape [1.0]"),
        ({"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}, 'corrupt shape "1"'),
        ({"dtype": "F32", "shape": [1], "data_offsets": [True, 4]}, "corrupt data_offsets [true, 4]"),
        ({"dtype": "F32", "shape": [1], "data_offsets": None}, "corrupt data_offsets null"),
        (
            {"dtype": "F32", "shape": [2**61, 2], "data_offsets": [0, 4]},
            "is too large: its size in bytes overflows int64",
        ),
        ({"dtype": "F32", "shape": [2**63], "data_offsets": [0, 4]}, "corrupt shape [9223372036854775808]"),
    ],
)
def test_fields_are_type_checked(tmp_path: Path, entry: dict, message: str) -> None:
    path = write(tmp_path / "m.safetensors", {"t": entry}, b"\0" * 4)
    with pytest.raises(CheckpointError) as err:
        read_header(path)
    assert err.value.message.startswith(f"{path}: tensor t: ")
    assert message in err.value.message
    assert err.value.hint


def test_the_largest_representable_tensor_is_not_refused_as_overflow(tmp_path: Path) -> None:
    # 2**60 F32 elements are 2**62 bytes: fits int64, so only the file's size is wrong
    path = write(tmp_path / "m.safetensors", {"t": {"dtype": "F32", "shape": [2**60], "data_offsets": [0, 2**62]}}, b"")
    with pytest.raises(CheckpointError, match="data lies outside the file"):
        read_header(path)


def test_header_length_beyond_the_format_limit(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    with open(path, "wb") as fh:  # sparse: 100 MB that take no disk
        fh.write(struct.pack("<Q", 100_000_001))
        fh.truncate(100_000_020)
    with pytest.raises(CheckpointError, match=r"header length 100000001 exceeds the format's limit of 100 MB"):
        read_header(path)
