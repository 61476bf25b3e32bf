"""A checkpoint: one model's config and tensors, read lazily, one tensor at a time."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

from mergesmith.checkpoints import hub
from mergesmith.checkpoints.layers import LayerLayout, find_layers
from mergesmith.checkpoints.names import BIN_INDEX, BIN_SINGLE, CONFIG, SAFETENSORS_INDEX, SAFETENSORS_SINGLE
from mergesmith.checkpoints.reference import ModelReference, resolve_reference
from mergesmith.checkpoints.safetensors_file import TensorInfo, read_header, read_range
from mergesmith.errors import CheckpointError


class Checkpoint:
    """Config, tensor names and lazily read tensors of one model (local folder or hub)."""

    def __init__(self, ref: ModelReference) -> None:
        self.ref = ref
        self.folder = ref.folder if ref.folder is not None else hub.fetch_metadata(ref)
        self._headers: dict[str, dict[str, TensorInfo]] = {}
        self._bin_state: dict[str, Mapping[str, Any]] = {}
        self.config = self._read_config()
        self._refuse_quantized()
        self.weight_map = self._find_weights()  # tensor name -> weight file name

    def __repr__(self) -> str:
        return f"Checkpoint({self.ref.text!r})"

    @cached_property
    def layout(self) -> LayerLayout:
        return find_layers(self.weight_map)

    def file_path(self, filename: str) -> Path | None:
        """A file of the model (downloaded on first use for hub models), or None if it has none."""
        local = self.folder / filename
        if local.is_file():
            return local
        return hub.fetch_file(self.ref, filename) if self.ref.folder is None else None

    def tensor_info(self, name: str) -> TensorInfo:
        """Dtype, shape and location of a tensor; reads (and for hub models fetches) only its file's header."""
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
        return info

    def read_bytes(self, name: str, offset: int = 0, nbytes: int | None = None) -> bytes | bytearray:
        """Raw little-endian bytes of a tensor, or of `nbytes` of them starting at `offset`."""
        info = self.tensor_info(name)
        if info.start >= 0:
            return read_range(info, offset, nbytes)
        import torch

        tensor = self._bin_state[self.weight_map[name]][name]
        flat = tensor.contiguous().reshape(-1).view(torch.uint8)
        end = info.nbytes if nbytes is None else offset + nbytes
        return flat[offset:end].numpy().tobytes()

    def _read_config(self) -> dict[str, Any]:
        path = self.folder / CONFIG
        if not path.is_file():
            raise CheckpointError(
                f"model {self.ref.text!r}: no config.json in {self.folder}",
                hint="a model folder holds config.json beside its weights",
            )
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise CheckpointError(f"model {self.ref.text!r}: cannot read {path} ({err})") from None

    def _refuse_quantized(self) -> None:
        """Quantized weights (bitsandbytes, GPTQ, AWQ, ...) cannot be merged as they are stored."""
        quantization = self.config.get("quantization_config")
        if quantization:
            method = quantization.get("quant_method", "unknown") if isinstance(quantization, dict) else "unknown"
            raise CheckpointError(
                f"model {self.ref.text!r}: its weights are quantized ({method}), "
                "and quantized weights cannot be merged",
                hint="merge the original (unquantized) model, then quantize the result",
            )

    def _find_weights(self) -> dict[str, str]:
        for index_name in (SAFETENSORS_INDEX, BIN_INDEX):
            index_path = self.folder / index_name
            if index_path.is_file():
                return self._read_index(index_path)
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
        try:
            weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"model {self.ref.text!r}: cannot read {path.name} ({err!r})") from None
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"model {self.ref.text!r}: {path.name} has no weight_map mapping")
        return {str(k): str(v) for k, v in weight_map.items()}

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
        import torch

        from mergesmith.dtypes import code_from_torch

        try:
            # weights_only: a pickle can run code on load; this refuses anything but tensors.
            # mmap keeps memory low, but only zip-format files (torch >= 1.6) can be mapped.
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:
                if "mmap" not in str(err):
                    raise
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            found = re.search(r"Unsupported global: GLOBAL [^ ]+", str(err))
            if found:  # torch's own message goes on to suggest turning the protection off
                raise CheckpointError(
                    f"model {self.ref.text!r}: {filename} holds more than tensors ({found[0]}); "
                    "loading it could run code, so it is refused",
                    hint="convert it to safetensors where you trust it, or use the model's safetensors release",
                ) from None
            raise CheckpointError(f"model {self.ref.text!r}: cannot load {filename} safely ({err})") from None
        self._bin_state[filename] = state
        return {
            name: TensorInfo(name, path, code_from_torch(t.dtype), tuple(t.shape), -1, t.numel() * t.element_size())
            for name, t in state.items()
        }


def open_checkpoints(references: list[str], model_paths: Mapping[str, Path] | None = None) -> dict[str, Checkpoint]:
    """Open each referenced model once: reference text -> Checkpoint."""
    return {text: Checkpoint(resolve_reference(text, model_paths)) for text in references}
