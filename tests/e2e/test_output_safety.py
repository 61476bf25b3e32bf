"""OUT is complete and valid, or as it was: refusal without --overwrite, clean-up after errors and Ctrl-C."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergesmith.api import merge
from mergesmith.checkpoints import Checkpoint
from mergesmith.cli import main
from mergesmith.errors import CheckpointError, OutputError
from mergesmith.execute import MergeOptions
from mergesmith.output.shards import ShardWriter

RECIPE = "slices:\n- sources: [{model: m, layer_range: [0, 2], parameters: {scale: 2.0}}]\nmerge_method: passthrough\n"


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name or ".old-" in p.name)


def test_existing_output_is_refused_and_untouched(tmp_path, make_model, recipe):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("precious")
    with pytest.raises(OutputError) as err:
        merge(recipe, out, model_paths={"m": make_model(layers=2)})
    assert (
        str(err.value)
        == f"{out}: folder exists and is not empty\n  hint: choose another path, or pass --overwrite to replace it"
    )
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and (out / "mine.txt").read_text() == "precious"


def test_overwrite_replaces_the_folder_whole(tmp_path, make_model, recipe):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.safetensors").write_text("old")
    merge(recipe, out, model_paths={"m": make_model(layers=2)}, options=MergeOptions(overwrite=True))
    assert not (out / "stale.safetensors").exists() and (out / "model.safetensors").is_file()
    assert leftovers(tmp_path) == []


def test_an_empty_output_folder_is_used(tmp_path, make_model, recipe):
    out = tmp_path / "out"
    out.mkdir()
    merge(recipe, out, model_paths={"m": make_model(layers=2)})
    assert (out / "config.json").is_file()


def test_error_mid_merge_leaves_nothing(tmp_path, make_model, recipe):
    model = make_model(layers=2, max_shard_bytes=8_000)
    shards = sorted(model.glob("model-*.safetensors"))
    original = Checkpoint.tensor_info

    def vanish_after_planning(self, name):  # the last shard disappears once the merge is under way
        info = original(self, name)
        if name.startswith("model.layers.1."):
            shards[-1].unlink(missing_ok=True)
        return info

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Checkpoint, "tensor_info", vanish_after_planning)
        with pytest.raises(CheckpointError):
            merge(recipe, tmp_path / "out", model_paths={"m": model})
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def _interrupt_writes(patch: pytest.MonkeyPatch) -> None:
    """Ctrl-C arrives at the fifth tensor write (every path that produces tensor bytes writes them
    with ShardWriter.write), with earlier tensors already in the partial output."""
    calls = []
    original = ShardWriter.write

    def write_then_interrupt(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    patch.setattr(ShardWriter, "write", write_then_interrupt)


def test_ctrl_c_keeps_the_old_output_and_exits_130(tmp_path, make_model, recipe, capsys):
    model = make_model(layers=2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("precious")
    with pytest.MonkeyPatch.context() as patch:
        _interrupt_writes(patch)
        with pytest.raises(SystemExit) as exit_info:
            main(["merge", str(recipe), str(out), "--model-path", f"m={model}", "--overwrite"])
    assert exit_info.value.code == 130
    assert "interrupted" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and leftovers(tmp_path) == []


def test_not_enough_disk_is_refused_before_any_work(tmp_path, make_model, recipe):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    with pytest.MonkeyPatch.context() as patch:  # a disk with 1 kB free
        patch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 1000, 1000))
        with pytest.raises(OutputError) as err:
            merge(recipe, tmp_path / "out", model_paths={"m": make_model(layers=2)})
    assert "GB needed for the merged model, 0.00 GB free" in str(err.value)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("quant", ["gptq", "awq", "bitsandbytes"])
def test_quantized_inputs_are_refused(tmp_path, make_model, recipe, quant):
    import json

    model = make_model(layers=2)
    config = json.loads((model / "config.json").read_text())
    config["quantization_config"] = {"quant_method": quant, "bits": 4}
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as err:
        merge(recipe, tmp_path / "out", model_paths={"m": model})
    assert str(err.value) == (
        f"model 'm': its weights are quantized ({quant}), and quantized weights cannot be merged\n"
        "  hint: merge the original (unquantized) model, then quantize the result"
    )


def test_gguf_only_folder_is_refused(tmp_path, recipe):
    folder = tmp_path / "gguf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.Q4_K_M.gguf").write_bytes(b"GGUF")
    with pytest.raises(CheckpointError) as err:
        merge(recipe, tmp_path / "out", model_paths={"m": folder})
    assert "only GGUF weights" in str(err.value)
