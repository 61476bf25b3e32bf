"""`mergesmith demo`: the seed recipe, unchanged, on a small random Fimbulvetr-shaped model, offline."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from mergesmith.errors import MergesmithError
from mergesmith.synthetic import llama_style_tensors, mistral_config, write_synthetic_model

SEED_MODEL = "Sao10K/Fimbulvetr-11B-v2"
SEED_RECIPE = "fimbulvetr-11b-v2-47-layers.yaml"

# Fimbulvetr-11B-v2's shape (48 layers, 32 query / 8 key-value heads, MLP 3.5x wide), made narrow.
DEMO_SHAPE = dict(layers=48, hidden=64, intermediate=224, heads=8, kv_heads=2, vocab=1024)


@dataclass(frozen=True)
class DemoCheck:
    tensors: int
    layers: int
    scaled: int  # tensors equal to their source times a scale != 1
    copied: int  # tensors equal to their source, byte for byte


def seed_recipe_text() -> str:
    return resources.files("mergesmith.data").joinpath(SEED_RECIPE).read_text(encoding="utf-8")


def build_demo_model(folder: Path) -> Path:
    config = mistral_config(**DEMO_SHAPE)
    return write_synthetic_model(folder, config, llama_style_tensors(config), seed=11)


def check_demo_output(source: Path, merged: Path) -> DemoCheck:
    """Check the merge against the recipe, computed here independently with safetensors and torch."""
    from safetensors.torch import load_file

    config = json.loads((merged / "config.json").read_text())
    if config["num_hidden_layers"] != 47:
        raise MergesmithError(f"demo check: num_hidden_layers is {config['num_hidden_layers']}, expected 47")
    inputs, outputs = load_file(source / "model.safetensors"), load_file(merged / "model.safetensors")
    # Output layer k comes from source layer k (the recipe keeps layers 0-46 in order); the scale
    # of layer k is 1.5, 1.5, 2.0, 2.0, ... 4.0 for slices of four layers, none for the first slice.
    scales = [None] * 4 + [s for s in (1.5, 1.5, 2.0, 2.0, 2.5, 2.5, 3.0, 3.0, 3.5, 3.5) for _ in range(4)] + [4.0] * 3
    scaled = copied = 0
    for name, tensor in outputs.items():
        scale = None
        if name.startswith("model.layers."):
            scale = scales[int(name.split(".")[2])]
            if not ("o_proj" in name or "down_proj" in name):
                scale = None
        expected = inputs[name] if scale is None else inputs[name] * scale
        if not expected.equal(tensor):
            raise MergesmithError(f"demo check: {name} differs from its source times {scale}")
        scaled, copied = (scaled + 1, copied) if scale else (scaled, copied + 1)
    if set(outputs) != {n for n in inputs if not n.startswith("model.layers.47.")}:
        raise MergesmithError("demo check: the merged model's tensor names are not the source's minus layer 47")
    return DemoCheck(len(outputs), config["num_hidden_layers"], scaled, copied)
