"""The folders the page may read and write (`serve --root`), and every path it is given checked
against them. A path counts as inside a root after symlinks are resolved, so a link in a root that
points elsewhere does not let the page out. Hub ids are read from the local hub cache only
(the server runs with HF_HUB_OFFLINE=1): the page downloads nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from mergesmith.checkpoints.names import CONFIG
from mergesmith.checkpoints.reference import split_revision
from mergesmith.errors import AccessError, MergesmithError

_ADAPTER_CONFIG = "adapter_config.json"
_LIST_DEPTH = 3  # how deep below a root the model picker looks for model folders


class Roots:
    def __init__(self, folders: Iterable[str | os.PathLike[str]]) -> None:
        resolved = []
        for folder in folders:
            path = Path(folder).expanduser()
            if not path.is_dir():
                raise MergesmithError(f"--root {folder}: not a folder", hint="give folders that exist")
            resolved.append(path.resolve())
        if not resolved:
            raise MergesmithError("no --root given", hint="name the folders the page may read and write")
        self.folders = tuple(resolved)

    def inside(self, path: Path) -> bool:
        real = Path(os.path.realpath(path))
        return any(real == root or real.is_relative_to(root) for root in self.folders)

    def _candidate(self, text: str) -> Path:
        path = Path(text).expanduser()
        return path if path.is_absolute() else self.folders[0] / path

    def output(self, text: str) -> Path:
        """OUT as typed: relative to the first root; it must lie in a root and not be one."""
        if not text.strip():
            raise AccessError("the output folder is empty", hint="name a folder under one of the roots")
        path = self._candidate(text.strip())
        real = Path(os.path.realpath(path))
        if not self.inside(path) or real in self.folders:
            raise AccessError(
                f"output {text!r}: outside the folders this page may write ({self.listed()})",
                hint="choose a folder under one of the roots (a relative path is taken from the first)",
            )
        return real

    def folder(self, text: str, what: str) -> Path:
        """A model folder the page reads (a merge's output to evaluate, ...)."""
        path = self._candidate(text)
        if not path.is_dir() or not self.inside(path):
            raise AccessError(
                f"{what} {text!r}: not a folder under the roots this page may read ({self.listed()})",
                hint="pick one of the listed models",
            )
        return Path(os.path.realpath(path))

    def model_paths(self, references: Iterable[str]) -> dict[str, Path]:
        """--model-path for each reference a recipe makes (both parts of `model+adapter`): a folder
        under a root, or nothing for a hub id, which is then read from the hub cache."""
        mapped: dict[str, Path] = {}
        for reference in references:
            parts = [reference] if self._local(reference) else reference.split("+")
            for part in parts:
                folder = self._local(part)
                if folder is not None:
                    mapped[part] = folder
                elif _looks_like_path(part) or os.path.isdir(os.path.expanduser(part)):
                    raise AccessError(
                        f"model {part!r}: not a folder under the roots this page may read ({self.listed()})",
                        hint="pick a model from the list, or start the server with --root on its folder",
                    )
        return mapped

    def _local(self, reference: str) -> Path | None:
        for text in dict.fromkeys([reference, split_revision(reference)[0]]):
            path = self._candidate(text)
            if path.is_dir():
                if not self.inside(path):
                    raise AccessError(
                        f"model {reference!r}: {path} is outside the folders this page may read ({self.listed()})",
                        hint="start the server with --root on the folder that holds it",
                    )
                return Path(os.path.realpath(path))
        return None

    def models(self) -> list[str]:
        """Model and adapter folders under the roots (relative to the first root where they can be)."""
        found = []
        for root in self.folders:
            for folder in _walk(root, _LIST_DEPTH):
                if (folder / CONFIG).is_file() or (folder / _ADAPTER_CONFIG).is_file():
                    found.append(self._shown(folder))
        return sorted(dict.fromkeys(found))

    def _shown(self, folder: Path) -> str:
        return str(folder.relative_to(self.folders[0])) if folder.is_relative_to(self.folders[0]) else str(folder)

    def listed(self) -> str:
        return ", ".join(str(f) for f in self.folders)


def _walk(root: Path, depth: int) -> Iterable[Path]:
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return
    for child in children:
        yield child
        if depth > 1:
            yield from _walk(child, depth - 1)


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", ".", "~")) or ".." in text.split("/") or text.count("/") > 1


def cached_hub_models() -> list[str]:
    """Model ids in the local hub cache (the page offers them beside the folders)."""
    try:
        from huggingface_hub import scan_cache_dir

        cache = scan_cache_dir()
    except Exception:  # no cache yet, or one the scanner cannot read: offer none  # noqa: BLE001
        return []
    return sorted(repo.repo_id for repo in cache.repos if repo.repo_type == "model")
