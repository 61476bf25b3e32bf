"""Model references: a folder path, or a hub id with an optional @revision."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mergesmith.errors import CheckpointError, UnsupportedError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class ModelReference:
    """What a recipe's `model:` says, and where its files are."""

    text: str  # as written in the recipe: "Sao10K/Fimbulvetr-11B-v2@main"
    folder: Path | None  # a local folder, or None for a hub model
    repo_id: str | None  # the hub id ("Sao10K/Fimbulvetr-11B-v2") when the reference names one
    revision: str | None

    @property
    def is_hub_id(self) -> bool:
        """True when the reference is a hub id (even if --model-path maps it to a local folder)."""
        return self.repo_id is not None


def resolve_reference(text: str, model_paths: Mapping[str, Path] | None = None) -> ModelReference:
    """Resolve `text` through `model_paths` (NAME=DIR), the local disk, then the hub.

    >>> resolve_reference("org/name@v1.0").revision
    'v1.0'
    """
    model_paths = model_paths or {}
    name, revision = _split_revision(text)
    mapped = model_paths.get(text) or model_paths.get(name)
    if mapped is not None:
        folder = Path(mapped).expanduser()
        if not folder.is_dir():
            raise CheckpointError(
                f"--model-path {name}={mapped}: folder not found",
                hint="give the folder that holds the model's config.json",
            )
        return ModelReference(text, folder, name if _looks_like_hub_id(name) else None, revision)
    if os.path.isdir(os.path.expanduser(text)):
        return ModelReference(text, Path(text).expanduser(), None, None)
    if "+" in name:
        raise UnsupportedError(
            f"model {text!r}: LoRA references (model+adapter) are not supported yet",
            hint="merge the adapter into its model first (peft's merge_and_unload), then reference that folder",
        )
    if _looks_like_hub_id(name):
        return ModelReference(text, None, name, revision)
    raise CheckpointError(
        f"model {text!r}: folder not found, and it is not a hub id (org/name)",
        hint="check the path, or map the name to a folder with --model-path NAME=DIR",
    )


def _split_revision(text: str) -> tuple[str, str | None]:
    name, sep, revision = text.rpartition("@")
    if sep and name and revision and "/" not in revision:
        return name, revision
    return text, None


def _looks_like_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and not name.startswith((".", "~")) and ".." not in name
