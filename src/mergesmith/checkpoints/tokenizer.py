"""A model's tokenizer as data: its vocabulary, added tokens and chat template, read from the JSON
files transformers writes (no transformers or torch import: planning stays fast)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergesmith.checkpoints.checkpoint import Checkpoint
from mergesmith.errors import CheckpointError

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
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        vocab = _model_vocab(data["model"])
        added = {int(entry["id"]): entry for entry in data.get("added_tokens") or []}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"model {name!r}: cannot read {path} ({err})") from None
    for i, entry in sorted(added.items()):
        vocab[entry["content"]] = i
    rows = checkpoint.config.get("vocab_size")
    if not isinstance(rows, int):
        rows = max(vocab.values(), default=-1) + 1
    return Tokenizer(name, path, vocab, added, rows)


def _model_vocab(model: dict[str, Any]) -> dict[str, int]:
    vocab = model["vocab"]
    if isinstance(vocab, dict):  # BPE, WordPiece, WordLevel
        return {str(token): int(i) for token, i in vocab.items()}
    return {str(entry[0]): i for i, entry in enumerate(vocab)}  # Unigram: [[token, score], ...]


def read_chat_template(checkpoint: Checkpoint) -> str | None:
    """The model's chat template (its default one when it has several), or None."""
    jinja = checkpoint.file_path(CHAT_TEMPLATE_JINJA)
    if jinja is not None:
        return jinja.read_text(encoding="utf-8")
    for filename in (CHAT_TEMPLATE_JSON, TOKENIZER_CONFIG):
        path = checkpoint.file_path(filename)
        if path is None:
            continue
        try:
            template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        if isinstance(template, str) and template:
            return template
    return None
