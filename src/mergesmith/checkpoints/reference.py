"""Model references: a folder path, or a hub id with an optional @revision; either with a LoRA
adapter applied (`model+adapter`, each part a folder or a hub id with its own @revision)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mergesmith.errors import CheckpointError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class ModelReference:
    """What a recipe's `model:` says, and where its files are."""

    text: str  # as written in the recipe: "Sao10K/Fimbulvetr-11B-v2@main"
    folder: Path | None  # a local folder, or None for a hub model
    repo_id: str | None  # the hub id ("Sao10K/Fimbulvetr-11B-v2") when the reference names one
    revision: str | None
    adapter: ModelReference | None = None  # the LoRA of `model+adapter`, applied while reading

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
    if text not in model_paths and "+" in text and not os.path.isdir(os.path.expanduser(text)):
        return _with_adapter(text, model_paths)
    name, revision = split_revision(text)
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
    if _looks_like_hub_id(name):
        return ModelReference(text, None, name, revision)
    raise CheckpointError(
        f"model {text!r}: folder not found, and it is not a hub id (org/name)",
        hint="check the path, or map the name to a folder with --model-path NAME=DIR",
    )


def _with_adapter(text: str, model_paths: Mapping[str, Path]) -> ModelReference:
    parts = text.split("+")
    if len(parts) != 2 or not all(parts):
        raise CheckpointError(
            f"model {text!r}: a LoRA reference is MODEL+ADAPTER, one '+' between two non-empty parts",
            hint="write org/model@rev+org/adapter@rev (a folder for either part works too)",
        )
    model, adapter = (resolve_reference(part, model_paths) for part in parts)
    return ModelReference(text, model.folder, model.repo_id, model.revision, adapter)


def split_revision(text: str) -> tuple[str, str | None]:
    """ "org/name@rev" -> ("org/name", "rev"); a text with no revision -> (text, None)."""
    name, sep, revision = text.rpartition("@")
    if sep and name and revision and "/" not in revision:
        return name, revision
    return text, None


def _looks_like_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and not name.startswith((".", "~")) and ".." not in name
