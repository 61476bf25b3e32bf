"""Merge benchmarks on synthetic 48-layer models: mergesmith vs `cp -r` + `sync` vs mergekit 0.1.5.

    python benchmarks/bench.py seed [--size 1g|5g] [--repeats 3] [--workdir DIR] [--mergekit PATH]
    python benchmarks/bench.py ties|linear [--size 1g] ...        # a base and 3 models of SIZE each
    python benchmarks/bench.py dus [--size 1g] ...                # depth up-scaling: 4 overlapping 24-layer ranges
    python benchmarks/bench.py seed --compare-with /path/to/old/src  # also run another mergesmith source tree
    python benchmarks/bench.py ties --ray                           # also run with --executor ray (local instance)
    python benchmarks/bench.py lora [--size 1g] ...               # a `base+adapter` input (rank 16, 7 modules)

Each command runs as a child process; wall time, CPU time and peak RSS are read from that child's
own rusage (os.wait4). Runs alternate between the tools so that cache state treats them alike.
Every command ends with `sync`; inputs are read once before the first run, so every run finds them
in the page cache. mergekit 0.1.5 is installed into its own venv
(benchmarks/.venv-mergekit) unless --mergekit names a `mergekit-yaml`, or --no-mergekit is given.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mergesmith.demo import SEED_MODEL, seed_recipe_text
from mergesmith.synthetic import llama_style_tensors, mistral_config, write_synthetic_model

HERE = Path(__file__).resolve().parent
# 48 layers like Fimbulvetr-11B-v2; widths chosen for about 1.4 GB and 5.2 GB of bf16 weights.
SIZES = {
    "1g": dict(layers=48, hidden=1024, intermediate=3584, heads=8, kv_heads=2, vocab=32000),
    "5g": dict(layers=48, hidden=2048, intermediate=7168, heads=16, kv_heads=4, vocab=32000),
}
MULTI_MODEL_RECIPES = {
    "ties": """models:
  - {model: ft1, parameters: {weight: 0.5, density: 0.5}}
  - {model: ft2, parameters: {weight: 0.3, density: 0.5}}
  - {model: ft3, parameters: {weight: 0.2, density: 0.5}}
base_model: base
merge_method: ties
dtype: bfloat16
""",
    "linear": """models:
  - {model: ft1, parameters: {weight: 0.5}}
  - {model: ft2, parameters: {weight: 0.3}}
  - {model: ft3, parameters: {weight: 0.2}}
merge_method: linear
dtype: bfloat16
""",
}


def measure(command: str) -> tuple[float, float, float]:
    """Run a shell command; return (wall s, CPU s, peak RSS MB) of that child and its children."""
    started = time.perf_counter()
    process = subprocess.Popen(command, shell=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"{command} failed: {process.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def mergekit_yaml(path: str | None) -> str:
    if path:
        return path
    venv = HERE / ".venv-mergekit"
    exe = venv / "bin" / "mergekit-yaml"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "torch==2.13.0", "mergekit==0.1.5"], check=True)
    return str(exe)


def build(folder: Path, size: str, seed: int) -> Path:
    # In a child process: a forked child starts with its parent's resident pages, so a parent that
    # had generated the models would inflate every measured child's peak RSS.
    if not (folder / "config.json").exists():
        subprocess.run(
            [sys.executable, __file__, "--build", str(folder), "--size", size, "--seed", str(seed)], check=True
        )
    return folder


DEPTH_UPSCALING = """slices:
  - sources: [{model: MODEL, layer_range: [0, 24]}]
  - sources: [{model: MODEL, layer_range: [8, 32]}]
  - sources: [{model: MODEL, layer_range: [16, 40]}]
  - sources: [{model: MODEL, layer_range: [24, 48]}]
merge_method: passthrough
dtype: bfloat16
"""


def scenario(name: str, work: Path, size: str) -> tuple[str, dict[str, Path], int]:
    """Recipe text, model name -> folder, and input bytes, for a scenario."""
    if name == "seed":
        models = {SEED_MODEL: build(work / f"fimbulvetr-{size}", size, seed=1)}
        recipe = seed_recipe_text()
    elif name == "lora":
        models = {"base": build(work / f"base-{size}", size, seed=1)}
        adapter = work / f"adapter-{size}"
        if not (adapter / "adapter_config.json").exists():
            subprocess.run([sys.executable, __file__, "--build-adapter", str(adapter), "--size", size], check=True)
        models["adapter"] = adapter
        recipe = "models:\n  - model: base+adapter\nmerge_method: passthrough\ndtype: bfloat16\n"
    elif name == "dus":
        models = {SEED_MODEL: build(work / f"fimbulvetr-{size}", size, seed=1)}
        recipe = DEPTH_UPSCALING.replace("MODEL", SEED_MODEL)
    else:
        models = {m: build(work / f"{m}-{size}", size, seed=i) for i, m in enumerate(("base", "ft1", "ft2", "ft3"))}
        recipe = MULTI_MODEL_RECIPES[name]
        if "base_model" not in recipe:
            del models["base"]
    size_bytes = sum(p.stat().st_size for m in models.values() for p in m.glob("*.safetensors"))
    return recipe, models, size_bytes


LORA_RANK = 16
LORA_MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                "mlp.up_proj", "mlp.down_proj")  # fmt: skip


def build_adapter(folder: Path, size: str) -> Path:
    """A PEFT LoRA adapter (rank 16 on every linear layer, float32, random A and B) of SIZE's model."""
    import json

    import torch
    from safetensors.torch import save_file

    config = mistral_config(**SIZES[size])
    shapes = {t.output: t.shape for t in llama_style_tensors(config)}
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for module in LORA_MODULES:
            out_features, in_features = shapes[f"model.layers.{layer}.{module}.weight"]
            key = f"base_model.model.model.layers.{layer}.{module}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(LORA_RANK, in_features, generator=generator) * 0.01
            tensors[f"{key}.lora_B.weight"] = torch.randn(out_features, LORA_RANK, generator=generator) * 0.01
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    settings = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": LORA_RANK,
        "lora_alpha": 2 * LORA_RANK,
        "target_modules": sorted(m.split(".")[-1] for m in LORA_MODULES),
        "base_model_name_or_path": "base",
    }
    (folder / "adapter_config.json").write_text(json.dumps(settings, indent=2))
    return folder


def warm_page_cache(folders) -> None:
    """Read every input once before timing, so that no tool's first run pays for reading from disk
    what later runs find in the page cache (a 5.5 GB model read cold took a merge 22 s, warm 14 s)."""
    for path in (p for folder in folders for p in sorted(Path(folder).iterdir()) if p.is_file()):
        with open(path, "rb", buffering=0) as file:
            while file.read(16 * 2**20):
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", choices=["seed", "dus", "lora", *MULTI_MODEL_RECIPES], default="seed")
    parser.add_argument("--size", choices=sorted(SIZES), default="1g")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--mergekit")
    parser.add_argument("--no-mergekit", action="store_true")
    parser.add_argument("--compare-with", type=Path, help="another mergesmith's src folder, run in the same rounds")
    parser.add_argument("--ray", action="store_true", help="also run mergesmith with --executor ray")
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--build-adapter", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_adapter:
        build_adapter(args.build_adapter, args.size)
        return
    if args.build:
        config = mistral_config(**SIZES[args.size])
        write_synthetic_model(args.build, config, llama_style_tensors(config), seed=args.seed)
        return

    work = Path(args.workdir or tempfile.mkdtemp(prefix="mergesmith-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    recipe, models, input_bytes = scenario(args.scenario, work, args.size)
    (work / f"{args.scenario}.yaml").write_text(recipe)
    mk_recipe = recipe
    for name, folder in models.items():  # mergekit has no --model-path: write the folders in
        mk_recipe = re.sub(rf"(model:\s*|\+){re.escape(name)}(?=[\s,}}+]|$)", rf"\g<1>{folder}", mk_recipe, flags=re.M)
    (work / f"{args.scenario}-mergekit.yaml").write_text(mk_recipe)
    paths = " ".join(f"--model-path {name}={folder}" for name, folder in models.items())
    mergesmith = shutil.which("mergesmith") or "mergesmith"
    tools = {
        "mergesmith": f"{mergesmith} -q merge {work}/{args.scenario}.yaml {work}/out-ms --overwrite {paths} && sync",
        "cp -r + sync": f"rm -rf {work}/out-cp && mkdir {work}/out-cp && "
        + " && ".join(f"cp -r {m} {work}/out-cp/" for m in models.values())
        + " && sync",
    }
    merge_args = f"-q merge {work}/{args.scenario}.yaml {work}/out-ms --overwrite {paths} && sync"
    if args.ray:
        tools["mergesmith --executor ray"] = f"{mergesmith} {merge_args.replace(' merge ', ' merge --executor ray ')}"
    if args.compare_with:
        cli = f"PYTHONPATH={args.compare_with} {sys.executable} -c 'from mergesmith.cli import main; main()'"
        tools[f"mergesmith ({args.compare_with})"] = f"{cli} {merge_args}"
    if not args.no_mergekit:
        tools["mergekit 0.1.5"] = (
            f"rm -rf {work}/out-mk {work}/mk-lora-cache && {mergekit_yaml(args.mergekit)} "
            f"{work}/{args.scenario}-mergekit.yaml {work}/out-mk --quiet "
            f"--lora-merge-cache {work}/mk-lora-cache && sync"
        )
    warm_page_cache(models.values())
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in tools}
    for _ in range(args.repeats):
        for name, command in tools.items():
            results[name].append(measure(command))
            wall, cpu, rss = results[name][-1]
            print(f"{name}: {wall:.2f} s wall, {cpu:.2f} s CPU, {rss:.0f} MB", file=sys.stderr, flush=True)

    print(f"{args.scenario}, synthetic 48-layer models, {input_bytes / 1e9:.2f} GB in, {args.repeats} runs, medians\n")
    print("| tool | wall s | CPU s | peak RSS MB | wall vs cp | mergekit wall / this |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    median = {name: [statistics.median(r[i] for r in runs) for i in range(3)] for name, runs in results.items()}
    for name, (wall, cpu, rss) in median.items():
        versus = f"{median['mergekit 0.1.5'][0] / wall:.2f}x" if "mergekit 0.1.5" in median else "-"
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {rss:.0f} | {wall / median['cp -r + sync'][0]:.2f}x | {versus} |")


if __name__ == "__main__":
    main()
