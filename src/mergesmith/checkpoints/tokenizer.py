"""A model's tokenizer as data: its vocabulary, added tokens and chat template, read from the JSON
files transformers writes (no transformers or torch import: planning stays fast)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergesmith.checkpoints.checkpoint import Checkpoint
from mergesmith.checkpoints.config_fields import config_vocab_size
from mergesmith.checkpoints.safe_json import MAX_TOKENIZER_BYTES, json_type, read_json, read_text
from mergesmith.errors import CheckpointError

_MAX_TOKEN_ID = 2**31 - 1  # tokenizers stores ids as u32; transformers' embeddings index with them
_REDOWNLOAD = "tokenizer files are written by transformers' save_pretrained; download the model again"

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
CHAT_TEMPLATE_JINJA = "chat_template.jinja"
CHAT_TEMPLATE_JSON = "chat_template.json"


@dataclass(frozen=True)
class Tokenizer:
    model: str  # the model reference it belongs to
    path: Path  # its tokenizer.json
    vocab: dict[str, int]  # every token, added ones included (transformers' get_vocab())
    added: dict[int, dict[str, Any]]  # id -> the tokenizer.json entry of each added token
    rows: int  # the model's vocabulary size (config vocab_size): ids at or above it have no row

    @property
    def usable(self) -> dict[str, int]:
        """The tokens that have an embedding row (mergekit strips the rest from the base)."""
        return {token: i for token, i in self.vocab.items() if i < self.rows}


def read_tokenizer(checkpoint: Checkpoint) -> Tokenizer:
    """The tokenizer of a model, from its tokenizer.json (the "fast" tokenizer format)."""
    name = checkpoint.ref.text
    path = checkpoint.file_path(TOKENIZER_JSON)
    if path is None:
        raise CheckpointError(
            f"model {name!r}: no tokenizer.json in {checkpoint.folder}",
            hint="merging vocabularies needs each model's fast tokenizer (tokenizer.json); "
            "save one with transformers: AutoTokenizer.from_pretrained(...).save_pretrained(folder)",
        )
    where = f"model {name!r}: {path}"
    data = read_json(path, where, max_bytes=MAX_TOKENIZER_BYTES)
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        found = json_type(data) if not isinstance(data, dict) else f"a model that is {json_type(data.get('model'))}"
        raise CheckpointError(f"{where}: expected an object with a model object, found {found}", hint=_REDOWNLOAD)
    vocab = _model_vocab(data["model"], where)
    _check_merges(data["model"].get("merges"), where)
    added = _added_tokens(data.get("added_tokens"), where)
    for i, entry in sorted(added.items()):
        vocab[entry["content"]] = i
    rows = config_vocab_size(checkpoint.config)
    if rows is None:
        rows = max(vocab.values(), default=-1) + 1
    return Tokenizer(name, path, vocab, added, rows)


def _model_vocab(model: dict[str, Any], where: str) -> dict[str, int]:
    vocab = model.get("vocab")
    if isinstance(vocab, dict):  # BPE, WordPiece, WordLevel: {token: id}
        for token, i in vocab.items():
            _check_id(i, f"{where}: model.vocab[{token!r}]")
        return dict(vocab)
    if isinstance(vocab, list):  # Unigram: [[token, score], ...]
        for i, entry in enumerate(vocab):
            if not (type(entry) is list and len(entry) == 2 and type(entry[0]) is str):
                raise CheckpointError(
                    f"{where}: model.vocab[{i}] is {json_type(entry)}, expected [token, score]", hint=_REDOWNLOAD
                )
        return {entry[0]: i for i, entry in enumerate(vocab)}
    raise CheckpointError(
        f"{where}: model.vocab is {json_type(vocab)}, expected an object of token ids or a list of [token, score]",
        hint=_REDOWNLOAD,
    )


def _check_merges(merges: object, where: str) -> None:
    """BPE merges: "a b" strings (older files) or ["a", "b"] pairs; a merged vocabulary edits them."""
    if merges is None:
        return
    if not isinstance(merges, list):
        raise CheckpointError(f"{where}: model.merges is {json_type(merges)}, expected a list", hint=_REDOWNLOAD)
    for i, merge in enumerate(merges):
        if not (type(merge) is str or (type(merge) is list and len(merge) == 2 and all(type(m) is str for m in merge))):
            raise CheckpointError(
                f'{where}: model.merges[{i}] is {json_type(merge)}, expected "a b" or ["a", "b"]', hint=_REDOWNLOAD
            )


def _added_tokens(entries: object, where: str) -> dict[int, dict[str, Any]]:
    """id -> entry of tokenizer.json's added_tokens: each an object with an integer id and a string content."""
    if entries is None:
        return {}
    if not isinstance(entries, list):
        raise CheckpointError(f"{where}: added_tokens is {json_type(entries)}, expected a list", hint=_REDOWNLOAD)
    added: dict[int, dict[str, Any]] = {}
    for n, entry in enumerate(entries):
        field = f"{where}: added_tokens[{n}]"
        if not isinstance(entry, dict):
            raise CheckpointError(f"{field} is {json_type(entry)}, expected an object", hint=_REDOWNLOAD)
        _check_id(entry.get("id"), f"{field}.id")
        if not isinstance(entry.get("content"), str):
            raise CheckpointError(
                f"{field}.content is {json_type(entry.get('content'))}, expected the token's text", hint=_REDOWNLOAD
            )
        added[entry["id"]] = entry
    return added


def _check_id(value: object, field: str) -> None:
    if not (type(value) is int and 0 <= value <= _MAX_TOKEN_ID):
        shown = json.dumps(value)[:40]
        raise CheckpointError(f"{field} is {shown}, expected a token id from 0 to {_MAX_TOKEN_ID}", hint=_REDOWNLOAD)


def read_chat_template(checkpoint: Checkpoint) -> str | None:
    """The model's chat template (its default one when it has several), or None."""
    name = checkpoint.ref.text
    jinja = checkpoint.file_path(CHAT_TEMPLATE_JINJA)
    if jinja is not None:
        return read_text(jinja, f"model {name!r}: {jinja}")
    for filename in (CHAT_TEMPLATE_JSON, TOKENIZER_CONFIG):
        found = _read_settings(checkpoint, filename)
        if found is not None and (template := _default_template(found[1].get("chat_template"), found[0])):
            return template
    return None


def check_tokenizer_config(checkpoint: Checkpoint) -> None:
    """tokenizer_config.json, when the model has one: the merge rewrites it (chat template, added
    tokens), so it must be an object whose added_tokens_decoder maps token ids to objects."""
    found = _read_settings(checkpoint, TOKENIZER_CONFIG)
    if found is None:
        return
    where, settings = found
    _default_template(settings.get("chat_template"), where)
    decoder = settings.get("added_tokens_decoder")
    if decoder is None:
        return
    if not isinstance(decoder, dict):
        raise CheckpointError(
            f"{where}: added_tokens_decoder is {json_type(decoder)}, expected an object", hint=_REDOWNLOAD
        )
    for key, entry in decoder.items():
        if not (key.isascii() and key.isdigit() and len(key) <= 10 and isinstance(entry, dict)):
            raise CheckpointError(
                f"{where}: added_tokens_decoder[{key!r}] is {json_type(entry)}, "
                'expected a token id ("32000") mapped to an object',
                hint=_REDOWNLOAD,
            )


def _read_settings(checkpoint: Checkpoint, filename: str) -> tuple[str, dict[str, Any]] | None:
    """(where, content) of a JSON object file of the model, or None when it has no such file."""
    path = checkpoint.file_path(filename)
    if path is None:
        return None
    where = f"model {checkpoint.ref.text!r}: {path}"
    data = read_json(path, where)
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: holds {json_type(data)}, expected an object", hint=_REDOWNLOAD)
    return where, data


def _default_template(template: object, where: str) -> str | None:
    """chat_template is a string, or a list of {"name": ..., "template": ...} (the one named default)."""
    if template is None or isinstance(template, str):
        return template
    named = template if isinstance(template, list) else [None]
    if not all(isinstance(t, dict) and _is_text(t.get("name")) and _is_text(t.get("template")) for t in named):
        raise CheckpointError(
            f"{where}: chat_template is {json_type(template)} of other things, "
            'expected a string or a list of {"name": ..., "template": ...}',
            hint=_REDOWNLOAD,
        )
    return next((t["template"] for t in named if t["name"] == "default"), None)


def _is_text(value: object) -> bool:
    return isinstance(value, str)
