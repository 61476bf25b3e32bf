"""What the output folder says about itself, planned from the donor model and the plan: config.json
(layer count, per-layer lists, tie flag, dtype, vocabulary size, token ids), generation settings,
where the tokenizer files come from, and the chat template."""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any

from mergesmith.checkpoints import Checkpoint
from mergesmith.checkpoints.config_fields import check_generation_config
from mergesmith.checkpoints.layer_config import LayerConfigError, remap_layer_config
from mergesmith.checkpoints.names import (
    DONOR_FILES,
    GENERATION_FILES,
    TOKEN_ID_KEYS,
    config_parts,
)
from mergesmith.checkpoints.safe_json import read_json
from mergesmith.checkpoints.structure import Module
from mergesmith.checkpoints.tokenizer import Tokenizer, check_tokenizer_config, read_chat_template
from mergesmith.dtypes import config_name
from mergesmith.errors import PlanError
from mergesmith.templates import chat_template_text
from mergesmith.vocabulary import Vocabulary

log = logging.getLogger(__name__)


def output_config(
    donor: Checkpoint,
    writes_tied_target: bool,
    layer_sources: Mapping[str, list[int]],
    dtype: str | None,
    *,
    quantized: bool = False,
) -> dict[str, Any]:
    """The donor's config with each module's layer count and per-layer settings, the tie flag and dtype.

    `layer_sources`: per module, the donor-numbered source layer of each output layer.
    `writes_tied_target`: the output holds a tensor that the architecture ties to the input
    embeddings (checkpoints/ties.py), such as lm_head.weight or lm_head.decoder.weight.
    `quantized`: the output keeps an FP8 donor's quantization_config (out_dtype float8_e4m3fn);
    otherwise its weights are written dequantized, and the output has none."""
    config = copy.deepcopy(donor.config)
    if donor.fp8 is not None and not quantized:
        del config["quantization_config"]
    for module in donor.structure.modules:
        sources = layer_sources.get(module.name)
        if sources is None or module.stack is None or sources == list(range(module.count)):
            continue
        if (
            "." not in module.name
        ):  # a role's second stack (Mllama's global_transformer) shares its part's lists with the first
            _remap_layer_settings(config, module, sources, donor.ref.text)
        for path, key in module.count_keys:
            _part(config, path)[key] = len(sources)
    for part in config_parts(config):
        if "tie_word_embeddings" in part or part is config:
            # Never claim a tie that the tensors contradict: a written tied tensor means untied (a
            # tie would drop it); none written means tied (else transformers initialises it at random).
            part["tie_word_embeddings"] = not writes_tied_target
    if dtype:
        for key in [k for k in ("dtype", "torch_dtype") if k in config] or ["torch_dtype"]:
            config[key] = config_name(dtype)
    return config


def _remap_layer_settings(config: dict[str, Any], module: Module, sources: list[int], model: str) -> None:
    """The per-layer settings of the module's config part (its first: text_config over the top
    level), rewritten to describe the output's layers (checkpoints/layer_config.py)."""
    assert module.stack is not None
    path = module.config_paths[0]
    part = _part(config, path)
    where = ".".join(path)
    try:
        remapped = remap_layer_config(part, sources, module.count)
    except LayerConfigError as err:
        raise PlanError(
            f"the {module.name} of {model!r}: config.json {where + '.' if where else ''}{err}",
            hint="choose slices whose layers the config can describe, or merge the module with all its layers in order",
        ) from None
    for message in remapped.warnings:
        log.warning("the %s of %r: %s", module.name, model, message)
    for message in remapped.rewrites:
        log.info("the %s of %r: %s", module.name, model, message)
    part.clear()
    part.update(remapped.config)


def _part(config: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    part = config
    for key in path:
        part = part[key]
    return part


def copied_files(
    donor: str, vocabulary: Vocabulary | None, checkpoints: Mapping[str, Checkpoint]
) -> tuple[tuple[str, str], ...]:
    """Tokenizer files come from the output vocabulary's source model (the donor without one);
    generation settings from the donor. An edited tokenizer is written, not copied (write.py)."""
    tokenizer_model = vocabulary.source if vocabulary is not None else donor
    check_tokenizer_config(checkpoints[tokenizer_model])  # the merge may rewrite it
    copied = []
    for name in DONOR_FILES:
        owner = donor if name in GENERATION_FILES else tokenizer_model
        if checkpoints[owner].file_path(name) is not None:
            copied.append((owner, name))
    return tuple(copied)


def token_id_remapper(donor: Tokenizer, vocabulary: Vocabulary):
    """Config token ids (eos_token_id, ...) refer to the donor's tokenizer: map them by token."""
    by_id = {i: token for token, i in donor.vocab.items()}
    ids = vocabulary.ids()

    def remap(value: Any) -> Any:
        if isinstance(value, list):  # eos lists: keep the tokens the output still has
            return [new for v in value if (new := remap(v)) is not None]
        if not isinstance(value, int) or value not in by_id:
            return value
        if by_id[value] not in ids:
            log.warning("token %r (id %d) is not in the merged vocabulary; its setting is dropped", by_id[value], value)
            return None
        return ids[by_id[value]]

    return remap


def set_vocabulary_size(config: dict[str, Any], vocabulary: Vocabulary, remap) -> None:
    for part in config_parts(config):
        if "vocab_size" in part or part is config:
            part["vocab_size"] = vocabulary.size
        _remap_token_ids(part, remap)


def generation_config(donor: Checkpoint, remap) -> dict[str, Any] | None:
    path = donor.file_path(GENERATION_FILES[0])
    if path is None:
        return None
    where = f"model {donor.ref.text!r}: {path}"
    settings = check_generation_config(read_json(path, where), path, donor.ref.text)
    _remap_token_ids(settings, remap)
    return settings


def _remap_token_ids(settings: dict[str, Any], remap) -> None:
    for key in TOKEN_ID_KEYS:
        if settings.get(key) is not None:
            settings[key] = remap(settings[key])


def chat_template(choice: str | None, models: tuple[str, ...], checkpoints: Mapping[str, Checkpoint]) -> str | None:
    if choice != "auto":
        return chat_template_text(choice) if choice is not None else None
    # mergekit: the template most of the inputs carry (the first seen among equals); none: keep the donor's
    templates = [t.strip() for m in models if (t := read_chat_template(checkpoints[m]))]
    return Counter(templates).most_common(1)[0][0] if templates else None
