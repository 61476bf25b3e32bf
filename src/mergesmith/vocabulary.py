"""Merging models whose vocabularies differ: the output vocabulary, each model's row for every
output token, and the rows of tokens a model lacks.

Semantics are mergekit 0.1.5's (`tokenizer_source` / `tokenizer:`):

- the output vocabulary is the base's (without ids beyond its embedding rows), a named model's, or
  the union: the base's tokens keep their ids, the other models' tokens follow as added tokens;
- a model that lacks a token gets a row for it, in this order of preference: the `tokens:` setting
  of that token; the row of the only model that has it; zero when none has it; the base's row when
  the base has it; otherwise the mean of the rows of the models that have it;
- rows added by `pad_to_multiple_of` are the mean of the model's real rows.

This module is the execution side: the Vocabulary a plan carries, and `align_rows`, torch
indexing over whole tensors (no per-token Python loop, so a 150k vocabulary takes well under a
second). plan_vocabulary.py builds the Vocabulary from the recipe's settings and the tokenizer
files; it is kept apart so that execution never imports recipe/.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True)
class TokenRow:
    """A configured row: `model`'s row `row` of its own tensor, or zeros when `model` is None."""

    model: str | None
    row: int
    force: bool  # also replaces the row of models that have the token


@dataclass(frozen=True)
class Vocabulary:
    tokens: tuple[str, ...]  # output id -> token
    size: int  # rows written: len(tokens) rounded up to pad_to_multiple_of
    rows: Mapping[str, tuple[int, ...]]  # model -> its row of each output token, -1 when it lacks it
    configured: Mapping[int, TokenRow]  # output id -> the row `tokens:` asks for
    source: str  # the model whose tokenizer files the output's start from
    dropped: tuple[int, ...]  # ids removed from that tokenizer (beyond its embedding rows)
    appended: tuple[dict[str, Any], ...]  # added-token entries appended to it, with their new ids

    def ids(self) -> dict[str, int]:
        return {token: i for i, token in enumerate(self.tokens)}


def align_rows(tensors: Sequence[Tensor], models: Sequence[str], vocabulary: Vocabulary, base: str | None) -> list:
    """Each model's vocabulary tensor (rows = tokens) with its rows in the output's token order."""
    import torch

    count, size = len(vocabulary.tokens), vocabulary.size
    dtype = tensors[0].dtype
    rows = torch.tensor([vocabulary.rows[m] for m in models], dtype=torch.long)  # (M, count)
    present = rows >= 0
    found = present.sum(0)
    shape = tensors[0].shape[1:]
    default = torch.zeros((count, *shape), dtype=dtype)
    automatic = found < len(models)
    forced = torch.zeros(count, dtype=torch.bool)
    for token_id, configured in vocabulary.configured.items():
        if configured.row < 0:  # listed without a source: the automatic rules
            continue
        automatic[token_id] = False
        forced[token_id] = configured.force
        if configured.model is not None:
            default[token_id] = tensors[models.index(configured.model)][configured.row]
    # the only model that has the token (zero when none has it: `default` starts at zero)
    only = automatic & (found == 1)
    for m, tensor in enumerate(tensors):
        pick = only & present[m]
        default[pick] = tensor[rows[m, pick]]
    several = automatic & (found >= 2)
    if base is not None and base in models:
        b = models.index(base)
        from_base = several & present[b]
        default[from_base] = tensors[b][rows[b, from_base]]
        several &= ~present[b]
    if several.any():
        # mergekit: zeros, plus each model's row in turn, in place divided by the count, in `dtype`
        mean = torch.zeros((int(several.sum()), *shape), dtype=dtype)
        for m, tensor in enumerate(tensors):
            has = present[m, several]
            mean[has] = mean[has] + tensor[rows[m, several][has]]
        counts = found[several]
        for c in counts.unique().tolist():
            mean[counts == c] /= c
        default[several] = mean
    aligned = []
    for m, tensor in enumerate(tensors):
        out = torch.empty((size, *shape), dtype=dtype)
        out[:count] = tensor[rows[m].clamp(min=0)]
        replace = ~present[m] | forced
        out[:count][replace] = default[replace]
        if size > count:
            out[count:] = torch.mean(out[:count], dim=0)
        aligned.append(out)
    return aligned
