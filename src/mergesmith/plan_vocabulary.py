"""Planning a merge of vocabularies: the output Vocabulary built from the recipe's tokenizer
settings and the models' tokenizer files (read only; no tensor data). The semantics, mergekit
0.1.5's, are described in vocabulary.py, which holds the Vocabulary type and the execution side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mergesmith.checkpoints.tokenizer import Tokenizer
from mergesmith.errors import PlanError
from mergesmith.recipe.schema import ModelTokenEmbedding, TokenEmbedding, ZeroEmbedding
from mergesmith.vocabulary import TokenRow, Vocabulary


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
