"""Model references: folders, hub ids with revisions, --model-path mappings."""

from __future__ import annotations

import pytest

from mergesmith.checkpoints import resolve_reference
from mergesmith.errors import CheckpointError


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


def test_lora_reference_names_the_base_and_its_adapter():
    ref = resolve_reference("org/base@v1+org/adapter")
    assert (ref.text, ref.repo_id, ref.revision) == ("org/base@v1+org/adapter", "org/base", "v1")
    assert ref.adapter is not None and (ref.adapter.repo_id, ref.adapter.revision) == ("org/adapter", None)


def test_lora_reference_with_more_than_one_plus_is_refused():
    with pytest.raises(CheckpointError) as err:
        resolve_reference("org/base+org/adapter+org/other")
    assert str(err.value).startswith(
        "model 'org/base+org/adapter+org/other': a LoRA reference is MODEL+ADAPTER, one '+' between two non-empty parts"
    )


def test_neither_folder_nor_hub_id(tmp_path):
    with pytest.raises(CheckpointError) as err:
        resolve_reference("./missing/model")
    assert str(err.value).startswith("model './missing/model': folder not found, and it is not a hub id")
