"""An MoE model from dense ones, as a plan the normal executor streams: attention, norms and
embeddings copied from the base; each expert's MLP copied from its source model under the MoE
architecture's names; the routers (computed by gates.py, a few vectors per layer) read from a small
file written beside. Memory stays bounded by a few tensors, and the output folder is made whole or
not at all, with a card, like every merge.

Output architectures, with the names transformers 5 loads (those of the released checkpoints):
Mixtral (from Llama or Mistral), Qwen2-MoE (from Qwen2, with one shared expert), Qwen3-MoE (from
Qwen3). DeepSeek's MoE models use multi-head latent attention, which a dense model's attention
cannot become: that output is refused with the reason.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergesmith import metadata
from mergesmith.checkpoints.checkpoint import Checkpoint, open_checkpoints
from mergesmith.dtypes import FLOATING, dtype_code_from_recipe
from mergesmith.errors import RecipeError, UnsupportedError
from mergesmith.methods.spec import UNSET
from mergesmith.moe.config import Expert, MoEConfig
from mergesmith.moe.gates import router_vectors
from mergesmith.plan import Params, Plan, PlanEntry, Route, Source

MLP = "model.layers.{layer}.mlp.{part}.weight"  # a dense model's MLP weights
PARTS = ("gate_proj", "up_proj", "down_proj")
ROUTERS = "routers"  # the name of the router file's checkpoint in the plan


@dataclass(frozen=True)
class Layout:
    name: str
    bases: tuple[str, ...]  # the dense model types it is built from
    model_type: str
    architecture: str
    router: str
    expert: str  # {layer}, {expert}, {part}
    parts: Mapping[str, str]  # dense part -> the expert's
    shared: str | None = None  # {layer}, {part}
    shared_gate: str | None = None


LAYOUTS = {
    "mixtral": Layout(
        "mixtral", ("llama", "mistral"), "mixtral", "MixtralForCausalLM",
        "model.layers.{layer}.block_sparse_moe.gate.weight",
        "model.layers.{layer}.block_sparse_moe.experts.{expert}.{part}.weight",
        {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"},
    ),
    "qwen2_moe": Layout(
        "qwen2_moe", ("qwen2",), "qwen2_moe", "Qwen2MoeForCausalLM",
        "model.layers.{layer}.mlp.gate.weight",
        "model.layers.{layer}.mlp.experts.{expert}.{part}.weight",
        {p: p for p in PARTS},
        "model.layers.{layer}.mlp.shared_expert.{part}.weight",
        "model.layers.{layer}.mlp.shared_expert_gate.weight",
    ),
    "qwen3_moe": Layout(
        "qwen3_moe", ("qwen3",), "qwen3_moe", "Qwen3MoeForCausalLM",
        "model.layers.{layer}.mlp.gate.weight",
        "model.layers.{layer}.mlp.experts.{expert}.{part}.weight",
        {p: p for p in PARTS},
    ),
}  # fmt: skip
ALIASES = {"qwen": "qwen2_moe", "qwen moe": "qwen2_moe", "qwen3": "qwen3_moe", "qwen3 moe": "qwen3_moe"}


def plan_moe(config: MoEConfig, text: str, checkpoints: Mapping[str, Checkpoint], routers: Checkpoint) -> Plan:
    """The plan of the MoE; `routers` holds the router weights that `write_routers` wrote."""
    base = checkpoints[config.base_model]
    layout = choose_layout(config, base)
    layers = base.config["num_hidden_layers"]
    out_dtype = dtype_code_from_recipe(config.dtype, key="dtype") if config.dtype else None
    entries: list[PlanEntry] = []
    dense = {MLP.format(layer=i, part=p) for i in range(layers) for p in PARTS}
    for name in base.weight_map:
        if name not in dense:
            entries.append(_copy(name, base, config.base_model, name, out_dtype))
    for i in range(layers):
        entries.append(_copy(layout.router.format(layer=i), routers, ROUTERS, layout.router.format(layer=i), out_dtype))
        for e, expert in enumerate(config.experts):
            for part in PARTS:
                output = layout.expert.format(layer=i, expert=e, part=layout.parts[part])
                scale = expert.residual_scale if part == "down_proj" else None
                source = MLP.format(layer=i, part=part)
                entries.append(
                    _copy(output, checkpoints[expert.source_model], expert.source_model, source, out_dtype, scale)
                )
        for expert in config.shared_experts or []:
            for part in PARTS:
                output = layout.shared.format(layer=i, part=part)  # type: ignore[union-attr]
                source = MLP.format(layer=i, part=part)
                entries.append(_copy(output, checkpoints[expert.source_model], expert.source_model, source, out_dtype))
            gate = layout.shared_gate.format(layer=i)  # type: ignore[union-attr]
            entries.append(_copy(gate, routers, ROUTERS, gate, out_dtype))
    donor = config.tokenizer_source or config.base_model
    models = tuple(dict.fromkeys([config.base_model, *(e.source_model for e in _all_experts(config))]))
    return Plan(
        entries=tuple(entries),
        config=_output_config(config, base, layout, out_dtype),
        method="passthrough",
        models=models,
        hub_ids=tuple(m for m in models if checkpoints[m].ref.is_hub_id),
        donor=donor,
        base_model=config.base_model,
        copied_files=metadata.copied_files(donor, None, checkpoints),
        recipe_text=text,
        method_line=f"built by mergesmith moe: a {layout.architecture} of {len(config.experts)} experts "
        f"({config.experts_per_token} per token, {config.gate_mode} gates)",
    )


def write_routers(config: MoEConfig, base: Checkpoint, folder: Path, seed: int) -> Checkpoint:
    """The router weights (and shared-expert gates) as a small checkpoint in `folder`."""
    import torch
    from safetensors.torch import save_file

    layout = choose_layout(config, base)
    layers, hidden = base.config["num_hidden_layers"], base.config["hidden_size"]
    vectors = router_vectors(config.gate_mode, config.experts, base, layers, hidden, seed=seed)  # (E, L, H)
    tensors = {layout.router.format(layer=i): vectors[:, i].contiguous() for i in range(layers)}
    if config.shared_experts:
        shared = router_vectors(config.gate_mode, config.shared_experts, base, layers, hidden, seed=seed + 1,
                                what="shared_experts")  # fmt: skip
        for i in range(layers):
            tensors[layout.shared_gate.format(layer=i)] = shared[:, i].contiguous()  # type: ignore[union-attr]
    save_file({k: v.to(torch.float32) for k, v in tensors.items()}, folder / "model.safetensors")
    (folder / "config.json").write_text("{}")
    from mergesmith.checkpoints.reference import ModelReference

    return Checkpoint(ModelReference(ROUTERS, folder, None, None))


def check_config(config: MoEConfig, checkpoints: Mapping[str, Checkpoint]) -> None:
    """Everything that must agree before anything is written: architectures, sizes, counts."""
    base = checkpoints[config.base_model]
    if config.experts_per_token > len(config.experts):
        raise RecipeError(
            f"experts_per_token: {config.experts_per_token}, but there are {len(config.experts)} experts",
            hint="route each token to at most as many experts as there are",
        )
    for key, expert in _named_experts(config):
        if expert.noise_scale:
            raise UnsupportedError(f"{key}.noise_scale: not supported", hint="remove it (mergekit adds Gaussian noise)")
        other = checkpoints[expert.source_model]
        found, expected = other.config.get("model_type"), base.config.get("model_type")
        if found != expected:
            raise RecipeError(
                f"{key}.source_model {expert.source_model!r} is a {found} model, "
                f"the base {config.base_model!r} a {expected}",
                hint="experts must share the base model's architecture",
            )
        for size in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size"):
            if other.config.get(size) != base.config.get(size):
                raise RecipeError(
                    f"{key}.source_model {expert.source_model!r} has {size} {other.config.get(size)}, "
                    f"the base {config.base_model!r} {base.config.get(size)}",
                    hint="experts must be the same size as the base model (fine-tunes of it)",
                )
    choose_layout(config, base)


def choose_layout(config: MoEConfig, base: Checkpoint) -> Layout:
    model_type = base.config.get("model_type")
    if config.architecture is not None:
        name = ALIASES.get(config.architecture, config.architecture)
        if name.startswith("deepseek"):
            raise UnsupportedError(
                "architecture: deepseek: transformers' DeepSeek MoE models use multi-head latent attention, "
                "which a dense model's attention cannot be turned into",
                hint="use qwen2_moe for an MoE with a shared expert (from Qwen2 models)",
            )
        if name not in LAYOUTS:
            raise RecipeError(f"architecture: {config.architecture!r} is not known", hint="use " + ", ".join(LAYOUTS))
        layout = LAYOUTS[name]
        if model_type not in layout.bases:
            raise RecipeError(
                f"architecture: {layout.name} is built from {' or '.join(layout.bases)} models; "
                f"the base is {model_type}",
                hint="choose the architecture that matches the base model",
            )
    else:
        found = [layout for layout in LAYOUTS.values() if model_type in layout.bases]
        if not found:
            raise UnsupportedError(
                f"base_model: an MoE cannot be built from {model_type} models",
                hint="bases: " + ", ".join(f"{b} ({layout.name})" for layout in LAYOUTS.values() for b in layout.bases),
            )
        layout = found[0]
    if layout.shared is None and config.shared_experts:
        raise RecipeError(f"shared_experts: {layout.name} has no shared experts", hint="remove shared_experts")
    if layout.shared is not None and len(config.shared_experts or []) != 1:
        raise RecipeError(
            f"shared_experts: {layout.name} has exactly one shared expert; found {len(config.shared_experts or [])}",
            hint="give one shared_experts entry",
        )
    return layout


def _output_config(config: MoEConfig, base: Checkpoint, layout: Layout, out_dtype: str | None) -> dict[str, Any]:
    out = dict(base.config)
    out.update(model_type=layout.model_type, architectures=[layout.architecture])
    out["num_experts_per_tok"] = config.experts_per_token
    if layout.name == "mixtral":
        out["num_local_experts"] = len(config.experts)
    else:
        out.update(num_experts=len(config.experts), moe_intermediate_size=base.config["intermediate_size"])
        out.update(decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=False)
        if layout.name == "qwen3_moe":
            out["num_local_experts"] = len(config.experts)
    if layout.shared is not None:
        out["shared_expert_intermediate_size"] = base.config["intermediate_size"]
    if out_dtype is not None:
        out["torch_dtype"] = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}.get(out_dtype, out_dtype)
    return out


def _copy(
    output: str, checkpoint: Checkpoint, model: str, name: str, out_dtype: str | None, scale: float | None = None
) -> PlanEntry:
    info = checkpoint.tensor_info(name)
    floating = info.dtype in FLOATING
    written = out_dtype if out_dtype and floating else info.dtype
    plain = written == info.dtype and scale is None
    params = Params((("scale", (scale,) if scale is not None else UNSET),))
    route = Route.COPY if plain or not floating else Route.STREAM
    compute = "F32" if floating else None
    return PlanEntry(output, "passthrough", (Source(model, name),), False, params, info.shape, written, compute,
                     info.dtype, route)  # fmt: skip


def _all_experts(config: MoEConfig) -> list[Expert]:
    return [*config.experts, *(config.shared_experts or [])]


def _named_experts(config: MoEConfig) -> list[tuple[str, Expert]]:
    return [(f"experts[{i}]", e) for i, e in enumerate(config.experts)] + [
        (f"shared_experts[{i}]", e) for i, e in enumerate(config.shared_experts or [])
    ]


def build_moe(
    text: str,
    source: str,
    out: Path,
    *,
    model_paths: Mapping[str, Path] | None = None,
    options: Any = None,
    seed: int = 0,
):
    """Read a mergekit-moe config and write the MoE into `out` (driver.merge_plan)."""
    from mergesmith.driver import merge_plan
    from mergesmith.execute import MergeOptions
    from mergesmith.execute.run import input_paths
    from mergesmith.output.folder import check_output_folder
    from mergesmith.recipe.strict import parse_strict

    config = parse_strict(MoEConfig, text, source)
    options = options or MergeOptions()
    check_output_folder(out, overwrite=options.overwrite)
    models = [config.base_model, *(e.source_model for e in _all_experts(config))]
    if config.tokenizer_source:
        models.append(config.tokenizer_source)
    checkpoints = open_checkpoints(list(dict.fromkeys(models)), model_paths)
    check_config(config, checkpoints)
    check_output_folder(out, overwrite=options.overwrite, inputs=input_paths(checkpoints))
    with tempfile.TemporaryDirectory(prefix="mergesmith-routers-") as folder:
        routers = write_routers(config, checkpoints[config.base_model], Path(folder), seed)
        plan = plan_moe(config, text, checkpoints, routers)
        return merge_plan(plan, {**checkpoints, ROUTERS: routers}, out, options)
