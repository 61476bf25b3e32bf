"""The shapes a per-layer setting takes in a config.json, and how each follows a new layer order.

Each function takes (key, source value, layer_sources, source layer count) and returns the output's
value, or raises LayerConfigError when the source value does not fit its shape or the new order
cannot be described. layer_config.py says which key has which shape.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any


class LayerConfigError(ValueError):
    """No rewrite of the config can describe the output layers, or the source config disagrees with itself.

    >>> str(LayerConfigError("moe_layers", "layer index 9 is outside the 4 layers (0-3)", hint="fix config.json"))
    'moe_layers: layer index 9 is outside the 4 layers (0-3)\\n  hint: fix config.json'
    """

    def __init__(self, key: str, message: str, hint: str | None = None) -> None:
        super().__init__(key, message, hint)  # args rebuild it when unpickled (Ray sends errors pickled)
        self.key, self.message, self.hint = key, message, hint

    def __str__(self) -> str:
        text = f"{self.key}: {self.message}"
        return f"{text}\n  hint: {self.hint}" if self.hint else text


# --- the source's shape checks ------------------------------------------------------------------------
_INCONSISTENT = "the source config.json disagrees with itself; fix it in the source model before merging"


def checked_sources(layer_sources: Sequence[int], count: int) -> list[int]:
    sources = list(layer_sources)
    for i, s in enumerate(sources):
        if not is_index(s) or not 0 <= s < count:
            raise LayerConfigError(
                "layer_sources", f"output layer {i} names source layer {s!r}, but the model has {count} layers"
            )
    return sources


def is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_length(key: str, value: Sequence[Any], count: int) -> None:
    if len(value) != count:
        raise LayerConfigError(
            key, f"has {len(value)} entries, but the model has {count} layers (one entry per layer)", _INCONSISTENT
        )


def _check_indices(key: str, value: Sequence[Any], count: int, base: int = 0) -> None:
    for v in value:
        if not is_index(v) or not base <= v < count + base:
            raise LayerConfigError(
                key, f"{v!r} is not a layer index of the {count} layers ({base}-{count - 1 + base})", _INCONSISTENT
            )


# --- one function per kind: (key, source value, layer_sources, source count) -> output value ------------
def _per_layer(key: str, value: Any, sources: list[int], count: int) -> Any:
    if not isinstance(value, list | tuple):
        return value  # one value for every layer
    _check_length(key, value, count)
    return [copy.deepcopy(value[s]) for s in sources]


def _per_layer_chars(key: str, value: Any, sources: list[int], count: int) -> Any:
    if not isinstance(value, str):
        return value
    _check_length(key, value, count)
    return "".join(value[s] for s in sources)


def _indices(key: str, value: Any, sources: list[int], count: int, base: int = 0) -> Any:
    if not isinstance(value, list | tuple):
        return value
    _check_indices(key, value, count, base)
    listed = {v - base for v in value}
    return [i + base for i, s in enumerate(sources) if s in listed]


def _pointers(key: str, value: Any, sources: list[int], count: int) -> Any:
    """Output layer i reuses the cache of the latest earlier output layer that copies its source's owner."""
    if not isinstance(value, list | tuple):
        return value
    _check_length(key, value, count)
    _check_indices(key, value, count)
    out = []
    for i, s in enumerate(sources):
        owner = value[s]
        j = i if owner == s else next((j for j in range(i - 1, -1, -1) if sources[j] == owner), None)
        if j is None:
            raise LayerConfigError(
                key,
                f"output layer {i} comes from source layer {s}, which reuses the cache of source layer {owner}, "
                f"but no earlier output layer is a copy of layer {owner}",
                hint=f"keep layer {owner} before layer {s} in the slices",
            )
        out.append(j)
    return out


def _taps(key: str, value: Any, sources: list[int], count: int) -> Any:
    """Each tapped layer must appear once: its output feeds a module sized for len(value) inputs."""
    if not isinstance(value, list | tuple):
        return value
    _check_indices(key, value, count)
    hint = f"keep each of the layers {list(value)} exactly once and in this order, or leave this stack uncut"
    positions = []
    for t in value:
        copies = [i for i, s in enumerate(sources) if s == t]
        if len(copies) != 1:
            found = f"{len(copies)} times (output layers {copies})" if copies else "not at all"
            raise LayerConfigError(key, f"source layer {t} feeds another module, but the output has it {found}", hint)
        positions.append(copies[0])
    if sorted(range(len(value)), key=lambda k: value[k]) != sorted(range(len(value)), key=lambda k: positions[k]):
        raise LayerConfigError(key, f"the tapped layers {list(value)} come out in another order: {positions}", hint)
    return positions


def _layer_map(key: str, value: Any, sources: list[int], count: int) -> Any:
    if not isinstance(value, Mapping):
        return value
    by_index = {}
    for k, v in value.items():
        index = int(k) if isinstance(k, str) and k.isdigit() else k
        _check_indices(key, [index], count)
        by_index[index] = v
    chosen = {i: by_index[s] for i, s in enumerate(sources) if s in by_index}
    width = len(str(max(chosen))) if chosen else 1  # transformers zero-pads the keys so they sort
    return {str(i).zfill(width): copy.deepcopy(v) for i, v in chosen.items()}


def _expand_units(key: str, value: Any) -> list[Any]:
    if not isinstance(value, list | tuple) or not all(
        isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[0], list | tuple) and is_index(item[1])
        for item in value
    ):
        raise LayerConfigError(key, f"expected [[[kinds...], times], ...], found {value!r}", _INCONSISTENT)
    return [kind for unit, times in value for _ in range(times) for kind in unit]


def _repeated_unit(key: str, value: Any, sources: list[int], count: int) -> Any:
    layers = _expand_units(key, value)
    _check_length(key, layers, count)
    out = [layers[s] for s in sources]
    # the shortest unit that repeats into the output; the whole list when nothing shorter does
    unit = next((p for p in range(1, len(out) + 1) if len(out) % p == 0 and out == out[:p] * (len(out) // p)), 0)
    return [[out[:unit], len(out) // unit]] if out else []


def _cycled_unit(key: str, value: Any, sources: list[int], count: int) -> Any:
    if not isinstance(value, list | tuple):
        return value
    layers = (list(value) * 100)[:count]  # RecurrentGemma: (block_types * 100)[:num_hidden_layers]
    _check_length(key, layers, count)
    out = [layers[s] for s in sources]
    return next(
        (out[:p] for p in range(1, len(out) + 1) if 100 * p >= len(out) and (out[:p] * 100)[: len(out)] == out),
        list(value),
    )


def _unrelated(key: str, value: Any, sources: list[int], count: int) -> Any:
    return value


def _unsupported(key: str, value: Any, sources: list[int], count: int) -> Any:
    raise LayerConfigError(
        key,
        f"{value!r} depends on the layers in a way mergesmith cannot rewrite for a changed layer order",
        hint="keep this stack's layers as they are, or edit the key in the output config.json yourself",
    )


REMAP: dict[str, Callable[[str, Any, list[int], int], Any]] = {
    "per_layer": _per_layer,
    "per_layer_chars": _per_layer_chars,
    "indices": _indices,
    "indices_from_1": lambda key, value, sources, count: _indices(key, value, sources, count, base=1),
    "pointers": _pointers,
    "taps": _taps,
    "layer_map": _layer_map,
    "repeated_unit": _repeated_unit,
    "cycled_unit": _cycled_unit,
    "unrelated": _unrelated,
    "unsupported": _unsupported,
}


# What each shape says about every layer, for layer_kinds: a list of one string per layer, or None
# when the value is one setting for all layers.
def _layers_of(key: str, value: Any, count: int, kind: str) -> list[Any] | None:
    if kind == "layer_map":
        by_layer = _layer_map(key, value, list(range(count)), count) if isinstance(value, Mapping) else {}
        return [json.dumps(by_layer.get(str(i).zfill(len(str(count - 1))), {}), sort_keys=True) for i in range(count)]
    if kind == "repeated_unit":
        layers = _expand_units(key, value)
    elif kind == "per_layer_chars":
        layers = list(value) if isinstance(value, str) else None
    elif not isinstance(value, list | tuple):
        return None
    elif kind == "cycled_unit":
        layers = (list(value) * 100)[:count]
    elif kind in ("indices", "indices_from_1"):
        base = int(kind == "indices_from_1")
        _check_indices(key, value, count, base)
        return ["yes" if i + base in value else "no" for i in range(count)]
    else:
        layers = list(value)
    if layers is not None:
        _check_length(key, layers, count)
    if kind == "pointers" and layers is not None:
        _check_indices(key, layers, count)
        return ["own" if v == i else "reuses" for i, v in enumerate(layers)]
    return layers


DESCRIBED = (
    "per_layer",
    "per_layer_chars",
    "indices",
    "indices_from_1",
    "pointers",
    "layer_map",
    "repeated_unit",
    "cycled_unit",
)


def describe(key: str, value: Any, count: int, kind: str) -> list[str] | None:
    """Each layer's entry as text, for the kinds in DESCRIBED; None for one value shared by all layers."""
    layers = _layers_of(key, value, count, kind) if kind in DESCRIBED else None
    return None if layers is None else [str(v) for v in layers]
