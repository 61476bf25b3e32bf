"""A checkpoint: one model's config and tensors, read lazily, one tensor at a time."""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from mergesmith.checkpoints import hub
from mergesmith.checkpoints.config_fields import check_config, config_vocab_size
from mergesmith.checkpoints.fp8 import read_scheme
from mergesmith.checkpoints.names import (
    BIN_INDEX,
    BIN_SINGLE,
    CONFIG,
    SAFETENSORS_INDEX,
    SAFETENSORS_SINGLE,
    is_token_rows,
    token_rows,
)
from mergesmith.checkpoints.pickled import load_state, read_tensor_bytes
from mergesmith.checkpoints.reference import ModelReference, resolve_reference
from mergesmith.checkpoints.safe_json import json_type, read_json
from mergesmith.checkpoints.safetensors_file import TensorInfo, read_header
from mergesmith.checkpoints.structure import LayerGapError, Structure, find_structure
from mergesmith.errors import CheckpointError

if TYPE_CHECKING:
    from mergesmith.checkpoints.adapter import LoraAdapter, LoraDelta


class Checkpoint:
    """Config, tensor names and lazily read tensors of one model (local folder or hub)."""

    def __init__(self, ref: ModelReference) -> None:
        self.ref = ref
        self.folder = ref.folder if ref.folder is not None else hub.fetch_metadata(ref)
        self._roots = _allowed_roots(self.folder)
        self._headers: dict[str, dict[str, TensorInfo]] = {}
        self.config = self._read_config()
        self.fp8 = read_scheme(self.config, ref.text)  # block-scaled FP8; any other quantization is refused
        self.weight_map = self._find_weights()  # tensor name -> weight file name
        self.adapter = self._open_adapter()  # the LoRA of a model+adapter reference, applied while reading

    def __repr__(self) -> str:
        return f"Checkpoint({self.ref.text!r})"

    @cached_property
    def structure(self) -> Structure:
        try:
            return find_structure(self.weight_map, self.config)
        except LayerGapError as err:
            raise CheckpointError(
                f"model {self.ref.text!r}: layer {err.first_missing} has no tensors, but the tensor names go up to "
                f"layer {err.count - 1} ({err.missing} of {err.count} layers have none)",
                hint="the checkpoint is incomplete or its tensor names are damaged; download it again",
            ) from None

    def file_path(self, filename: str) -> Path | None:
        """A file of the model (downloaded on first use for hub models), or None if it has none.
        It must lie inside the model folder once symlinks are resolved (see _allowed_roots)."""
        local = self.folder / filename
        if local.is_file():
            return self._inside(filename, local)
        if self.ref.folder is not None:
            return None
        fetched = hub.fetch_file(self.ref, filename)
        return self._inside(filename, fetched) if fetched is not None else None

    def _inside(self, filename: str, path: Path) -> Path:
        real = path.resolve()
        if not any(real.is_relative_to(root) for root in self._roots):
            raise CheckpointError(
                f"model {self.ref.text!r}: {filename} resolves to {real}, outside the model folder {self.folder}",
                hint="a model's files must lie inside its folder (symlinks included); "
                "copy the file into the folder if you trust it",
            )
        return path

    def _open_adapter(self) -> LoraAdapter | None:
        if self.ref.adapter is None:
            return None
        from mergesmith.checkpoints.adapter import LoraAdapter

        return LoraAdapter(self.ref.adapter, self.weight_map, self.ref.text)

    def lora_delta(self, name: str) -> LoraDelta | None:
        """How the adapter changes tensor `name` (None: it does not), checked against its shape."""
        if self.adapter is None or name not in self.adapter.deltas:
            return None
        self.adapter.check_shape(name, self.tensor_info(name).shape)
        return self.adapter.deltas[name]

    def tensor_info(self, name: str) -> TensorInfo:
        """Dtype, shape and location of a tensor; reads (and for hub models fetches) only its file's header.
        With an adapter: its own tensors (TENSOR_PREFIX names), and those it saves in place of the model's."""
        if self.adapter is not None:
            own = self.adapter.replaced.get(name, name)
            if own in self.adapter.infos:
                info = self.adapter.tensor_info(own)
                if own != name:  # saved in place of the model's: it must fit where that one was
                    self.adapter.check_replacement(name, info, self._model_tensor_info(name).shape)
                return info
        return self._model_tensor_info(name)

    def _model_tensor_info(self, name: str) -> TensorInfo:
        filename = self.weight_map.get(name)
        if filename is None:
            raise CheckpointError(f"model {self.ref.text!r}: no tensor named {name!r}")
        if filename not in self._headers:
            self._headers[filename] = self._read_file_header(filename)
        info = self._headers[filename].get(name)
        if info is None:
            raise CheckpointError(
                f"model {self.ref.text!r}: the index puts tensor {name!r} in {filename}, but that file lacks it",
                hint="the checkpoint is incomplete or its index is stale; download it again",
            )
        self._check_token_rows(info)
        return info

    def _check_token_rows(self, info: TensorInfo) -> None:
        """Embeddings and lm_head have one row per token of config's vocab_size, or transformers
        cannot load the model (a size mismatch); the merged model would inherit the disagreement."""
        vocab_size = config_vocab_size(self.config)
        if vocab_size is None or not info.shape or not is_token_rows(info.name):
            return
        vocab_size = token_rows(info.name, vocab_size, self.config.get("model_type"))
        if info.shape[0] == vocab_size:
            return
        raise CheckpointError(
            f"model {self.ref.text!r}: {CONFIG} says vocab_size {vocab_size}, but {info.name} has {info.shape[0]} rows",
            hint=f"transformers cannot load a model whose embeddings disagree with vocab_size; if the weights "
            f'are right, set "vocab_size": {info.shape[0]} in {self.folder / CONFIG}',
        )

    def read_bytes(self, name: str, offset: int = 0, nbytes: int | None = None) -> bytes | bytearray:
        """Raw little-endian bytes of a tensor, or of `nbytes` of them starting at `offset`."""
        return read_tensor_bytes(self.tensor_info(name), offset, nbytes)

    def _read_config(self) -> dict[str, Any]:
        path = self.file_path(CONFIG) if (self.folder / CONFIG).is_file() else None
        if path is None:
            raise CheckpointError(
                f"model {self.ref.text!r}: no config.json in {self.folder}",
                hint="a model folder holds config.json beside its weights",
            )
        return check_config(read_json(path, f"model {self.ref.text!r}: {path}"), path, self.ref.text)

    def _find_weights(self) -> dict[str, str]:
        for index_name in (SAFETENSORS_INDEX, BIN_INDEX):
            if (self.folder / index_name).is_file():
                return self._read_index(self._inside(index_name, self.folder / index_name))
        for single in (SAFETENSORS_SINGLE, BIN_SINGLE):
            path = self.file_path(single)
            if path is not None:
                header = self._read_file_header(single, path)
                self._headers[single] = header
                return {name: single for name in header}
        if any(self.folder.glob("*.gguf")):
            raise CheckpointError(
                f"model {self.ref.text!r}: only GGUF weights in {self.folder}; GGUF files cannot be merged",
                hint="use the model's safetensors release, or convert with transformers (gguf_file=...)",
            )
        raise CheckpointError(
            f"model {self.ref.text!r}: no weights found in {self.folder}",
            hint=f"expected {SAFETENSORS_INDEX}, {SAFETENSORS_SINGLE}, {BIN_INDEX} or {BIN_SINGLE}",
        )

    def _read_index(self, path: Path) -> dict[str, str]:
        where = f"model {self.ref.text!r}: {path}"
        index = read_json(path, where)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict):
            found = json_type(index) if not isinstance(index, dict) else f"a weight_map that is {json_type(weight_map)}"
            raise CheckpointError(
                f"{where}: expected an object with a weight_map (tensor name -> file name), found {found}",
                hint="the index is damaged; download the model again",
            )
        for name, filename in weight_map.items():
            _check_weight_file_name(where, name, filename)
        return weight_map

    def _read_file_header(self, filename: str, path: Path | None = None) -> dict[str, TensorInfo]:
        path = path or self.file_path(filename)
        if path is None:
            raise CheckpointError(
                f"model {self.ref.text!r}: weight file {filename} is missing",
                hint="the checkpoint is incomplete; download it again",
            )
        if filename.endswith(".safetensors"):
            return read_header(path)
        return self._read_bin(filename, path)

    def _read_bin(self, filename: str, path: Path) -> dict[str, TensorInfo]:

        from mergesmith.dtypes import code_from_torch

        try:
            state = load_state(path)
        except Exception as err:
            found = re.search(r"Unsupported global: GLOBAL [^ ]+", str(err))
            if found:  # torch's own message goes on to suggest turning the protection off
                raise CheckpointError(
                    f"model {self.ref.text!r}: {filename} holds more than tensors ({found[0]}); "
                    "loading it could run code, so it is refused",
                    hint="convert it to safetensors where you trust it, or use the model's safetensors release",
                ) from None
            raise CheckpointError(f"model {self.ref.text!r}: cannot load {filename} safely ({err})") from None
        self._check_state(filename, state)
        return {
            name: TensorInfo(name, path, code_from_torch(t.dtype), tuple(t.shape), -1, t.numel() * t.element_size())
            for name, t in state.items()
        }

    def _check_state(self, filename: str, state: object) -> None:
        """A pickled checkpoint is a dict of tensor name -> tensor of a dtype safetensors has."""
        import torch

        from mergesmith.dtypes import SAFETENSORS_DTYPES

        where = f"model {self.ref.text!r}: {filename}"
        hint = "save the model with transformers (save_pretrained), or use its safetensors release"
        if not isinstance(state, dict):
            raise CheckpointError(f"{where}: holds a {type(state).__name__}, not a dict of tensors", hint=hint)
        known = {getattr(torch, attr) for attr, _ in SAFETENSORS_DTYPES.values()}
        for name, tensor in state.items():
            if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
                raise CheckpointError(
                    f"{where}: entry {name!r} ({type(tensor).__name__}) is not a tensor under a string name",
                    hint=hint,
                )
            if tensor.dtype not in known:
                raise CheckpointError(
                    f"{where}: tensor {name} has dtype {tensor.dtype}, which cannot be merged", hint=hint
                )


def _check_weight_file_name(where: str, name: str, filename: object) -> None:
    """An index names files of its own folder: a plain relative name, never `..` or an absolute path
    (that would read any file on the machine into the merge). Symlinks are checked when opened."""
    if type(filename) is not str:
        raise CheckpointError(
            f"{where}: weight_map[{name!r}] is {json_type(filename)}, expected a file name",
            hint="the index is damaged; download the model again",
        )
    parts = PurePosixPath(filename).parts
    if not filename or "\\" in filename or "\0" in filename or filename.startswith("/") or ".." in parts:
        raise CheckpointError(
            f"{where}: weight_map[{name!r}] is {filename!r}, which points outside the model folder",
            hint="an index names the model's own files (model-00001-of-00002.safetensors); "
            "the file is damaged or hostile: do not use this model",
        )


def _allowed_roots(folder: Path) -> tuple[Path, ...]:
    """Where a model's files may resolve to: its folder, and for a hub cache snapshot
    (models--org--name/snapshots/<commit>, whose files are symlinks into ../../blobs) that repository's
    blob store. A folder given with --model-path that is such a snapshot gets the same rule."""
    real = folder.resolve()
    roots = [real]
    if real.parent.name == "snapshots" and real.parent.parent.name.startswith("models--"):
        roots.append(real.parent.parent / "blobs")
    return tuple(roots)


def open_checkpoints(references: list[str], model_paths: Mapping[str, Path] | None = None) -> dict[str, Checkpoint]:
    """Open each referenced model once: reference text -> Checkpoint."""
    return {text: Checkpoint(resolve_reference(text, model_paths)) for text in references}
