"""Merging models whose vocabularies differ: the output vocabulary, each model's row for every
output token, and the rows of tokens a model lacks.

Semantics are mergekit 0.1.5's (`tokenizer_source` / `tokenizer:`):

- the output vocabulary is the base's (without ids beyond its embedding rows), a named model's, or
  the union: the base's tokens keep their ids, the other models' tokens follow as added tokens;
- a model that lacks a token gets a row for it, in this order of preference: the `tokens:` setting
  of that token; the row of the only model that has it; zero when none has it; the base's row when
  the base has it; otherwise the mean of the rows of the models that have it;
- rows added by `pad_to_multiple_of` are the mean of the model's real rows.

Planning (everything but `align_rows`) reads tokenizer files only; `align_rows` is torch indexing
over whole tensors, no per-token Python loop, so a 150k vocabulary takes well under a second.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mergesmith.checkpoints.tokenizer import Tokenizer
from mergesmith.errors import PlanError
from mergesmith.recipe.schema import ModelTokenEmbedding, TokenEmbedding, ZeroEmbedding

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


def build_vocabulary(
    source: str,
    tokenizers: Mapping[str, Tokenizer],
    base: str,
    settings: Mapping[str, TokenEmbedding] | None = None,
    pad_to_multiple_of: int | None = None,
    *,
    key: str = "tokenizer_source",
) -> Vocabulary:
    """The output vocabulary for `source` ("union", "base" or a model reference) over `tokenizers`
    (every model of the recipe, in the recipe's order); `base` is the base model, or the first."""
    settings = settings or {}
    base_vocab = tokenizers[base].usable
    appended: list[dict[str, Any]] = []
    if source == "union":
        out, origin, dropped = dict(base_vocab), base, _beyond_rows(tokenizers[base])
        regular: list[str] = []
        added: dict[str, dict[str, Any]] = {}
        for tokenizer in tokenizers.values():
            for token, i in sorted(tokenizer.usable.items(), key=lambda item: item[1]):
                if i in tokenizer.added:
                    added.setdefault(token, tokenizer.added[i])
                elif token not in out and token not in regular:
                    regular.append(token)
        # mergekit adds other models' regular tokens in hash order (a different order every run);
        # we take them model by model, in id order.
        for token in regular:
            _append(out, appended, _plain_added(token))
        for entry in added.values():
            if entry["content"] not in out:
                _append(out, appended, entry)
    elif source == "base":
        out, origin, dropped = dict(base_vocab), base, _beyond_rows(tokenizers[base])
    else:
        if source not in tokenizers:
            raise PlanError(
                f"{key}: {source!r} is not one of the recipe's models ({', '.join(tokenizers)})",
                hint="name one of the models, or use 'union' or 'base'",
            )
        out, origin, dropped = dict(tokenizers[source].vocab), source, ()
    for token in settings:
        if token not in out:
            _append(out, appended, _plain_added(token))

    tokens = [""] * len(out)
    for token, i in out.items():
        if i >= len(tokens):
            raise PlanError(f"{key}: the tokenizer of {origin!r} has gaps in its ids (id {i} of {len(out)} tokens)")
        tokens[i] = token
    size = len(tokens)
    if pad_to_multiple_of:
        size = -(-size // pad_to_multiple_of) * pad_to_multiple_of
    rows = {}
    for model, tokenizer in tokenizers.items():
        # the base's own vocabulary is the stripped one, as mergekit reads it
        vocab = base_vocab if model == base else tokenizer.vocab
        rows[model] = tuple(r if (r := vocab.get(t, -1)) < tokenizer.rows else -1 for t in tokens)
    configured = {
        out[token]: _configured_row(token, setting, out[token], rows, tokenizers) for token, setting in settings.items()
    }
    return Vocabulary(tuple(tokens), size, rows, configured, origin, dropped, tuple(appended))


def _beyond_rows(tokenizer: Tokenizer) -> tuple[int, ...]:
    return tuple(sorted(i for i in tokenizer.vocab.values() if i >= tokenizer.rows))


def _append(out: dict[str, int], appended: list[dict[str, Any]], entry: dict[str, Any]) -> None:
    new = {**entry, "id": len(out)}
    out[new["content"]] = new["id"]
    appended.append(new)


def _plain_added(token: str) -> dict[str, Any]:
    # what transformers' add_tokens(token) makes of a plain string
    flags = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": True, "special": False}
    return {"content": token, **flags}


def _configured_row(
    token: str,
    setting: TokenEmbedding,
    token_id: int,
    rows: Mapping[str, tuple[int, ...]],
    tokenizers: Mapping[str, Tokenizer],
) -> TokenRow:
    where = f"tokenizer.tokens[{token!r}].source"
    source = setting.source
    if source is None:
        if setting.force:
            raise PlanError(f"{where}: force: true needs a source to take the row from")
        return TokenRow(None, -1, force=False)  # no source: the automatic rules apply
    if isinstance(source, ZeroEmbedding):
        return TokenRow(None, 0, setting.force)
    model = source.model if isinstance(source, ModelTokenEmbedding) else source
    if model not in tokenizers:
        raise PlanError(f"{where}: {model!r} is not one of the recipe's models ({', '.join(tokenizers)})")
    tokenizer = tokenizers[model]
    if isinstance(source, ModelTokenEmbedding):
        if source.token is not None:
            if source.token not in tokenizer.vocab:
                raise PlanError(f"{where}: model {model!r} has no token {source.token!r}")
            row = tokenizer.vocab[source.token]
        else:
            row = source.token_id if source.token_id is not None else -1
        if not 0 <= row < tokenizer.rows:
            raise PlanError(f"{where}: token id {row} is outside model {model!r}'s {tokenizer.rows} rows")
        return TokenRow(model, row, setting.force)
    row = rows[model][token_id]
    if row < 0:
        raise PlanError(
            f"{where}: model {model!r} has no token {token!r} to take its row from",
            hint="name a model that has the token, or use {kind: model_token, model: ..., token: ...}",
        )
    return TokenRow(model, row, setting.force)


def check_entry_models(vocabulary: Vocabulary, output: str, models: Sequence[str]) -> None:
    """Configured rows must come from a model this tensor is merged from."""
    for token_id, configured in vocabulary.configured.items():
        if configured.model is not None and configured.model not in models:
            raise PlanError(
                f"tokenizer.tokens[{vocabulary.tokens[token_id]!r}]: takes its row from {configured.model!r}, "
                f"but {output} is merged from {', '.join(models)} only",
                hint="take the row from one of those models",
            )


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
