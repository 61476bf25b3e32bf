"""The output folder's files besides the shards: config.json, the shard index, tokenizer and
generation files (edited for a merged vocabulary), copied donor files, the card and the recipe.
Written by the driver once every shard is complete."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mergesmith.checkpoints.names import CONFIG, GENERATION_FILES, LEGACY_TOKENIZER_FILES, SAFETENSORS_INDEX
from mergesmith.checkpoints.tokenizer import CHAT_TEMPLATE_JINJA, CHAT_TEMPLATE_JSON, TOKENIZER_CONFIG, TOKENIZER_JSON
from mergesmith.errors import OutputError
from mergesmith.output.shards import ShardLayout, writing
from mergesmith.plan import Plan
from mergesmith.vocabulary import Vocabulary


def write_output_files(folder: Path, plan: Plan, layout: ShardLayout, copied: dict[str, Path], card: str) -> None:
    """config.json, the index (when sharded), copied donor files, the card and the recipe."""
    _write_text(folder / CONFIG, json.dumps(plan.config, indent=2, sort_keys=True) + "\n")
    if len(layout.filenames) > 1:
        index = {
            "metadata": {"total_size": sum(e.nbytes for e in plan.entries)},
            "weight_map": {name: layout.filenames[slot.shard] for name, slot in sorted(layout.slots.items())},
        }
        _write_text(folder / SAFETENSORS_INDEX, json.dumps(index, indent=2) + "\n")
    written = _tokenizer_files(plan, copied)
    for filename, text in written.items():
        if text is not None:
            _write_text(folder / filename, text)
    for filename, source in copied.items():
        if filename not in written:
            with writing(folder / filename):
                (folder / filename).unlink(missing_ok=True)  # see _write_text
                shutil.copyfile(source, folder / filename)
    _write_text(folder / "README.md", card)
    _write_text(folder / "mergesmith_config.yml", plan.recipe_text)


def _write_text(path: Path, text: str) -> None:
    """A new file `path` (whatever a resumed folder held at that name is replaced, links not followed)."""
    with writing(path):
        path.unlink(missing_ok=True)
        path.write_text(text, encoding="utf-8")


def _tokenizer_files(plan: Plan, copied: dict[str, Path]) -> dict[str, str | None]:
    """Tokenizer and generation files that are written rather than copied (None: left out)."""
    written: dict[str, str | None] = {}
    vocabulary = plan.vocabulary
    if plan.generation_config is not None:
        written[GENERATION_FILES[0]] = _json(plan.generation_config)
    edited = vocabulary is not None and bool(vocabulary.dropped or vocabulary.appended)
    config_path = copied.get(TOKENIZER_CONFIG)
    tokenizer_config = _read_json(config_path) if config_path is not None else None
    if edited and TOKENIZER_JSON in copied:
        assert vocabulary is not None
        written[TOKENIZER_JSON] = _json(_edit_tokenizer_json(_read_json(copied[TOKENIZER_JSON]), vocabulary))
        if tokenizer_config is not None and "added_tokens_decoder" in tokenizer_config:
            dropped = set(vocabulary.dropped)
            decoder = {k: v for k, v in tokenizer_config["added_tokens_decoder"].items() if int(k) not in dropped}
            decoder.update({str(e["id"]): {k: v for k, v in e.items() if k != "id"} for e in vocabulary.appended})
            tokenizer_config["added_tokens_decoder"] = dict(sorted(decoder.items(), key=lambda kv: int(kv[0])))
        # the slow tokenizer's files describe the old vocabulary: transformers would prefer them
        written.update({name: None for name in LEGACY_TOKENIZER_FILES if name in copied})
    if plan.chat_template is not None:
        written[CHAT_TEMPLATE_JINJA] = plan.chat_template
        if tokenizer_config is not None:
            tokenizer_config.pop("chat_template", None)  # the .jinja file is the one place for it
        if CHAT_TEMPLATE_JSON in copied:
            written[CHAT_TEMPLATE_JSON] = None
    if tokenizer_config is not None and (edited or plan.chat_template is not None):
        written[TOKENIZER_CONFIG] = _json(tokenizer_config)
    return written


def _edit_tokenizer_json(data: dict, vocabulary: Vocabulary) -> dict:
    dropped = set(vocabulary.dropped)
    if dropped:
        model = data["model"]
        if isinstance(model["vocab"], dict):
            gone = {token for token, i in model["vocab"].items() if i in dropped}
            model["vocab"] = {token: i for token, i in model["vocab"].items() if i not in dropped}
        else:
            gone = {entry[0] for i, entry in enumerate(model["vocab"]) if i in dropped}
            model["vocab"] = [entry for i, entry in enumerate(model["vocab"]) if i not in dropped]
        if isinstance(model.get("merges"), list):
            model["merges"] = [m for m in model["merges"] if not gone & set(m.split(" ") if isinstance(m, str) else m)]
        data["added_tokens"] = [e for e in data.get("added_tokens") or [] if e["id"] not in dropped]
    data["added_tokens"] = [*(data.get("added_tokens") or []), *vocabulary.appended]
    return data


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise OutputError(f"{path}: cannot read it to write the merged tokenizer ({err})") from None


def _json(data: object) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
