"""`mergesmith lora extract`: a PEFT LoRA adapter whose B A approximates FT - BASE, module by
module. Each pair of weights is read, subtracted in float32 and factored by a truncated SVD
(delta = U S V^T; B A = U_r U_r^T delta: by Eckart-Young the best rank-r approximation, with
relative error sqrt(sum of the dropped S^2) / ||delta||). A module's rank is fixed (`rank`), or the
least that keeps `energy` of the sum of S^2. Tensors that differ but are not matrices of a linear
layer (norms, biases) and the embeddings and head are saved whole in `modules_to_save`, as
mergekit-extract-lora does; linear layers that --include/--exclude leave out are left out. Only
one pair of weights is held at a time; the adapter (small) is written once, atomically, with
adapter_config.json scaling every module by 1 (lora_alpha = r).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergesmith.checkpoints.checkpoint import Checkpoint
from mergesmith.checkpoints.names import is_vocabulary_tensor
from mergesmith.dtypes import tensor_from_bytes, torch_dtype
from mergesmith.errors import CheckpointError, RecipeError
from mergesmith.output.folder import staging_folder

PEFT_PREFIX = "base_model.model."
# model types whose linear layers are transformers' Conv1D (weights stored (in, out))
CONV1D_MODEL_TYPES = frozenset({"gpt2", "openai-gpt", "decision_transformer"})


@dataclass(frozen=True)
class ExtractSettings:
    rank: int | None = 16  # None: chosen per module from `energy`
    energy: float | None = None  # the share of sum(S^2) a module keeps, in (0, 1]
    include: tuple[str, ...] = ()  # regexes over module names: only matching ones get a LoRA
    exclude: tuple[str, ...] = ()
    device: str = "cpu"
    dtype: str = "float32"  # of the saved A and B
    overwrite: bool = False


@dataclass
class ExtractReport:
    out: Path
    modules: dict[str, tuple[int, float]] = field(default_factory=dict)  # module -> (rank, relative error)
    saved_whole: list[str] = field(default_factory=list)  # modules_to_save
    unchanged: int = 0  # tensors equal in both models
    left_out: list[str] = field(default_factory=list)  # linear layers that differ, not selected by the patterns


def extract_adapter(
    model: Checkpoint, base: Checkpoint, out: Path, settings: ExtractSettings, on_module: Callable | None = None
) -> ExtractReport:
    """Write the adapter of `model` over `base` into `out` (a folder made whole, or not at all)."""
    import torch

    _check_settings(settings)
    _check_pairs(model, base)
    report = ExtractReport(out)
    tensors: dict[str, Any] = {}
    whole: dict[str, Any] = {}  # tensors that differ but get no LoRA: norms, biases, embeddings, head
    ranks: dict[str, int] = {}
    saved_dtype = getattr(torch, settings.dtype)
    conv1d = model.config.get("model_type") in CONV1D_MODEL_TYPES
    for name in sorted(model.weight_map):
        tuned, original = _read(model, name, settings.device), _read(base, name, settings.device)
        if tuned.shape == original.shape and torch.equal(tuned, original):
            report.unchanged += 1
            continue
        module = name.rsplit(".", 1)[0]
        if _is_linear_weight(name, tuned) and not _selected(module, settings):
            report.left_out.append(module)
            continue
        if not _is_linear_weight(name, tuned):
            whole[name] = tuned.to(saved_dtype).cpu()
            continue
        delta = tuned - original
        # a Conv1D weight is stored (in, out): factor its transpose, and say so (fan_in_fan_out)
        b, a, error = _factor(delta.T if conv1d else delta, settings, name)
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = a.to(saved_dtype).cpu().contiguous()
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = b.to(saved_dtype).cpu().contiguous()
        ranks[module] = a.shape[0]
        report.modules[module] = (a.shape[0], error)
        del tuned, original
        _release_freed_memory()
        if on_module is not None:
            on_module(module, a.shape[0], error)
    if not ranks:
        raise RecipeError(
            f"lora extract: no linear layer of {model.ref.text!r} differs from {base.ref.text!r} "
            "(after --include/--exclude)",
            hint="check that --model is the fine-tune of --base, and the patterns",
        )
    lora_biases = False
    for name, tensor in whole.items():
        module = name.rsplit(".", 1)[0]
        if name.endswith(".bias") and module in ranks:  # a LoRA layer's own bias: PEFT's bias="lora_only"
            tensors[f"{PEFT_PREFIX}{module}.base_layer.bias"] = tensor
            lora_biases = True
        else:  # PEFT saves a whole module; a module both adapted and saved whole would not be adapted
            tensors[PEFT_PREFIX + name] = tensor
            report.saved_whole.append(module)
    report.saved_whole = sorted(set(report.saved_whole))
    config = _config(ranks, report.saved_whole, base)
    config["fan_in_fan_out"] = conv1d
    config["bias"] = "lora_only" if lora_biases else "none"
    _write(out, tensors, config, model, base, report, settings)
    return report


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the system: without it the allocator keeps every module's
    temporaries (glibc's per-thread arenas), and memory grows with the number of modules."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name and hasattr(libc := ctypes.CDLL(name), "malloc_trim"):
        libc.malloc_trim(0)


def _check_settings(settings: ExtractSettings) -> None:
    if (settings.rank is None) == (settings.energy is None):
        raise RecipeError("lora extract: give --rank R or --energy E (one of them)")
    if settings.rank is not None and settings.rank < 1:
        raise RecipeError(f"lora extract: --rank {settings.rank}: a rank is at least 1")
    if settings.energy is not None and not 0 < settings.energy <= 1:
        raise RecipeError(
            f"lora extract: --energy {settings.energy}: a share of the singular values' energy, in (0, 1]"
        )
    for pattern in (*settings.include, *settings.exclude):
        try:
            re.compile(pattern)
        except re.error as err:
            raise RecipeError(f"lora extract: pattern {pattern!r} is not a regular expression ({err})") from None


def _check_pairs(model: Checkpoint, base: Checkpoint) -> None:
    """Same tensors, same shapes (embeddings and head may differ in rows: a grown vocabulary)."""
    missing = sorted(set(model.weight_map) ^ set(base.weight_map))
    if missing:
        where = model.ref.text if missing[0] in model.weight_map else base.ref.text
        raise CheckpointError(
            f"lora extract: tensor {missing[0]} is in {where!r} only ({len(missing)} tensors differ in name)",
            hint="extract from a fine-tune of the base: both must have the same architecture",
        )
    for name in sorted(model.weight_map):
        tuned, original = model.tensor_info(name).shape, base.tensor_info(name).shape
        if tuned != original and not (is_vocabulary_tensor(name) and tuned[1:] == original[1:]):
            raise CheckpointError(
                f"lora extract: {name} is {list(tuned)} in {model.ref.text!r} "
                f"but {list(original)} in {base.ref.text!r}",
                hint="extract from a fine-tune of the base: both must have the same architecture and sizes",
            )


def _read(checkpoint: Checkpoint, name: str, device: str):
    info = checkpoint.tensor_info(name)
    values = tensor_from_bytes(checkpoint.read_bytes(name), info.dtype).reshape(info.shape)
    return values.to(device=device, dtype=torch_dtype("F32") if values.is_floating_point() else values.dtype)


def _is_linear_weight(name: str, tensor) -> bool:
    """A linear layer's (or Conv1D's) matrix: 2-D, and not an embedding table (tokens, positions)."""
    leaf = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else name
    table = "emb" in leaf or leaf in ("wte", "wpe")
    return name.endswith(".weight") and tensor.dim() == 2 and not is_vocabulary_tensor(name) and not table


def _selected(module: str, settings: ExtractSettings) -> bool:
    if settings.include and not any(re.search(p, module) for p in settings.include):
        return False
    return not any(re.search(p, module) for p in settings.exclude)


def _factor(delta, settings: ExtractSettings, name: str):
    """(B, A, relative error): the best approximation of `delta` (out, in) of the chosen rank."""
    import torch

    most = min(delta.shape)
    if settings.rank is not None and settings.rank > most:
        raise RecipeError(
            f"lora extract: --rank {settings.rank} is above what {name} {list(delta.shape)} can hold ({most})",
            hint=f"choose --rank {most} or less (or --energy to choose per module)",
        )
    # The singular vectors of the smaller side, from the eigenvectors of the Gram matrix (float64:
    # squaring loses no digits that matter at that precision), are several times faster than an
    # SVD of the whole matrix; B A then projects delta onto them, which is exact at full rank.
    wide = delta.shape[0] <= delta.shape[1]
    d64 = delta.double()
    gram = d64 @ d64.T if wide else d64.T @ d64  # (k, k), k the smaller side
    values, vectors = torch.linalg.eigh(gram)  # ascending
    energy, vectors = values.flip(0).clamp(min=0), vectors.flip(1)  # S^2, descending
    if settings.rank is not None:
        rank = settings.rank
    elif settings.energy is not None and settings.energy >= 1.0:
        rank = most  # all of it, however small the last singular values
    else:
        kept = (torch.cumsum(energy, 0) / energy.sum()).cpu()
        rank = min(int((kept < settings.energy).sum()) + 1, most)  # the least rank keeping that share
    top = vectors[:, :rank]  # (k, r): orthonormal
    if wide:
        b, a = top, top.T @ d64  # (out, r), (r, in)
    else:
        b, a = d64 @ top, top.T  # (out, r), (r, in)
    error = float(torch.linalg.matrix_norm(d64 - b @ a) / torch.linalg.matrix_norm(d64))
    return b.float(), a.float(), error


def _config(ranks: dict[str, int], saved_whole: list[str], base: Checkpoint) -> dict[str, Any]:
    r = max(ranks.values(), key=list(ranks.values()).count)  # the commonest rank; the others by pattern
    # patterns are regexes matched against the end of module names: escape the dots
    pattern = {re.escape(m): k for m, k in ranks.items() if k != r}
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base.ref.text,
        "r": r,
        "lora_alpha": r,  # scale 1: B A is the difference itself
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "target_modules": sorted(ranks),
        "modules_to_save": saved_whole or None,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "init_lora_weights": True,
    }


def _write(
    out: Path, tensors: dict[str, Any], config: dict, model: Checkpoint, base: Checkpoint, report, settings
) -> None:
    from safetensors.torch import save_file

    inputs = [(f"model {c.ref.text!r}", c.folder) for c in (model, base)]
    with staging_folder(out, overwrite=settings.overwrite, inputs=inputs) as staging:
        save_file(tensors, staging / "adapter_model.safetensors", metadata={"format": "pt"})
        (staging / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        (staging / "README.md").write_text(_card(model, base, report, settings))


def _card(model: Checkpoint, base: Checkpoint, report: ExtractReport, settings: ExtractSettings) -> str:
    ranks = sorted({r for r, _ in report.modules.values()})
    worst = max(e for _, e in report.modules.values())
    mean = sum(e for _, e in report.modules.values()) / len(report.modules)
    how = f"rank {settings.rank}" if settings.rank is not None else f"{settings.energy:.4g} of each module's energy"
    return (
        f"---\nbase_model: {base.ref.text}\nlibrary_name: peft\ntags:\n- mergesmith\n- lora\n---\n\n"
        f"# LoRA extracted from {model.ref.text}\n\n"
        f"The difference between [{model.ref.text}] and its base [{base.ref.text}], factored into a LoRA adapter "
        f"by [mergesmith](https://github.com/mergesmith/mergesmith) `lora extract` ({how}).\n\n"
        f"- {len(report.modules)} modules, ranks {ranks[0]}" + (f" to {ranks[-1]}" if len(ranks) > 1 else "") + "\n"
        f"- relative reconstruction error ||delta - B A|| / ||delta||: mean {mean:.4f}, worst {worst:.4f}\n"
        f"- saved whole (modules_to_save): {', '.join(report.saved_whole) or 'none'}\n\n"
        "Load it with PEFT: `PeftModel.from_pretrained(base_model, this_folder)`.\n"
    )
