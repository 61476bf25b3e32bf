"""A PEFT LoRA adapter, read lazily: which of its base model's weights it changes and how
(W + scale * B A, with PEFT's conventions), and which it replaces whole (`modules_to_save`). A merge
applies it tensor by tensor while reading the base (execute/routes.py): no merged copy of the model
is ever held or written.

PEFT's conventions (peft 0.21, `tuners/lora`): scale = lora_alpha / r, or lora_alpha / sqrt(r) with
`use_rslora`; `rank_pattern` / `alpha_pattern` override r and alpha for the modules whose name ends
in a match of the pattern (the first such pattern, in the file's order); `fan_in_fan_out` means the
base weight is stored (in, out) (GPT-2's Conv1D), so the delta is (B A)^T; an embedding's adapter
holds lora_embedding_A (r, rows) and lora_embedding_B (dim, r), its delta is (B A)^T.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergesmith.checkpoints import hub
from mergesmith.checkpoints.reference import ModelReference
from mergesmith.checkpoints.safe_json import json_type, read_json
from mergesmith.checkpoints.safetensors_file import TensorInfo, read_header
from mergesmith.errors import CheckpointError, UnsupportedError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# How a model+adapter checkpoint names the adapter's tensors: no model tensor name holds a ':'.
TENSOR_PREFIX = "adapter:"
PEFT_PREFIX = "base_model.model."  # what PEFT puts before a module's path in the adapter's file

# Settings that make an adapter more than W + scale * B A: each named as users know it.
UNSUPPORTED_SETTINGS = {
    "use_dora": "DoRA (use_dora: true)",
    "lora_bias": "LoRA with bias (lora_bias: true)",
    "layer_replication": "layer replication (layer_replication)",
    "trainable_token_indices": "trainable tokens (trainable_token_indices)",
    "target_parameters": "parameter targeting (target_parameters)",
    "use_qalora": "QA-LoRA (use_qalora: true)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "arrow_config": "Arrow routing (arrow_config)",
}
_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B)$")


@dataclass(frozen=True)
class LoraDelta:
    """How the adapter changes one base weight: W + scale * B A (transposed where `transposed`)."""

    a: str  # the checkpoint's names of lora_A and lora_B (TENSOR_PREFIX + the adapter file's name)
    b: str
    scale: float
    transposed: bool  # the delta is (B A)^T: an embedding's, or a Conv1D weight's (fan_in_fan_out)

    @property
    def tensor_names(self) -> tuple[str, str]:
        return (self.a, self.b)


class LoraAdapter:
    """The adapter of a `model+adapter` reference, bound to its base model's tensor names."""

    def __init__(self, ref: ModelReference, base_names: Mapping[str, Any], model: str) -> None:
        self.ref, self.model = ref, model  # model: the whole reference, as the recipe wrote it
        self.folder = ref.folder if ref.folder is not None else None
        self.where = f"adapter {ref.text!r} of model {model!r}"
        self.config = self._read_config()
        self.infos = {TENSOR_PREFIX + name: info for name, info in self._read_weights().items()}
        self.deltas: dict[str, LoraDelta] = {}
        self.replaced: dict[str, str] = {}  # base tensor -> the adapter's tensor saved in its place
        self._bind(base_names)

    def tensor_info(self, name: str) -> TensorInfo:
        return self.infos[name]

    def check_shape(self, name: str, weight: tuple[int, ...]) -> None:
        """The adapter's B A must have the base weight's shape: else it was made for another model."""
        delta = self.deltas[name]
        a, b = self.infos[delta.a].shape, self.infos[delta.b].shape
        out_in = (b[0], a[1]) if len(a) == 2 and len(b) == 2 and a[0] == b[1] else None
        expected = out_in[::-1] if out_in is not None and delta.transposed else out_in
        if expected is None or tuple(expected) != tuple(weight):
            raise CheckpointError(
                f"{self.where}: lora_A {list(a)} and lora_B {list(b)} of {name} do not fit the model's "
                f"{name} {list(weight)}",
                hint=self._other_base_hint(),
            )

    def check_replacement(self, name: str, info: TensorInfo, weight: tuple[int, ...]) -> None:
        if tuple(info.shape) != tuple(weight):
            raise CheckpointError(
                f"{self.where}: the adapter saves {name} as {list(info.shape)}, but the model's is {list(weight)}",
                hint=self._other_base_hint(),
            )

    def _other_base_hint(self) -> str:
        return (
            "the adapter was trained for another base model: give the base it names in its "
            f"adapter_config.json ({self.config.get('base_model_name_or_path')!r})"
        )

    def _read_config(self) -> dict[str, Any]:
        path = self._file(ADAPTER_CONFIG)
        if path is None:
            if self.ref.folder is None:
                raise CheckpointError(
                    f"{self.where}: no {ADAPTER_CONFIG} in hub repository {self.ref.repo_id!r} "
                    "(or, offline, not in the local hub cache)",
                    hint="download the adapter first, or map it to a folder with --model-path NAME=DIR",
                )
            raise CheckpointError(
                f"{self.where}: no {ADAPTER_CONFIG} in {self.folder}",
                hint="a PEFT adapter folder holds adapter_config.json beside adapter_model.safetensors",
            )
        config = read_json(path, f"{self.where}: {ADAPTER_CONFIG}")
        if not isinstance(config, dict):
            raise CheckpointError(f"{self.where}: {ADAPTER_CONFIG} is {json_type(config)}, expected an object")
        kind = config.get("peft_type", "LORA")
        if kind != "LORA":
            raise UnsupportedError(
                f"{self.where}: a {kind} adapter; only LoRA adapters can be applied exactly",
                hint="merge it into its model with PEFT (merge_and_unload) and reference that folder",
            )
        for key, what in UNSUPPORTED_SETTINGS.items():
            if config.get(key) not in (None, False, [], {}):
                raise UnsupportedError(
                    f"{self.where}: {what} is not plain LoRA; mergesmith cannot apply it exactly",
                    hint="merge it into its model with PEFT (merge_and_unload) and reference that folder",
                )
        return config

    def _read_weights(self) -> dict[str, TensorInfo]:
        path = self._file(ADAPTER_WEIGHTS)
        if path is None:
            bin_file = " (adapter_model.bin is not read: it is pickled)" if self._file("adapter_model.bin") else ""
            raise CheckpointError(
                f"{self.where}: no {ADAPTER_WEIGHTS}{bin_file}",
                hint="save the adapter with safetensors (save_pretrained(..., safe_serialization=True))",
            )
        return read_header(path)

    def _file(self, name: str) -> Path | None:
        if self.ref.folder is None:
            return hub.fetch_file(self.ref, name)
        path = self.ref.folder / name
        if not path.is_file():
            return None
        if not path.resolve().is_relative_to(self.ref.folder.resolve()):
            raise CheckpointError(
                f"{self.where}: {name} resolves to {path.resolve()}, outside the adapter folder {self.ref.folder}",
                hint="an adapter's files must lie inside its folder (symlinks included)",
            )
        return path

    def _bind(self, base_names: Mapping[str, Any]) -> None:
        pairs: dict[str, dict[str, str]] = {}
        for name in self.infos:
            key = name.removeprefix(TENSOR_PREFIX)
            if not key.startswith(PEFT_PREFIX):
                raise CheckpointError(
                    f"{self.where}: tensor {key!r} is not named as PEFT names adapter tensors ({PEFT_PREFIX}...)",
                    hint="save the adapter with PEFT (save_pretrained)",
                )
            match = _LORA_KEY.match(key.removeprefix(PEFT_PREFIX))
            if match is None:
                self._bind_replacement(key, base_names)
                continue
            pairs.setdefault(match["module"], {})[match["part"].split(".")[0]] = name
        for module, parts in pairs.items():
            self.deltas[self._target(module, base_names)] = self._delta(module, parts)

    def _bind_replacement(self, key: str, base_names: Mapping[str, Any]) -> None:
        """A whole tensor saved by the adapter (modules_to_save; an adapted embedding's own weight,
        which PEFT saves as `<module>.base_layer.weight`): it replaces the base's."""
        target = key.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")
        if "lora_" in target:
            raise CheckpointError(
                f"{self.where}: adapter tensor {key!r} is a LoRA tensor mergesmith does not know",
                hint="the adapter was made by a PEFT method other than plain LoRA: merge it into its model "
                "with PEFT (merge_and_unload) and reference that folder",
            )
        if target not in base_names:
            raise CheckpointError(
                f"{self.where}: the adapter saves {key!r} in place of {target}, but the model has no tensor {target}",
                hint=self._other_base_hint(),
            )
        self.replaced[target] = TENSOR_PREFIX + key

    def _target(self, module: str, base_names: Mapping[str, Any]) -> str:
        target = f"{module}.weight"
        if target not in base_names:
            raise CheckpointError(
                f"{self.where}: the adapter changes {module}, but the model has no tensor {target}",
                hint=self._other_base_hint(),
            )
        return target

    def _delta(self, module: str, parts: dict[str, str]) -> LoraDelta:
        embedding = "lora_embedding_A" in parts or "lora_embedding_B" in parts
        a, b = ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A", "lora_B")
        if a not in parts or b not in parts:
            raise CheckpointError(
                f"{self.where}: {module} has {a if a in parts else b} without {b if a in parts else a}",
                hint="the adapter file is incomplete; save it again",
            )
        rank = self.infos[parts[a]].shape[0] if self.infos[parts[a]].shape else 0
        r = _setting(self.config, "rank_pattern", "r", module)
        alpha = _setting(self.config, "alpha_pattern", "lora_alpha", module)
        if r != rank or r <= 0:
            raise CheckpointError(
                f"{self.where}: adapter_config.json gives {module} rank {r}, but its {a} has {rank} rows",
                hint="the adapter's config and weights disagree; save the adapter again",
            )
        scale = alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r
        transposed = embedding or bool(self.config.get("fan_in_fan_out"))
        return LoraDelta(parts[a], parts[b], scale, transposed)


def _setting(config: Mapping[str, Any], pattern_key: str, key: str, module: str) -> float:
    """r or lora_alpha for one module: the first pattern of `pattern_key` that the module's name
    ends in (PEFT's rule: `(.*\\.)?(pattern)$`), else the adapter's value."""
    patterns = config.get(pattern_key) or {}
    for pattern, value in patterns.items() if isinstance(patterns, dict) else ():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return _number(value, f"{pattern_key}[{pattern!r}]")
    default = {"r": 8, "lora_alpha": 8}[key]  # PEFT's LoraConfig defaults
    return _number(config.get(key, default), key)


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CheckpointError(
            f"adapter_config.json: {key} is {value!r}, expected a number",
            hint="the adapter's config is damaged; save the adapter again",
        )
    return value
