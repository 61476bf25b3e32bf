"""Shard layout and the streaming writer, read back with the safetensors library."""

from __future__ import annotations

import torch
from safetensors import safe_open

from mergesmith.dtypes import tensor_bytes
from mergesmith.output.shards import ShardWriter, layout_shards
from mergesmith.synthetic import SyntheticTensor


def test_shards_fill_in_order_up_to_the_limit():
    tensors = [SyntheticTensor(f"t{i}", (10,), "F32") for i in range(5)]  # 40 bytes each
    layout = layout_shards(tensors, max_shard_bytes=100)
    assert layout.filenames == (
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
    )
    assert [layout.slots[f"t{i}"].shard for i in range(5)] == [0, 0, 1, 1, 2]


def test_a_tensor_larger_than_the_limit_gets_its_own_shard():
    tensors = [SyntheticTensor("small", (1,), "F32"), SyntheticTensor("big", (100,), "F32")]
    layout = layout_shards(tensors, max_shard_bytes=50)
    assert [layout.slots[n].shard for n in ("small", "big")] == [0, 1]


def test_single_shard_is_model_safetensors():
    assert layout_shards([SyntheticTensor("a", (2,), "BF16")], 10**9).filenames == ("model.safetensors",)


def test_written_tensors_read_back_exactly(tmp_path):
    values = {"a": torch.randn(3, 5).bfloat16(), "b": torch.arange(7, dtype=torch.int64), "c": torch.tensor(2.5)}
    specs = [SyntheticTensor(n, tuple(v.shape), code) for (n, v), code in zip(values.items(), ("BF16", "I64", "F32"))]
    layout = layout_shards(specs, 10**9)
    writer = ShardWriter([(tmp_path / shard.filename, shard) for shard in layout.shards()])
    for name in ("c", "a", "b"):  # any order: every slot is fixed in advance
        writer.write(name, 0, tensor_bytes(values[name]))
    writer.close(sync=True)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}
        for name, expected in values.items():
            assert torch.equal(f.get_tensor(name), expected)


def test_the_writeback_thread_lives_as_long_as_the_writer_and_copies_keep_no_checksum(tmp_path):
    """The thread that starts writeback runs while the writer is open and is gone once it is
    closed; bytes written with checksum=False (copies, which are not journaled) leave no CRC."""
    import zlib

    computed, copied = torch.randn(64, 32).bfloat16(), torch.randn(16).float()
    layout = layout_shards([SyntheticTensor("c", (64, 32), "BF16"), SyntheticTensor("k", (16,), "F32")], 10**9)
    writer = ShardWriter([(tmp_path / shard.filename, shard) for shard in layout.shards()])
    assert writer.writeback.thread is not None and writer.writeback.thread.is_alive()
    data = bytes(tensor_bytes(computed))
    writer.write("c", 0, data[:1000])
    writer.write("c", 1000, data[1000:])
    writer.write("k", 0, tensor_bytes(copied), checksum=False)
    writer.close(sync=True)
    assert not writer.writeback.thread.is_alive()
    assert writer.crcs == {"c": zlib.crc32(data)}
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert torch.equal(f.get_tensor("c"), computed) and torch.equal(f.get_tensor("k"), copied)
