"""The resume journal's shard records: a shard is kept only when its file still has the recorded
digest and this merge's layout (size and header); anything else in the journal is not trusted."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mergesmith.output.journal import Journal
from mergesmith.output.shards import ShardWriter, layout_shards
from mergesmith.synthetic import SyntheticTensor

MERGE_ID = "m" * 64


def write_shards(folder: Path, layout) -> None:
    writer = ShardWriter([(folder / shard.filename, shard) for shard in layout.shards()])
    for name, slot in layout.slots.items():
        writer.write(name, 0, bytes([len(name)]) * slot.nbytes)
    writer.close(sync=False)


def journal_with(folder: Path, records: list[dict]) -> Journal:
    lines = [{"merge": MERGE_ID, "seed": 1}, *records]
    (folder / Journal.FILENAME).write_text("".join(json.dumps(line) + "\n" for line in lines))
    return Journal(folder, MERGE_ID, None, resume=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_only_shards_with_their_digest_size_and_header_are_kept(tmp_path: Path) -> None:
    staging, elsewhere = tmp_path / "staging", tmp_path / "elsewhere"
    staging.mkdir(), elsewhere.mkdir()
    layout = layout_shards([SyntheticTensor(f"t{i}", (8,), "F32") for i in range(4)], max_shard_bytes=64)
    write_shards(staging, layout)
    first, second = layout.filenames
    # the second shard replaced by another layout's file of the same size, with a record that matches it
    write_shards(elsewhere, layout_shards([SyntheticTensor(f"t{i}", (8,), "I32") for i in (2, 3)], 64))
    (staging / second).write_bytes((elsewhere / "model.safetensors").read_bytes())
    assert (staging / second).stat().st_size == layout.sizes[1]
    journal = journal_with(
        staging,
        [
            {"shard": first, "sha256": sha256(staging / first)},
            {"shard": second, "sha256": sha256(staging / second)},
            {"shard": "../elsewhere/model.safetensors", "sha256": sha256(elsewhere / "model.safetensors")},
            {"shard": first.replace("1", "9"), "sha256": "0" * 64},
        ],
    )
    assert journal.resumed
    assert journal.verified_shards(staging, layout) == {first: sha256(staging / first)}


def test_a_shard_changed_after_its_record_is_written_again(tmp_path: Path) -> None:
    layout = layout_shards([SyntheticTensor(f"t{i}", (8,), "F32") for i in range(2)], max_shard_bytes=10**6)
    write_shards(tmp_path, layout)
    (name,) = layout.filenames
    record = {"shard": name, "sha256": sha256(tmp_path / name)}
    data = bytearray((tmp_path / name).read_bytes())
    data[-1] ^= 0xFF  # one byte of the last tensor
    (tmp_path / name).write_bytes(bytes(data))
    assert journal_with(tmp_path, [record]).verified_shards(tmp_path, layout) == {}
