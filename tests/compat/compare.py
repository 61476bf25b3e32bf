"""Run a scenario with mergesmith and hold its output to what mergekit 0.1.5 recorded.

Shared by test_mergekit_suite.py and test_real_recipes.py. The expected values come from
make_compat_expected.py (mergekit itself); nothing here computes them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "golden"))

import yaml  # noqa: E402
from make_compat_expected import layer_count, resolve_tie_check, vocab_size  # noqa: E402
from models import output_vocabulary, rendered_chat, tensor_digests  # noqa: E402

from mergesmith.api import merge  # noqa: E402
from mergesmith.errors import MergesmithError  # noqa: E402
from mergesmith.execute import MergeOptions  # noqa: E402

SEED = 1234  # random methods: any fixed seed (their bytes are not compared)


def merge_options(flags: tuple[str, ...]) -> MergeOptions:
    """mergesmith's options for mergekit-yaml's flags (allow_crimes and unsafe_truncate_embeddings
    are merge() arguments)."""
    return MergeOptions(random_seed=SEED)


def run_mergesmith(recipe: dict, flags: tuple[str, ...], inputs: dict[str, Path], out: Path) -> MergesmithError | None:
    """Merge `recipe` (model names as the recipe writes them) into `out`; the refusal, if any."""
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    try:
        merge(
            path,
            out,
            model_paths=inputs,
            options=merge_options(flags),
            allow_crimes="allow_crimes" in flags,
            unsafe_truncate_embeddings="unsafe_truncate_embeddings" in flags,
        )
    except MergesmithError as err:
        return err
    return None


def check_scenario(expected: dict, scenario, inputs: dict[str, Path], tmp: Path, *, recipe: dict | None = None) -> None:
    """Accepted by mergekit: accepted here, and the output compared as `scenario.compare` says
    (scenarios.py). Refused by mergekit: refused here too, with a MergesmithError (never a crash)."""
    out = tmp / "out"
    refusal = run_mergesmith(recipe or scenario.recipe, scenario.flags, inputs, out)
    if not expected["accepted"]:
        assert refusal is not None, f"mergekit refused ({expected['error']}), mergesmith merged"
        assert not out.exists(), "a refused merge left its output folder"
        return
    assert refusal is None, f"mergekit merged, mergesmith refused: {refusal}"
    tie_check = scenario.tie_check and resolve_tie_check(scenario.tie_check, inputs)
    check_output(
        expected,
        scenario.compare,
        out,
        tie_check,
        truncated="unsafe_truncate_embeddings" in scenario.flags,
        extra_tensors=scenario.extra_tensors,
    )
    if scenario.extra_tensors:
        check_loads_in_transformers(out, reads=scenario.extra_tensors)


def check_output(
    expected: dict,
    compare: str,
    out: Path,
    tie_check: dict | None = None,
    *,
    truncated: bool = False,
    extra_tensors: tuple[str, ...] = (),
) -> None:
    """`extra_tensors` (Scenario.extra_tensors): names our output must hold and mergekit's must lack;
    every other tensor is compared as `compare` says."""
    config = json.loads((out / "config.json").read_text())
    actual = tensor_digests(out)
    if extra_tensors:
        in_mergekit = sorted(set(extra_tensors) & set(expected["tensors"]))
        assert not in_mergekit, f"mergekit's output holds {in_mergekit}: no longer extra tensors"
        missing = sorted(set(extra_tensors) - set(actual))
        assert not missing, f"the extra tensors {missing} are not in mergesmith's output"
        actual = {name: d for name, d in actual.items() if name not in extra_tensors}
    assert layer_count(config) == expected["config"]["layers"], "layer count"
    if truncated:
        # mergekit keeps the donor's vocab_size after truncating; ours says the rows written
        # (docs/compatibility.md), which the embedding's shape in mergekit's own output gives.
        rows = {d[1][0] for name, d in expected["tensors"].items() if "embed_tokens" in name or "wte" in name}
        assert rows and vocab_size(config) in rows, "vocab_size is not the truncated row count"
    else:
        assert vocab_size(config) == expected["config"]["vocab_size"], "vocab_size"
    assert sorted(actual) == sorted(expected["tensors"]), "tensor names differ from mergekit's"
    shapes = {name: d[:2] for name, d in actual.items()}
    assert shapes == {name: d[:2] for name, d in expected["tensors"].items()}, "dtypes or shapes differ"
    # mergekit's bytes on this CPU's kernels, where they differ from those recorded (AVX2 vs AVX-512:
    # make_compat_expected.py --kernel-variants); only kernel-dependent methods have any
    variants = expected.get("kernel_variants", {}).get(cpu_kernels(), {})
    differing = sorted(
        name for name in actual if actual[name] != expected["tensors"][name] and actual[name] != variants.get(name)
    )
    if compare == "exact":
        assert not differing, (
            f"{len(differing)} of {len(actual)} tensors differ from mergekit's, first: {differing[:3]}"
        )
    elif compare == "ties" and tie_check:
        masked = masked_digests(out, tie_check)
        off_ties = sorted(name for name in masked if masked[name] != expected["masked_tensors"][name])
        assert not off_ties, f"{len(off_ties)} tensors differ from mergekit's away from tied magnitudes: {off_ties[:3]}"
    else:
        check_finite(out)
    if "vocabulary" in expected:
        assert output_vocabulary(out) == expected["vocabulary"], "output vocabulary"
    if "chat" in expected:
        assert rendered_chat(out) == expected["chat"], "rendered chat template"


def cpu_kernels() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


def check_loads_in_transformers(out: Path, *, reads: tuple[str, ...] = ()):
    """The output loads in transformers (the class config.json names) with no missing, unexpected
    or mismatched keys, and the model reads every name in `reads` (a tensor it would miss without
    it). Returns the model."""
    import torch
    import transformers

    config = json.loads((out / "config.json").read_text())
    cls = getattr(transformers, config["architectures"][0])
    model, info = cls.from_pretrained(out, output_loading_info=True, dtype=torch.float32)
    problems = {key: info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys") if info[key]}
    assert not problems, problems
    unread = sorted(set(reads) - set(model.state_dict()))
    assert not unread, f"transformers does not read {unread}"
    return model


def check_finite(out: Path) -> None:
    from safetensors.torch import load_file

    for path in out.glob("*.safetensors"):
        for name, t in load_file(path).items():
            assert t.float().isfinite().all(), f"{name}: not finite"


def with_pending_marks(items: list, names: list[str], pending: dict[str, str]) -> list:
    """pytest params; those pending another branch marked xfail(strict=False): they run, and pass
    once that branch is merged."""
    return [
        pytest.param(item, id=name, marks=pytest.mark.xfail(strict=False, reason=f"pending: {pending[name]}"))
        if name in pending
        else pytest.param(item, id=name)
        for item, name in zip(items, names, strict=True)
    ]


def without_unused_parameters(recipe: dict) -> dict:
    """The recipe less every parameter its method does not have: what mergekit merges, since it
    ignores them (`weight` under slerp, `t` under linear, ...)."""
    from mergesmith.methods import get_method

    known = {p.name for p in get_method(recipe["merge_method"])[0].params}

    def clean(holder: dict) -> dict:
        holder = dict(holder)
        if isinstance(holder.get("parameters"), dict):
            holder["parameters"] = {k: v for k, v in holder["parameters"].items() if k in known}
        return holder

    recipe = clean(recipe)
    if "models" in recipe:
        recipe["models"] = [clean(m) for m in recipe["models"]]
    if "slices" in recipe:
        recipe["slices"] = [{**clean(s), "sources": [clean(src) for src in s["sources"]]} for s in recipe["slices"]]
    return recipe


def tied_positions(base, models: list, density: float, dtype) -> torch.Tensor:
    """Where TIES' magnitude selection meets a tie: elements whose |model - base| (in `dtype`)
    equals that model's keep threshold (the k-th largest magnitude, k = density * numel). Written
    out here with plain torch; the one place mergesmith and mergekit may differ by design."""
    import torch

    mask = torch.zeros(base.shape, dtype=torch.bool)
    for model in models:
        magnitude = (model.to(dtype) - base.to(dtype)).abs().float()
        k = int(density * magnitude.numel())
        if k == 0:
            continue
        threshold = magnitude.flatten().sort(descending=True).values[k - 1]
        mask |= magnitude == threshold
    return mask


def masked_digests(out: Path, tie_inputs: dict) -> dict[str, str]:
    """sha256 of each output tensor with its tied positions (tied_positions) set to zero.
    tie_inputs: {"base": folder, "models": [folders], "density": d, "dtype": "bfloat16"}."""
    import hashlib

    import torch
    from safetensors.torch import load_file

    def tensors(folder: Path) -> dict:
        result: dict = {}
        for path in sorted(Path(folder).glob("*.safetensors")):
            result.update(load_file(path))
        return result

    dtype = getattr(torch, tie_inputs["dtype"])
    base, models = tensors(tie_inputs["base"]), [tensors(m) for m in tie_inputs["models"]]
    result = {}
    for name, t in sorted(tensors(out).items()):
        mask = tied_positions(base[name], [m[name] for m in models], tie_inputs["density"], dtype)
        kept = t.masked_fill(mask, 0)
        raw = kept.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        result[name] = hashlib.sha256(raw).hexdigest()
    return result
