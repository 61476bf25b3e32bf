"""Rules by which an architecture derives its layers' kinds from a few config settings, as data.

Jamba puts attention at every layer i with i % attn_layer_period == attn_layer_offset; DeepSeek-V3
makes layers MoE from first_k_dense_replace on; Gemma2 alternates sliding and full attention when
config.json has no layer_types. A passthrough that moves layers can break such a rule: output layer i
is then built as the rule says for index i, not like its source layer. layer_config.py evaluates each
Rule on the source and on the output; when they disagree it tries the rule's rewrites (settings that
describe the output exactly, or the per-layer list transformers reads instead) and refuses when none
fits. Every rule was read from transformers 5.24; `where` names the file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Settings = Mapping[str, Any]  # a config part with the rule's defaults filled in (rule_settings)
Kinds = list[str] | None  # one kind per layer; None: transformers rejects the settings for this count
Rewrite = Callable[[Settings, list[str]], dict[str, Any] | None]


@dataclass(frozen=True)
class Rule:
    keys: tuple[str, ...]  # the settings it reads; keys[0] names it in messages (the model type when none)
    model_types: frozenset[str]
    kinds: Callable[[Settings, int], Kinds]
    rewrites: tuple[Rewrite, ...]  # tried in order; a result is used only if kinds() then gives the output's
    list_key: str | None  # a per-layer list transformers reads instead of the rule when config.json has it
    where: str  # the transformers 5.24 file the rule was read from
    defaults: Mapping[str, Any] = field(default_factory=dict)  # transformers' value when config.json omits it
    model_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # where a model's differs
    why: str = ""  # why nothing describes the output, when no rewrite fits (rules without list_key)
    hint: str = ""  # str.format()ed with the source's settings
    # who reads the settings even when the list is there; a setting nobody reads can go stale unnoticed
    read_elsewhere: str = ""
    # a saved per-layer list that decides the same thing in the model types outside the rule
    decided_elsewhere_by: str | None = None


def rule_settings(rule: Rule, part: Mapping[str, Any], model_type: str | None) -> dict[str, Any]:
    """`part` with the defaults transformers uses for the settings it leaves out (a saved None stays None)."""
    return {**rule.defaults, **rule.model_defaults.get(model_type or "", {}), **part}


def _every(n: int, period: int, offset: int, hit: str, miss: str) -> list[str]:
    return [hit if i % period == offset else miss for i in range(n)]


def _leading(kinds: list[str], kind: str) -> int:
    return next((i for i, k in enumerate(kinds) if k != kind), len(kinds))


def _indices(kinds: list[str], kind: str) -> list[int]:
    return [i for i, k in enumerate(kinds) if k == kind]


def _period_search(period_key: str, offset_key: str, hit: str) -> Rewrite:
    """A period and offset that put `hit` exactly where `expected` has it, trying the old period first."""

    def rewrite(settings: Settings, expected: list[str]) -> dict[str, Any] | None:
        n, hits = len(expected), _indices(expected, hit)
        for period in [settings[period_key], *range(1, n + 2)]:
            # the first hit fixes the offset; with no hit, an offset past the last layer (needs period > n)
            offset = hits[0] % period if hits else n if period > n else None
            if offset is not None and _indices(_every(n, period, offset, hit, ""), hit) == hits:
                return {period_key: period, offset_key: offset}
        return None

    return rewrite


def _write(key: str, encode: Callable[[list[str]], Any] = list) -> Rewrite:
    return lambda settings, expected: {key: encode(expected)}


# --- Jamba: jamba/configuration_jamba.py, properties layers_block_type and layers_num_experts --------
JAMBA_ATTENTION = Rule(
    keys=("attn_layer_period", "attn_layer_offset"),
    model_types=frozenset({"jamba"}),
    kinds=lambda s, n: _every(n, s["attn_layer_period"], s["attn_layer_offset"], "attention", "mamba"),
    rewrites=(_period_search("attn_layer_period", "attn_layer_offset", "attention"),),
    list_key=None,
    where="jamba/configuration_jamba.py layers_block_type; modeling_jamba.py builds config.layers_block_type[i]",
    defaults={"attn_layer_period": 8, "attn_layer_offset": 4},
    why="JambaConfig computes layers_block_type from these two settings and has no per-layer list to write instead",
    hint="keep each layer at its place in the {attn_layer_period}-layer cycle: start every slice at a multiple "
    "of {attn_layer_period} and make it a whole number of cycles long "
    "(layer_range [0, {attn_layer_period}], [{attn_layer_period}, ...])",
)
JAMBA_EXPERTS = Rule(
    keys=("expert_layer_period", "expert_layer_offset"),
    model_types=frozenset({"jamba"}),
    kinds=lambda s, n: _every(n, s["expert_layer_period"], s["expert_layer_offset"], "moe", "dense"),
    rewrites=(_period_search("expert_layer_period", "expert_layer_offset", "moe"),),
    list_key=None,
    where="jamba/configuration_jamba.py layers_num_experts; modeling_jamba.py uses experts where it is > 1",
    defaults={"expert_layer_period": 2, "expert_layer_offset": 1},
    why="JambaConfig computes layers_num_experts from these two settings and has no per-layer list to write instead",
    hint="keep each layer at its place in the {expert_layer_period}-layer cycle: start every slice at a multiple "
    "of {expert_layer_period} and make it a whole number of cycles long",
)


# --- MoE unless listed dense or off the sparse step ----------------------------------------------------
def _qwen_moe(s: Settings, n: int) -> Kinds:
    dense, step = set(s["mlp_only_layers"] or ()), s["decoder_sparse_step"]
    has_experts = (s["num_experts"] or 0) > 0
    return ["sparse" if i not in dense and has_experts and (i + 1) % step == 0 else "dense" for i in range(n)]


QWEN_MOE = Rule(
    keys=("decoder_sparse_step", "mlp_only_layers", "num_experts"),
    model_types=frozenset(
        {"qwen2_moe", "qwen3_moe", "qwen3_next", "qwen3_vl_moe_text", "qwen3_omni_moe_text", "flint"}
    ),
    kinds=_qwen_moe,
    # mlp_only_layers can name any set of dense layers, the more so once the step is 1
    rewrites=(
        lambda s, e: {"mlp_only_layers": _indices(e, "dense")},
        lambda s, e: {"decoder_sparse_step": 1, "mlp_only_layers": _indices(e, "dense")},
    ),
    list_key=None,
    where="qwen2_moe/modeling_qwen2_moe.py Qwen2MoeDecoderLayer: MoE unless layer_idx in mlp_only_layers or "
    "(layer_idx + 1) % decoder_sparse_step != 0; the same in qwen3_moe, qwen3_next, qwen3_vl_moe, flint and the "
    "qwen3_omni_moe thinker (its talker overwrites the choice: every talker layer is MoE)",
    defaults={"decoder_sparse_step": 1, "mlp_only_layers": [], "num_experts": 1},
    model_defaults={"flint": {"mlp_only_layers": [0, 1]}},
    decided_elsewhere_by="mlp_layer_types",
    # not met: with decoder_sparse_step 1, mlp_only_layers can name any set of dense layers
    why="no decoder_sparse_step / mlp_only_layers describes the output",
    hint="keep each layer at its place in the {decoder_sparse_step}-layer cycle",
)


# --- Dense layers first, MoE after ---------------------------------------------------------------------
def _first_k_dense(s: Settings, n: int) -> Kinds:
    k, freq = s["first_k_dense_replace"], s["moe_layer_freq"]
    if not isinstance(k, int) or not isinstance(freq, int) or freq < 1:
        return None
    # transformers reads only first_k_dense_replace; DeepSeek's own code and vLLM also test
    # layer_idx % moe_layer_freq == 0. Every released DeepSeek model has moe_layer_freq 1.
    return ["sparse" if i >= k and i % freq == 0 else "dense" for i in range(n)]


FIRST_K_DENSE = Rule(
    keys=("first_k_dense_replace", "moe_layer_freq"),
    model_types=frozenset({"deepseek_v2", "deepseek_v3", "glm4_moe", "glm4v_moe_text", "dots1", "mistral4"}),
    kinds=_first_k_dense,
    rewrites=(lambda s, e: {"first_k_dense_replace": _leading(e, "dense")},),
    list_key=None,
    where="deepseek_v3/modeling_deepseek_v3.py: MoE if layer_idx >= config.first_k_dense_replace; the same in "
    "deepseek_v2, glm4_moe, glm4v_moe, dots1, mistral4",
    defaults={"moe_layer_freq": 1},
    decided_elsewhere_by="mlp_layer_types",
    model_defaults={
        "deepseek_v2": {"first_k_dense_replace": 0},
        "deepseek_v3": {"first_k_dense_replace": 3},
        "glm4_moe": {"first_k_dense_replace": 1},
        "glm4v_moe_text": {"first_k_dense_replace": 1},
        "dots1": {"first_k_dense_replace": 0},
        "mistral4": {"first_k_dense_replace": 0},
    },
    why="the model has no per-layer list of MoE layers, and first_k_dense_replace can only say "
    "'the first k layers are dense, all later ones MoE'",
    hint="put the {first_k_dense_replace} dense layers first, each at most once, and only MoE layers after them",
)
LFM2_MOE = Rule(
    keys=("num_dense_layers",),
    model_types=frozenset({"lfm2_moe"}),
    kinds=lambda s, n: ["dense" if i < s["num_dense_layers"] else "sparse" for i in range(n)],
    rewrites=(lambda s, e: {"num_dense_layers": _leading(e, "dense")},),
    list_key=None,
    where="lfm2_moe/modeling_lfm2_moe.py Lfm2MoeDecoderLayer: dense MLP if layer_idx < config.num_dense_layers",
    defaults={"num_dense_layers": 2},
    decided_elsewhere_by="mlp_layer_types",
    why="Lfm2MoeConfig has no per-layer list of MoE layers, and num_dense_layers can only say "
    "'the first k layers are dense'",
    hint="put the {num_dense_layers} dense layers first, each at most once, and only MoE layers after them",
)


def _ernie(s: Settings, n: int) -> Kinds:
    start, end, interval = s["moe_layer_start_index"], s["moe_layer_end_index"], s["moe_layer_interval"]
    end = n - 1 if end == -1 else end  # the config turns -1 into num_hidden_layers - 1 and saves that
    return ["sparse" if (i + 1) % interval == 0 and start <= i <= end else "dense" for i in range(n)]


def _ernie_span(s: Settings, expected: list[str]) -> dict[str, Any]:
    sparse = _indices(expected, "sparse") or [len(expected)]
    return {"moe_layer_start_index": sparse[0], "moe_layer_end_index": sparse[-1]}


ERNIE_MOE = Rule(
    keys=("moe_layer_start_index", "moe_layer_end_index", "moe_layer_interval"),
    model_types=frozenset({"ernie4_5_moe"}),
    kinds=_ernie,
    rewrites=(_ernie_span, lambda s, e: {**_ernie_span(s, e), "moe_layer_interval": 1}),
    list_key=None,
    where="ernie4_5_moe/modeling_ernie4_5_moe.py Ernie4_5_MoeDecoderLayer; configuration_ernie4_5_moe.py saves "
    "moe_layer_end_index -1 as num_hidden_layers - 1",
    defaults={"moe_layer_start_index": 1, "moe_layer_end_index": -1, "moe_layer_interval": 1},
    decided_elsewhere_by="mlp_layer_types",
    why="Ernie4_5_MoeConfig has no per-layer list of MoE layers; its settings describe one run of layers "
    "with MoE every moe_layer_interval layers",
    hint="keep the dense layers before {moe_layer_start_index} first and take MoE layers only after them",
)


# --- KV sharing -----------------------------------------------------------------------------------------
def _kv_sharing(s: Settings, n: int) -> Kinds:
    shared, types = s["num_kv_shared_layers"], s.get("layer_types")
    if not isinstance(types, list) or len(types) != n or not 0 <= shared <= n:
        return None
    if shared == 0:  # nothing reuses a cache, so which layer stores one does not matter
        return ["own_kv"] * n
    if shared == n:  # gemma4's assistant models: every layer reuses the target model's caches
        return ["shares_kv"] * n
    first = n - shared
    if set(types[:first]) != set(types):
        return None  # transformers raises: a shared layer's type has no layer producing its cache
    # the last own layer of each type stores the KV states the shared layers of that type reuse
    producers = {first - 1 - types[:first][::-1].index(t) for t in set(types)}
    return ["shares_kv" if i >= first else "stores_kv" if i in producers else "own_kv" for i in range(n)]


KV_SHARING = Rule(
    keys=("num_kv_shared_layers",),
    model_types=frozenset({"gemma3n_text", "gemma4_text", "gemma4_unified_text"}),
    kinds=_kv_sharing,
    rewrites=(lambda s, e: {"num_kv_shared_layers": _leading(e[::-1], "shares_kv")},),
    list_key=None,
    where="gemma3n/configuration_gemma3n.py and gemma4/configuration_gemma4.py kv_sharing_modes; "
    "modeling_gemma3n.py is_kv_shared_layer (no k_proj/v_proj) and store_full_length_kv",
    defaults={"num_kv_shared_layers": 0},  # gemma4, gemma4_unified
    model_defaults={"gemma3n_text": {"num_kv_shared_layers": 15}},
    why="the config can only say 'the last k layers reuse the key/value states of the last earlier layer of "
    "their attention type'",
    hint="keep the last {num_kv_shared_layers} layers (they have no k_proj/v_proj) at the end, in order, right "
    "after the layers whose key/value states they reuse",
)


# --- Per-layer lists transformers derives when config.json leaves them out ------------------------------
LLAMA4_MOE = Rule(
    keys=("interleave_moe_layer_step",),
    model_types=frozenset({"llama4_text"}),
    kinds=lambda s, n: _every(n, s["interleave_moe_layer_step"], s["interleave_moe_layer_step"] - 1, "sparse", "dense"),
    rewrites=(_write("moe_layers", lambda e: _indices(e, "sparse")),),
    list_key="moe_layers",
    where="llama4/configuration_llama4.py: moe_layers defaults to range(step - 1, n, step); "
    "modeling_llama4.py is_moe_layer = layer_idx in config.moe_layers",
    defaults={"interleave_moe_layer_step": 1},
)
NOPE_INTERVAL = Rule(
    keys=("no_rope_layer_interval",),
    model_types=frozenset({"llama4_text", "smollm3"}),
    kinds=lambda s, n: ["rope" if (i + 1) % s["no_rope_layer_interval"] else "nope" for i in range(n)],
    rewrites=(_write("no_rope_layers", lambda e: [int(k == "rope") for k in e]),),
    list_key="no_rope_layers",
    where="llama4/configuration_llama4.py, smollm3/configuration_smollm3.py: no_rope_layers defaults to "
    "int((i + 1) % no_rope_layer_interval != 0); modeling reads config.no_rope_layers[layer_idx]",
    defaults={"no_rope_layer_interval": 4},
)
ZAMBA = Rule(
    keys=("attn_layer_period", "attn_layer_offset"),
    model_types=frozenset({"zamba"}),
    kinds=lambda s, n: (
        ["linear_attention", "linear_attention", "hybrid"]
        + _every(n - 3, s["attn_layer_period"], s["attn_layer_offset"], "hybrid", "linear_attention")
    )[:n],
    rewrites=(_write("layers_block_type"),),
    list_key="layers_block_type",
    where="zamba/configuration_zamba.py: layers_block_type defaults to mamba, mamba, hybrid, then the period",
    defaults={"attn_layer_period": 6, "attn_layer_offset": 4},
)

SLIDING, FULL, LINEAR = "sliding_attention", "full_attention", "linear_attention"


def _layer_types(
    model_types: set[str],
    where: str,
    kind: Callable[[Settings, int], str],
    keys: tuple[str, ...] = (),
    defaults: Mapping[str, Any] | None = None,
    *,
    model_defaults: Mapping[str, Mapping[str, Any]] | None = None,
    rewrite: Rewrite | None = None,
    read_elsewhere: str = "",
) -> Rule:
    """A layer_types default. transformers reads a saved layer_types first, so writing it always works;
    `rewrite` is tried before it, to keep the settings true for tools that read them (read_elsewhere)."""
    return Rule(
        keys,
        frozenset(model_types),
        lambda s, n: [kind(s, i) for i in range(n)],
        (*([rewrite] if rewrite else []), _write("layer_types")),
        "layer_types",
        where,
        defaults or {},
        model_defaults or {},
        read_elsewhere=read_elsewhere,
    )


def _full_every(key: str, other: str) -> Callable[[Settings, int], str]:
    return lambda s, i: FULL if (i + 1) % s[key] == 0 else other


def _full_every_rewrite(key: str, other: str) -> Rewrite:
    # full attention at layers p - 1, 2p - 1, ...: the first full layer fixes p
    return lambda s, expected: {key: _leading(expected, other) + 1}


def _qwen2(s: Settings, i: int) -> str:
    # Qwen2 sets sliding_window to None unless use_sliding_window
    return (
        SLIDING if s["use_sliding_window"] and s["sliding_window"] is not None and i >= s["max_window_layers"] else FULL
    )


def _qwen2_moe(s: Settings, i: int) -> str:
    return SLIDING if (i + 1) % 2 and i < s["max_window_layers"] and s["use_sliding_window"] else FULL


# transformers before layer_types (4.4x) read these settings in the modeling code, and so does code copied from it
OLDER_TRANSFORMERS = "transformers versions before layer_types, and modeling code copied from them,"
QWEN2_KEYS = ("max_window_layers", "use_sliding_window", "sliding_window")
LAYER_TYPE_PATTERNS = (
    _layer_types(
        {"gemma2", "gpt_oss"},
        "gemma2/configuration_gemma2.py, gpt_oss/configuration_gpt_oss.py",
        lambda s, i: SLIDING if (i + 1) % 2 else FULL,
    ),
    _layer_types(
        {"gemma3_text"},
        "gemma3/configuration_gemma3.py: kwargs sliding_window_pattern",
        _full_every("sliding_window_pattern", SLIDING),
        ("sliding_window_pattern",),
        {"sliding_window_pattern": 6},
        rewrite=_full_every_rewrite("sliding_window_pattern", SLIDING),
        read_elsewhere=OLDER_TRANSFORMERS,
    ),
    _layer_types(
        {"cohere2"},
        "cohere2/configuration_cohere2.py: kwargs sliding_window_pattern",
        _full_every("sliding_window_pattern", SLIDING),
        ("sliding_window_pattern",),
        {"sliding_window_pattern": 4},
        rewrite=_full_every_rewrite("sliding_window_pattern", SLIDING),
        read_elsewhere=OLDER_TRANSFORMERS,
    ),
    _layer_types(
        {"gemma3n_text"}, "gemma3n/configuration_gemma3n.py", lambda s, i: FULL if (i + 1) % 5 == 0 else SLIDING
    ),
    _layer_types(
        {"gemma4_text", "gemma4_unified_text"},
        "gemma4/configuration_gemma4.py, gemma4_unified/configuration_gemma4_unified.py",
        lambda s, i: FULL if (i + 1) % 6 == 0 else SLIDING,
    ),
    _layer_types({"olmo3"}, "olmo3/configuration_olmo3.py", lambda s, i: FULL if (i + 1) % 4 == 0 else SLIDING),
    _layer_types({"minimax"}, "minimax/configuration_minimax.py", lambda s, i: FULL if (i + 1) % 2 else LINEAR),
    _layer_types(
        {"afmoe"},
        "afmoe/configuration_afmoe.py",
        _full_every("global_attn_every_n_layers", SLIDING),
        ("global_attn_every_n_layers",),
        {"global_attn_every_n_layers": 4},
    ),
    _layer_types(
        {"qwen3_next", "qwen3_5_text", "qwen3_5_moe_text"},
        "qwen3_next/configuration_qwen3_next.py (and qwen3_5, qwen3_5_moe): kwargs full_attention_interval",
        _full_every("full_attention_interval", LINEAR),
        ("full_attention_interval",),
        {"full_attention_interval": 4},
    ),
    _layer_types(
        {"qwen2", "qwen3", "qwen2_vl_text", "qwen2_5_vl_text"},
        "qwen2/configuration_qwen2.py (and qwen3, qwen2_vl, qwen2_5_vl)",
        _qwen2,
        QWEN2_KEYS,
        {"max_window_layers": 28, "use_sliding_window": False, "sliding_window": 4096},
        model_defaults={"qwen2_vl_text": {"max_window_layers": 80}, "qwen2_5_vl_text": {"max_window_layers": 80}},
        rewrite=lambda s, expected: {"max_window_layers": _leading(expected, FULL)},
        read_elsewhere=OLDER_TRANSFORMERS,
    ),
    _layer_types(
        {"qwen2_moe"},
        "qwen2_moe/configuration_qwen2_moe.py",
        _qwen2_moe,
        QWEN2_KEYS[:2],
        {"max_window_layers": 28, "use_sliding_window": False},
        read_elsewhere=OLDER_TRANSFORMERS,
    ),
)

# Rules that derive a list come first: KV_SHARING reads the layer_types they derive.
RULES: tuple[Rule, ...] = (
    LLAMA4_MOE,
    NOPE_INTERVAL,
    ZAMBA,
    *LAYER_TYPE_PATTERNS,
    JAMBA_ATTENTION,
    JAMBA_EXPERTS,
    QWEN_MOE,
    FIRST_K_DENSE,
    LFM2_MOE,
    ERNIE_MOE,
    KV_SHARING,
)
