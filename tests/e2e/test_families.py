"""Every model family of the fixture factory, merged four ways: a sliced passthrough with a filtered
scale, linear, slerp and TIES. The output must load in transformers with no missing, unexpected or
mismatched keys, each output layer must hold exactly its source layer's tensors, and every tensor
must equal an independent computation in plain torch on the inputs.

Which stack a recipe's layer_range counts is found here from transformers' own model (the layers
under get_decoder(), get_encoder()), not from mergesmith.
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from factory import _PINNED as PINNED
from factory import ARCHITECTURES, AUTO_CLASS, cached_model, derive_model
from mergesmith.api import merge
from mergesmith.errors import PlanError

FAMILIES = sorted(ARCHITECTURES)
ENCODER_DECODERS = {"t5", "t5_gated", "whisper"}
# output layers from source layers 0, 1, 1, 3, 3: two repeated, one dropped, one more than the source
CUT = [0, 1, 1, 3, 3]
SLICES = (
    "- sources: [{model: a, layer_range: [0, 2]}]\n- sources: [{model: a, layer_range: [1, 2]}]\n"
    "- sources: [{model: a, layer_range: [3, 4]}]\n- sources: [{model: a, layer_range: [3, 4]}]\n"
)
# Families whose layers are of kinds a rule of the config fixes by position (Jamba), or with
# tensors shaped by the layer count (Gemma 3n): the cut above cannot be described, so it is refused,
# naming the setting or tensor; the second cut can, and merges.
REFUSED = {
    # Gemma 3n's per-layer embeddings hold a block of columns per layer: only the layers in order fit
    "gemma3n": ("embed_tokens_per_layer", "- sources: [{model: a, layer_range: [0, 4]}]\n", [0, 1, 2, 3]),
    "jamba": (
        "attn_layer_period",
        "- sources: [{model: a, layer_range: [0, 2]}]\n- sources: [{model: a, layer_range: [0, 4]}]\n",
        [0, 1, 0, 1, 2, 3],
    ),
}
SCALE = "  scale:\n  - filter: mlp\n    value: 0.5\n  - value: 1.0\n"


@cache
def _models(arch: str) -> tuple[Path, Path, Path]:
    a = cached_model(arch)
    b = derive_model(a, a.parent / f"{a.name}-b", seed=1)
    c = derive_model(a, a.parent / f"{a.name}-c", seed=2)
    return a, b, c


@cache
def _stacks(arch: str) -> dict[str, str]:
    """Role -> the layer prefix in the checkpoint, from transformers: the ModuleList of layers under
    get_decoder() (and get_encoder() of an encoder-decoder), its module name turned into the name
    checkpoints carry by transformers' own save-time conversion (Qwen2-VL's model.language_model.layers
    is saved as model.layers)."""
    folder = cached_model(arch)
    model = _meta_model(arch, folder)
    names = {id(module): name for name, module in model.named_modules()}
    found = {}
    parts = {"decoder": model.get_decoder()}
    if arch in ENCODER_DECODERS:
        parts["encoder"] = model.get_encoder()
    for role, part in parts.items():
        if not isinstance(part, torch.nn.Module) or not list(part.children()):
            part = model  # an encoder (ModernBERT's get_decoder() is its head): the model's one stack
        lists = [m for m in part.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == 4]
        prefix = names[id(lists[0])]
        found[role] = prefix if arch in PINNED else _saved_prefix(model, prefix)
    return found


def _meta_model(arch: str, folder: Path) -> torch.nn.Module:
    import transformers
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        return getattr(transformers, AUTO_CLASS[arch]).from_config(config)


def _saved_prefix(model: torch.nn.Module, prefix: str) -> str:
    """The checkpoint prefix of the layers at module path `prefix`: a tensor of layers 0 and 1 run
    through save_pretrained's renaming; the names differ at the layer index."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import revert_weight_conversion

    state = model.state_dict()
    model._weight_conversions = get_model_conversion_mapping(model, add_legacy=False)
    rests = [n[len(prefix) + 3 :] for n in state if n.startswith(prefix + ".0.")]
    for rest in (r for r in rests if f"{prefix}.1.{r}" in state):
        saved = [
            revert_weight_conversion(model, {f"{prefix}.{i}.{rest}": state[f"{prefix}.{i}.{rest}"]}) for i in (0, 1)
        ]
        if all(len(s) == 1 for s in saved):  # not a fused tensor saved as several
            first, second = (next(iter(s)) for s in saved)
            cut = next(i for i, (x, y) in enumerate(zip(first, second)) if x != y)
            return first[: cut - 1]
    raise AssertionError(f"no tensor of {prefix} keeps one name when saved")


def _recipe(arch: str, method: str) -> str:
    if method == "passthrough":
        if arch in ENCODER_DECODERS:
            slices = SLICES.replace("\n- ", "\n    - ").replace("- sources", "    - sources", 1)
            body = f"modules:\n  encoder:\n    slices:\n{slices}  decoder:\n    slices:\n{slices}"
        else:
            body = f"slices:\n{REFUSED[arch][1] if arch in REFUSED else SLICES}"
        return body + f"merge_method: passthrough\nparameters:\n{SCALE}"
    models = {
        "linear": "models:\n- {model: a, parameters: {weight: 0.3}}\n- {model: b, parameters: {weight: 0.7}}\n",
        "slerp": "models:\n- {model: a}\n- {model: b}\nbase_model: a\nparameters: {t: 0.3}\n",
        "ties": "models:\n- {model: a, parameters: {weight: 1.0}}\n- {model: b, parameters: {weight: 1.0}}\n"
        "base_model: c\nparameters: {density: 0.5}\n",
    }[method]
    return models + f"merge_method: {method}\ndtype: float32\n"


def _merge(tmp_path: Path, arch: str, method: str) -> Path:
    a, b, c = _models(arch)
    (tmp_path / "r.yaml").write_text(_recipe(arch, method))
    out = tmp_path / "out"
    merge(tmp_path / "r.yaml", out, model_paths={"a": a, "b": b, "c": c})
    return out


def _loads_cleanly(arch: str, out: Path, layers: int = 4) -> None:
    """transformers builds the model from the output's config and finds every tensor it expects,
    no more, no fewer; each cut stack has the output's layer count."""
    import transformers

    cls = getattr(transformers, AUTO_CLASS[arch])
    model, info = cls.from_pretrained(out, output_loading_info=True, dtype=torch.float32)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    counts = {len(m) for m in model.modules() if isinstance(m, torch.nn.ModuleList)}
    assert layers in counts  # the cut stacks were built with the output's layer count


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        out.update(load_file(path))
    return out


@pytest.mark.parametrize("arch", FAMILIES)
def test_sliced_passthrough_with_a_filtered_scale(tmp_path, arch):
    if arch in REFUSED:
        key, _, cut = REFUSED[arch]
        a, _, _ = _models(arch)
        (tmp_path / "bad.yaml").write_text(f"slices:\n{SLICES}merge_method: passthrough\n")
        with pytest.raises(PlanError) as err:
            merge(tmp_path / "bad.yaml", tmp_path / "bad", model_paths={"a": a})
        assert key in err.value.message and not (tmp_path / "bad").exists()
    else:
        cut = CUT
    out = _merge(tmp_path, arch, "passthrough")
    source, merged = _tensors(_models(arch)[0]), _tensors(out)
    cut_prefixes = list(_stacks(arch).values())
    expected: dict[str, str] = {}  # output name -> source name
    for name in source:
        prefix = next((p for p in cut_prefixes if name.startswith(p + ".")), None)
        if prefix is None:
            expected[name] = name
            continue
        layer, rest = name[len(prefix) + 1 :].split(".", 1)
        for out_layer, src_layer in enumerate(cut):
            # T5's relative position bias is held by block 0 alone: no other output block has it
            if int(layer) == src_layer and (out_layer == 0 or "relative_attention_bias" not in rest):
                expected[f"{prefix}.{out_layer}.{rest}"] = name
    assert set(merged) == set(expected)  # every output layer holds its source layer's tensors
    for out_name, src_name in expected.items():
        tensor = source[src_name]
        if tensor.is_floating_point():
            tensor = (tensor.float() * (0.5 if "mlp" in src_name else 1.0)).to(tensor.dtype)
        assert torch.equal(merged[out_name], tensor), out_name
    _loads_cleanly(arch, out, layers=len(cut))


@pytest.mark.parametrize("arch", FAMILIES)
def test_linear(tmp_path, arch):
    out = _merge(tmp_path, arch, "linear")
    a, b = (_tensors(m) for m in _models(arch)[:2])
    merged = _tensors(out)
    assert set(merged) == set(a)
    for name, x in a.items():
        if not x.is_floating_point():
            assert torch.equal(merged[name], x)
            continue
        expected = (0.3 * x.double() + 0.7 * b[name].double()) / 1.0
        torch.testing.assert_close(merged[name].double(), expected, rtol=1e-6, atol=1e-7, msg=name)
    _loads_cleanly(arch, out)


def _slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation of the flattened tensors (mergekit's: a near-collinear pair is lerped)."""
    x, y = a.double().flatten(), b.double().flatten()
    nx, ny = x.norm(), y.norm()
    nx, ny = (nx if nx > 1e-8 else 1.0), (ny if ny > 1e-8 else 1.0)
    dot = float(torch.dot(x / nx, y / ny).clamp(-1, 1))
    if abs(dot) > 0.9995:
        return ((1 - t) * x + t * y).reshape(a.shape)
    theta = math.acos(dot)
    return ((math.sin((1 - t) * theta) * x + math.sin(t * theta) * y) / math.sin(theta)).reshape(a.shape)


@pytest.mark.parametrize("arch", FAMILIES)
def test_slerp(tmp_path, arch):
    out = _merge(tmp_path, arch, "slerp")
    a, b = (_tensors(m) for m in _models(arch)[:2])
    merged = _tensors(out)
    assert set(merged) == set(a)
    for name, x in a.items():
        if x.is_floating_point():
            torch.testing.assert_close(merged[name].double(), _slerp(x, b[name], 0.3), rtol=1e-5, atol=1e-6, msg=name)
    _loads_cleanly(arch, out)


def _ties(base: torch.Tensor, models: list[torch.Tensor], density: float) -> torch.Tensor:
    """TIES: each delta keeps its largest `density` share by magnitude (at least one element), a
    sign is elected by the sum, and the agreeing deltas are averaged (weights 1)."""
    trimmed = []
    for model in models:
        delta = (model.double() - base.double()).flatten()
        keep = max(1, int(density * delta.numel()))
        # equal magnitudes: the first by position is dropped first (mergesmith's documented rule)
        order = delta.abs().argsort(stable=True)
        mask = torch.ones_like(delta)
        mask[order[: delta.numel() - keep]] = 0
        trimmed.append(delta * mask)
    stacked = torch.stack(trimmed)
    elected = torch.where(stacked.sum(0) >= 0, 1.0, -1.0)
    agree = (torch.sign(stacked) == elected).double()
    count = agree.sum(0)
    merged = (stacked * agree).sum(0) / torch.where(count == 0, 1, count)
    return (base.double().flatten() + merged).reshape(base.shape)


@pytest.mark.parametrize("arch", FAMILIES)
def test_ties(tmp_path, arch):
    out = _merge(tmp_path, arch, "ties")
    a, b, c = (_tensors(m) for m in _models(arch))
    merged = _tensors(out)
    assert set(merged) == set(c)
    for name, base in c.items():
        if base.is_floating_point() and base.numel():
            expected = _ties(base, [a[name], b[name]], 0.5)
            torch.testing.assert_close(merged[name].double(), expected, rtol=1e-5, atol=1e-6, msg=name)
    _loads_cleanly(arch, out)
