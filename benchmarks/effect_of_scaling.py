"""The seed card's idea, tested on SmolLM2-135M-Instruct (30 layers): numbers for docs/effect-of-scaling.md.

    python benchmarks/effect_of_scaling.py [--workdir DIR] [--plots docs/img]

Variants: the seed's ramp (o_proj/down_proj x1.5 up to x4.0 by depth, last layer dropped) mapped
onto 30 layers; a milder ramp (x1.0 to x1.5); a depth up-scaled model (layers 0-23 then 6-29, 48
layers, no scaling). Each is measured against the original with `mergesmith evaluate`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from mergesmith.api import merge  # noqa: E402
from mergesmith.evaluate import evaluate, perplexity, sample_text  # noqa: E402
from mergesmith.plots import plot_evaluation  # noqa: E402
from real_model import build_smollm2  # noqa: E402

GPL3 = HERE.parent.parent / "shared" / "fixtures" / "gpl-3.txt"
# The seed: 48 layers in slices of 4; scale per slice (None: unscaled); layer 47 dropped.
SEED_SCALES = [None, 1.5, 1.5, 2.0, 2.0, 2.5, 2.5, 3.0, 3.0, 3.5, 3.5, 4.0]


def seed_ramp_recipe(layers: int = 30) -> str:
    """The seed's per-layer scale at the same relative depth, for a model of `layers` layers."""
    kept = round(layers * 47 / 48)  # the seed keeps 47 of 48
    scales = [SEED_SCALES[min(11, int(k * 48 / layers) // 4)] for k in range(kept)]
    slices, start = [], 0
    for k in range(1, kept + 1):
        if k == kept or scales[k] != scales[start]:
            slices.append(_slice(start, k, scales[start]))
            start = k
    return "slices:\n" + "".join(slices) + "merge_method: passthrough\ndtype: bfloat16\n"


def _slice(start: int, end: int, scale: float | None) -> str:
    text = f"  - sources:\n      - model: smollm2\n        layer_range: [{start}, {end}]\n"
    if scale is not None:
        text += (
            f"        parameters:\n          scale:\n            - {{filter: o_proj, value: {scale}}}\n"
            f"            - {{filter: down_proj, value: {scale}}}\n"
        )
    return text


VARIANTS = {
    "seed-ramp": seed_ramp_recipe(),
    "mild-ramp": """slices:
  - sources: [{model: smollm2, layer_range: [0, 30]}]
    parameters:
      scale:
        - {filter: o_proj, value: [1.0, 1.5]}
        - {filter: down_proj, value: [1.0, 1.5]}
merge_method: passthrough
""",
    "depth-upscaled": """slices:
  - sources: [{model: smollm2, layer_range: [0, 24]}]
  - sources: [{model: smollm2, layer_range: [6, 30]}]
merge_method: passthrough
""",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--plots", type=Path, default=HERE.parent / "docs" / "img")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mergesmith-scaling-"))
    smol = build_smollm2(work / "cache")
    gpl = GPL3.read_text()
    print(
        "| variant | layers | perplexity (sample) | perplexity (GPL-3) | KL vs original | top-1 agreement "
        "| final residual norm | eval s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = {"original": None, **VARIANTS}
    for name, recipe in rows.items():
        folder = smol
        if recipe is not None:
            (work / f"{name}.yaml").write_text(recipe)
            merge(work / f"{name}.yaml", work / name, model_paths={"smollm2": smol})
            folder = work / name
        started = time.perf_counter()
        result = evaluate(folder, base_dir=smol, text=sample_text(), max_tokens=2048)
        seconds = time.perf_counter() - started
        plot_evaluation(result, args.plots / name)
        gpl_ppl = perplexity(folder, gpl).value
        profile = result.model.profile
        print(
            f"| {name} | {len(profile.residual_norm)} | {result.model.perplexity:.2f} | {gpl_ppl:.2f} | "
            f"{result.kl_mean:.3f} | {result.top1_agreement:.1%} | {profile.residual_norm[-1]:.0f} | {seconds:.0f} |"
        )
        for prompt, answer in zip(result.prompts, result.model.completions):
            print(f"<!-- {name}: {prompt} -> {answer!r} -->")


if __name__ == "__main__":
    main()
