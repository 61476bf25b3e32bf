"""Find a checkpoint's layer structure from its tensor names alone."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from mergesmith.checkpoints.names import LAYER_NAME, PRE_LAYER_MARKERS


@dataclass(frozen=True)
class LayerLayout:
    """`prefix.<i>.<rest>` names for i in range(count), plus the tensors before and after the layers."""

    prefix: str  # "model.layers"
    count: int
    layer_tensors: tuple[tuple[str, ...], ...]  # per layer i: the <rest> parts, sorted
    pre_layer: tuple[str, ...]  # embeddings
    post_layer: tuple[str, ...]  # final norm, lm_head

    def layer_name(self, index: int, rest: str) -> str:
        return f"{self.prefix}.{index}.{rest}"


class LayerGapError(ValueError):
    """Some layer below the highest index has no tensors: the checkpoint is incomplete, or one
    tensor name carries a wild index (model.layers.99999999.x would make 10**8 empty layers)."""

    def __init__(self, prefix: str, first_missing: int, count: int, missing: int) -> None:
        super().__init__(f"{prefix}.{first_missing} has no tensors, but the names go up to {prefix}.{count - 1}")
        self.prefix, self.first_missing, self.count, self.missing = prefix, first_missing, count, missing


def find_layers(names: Iterable[str]) -> LayerLayout:
    """The layer prefix is the `<prefix>.<N>.` that most tensors share; the rest are pre or post.
    Raises LayerGapError when a layer below the highest has no tensors.

    >>> find_layers(["model.embed_tokens.weight", "model.layers.0.mlp.w", "model.norm.weight"]).count
    1
    """
    names = sorted(names)
    prefixes = Counter(m["prefix"] for n in names if (m := LAYER_NAME.match(n)))
    if not prefixes:
        return LayerLayout("", 0, (), tuple(n for n in names if _is_pre(n)), tuple(n for n in names if not _is_pre(n)))
    prefix = prefixes.most_common(1)[0][0]
    by_layer: dict[int, list[str]] = defaultdict(list)
    others = []
    for name in names:
        match = LAYER_NAME.match(name)
        if match and match["prefix"] == prefix:
            by_layer[int(match["index"])].append(match["rest"])
        else:
            others.append(name)
    count = max(by_layer) + 1
    if count > len(by_layer):
        first_missing = next(i for i in range(count) if i not in by_layer)  # at most len(by_layer) + 1 steps
        raise LayerGapError(prefix, first_missing, count, count - len(by_layer))
    return LayerLayout(
        prefix=prefix,
        count=count,
        layer_tensors=tuple(tuple(sorted(by_layer.get(i, ()))) for i in range(count)),
        pre_layer=tuple(n for n in others if _is_pre(n)),
        post_layer=tuple(n for n in others if not _is_pre(n)),
    )


def _is_pre(name: str) -> bool:
    return any(marker in name for marker in PRE_LAYER_MARKERS)
