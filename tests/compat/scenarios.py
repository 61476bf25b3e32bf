"""mergekit 0.1.5's own test scenarios, as recipes on the stand-in models of suite_models.py.

Every merge configuration that mergekit's tests build (tests/test_basic_merges.py,
test_tokenizer.py, test_chat_template.py, test_embedding_truncation.py, test_merge_dtypes.py at
arcee-ai/mergekit a6e4028 and the 0.1.5 release), one row each: its method and parameters, base
model, slices, dtype, tokenizer settings, chat template and command-line flags, as the test wrote
them. Loops in a test (nuslerp over base x row_wise x flatten) are one row per iteration.

`compare` says what the suite can hold mergesmith to (test_mergekit_suite.py):
- "exact": every tensor bit for bit, the config's layer count and vocabulary size.
- "random": DARE/DELLA draw random masks (mergekit from the global RNG, mergesmith per tensor
  from the seed and the tensor's name: docs/compatibility.md), so no bytes can agree. Compared:
  tensor names, dtypes, shapes, the config; every tensor finite; tensors the method does not
  randomise (norms are 1-D and merged as other tensors are, so they too are random) not compared.
- "ties": magnitude selection at tied magnitudes is documented to differ (mergekit's unstable
  argsort against our stable ranking). Compared: names, dtypes, shapes, the config, and every
  element bit for bit except those at a tied keep threshold: `tie_check` names the inputs from
  which compare.tied_positions finds them with plain torch (the digests of mergekit's tensors with
  those elements zeroed are recorded). Without `tie_check`: every tensor finite.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Scenario:
    name: str  # "<test file>/<test>[-variant]"
    recipe: dict[str, Any]
    compare: str = "exact"  # "exact" | "random" | "ties" (see the module docstring)
    flags: tuple[str, ...] = ()  # mergekit-yaml flags: unsafe_truncate_embeddings, no_copy_tokenizer, allow_crimes
    chat: bool = False  # record the rendered chat template (test_chat_template.py)
    vocabulary: bool = False  # record the output tokenizer's vocabulary
    note: str = ""
    tie_check: dict[str, Any] | None = None  # {"base", "models", "density", "dtype"}: see "ties"
    # tensors mergesmith writes that mergekit's output lacks although transformers needs them: allowed
    # only absent from mergekit's output, present in ours, and read by transformers (compare.check_output)
    extra_tensors: tuple[str, ...] = ()
    models: tuple[str, ...] = field(default=())  # filled in by _scenario: every model the recipe names


def _models_named(recipe: Any) -> set[str]:
    if isinstance(recipe, str):
        return {recipe} if recipe.startswith("suite/") else set()
    if isinstance(recipe, dict):
        return set().union(*(_models_named(v) for v in recipe.values())) if recipe else set()
    if isinstance(recipe, list):
        return set().union(*(_models_named(v) for v in recipe)) if recipe else set()
    return set()


def _scenario(name: str, recipe: dict[str, Any], **kwargs: Any) -> Scenario:
    return Scenario(name, recipe, models=tuple(sorted(_models_named(recipe))), **kwargs)


def _two_model(a: str, b: str, method: str, base: str | None = None, params: dict | None = None) -> dict:
    """test_basic_merges.py's two_model_config: weights 0.6/0.4 on every method, bfloat16."""
    recipe: dict[str, Any] = {"merge_method": method}
    if base is not None:
        recipe["base_model"] = base
    recipe["models"] = [{"model": a, "parameters": {"weight": 0.6}}, {"model": b, "parameters": {"weight": 0.4}}]
    recipe["dtype"] = "bfloat16"
    if params is not None:
        recipe["parameters"] = params
    return recipe


RANDOM_METHODS = ("dare_ties", "dare_linear", "della", "della_linear")
TIES_METHODS = ("ties", "breadcrumbs_ties", "sce")  # breadcrumbs: no ties met in the suite, "exact"


def _compare(method: str) -> str:
    return "random" if method in RANDOM_METHODS else "ties" if method in TIES_METHODS else "exact"


def _basic(prefix: str, a: str, b: str, c: str) -> list[Scenario]:
    """The two-model merges of test_basic_merges.py, on picollamas or on llavas (the *_VLM_* tests)."""
    rows = [
        ("linear", None, None),
        ("slerp", a, {"t": 0.35}),
        ("task_arithmetic", c, None),
        ("breadcrumbs", c, None),
        ("ties", c, {"density": 0.3}),
        ("dare_ties", c, {"density": 0.66}),
    ]
    out = [_scenario(f"{prefix}/{m}", _two_model(a, b, m, base, p), compare=_compare(m)) for m, base, p in rows]
    ties = {"base": c, "models": [a, b], "density": 0.3, "dtype": "bfloat16"}
    out[4] = dataclasses.replace(out[4], tie_check=ties)  # the ties row
    for base in (None, c):
        for row_wise in (False, True):
            for flatten in (False, True):
                params = {"nuslerp_row_wise": row_wise, "nuslerp_flatten": flatten}
                tag = f"base={'c' if base else 'none'},row_wise={row_wise},flatten={flatten}".lower()
                out.append(_scenario(f"{prefix}/nuslerp-{tag}", _two_model(a, b, "nuslerp", base, params)))
    zero_sum = _two_model(a, b, "nuslerp", c, {"nuslerp_row_wise": False, "nuslerp_flatten": False})
    zero_sum["models"][0]["parameters"]["weight"] = -0.5  # "test weights that sum to zero"
    zero_sum["models"][1]["parameters"]["weight"] = 0.5
    out.append(_scenario(f"{prefix}/nuslerp-weights-sum-to-zero", zero_sum))
    # model_stock: the base is model_a, the others b and c
    out.append(_scenario(f"{prefix}/model_stock", _two_model(b, c, "model_stock", a)))
    out.append(
        _scenario(f"{prefix}/model_stock-filter_wise", _two_model(b, c, "model_stock", a, {"filter_wise": True}))
    )
    return out


def _basic_llama_only() -> list[Scenario]:
    """test_basic_merges.py's merges that have no VLM twin."""
    a, b, c = "suite/a", "suite/b", "suite/c"
    rows = [
        ("sce", c, {"select_topk": 0.5}),
        ("ram", c, None),
        ("ramplus_tl", c, {"r": 0.05, "alpha": 1.0}),
        ("multislerp", c, None),
        ("arcee_fusion", a, None),
        ("nearswap", a, {"t": 0.0001}),
        ("della", c, {"density": 0.66, "epsilon": 0.05, "lambda": 0.5}),
        ("karcher", c, {"max_iter": 5, "tol": 1e-5}),
    ]
    out = [_scenario(f"basic/{m}", _two_model(a, b, m, base, p), compare=_compare(m)) for m, base, p in rows]
    bad = _two_model(a, b, "della", c, {"density": 0.66, "epsilon": 1.35, "lambda": 0.5})
    out.append(_scenario("basic/della-invalid-epsilon", bad, note="mergekit's test expects a ValueError"))
    scale = {"scale": [{"filter": "o_proj", "value": 0}, {"value": 1}]}
    out.append(
        _scenario(
            "basic/passthrough-scale", {"merge_method": "passthrough", "models": [{"model": a, "parameters": scale}]}
        )
    )
    return out


def _gpt2_and_granite() -> list[Scenario]:
    copy = {"merge_method": "passthrough", "models": [{"model": "suite/gpt2"}], "dtype": "bfloat16"}
    stack_slice = {"sources": [{"model": "suite/gpt2", "layer_range": [0, 12]}]}
    stack = {"merge_method": "passthrough", "slices": [stack_slice, stack_slice], "dtype": "bfloat16"}
    ga, gb = "suite/granite_a", "suite/granite_b"
    granite_copy = {"merge_method": "passthrough", "models": [{"model": ga}], "dtype": "bfloat16"}
    granite_linear = {
        "merge_method": "linear",
        "models": [{"model": ga, "parameters": {"weight": 0.6}}, {"model": gb, "parameters": {"weight": 0.4}}],
        "dtype": "bfloat16",
    }
    granite_slerp = {
        "merge_method": "slerp",
        "base_model": ga,
        "models": [{"model": ga}, {"model": gb}],
        "parameters": {"t": 0.5},
        "dtype": "bfloat16",
    }
    return [
        _scenario("basic/gpt2-copy", copy),
        _scenario("basic/gpt2-stack", stack, note="24 layers out of 12, twice"),
        _scenario("basic/granite-copy", granite_copy),
        _scenario("basic/granite-linear", granite_linear),
        _scenario("basic/granite-slerp", granite_slerp),
    ]


def _tokenizer_config(models: list[str], base: str, method: str = "linear", **extra: Any) -> dict:
    """test_tokenizer.py's make_config: weight 1.0 on every model, float32."""
    recipe: dict[str, Any] = {"merge_method": method, "base_model": base}
    recipe["models"] = [{"model": m, "parameters": {"weight": 1.0}} for m in models]
    recipe["dtype"] = "float32"
    recipe.update(extra)
    return recipe


def _tokenizer() -> list[Scenario]:
    base, chatml, padded = "suite/tok_base", "suite/tok_chatml", "suite/tok_padded"
    three = [base, padded, chatml]
    # mergekit's test vocabulary is "_tok_N"; ours has "h", "i", "r", "s" at ids 10, 11, 20, 21
    force = {
        "source": "union",
        "tokens": {"h": {"source": chatml, "force": True}, "i": {"source": base, "force": True}},
    }
    model_token = {
        "source": "base",
        "tokens": {
            "r": {"source": {"kind": "model_token", "model": chatml, "token_id": 64}, "force": True},
            "s": {"source": {"kind": "model_token", "model": base, "token": "<s>"}, "force": True},
        },
    }
    rows = [
        ("legacy-mode", _tokenizer_config(three, base)),
        ("source-base", _tokenizer_config(three, base, tokenizer_source="base")),
        ("source-union", _tokenizer_config(three, base, tokenizer_source="union")),
        ("source-model", _tokenizer_config(three, base, tokenizer_source=chatml)),
        (
            "slerp-union",
            _tokenizer_config([base, chatml], base, "slerp", tokenizer_source="union", parameters={"t": 0.5}),
        ),
        ("force-token", _tokenizer_config([base, chatml], base, tokenizer=force)),
        ("model-token-id", _tokenizer_config([base, chatml], base, tokenizer=model_token)),
        (
            "pad-to-multiple-of",
            _tokenizer_config([chatml], chatml, tokenizer={"source": "base", "pad_to_multiple_of": 16}),
        ),
    ]
    return [_scenario(f"tokenizer/{name}", recipe, vocabulary=True) for name, recipe in rows]


def _chat_template() -> list[Scenario]:
    def recipe(template: str) -> dict:
        models = [
            {"model": "suite/tok_base", "parameters": {"weight": 0.5}},
            {"model": "suite/b", "parameters": {"weight": 0.5}},
        ]
        return {
            "merge_method": "linear",
            "models": models,
            "base_model": "suite/tok_base",
            "dtype": "bfloat16",
            "chat_template": template,
        }

    return [
        _scenario("chat_template/chatml", recipe("chatml"), chat=True, vocabulary=True),
        _scenario("chat_template/literal-jinja", recipe("{{messages[0]['content']}}"), chat=True, vocabulary=True),
    ]


def _truncation_config(large: str, small: str, method: str = "linear", **extra: Any) -> dict:
    """test_embedding_truncation.py's config_for: the larger vocabulary is the base."""
    recipe = {"merge_method": method, "base_model": large, "models": [{"model": large}, {"model": small}]}
    recipe["parameters"] = {"weight": 0.5, "t": 0.5}
    recipe.update(extra)
    return recipe


def _truncation() -> list[Scenario]:
    small, large = "suite/small", "suite/large"
    unsafe = ("unsafe_truncate_embeddings",)
    out = [
        _scenario(f"truncation/{m}", _truncation_config(large, small, m), flags=unsafe, vocabulary=True)
        for m in ("linear", "slerp", "task_arithmetic")
    ]
    out.append(_scenario("truncation/default-refused", _truncation_config(large, small)))
    out.append(_scenario("truncation/allow-crimes-refused", _truncation_config(large, small), flags=("allow_crimes",)))
    for name, extra in (
        ("tokenizer-block", {"tokenizer": {"source": "base"}}),
        ("tokenizer-source", {"tokenizer_source": "base"}),
    ):
        out.append(
            _scenario(
                f"truncation/{name}-wins",
                _truncation_config("suite/large_tok", small, **extra),
                flags=unsafe,
                vocabulary=True,
            )
        )
    for copy in (False, True):
        flags = unsafe if copy else (*unsafe, "no_copy_tokenizer")
        out.append(
            _scenario(
                f"truncation/out-of-range-metadata-copy={str(copy).lower()}",
                _truncation_config("suite/large_eos", small),
                flags=flags,
            )
        )
    out.append(_scenario("truncation/head-independent", _truncation_config(large, "suite/small_head"), flags=unsafe))
    out.append(
        _scenario("truncation/no-tokenizer", _truncation_config("suite/large_bare", "suite/small_bare"), flags=unsafe)
    )
    return out


def _dtypes() -> list[Scenario]:
    out = []
    for dtype, out_dtype in ((None, None), ("bfloat16", "float32")):
        recipe: dict[str, Any] = {
            "merge_method": "linear",
            "models": [{"model": "suite/mixed"}, {"model": "suite/f32"}],
        }
        recipe["parameters"] = {"weight": 1.0}
        if dtype:
            recipe.update(dtype=dtype, out_dtype=out_dtype)
        out.append(_scenario(f"merge_dtypes/mixed-precision-dtype={dtype}-out_dtype={out_dtype}".lower(), recipe))
    return out


def _weighted(a: str, b: str, **slice_range: Any) -> list[dict]:
    """Two sources, weights 0.6/0.4 (as _two_model); with layer_range=[i, j] a slice's sources."""
    return [
        {"model": a, **slice_range, "parameters": {"weight": 0.6}},
        {"model": b, **slice_range, "parameters": {"weight": 0.4}},
    ]


def _multi_module() -> list[Scenario]:
    """Models of more than one module (not in mergekit's own tests): what mergekit 0.1.5 does with a
    T5 v1.1, a LLaVA and a Whisper. How mergesmith is held to each: MODULE_DIFFERENCES in
    test_mergekit_suite.py (where it differs on purpose, or where mergekit cannot run it)."""
    t5a, t5b = "suite/t5_a", "suite/t5_b"
    t5_modules = {
        "merge_method": "linear",
        "modules": {
            "encoder": {"models": _weighted(t5a, t5b)},
            "decoder": {"slices": [{"sources": _weighted(t5a, t5b, layer_range=[0, 2])}]},
        },
        "dtype": "bfloat16",
    }
    la, lb = "suite/llava_deep_a", "suite/llava_deep_b"
    va, vb = "suite/vlm_a", "suite/vlm_b"
    llava_slerp = {
        "merge_method": "slerp",
        "base_model": la,
        "models": [{"model": la}, {"model": lb}],
        "parameters": {"t": 0.35},
        "dtype": "bfloat16",
    }
    # mergekit has no llava file: it infers one module per layer-name prefix, named by the prefix
    # (the layers' own), plus "default" for every tensor outside the layers
    # (transformers' in-memory names, those of suite/vlm_*), plus "default" for every tensor outside
    # the layers. Both recipes merge what vlm/linear merges: the same tensors are expected.
    llava_modules = {
        "merge_method": "linear",
        "modules": {
            "model.language_model.layers": {"slices": [{"sources": _weighted(va, vb, layer_range=[0, 2])}]},
            "model.vision_tower.encoder.layers": {"models": _weighted(va, vb)},
            "default": {"models": _weighted(va, vb)},
        },
        "dtype": "bfloat16",
    }
    # the same with mergesmith's module names (docs/architectures.md)
    llava_roles = {
        "merge_method": "linear",
        "modules": {
            "text_decoder": {"slices": [{"sources": _weighted(va, vb, layer_range=[0, 2])}]},
            "vision_tower": {"models": _weighted(va, vb)},
            "multi_modal_projector": {"models": _weighted(va, vb)},
        },
        "dtype": "bfloat16",
    }
    # mergekit's T5 file has a third module, "shared" (shared.weight, lm_head.weight)
    t5_shared = {**t5_modules, "modules": {**t5_modules["modules"], "shared": {"models": _weighted(t5a, t5b)}}}
    # the text decoder's layers 0, 1, 1 (a cut people write for a LLaVA: layer_range counts the text layers)
    llava_slices = {
        "merge_method": "passthrough",
        "slices": [
            {"sources": [{"model": va, "layer_range": [0, 2]}]},
            {"sources": [{"model": va, "layer_range": [1, 2]}]},
        ],
        "dtype": "bfloat16",
    }
    wa, wb = "suite/whisper_a", "suite/whisper_b"
    whisper_modules = {
        "merge_method": "linear",
        "modules": {
            "encoder": {"models": _weighted(wa, wb)},
            "decoder": {"slices": [{"sources": _weighted(wa, wb, layer_range=[0, 2])}]},
        },
        "dtype": "bfloat16",
    }
    return [
        _scenario(
            "modules/t5-modules-linear",
            t5_modules,
            note="encoder models:, decoder slices:; mergekit leaves its 'shared' module out",
            extra_tensors=("lm_head.weight", "shared.weight"),
        ),
        _scenario("modules/t5-modules-shared-linear", t5_shared, note="mergekit's three T5 modules"),
        _scenario("modules/t5-linear", _two_model(t5a, t5b, "linear")),
        _scenario("modules/llava-linear", _two_model(la, lb, "linear")),
        _scenario("modules/llava-slerp", llava_slerp),
        _scenario("modules/llava-modules-prefixes", llava_modules, note="mergekit's inferred module names"),
        _scenario("modules/llava-modules-roles", llava_roles, note="mergesmith's module names"),
        _scenario("modules/llava-slices", llava_slices, note="plain slices on a multi-module model"),
        _scenario("modules/whisper-linear", _two_model(wa, wb, "linear")),
        _scenario("modules/whisper-modules-linear", whisper_modules),
    ]


SCENARIOS: tuple[Scenario, ...] = (
    *_gpt2_and_granite(),
    *_basic("basic", "suite/a", "suite/b", "suite/c"),
    *_basic_llama_only(),
    *_basic("vlm", "suite/vlm_a", "suite/vlm_b", "suite/vlm_c"),
    *_tokenizer(),
    *_chat_template(),
    *_truncation(),
    *_dtypes(),
    *_multi_module(),
)
BY_NAME = {s.name: s for s in SCENARIOS}
assert len(BY_NAME) == len(SCENARIOS), "scenario names must be unique"


# test_modelref.py: how mergekit parses model references (no merge). text -> what mergekit's test
# asserts: (path, revision, lora) or "error".
REFERENCES: dict[str, tuple[str, str | None, str | None] | str] = {
    "hf_user/model": ("hf_user/model", None, None),
    "hf_user/model+hf_user/lora": ("hf_user/model", None, "hf_user/lora"),
    "hf_user/model@v0.0.1": ("hf_user/model", "v0.0.1", None),
    "hf_user/model@v0.0.1+hf_user/lora@main": ("hf_user/model", "v0.0.1", "hf_user/lora"),
    "@@@@@": "error",
    "a+b+c": "error",
    "a+b+c@d+e@f@g": "error",
}
