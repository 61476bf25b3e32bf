"""Model references: folders, hub ids with revisions, --model-path mappings."""

from __future__ import annotations

import pytest

from mergesmith.checkpoints import resolve_reference
from mergesmith.errors import CheckpointError, UnsupportedError


def test_hub_id_with_revision():
    ref = resolve_reference("Sao10K/Fimbulvetr-11B-v2@a1b2c3")
    assert (ref.folder, ref.repo_id, ref.revision) == (None, "Sao10K/Fimbulvetr-11B-v2", "a1b2c3")


def test_local_folder_is_not_a_hub_id(tmp_path):
    ref = resolve_reference(str(tmp_path))
    assert ref.folder == tmp_path and not ref.is_hub_id


def test_model_path_mapping_keeps_the_hub_name(tmp_path):
    ref = resolve_reference("org/name@v2", {"org/name": tmp_path})
    assert (ref.folder, ref.repo_id, ref.revision) == (tmp_path, "org/name", "v2")


def test_mapping_to_a_missing_folder(tmp_path):
    with pytest.raises(CheckpointError) as err:
        resolve_reference("org/name", {"org/name": tmp_path / "gone"})
    assert str(err.value).startswith(f"--model-path org/name={tmp_path / 'gone'}: folder not found")


def test_lora_is_refused_clearly():
    with pytest.raises(UnsupportedError) as err:
        resolve_reference("org/base+org/adapter")
    assert "LoRA references (model+adapter) are not supported yet" in str(err.value)


def test_neither_folder_nor_hub_id(tmp_path):
    with pytest.raises(CheckpointError) as err:
        resolve_reference("./missing/model")
    assert str(err.value).startswith("model './missing/model': folder not found, and it is not a hub id")
