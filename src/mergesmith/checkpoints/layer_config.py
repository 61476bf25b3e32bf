"""A config's per-layer settings, kept in step with a passthrough's layer order.

Output layer i of a passthrough is a copy of source layer layer_sources[i]. transformers 5.24 reads
what each layer is from config.json in several shapes: a list with one entry per layer
(`layer_types`), a list of layer indices (`moe_layers`), an encoded pattern (GPT-Neo's
`attention_types`), or a rule over the layer index (Jamba's `attn_layer_period`, in layer_rules.py).
KNOWN_KEYS says which key has which shape; remap_layer_config rewrites each so that the output's
config describes the output's layers, and refuses when no rewrite can. Pure functions on plain dicts:
no torch, no transformers.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from mergesmith.checkpoints.layer_rules import RULES, Rule, rule_settings
from mergesmith.checkpoints.layer_shapes import REMAP, LayerConfigError, checked_sources, describe, is_index

__all__ = [
    "KNOWN_KEYS",
    "KnownKey",
    "LayerConfigError",
    "RemappedConfig",
    "layer_kinds",
    "lists_layers",
    "remap_layer_config",
]

Kind = Literal[
    "per_layer",  # a list with one entry per layer: output[i] = source[layer_sources[i]]
    "per_layer_chars",  # a string with one character per layer, remapped the same way
    "indices",  # layer indices: the output layers whose source is listed, ascending
    "indices_from_1",  # the same, counted from 1
    "pointers",  # one entry per layer naming an earlier layer whose cache it reuses
    "taps",  # layers whose outputs feed another module: the count and order must survive
    "layer_map",  # a dict keyed by layer index
    "repeated_unit",  # GPT-Neo: [[unit, times], ...] expands to one entry per layer
    "cycled_unit",  # RecurrentGemma: the unit repeats until the layers run out
    "unrelated",  # names a layer-like thing that is not this stack's layers: left alone
    "unsupported",  # depends on the layers in a way mergesmith cannot rewrite
]


@dataclass(frozen=True)
class KnownKey:
    kind: Kind
    where: str  # the transformers 5.24 file the row was read from, and how it is used


# A dotted key is read inside a nested dict. Each value is remapped only if it has its kind's type: a
# scalar intermediate_size means the same size for every layer.
KNOWN_KEYS: dict[str, KnownKey] = {
    "layer_types": KnownKey("per_layer", "configuration_utils.py validate_layer_type: one entry per layer"),
    "mlp_layer_types": KnownKey("per_layer", "configuration_utils.py validate_layer_type; e.g. kimi_linear"),
    "layers_block_type": KnownKey("per_layer", "nemotron_h, zamba, zamba2 configuration (a property in jamba, bamba)"),
    "hybrid_override_pattern": KnownKey("per_layer_chars", "nemotron_h/configuration_nemotron_h.py _pattern_to_list"),
    "no_rope_layers": KnownKey("per_layer", "llama4, smollm3, mistral_large4: config.no_rope_layers[layer_idx]"),
    "attention_layers": KnownKey("per_layer", "gpt_neo/configuration_gpt_neo.py: expanded from attention_types"),
    "attn_layers": KnownKey("per_layer", "reformer/configuration_reformer.py: num_hidden_layers = len(attn_layers)"),
    "intermediate_size": KnownKey("per_layer", "gemma3n/configuration_gemma3n.py: an int or one per layer"),
    "activation_sparsity_pattern": KnownKey("per_layer", "gemma3n/modeling_gemma3n.py: [layer_idx]"),
    "layer_rope_theta": KnownKey("per_layer", "granite_swa/configuration_granite_swa.py: one theta per layer"),
    "num_attention_heads_per_layer": KnownKey("per_layer", "laguna/configuration_laguna.py"),
    "num_key_value_heads_per_layer": KnownKey("per_layer", "sapiens2/configuration_sapiens2.py"),
    "indexer_types": KnownKey("per_layer", "glm_moe_dsa/modeling_glm_moe_dsa.py: config.indexer_types[layer_idx]"),
    # MiniMax-Text-01's config.json: remote code reads it; transformers' minimax uses layer_types
    "attn_type_list": KnownKey("per_layer", "minimax (hub config.json; not read by transformers 5.24)"),
    "moe_layers": KnownKey("indices", "llama4/modeling_llama4.py: is_moe_layer = layer_idx in config.moe_layers"),
    "cross_attention_layers": KnownKey("indices", "mllama/modeling_mllama.py: layer_idx in cross_attention_layers"),
    "attn_layer_indices": KnownKey("indices", "bamba/configuration_bamba.py layers_block_type"),
    "full_attn_idxs": KnownKey("indices", "lfm2/configuration_lfm2.py: layer_types from full_attn_idxs"),
    "mlp_only_layers": KnownKey("indices", "qwen2_moe/modeling_qwen2_moe.py: dense if layer_idx in mlp_only_layers"),
    "hybrid_layer_ids": KnownKey("indices", "zamba2/configuration_zamba2.py: the hybrid layers of layers_block_type"),
    "local_layer_ids": KnownKey("indices", "inkling/configuration_inkling.py: sliding layers"),
    "fullatt_block_indexes": KnownKey("indices", "qwen2_5_vl/modeling_qwen2_5_vl.py vision blocks with full attention"),
    "global_attn_indexes": KnownKey("indices", "sam/configuration_sam.py vision layers with global attention"),
    "window_block_indices": KnownKey("indices", "vitdet/configuration_vitdet.py blocks with window attention"),
    "residual_block_indices": KnownKey("indices", "vitdet/configuration_vitdet.py blocks with a residual block"),
    "rope_scaling_layers": KnownKey("indices", "molmo2/configuration_molmo2.py layers with scaled RoPE"),
    "ple_layer_ids": KnownKey("indices_from_1", "qwen4_exp/configuration_qwen4_exp.py: one-indexed"),
    "linear_attn_config.kda_layers": KnownKey("indices_from_1", "kimi_linear/configuration_kimi_linear.py"),
    "linear_attn_config.full_attn_layers": KnownKey("indices_from_1", "kimi_linear/configuration_kimi_linear.py"),
    "kv_source_layers": KnownKey("pointers", "mistral_large4/configuration_mistral_large4.py kv_sharing_modes"),
    "intermediate_layers_indices": KnownKey("taps", "mllama/modeling_mllama.py: hidden_states[i], concatenated"),
    "deepstack_visual_indexes": KnownKey("taps", "qwen3_vl/modeling_qwen3_vl.py: one merger per entry"),
    "extract_layers": KnownKey("taps", "clipseg/modeling_clipseg.py: one reduce per entry"),
    "intermediate_hidden_state_indices": KnownKey("taps", "seggpt/modeling_seggpt.py"),
    "per_layer_config": KnownKey("layer_map", "integrations/heterogeneity/configuration_utils.py: index -> overrides"),
    "attention_types": KnownKey("repeated_unit", "gpt_neo/configuration_gpt_neo.py expand_attention_types_params"),
    "block_types": KnownKey("cycled_unit", "recurrent_gemma/configuration_recurrent_gemma.py: (block_types * 100)[:n]"),
    # The multi-token-prediction layers after the stack: each list describes those, not the stack's layers
    "mtp_layer_types": KnownKey("unrelated", "configuration_utils.py get_mtp_config"),
    "mtp_mlp_layer_types": KnownKey("unrelated", "configuration_utils.py get_mtp_config"),
    "mtp_layers_block_type": KnownKey("unrelated", "nemotron_h/configuration_nemotron_h.py"),
    "mtp_hybrid_override_pattern": KnownKey("unrelated", "nemotron_h/configuration_nemotron_h.py"),
    "mtp_local_layer_ids": KnownKey("unrelated", "inkling/configuration_inkling.py"),
    "mtp_per_layer_config": KnownKey("unrelated", "configuration_utils.py get_mtp_config"),
    # Layers of another stack or model, or no layers at all
    "vision_feature_layer": KnownKey("unrelated", "llava/modeling_llava.py: a vision tower hidden state"),
    "target_layer_ids": KnownKey("unrelated", "muse_glimmer_assistant: layers of the target model"),
    "summary_idxs": KnownKey("unrelated", "radio/configuration_radio.py: class token indices"),
    "delay_pattern": KnownKey("unrelated", "dia/configuration_dia.py: per codebook"),
    "encode_proj_layers": KnownKey("unrelated", "rt_detr/configuration_rt_detr.py: feature levels"),
    "conv_layer_kernel_sizes": KnownKey("unrelated", "textnet/configuration_textnet.py: conv stages"),
    "conv_layer_strides": KnownKey("unrelated", "textnet/configuration_textnet.py: conv stages"),
    "layer_list_out_channels": KnownKey("unrelated", "pp_ocrv5_mobile_det: conv stages"),
    "stage_numb_of_layers": KnownKey("unrelated", "hgnet_v2/configuration_hgnet_v2.py: conv stages"),
    # Backbone outputs are indexed by stage name ("stem", "stage1", ...), one past the layer index
    "out_indices": KnownKey("unsupported", "utils/backbone_utils.py: indices into stage_names"),
    "_out_indices": KnownKey("unsupported", "utils/backbone_utils.py: indices into stage_names"),
    "out_features": KnownKey("unsupported", "utils/backbone_utils.py: stage names"),
    "_out_features": KnownKey("unsupported", "utils/backbone_utils.py: stage names"),
    "backbone_out_indices": KnownKey("unsupported", "dpt/configuration_dpt.py"),
    "spatial_target_layers": KnownKey("unsupported", "granite4_vision: language model layers fed by the projector"),
}

# An unknown list key is checked against the layers when its name looks layer-related.
LAYER_NAME_MARKERS = ("layer",)
LAYER_NAME_ENDINGS = ("idxs", "indices", "indexes", "_types", "pattern")


@dataclass(frozen=True)
class RemappedConfig:
    config: dict[str, Any]
    warnings: tuple[str, ...] = ()  # for the user to check: a guessed unknown key, a rule key that went stale
    rewrites: tuple[str, ...] = ()  # rule settings changed or lists written so that the config fits the output


def remap_layer_config(
    part: Mapping[str, Any], layer_sources: Sequence[int], source_count: int, *, model_type: str | None = None
) -> RemappedConfig:
    """A copy of `part` (one stack's settings: a config.json, its text_config or vision_config) whose
    per-layer settings describe output layers built from `layer_sources`. The layer count keys are
    the caller's. `model_type` defaults to part["model_type"] and selects the rules (layer_rules.py).
    Raises LayerConfigError when no rewrite fits, or when the source config disagrees with itself.

    >>> remap_layer_config({"layer_types": ["a", "b", "c"]}, [0, 2, 2], 3).config
    {'layer_types': ['a', 'c', 'c']}
    """
    sources = checked_sources(layer_sources, source_count)
    if sources == list(range(source_count)):
        return RemappedConfig(copy.deepcopy(dict(part)))
    out = copy.deepcopy(dict(part))
    for key, known in KNOWN_KEYS.items():
        value = _get(part, key)
        if value is not None:
            _set(out, key, REMAP[known.kind](key, value, sources, source_count))
    report = _Report([], [])
    model_type = model_type or part.get("model_type")
    _apply_rules(part, out, sources, source_count, model_type, report)
    _warn_of_rules_elsewhere(part, model_type, report)
    _remap_unknown_keys(part, out, sources, source_count, report)
    return RemappedConfig(out, tuple(report.warnings), tuple(report.rewrites))


def lists_layers(part: Mapping[str, Any], count: int) -> bool:
    """Whether a per-layer setting of `part` has one entry per each of `count` layers: for a
    config that saves no count (Nemotron-H's is the length of layers_block_type), what says it."""
    for key, known in KNOWN_KEYS.items():
        value = _get(part, key)
        if known.kind in ("per_layer", "per_layer_chars") and isinstance(value, list | str) and len(value) == count:
            return True
    return False


def layer_kinds(part: Mapping[str, Any], count: int, *, model_type: str | None = None) -> tuple[str, ...] | None:
    """What `part` says about each of its `count` layers, as "key=value, ..." per layer; None when it
    says nothing per layer (a Llama). Two layers built alike have equal kinds.

    >>> layer_kinds({"layer_types": ["sliding_attention", "full_attention"], "moe_layers": [1]}, 2)
    ('layer_types=sliding_attention, moe_layers=no', 'layer_types=full_attention, moe_layers=yes')
    """
    columns: list[list[str]] = []
    for key, known in KNOWN_KEYS.items():
        value = _get(part, key)
        described = describe(key, value, count, known.kind) if value is not None else None
        if described is not None:
            columns.append([f"{key}={v}" for v in described])
    model_type = model_type or part.get("model_type")
    for rule in RULES:
        if model_type in rule.model_types and (rule.list_key is None or rule.list_key not in part):
            kinds = _kinds(rule, rule_settings(rule, part, model_type), count)
            if kinds is not None:
                columns.append([f"{rule.list_key or rule.keys[0]}={k}" for k in kinds])
    return tuple(", ".join(column[i] for column in columns) for i in range(count)) if columns else None


@dataclass
class _Report:
    warnings: list[str]
    rewrites: list[str]


def _get(config: Mapping[str, Any], path: str) -> Any:
    for name in path.split("."):
        if not isinstance(config, Mapping):
            return None
        config = config.get(name)  # type: ignore[assignment]
    return config


def _set(config: dict[str, Any], path: str, value: Any) -> None:
    *parents, name = path.split(".")
    for parent in parents:
        config = config[parent]
    config[name] = value


# --- rules (layer_rules.py) ---------------------------------------------------------------------------
def _kinds(rule: Rule, settings: Mapping[str, Any], count: int) -> list[str] | None:
    try:
        return rule.kinds(settings, count)
    except (TypeError, ValueError, KeyError, ZeroDivisionError):  # settings transformers would reject too
        return None


def _apply_rules(
    part: Mapping[str, Any],
    out: dict[str, Any],
    sources: list[int],
    count: int,
    model_type: str | None,
    report: _Report,
) -> None:
    """Check each rule of the model type on the output, rewriting or refusing where it breaks. A list
    a rule derives is added to the views of source and output, where a later rule reads it."""
    source_view, output_view = dict(part), dict(out)
    for rule in RULES:
        if model_type not in rule.model_types:
            continue
        is_governed = rule.list_key is not None and part.get(rule.list_key) is not None
        if is_governed and not (rule.read_elsewhere and any(k in part for k in rule.keys)):
            continue  # the list decides, and no tool is known to read the rule's settings instead
        source_settings = rule_settings(rule, source_view, model_type)
        source_kinds = _kinds(rule, source_settings, count)
        if source_kinds is None:
            report.warnings.append(
                f"{_name(rule, model_type)}: {_describe(rule, source_settings)} could not be "
                "evaluated for the source layers, so the output's were not checked against it"
            )
            continue
        expected = [source_kinds[s] for s in sources]
        actual = _kinds(rule, rule_settings(rule, output_view, model_type), len(sources))
        if rule.list_key is not None and not is_governed:
            source_view.update(rule.rewrites[-1](source_settings, source_kinds) or {})
            output_view.update(rule.rewrites[-1](source_settings, actual or expected) or {})
        if actual != expected:
            mismatch = _mismatch(rule, source_settings, sources, expected, actual)
            fix = _settle(rule, output_view, expected, model_type, is_governed, mismatch, source_settings, report)
            out.update(fix)
            output_view.update(fix)


def _settle(
    rule: Rule,
    output_view: Mapping[str, Any],
    expected: list[str],
    model_type: str | None,
    is_governed: bool,
    mismatch: str,
    source_settings: Mapping[str, Any],
    report: _Report,
) -> dict[str, Any]:
    """The settings that make the rule describe the output; a warning when a saved list governs and none
    fits (it decides in transformers 5.24), else LayerConfigError."""
    fix = _fitting_rewrite(rule, output_view, expected, model_type, keys_only=is_governed)
    if fix is not None:
        report.rewrites.append(f"{', '.join(f'{k}: {v}' for k, v in fix.items())} ({mismatch})")
        return fix
    if not is_governed:
        raise LayerConfigError(_name(rule, model_type), f"{mismatch}; {rule.why}", rule.hint.format(**source_settings))
    report.warnings.append(
        f"{_name(rule, model_type)}: {mismatch}. transformers 5.24 reads {rule.list_key} instead, but "
        f"{rule.read_elsewhere} build the output wrongly: load it with a transformers version that reads layer_types"
    )
    return {}


def _fitting_rewrite(
    rule: Rule, output_view: Mapping[str, Any], expected: list[str], model_type: str | None, *, keys_only: bool
) -> dict[str, Any] | None:
    settings = rule_settings(rule, output_view, model_type)
    for rewrite in rule.rewrites:
        fix = rewrite(settings, expected)
        if fix is None or (keys_only and rule.list_key in fix):
            continue
        # transformers reads the list before the rule, so a written list needs no check
        if rule.list_key in fix or _kinds(rule, {**settings, **fix}, len(expected)) == expected:
            return fix
    return None


def _name(rule: Rule, model_type: str | None) -> str:
    return rule.keys[0] if rule.keys else rule.list_key or str(model_type)


def _describe(rule: Rule, settings: Mapping[str, Any]) -> str:
    if not rule.keys:
        return f"the built-in {rule.list_key} pattern"
    return " / ".join(f"{k} {settings.get(k)!r}" for k in rule.keys)


def _mismatch(
    rule: Rule, settings: Mapping[str, Any], sources: list[int], expected: list[str], actual: list[str] | None
) -> str:
    """Why the unchanged rule does not describe the output, at the first output layer it gets wrong."""
    i = next((i for i, k in enumerate(expected) if actual is None or actual[i] != k), 0)
    made = "is rejected for the output layers" if actual is None else f"makes layer {i} {_a(actual[i])} layer"
    return (
        f"output layer {i} comes from source layer {sources[i]}, {_a(expected[i])} layer, but "
        f"{_describe(rule, settings)} {made}"
    )


def _a(kind: str) -> str:
    return f"an {kind}" if kind[:1] in "aeiou" else f"a {kind}"


def _warn_of_rules_elsewhere(part: Mapping[str, Any], model_type: str | None, report: _Report) -> None:
    """A rule's setting in a model type the rule is not known for (a fork, a new model): maybe in force."""
    for key in sorted({rule.keys[0] for rule in RULES if rule.keys and rule.keys[0] in part}):
        rules = [rule for rule in RULES if key in rule.keys]
        lists = {r.list_key for r in rules} | {r.decided_elsewhere_by for r in rules}
        if any(model_type in rule.model_types for rule in rules) or any(k in part for k in lists - {None}):
            continue
        known = sorted({t for rule in rules for t in rule.model_types})
        report.warnings.append(
            f"{key}: decides layer kinds in {', '.join(known)}, but mergesmith does not know how model type "
            f"{model_type!r} reads it, so the output's layers were not checked against it"
        )


# --- keys mergesmith does not know ---------------------------------------------------------------------
_RULE_KEYS = frozenset(k for rule in RULES for k in rule.keys)


def _remap_unknown_keys(
    part: Mapping[str, Any], out: dict[str, Any], sources: list[int], count: int, report: _Report
) -> None:
    for key, value in part.items():
        if (
            key in KNOWN_KEYS
            or key in _RULE_KEYS
            or not isinstance(value, list)
            or not value
            or not _is_layer_name(key)
        ):
            continue
        per_layer = len(value) == count and all(v is None or isinstance(v, str | int | float) for v in value)
        indices = all(is_index(v) for v in value) and value == sorted(set(value)) and 0 <= value[0] <= value[-1] < count
        if per_layer and not indices:
            out[key] = [value[s] for s in sources]
        elif indices and not per_layer:
            out[key] = [i for i, s in enumerate(sources) if s in set(value)]
        else:
            both = "both one entry per layer and a list of layer indices" if per_layer else "neither"
            raise LayerConfigError(
                key,
                f"mergesmith cannot tell how this key relates to the {count} layers: {value!r:.80} reads as {both}",
                hint="if the model's code reads it per layer, keep the layers in place (no passthrough of this stack);"
                " if it has nothing to do with layers, report it so mergesmith can learn the key",
            )
        report.warnings.append(
            f"{key}: unknown to mergesmith; read as {'one entry per layer' if per_layer else 'layer indices'} and "
            f"rewritten to {out[key]!r:.80}. Check it against the model's code"
        )


def _is_layer_name(key: str) -> bool:
    return any(m in key for m in LAYER_NAME_MARKERS) or key.endswith(LAYER_NAME_ENDINGS)
