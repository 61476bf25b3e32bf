"""GPU machine benchmark (one NVIDIA GPU, no network): mergesmith vs `cp -r` + `sync` vs mergekit 0.1.5.

    python benchmarks/gpu.py --workdir /tmp/gpu-bench [--mergekit-yaml CMD] [--repeats 2] [--budget-s 300]
                             [--baseline-src OLD/src]   # also time another mergesmith source tree

Builds synthetic 48-layer models with their values drawn on the GPU (an 8 GB class model for the
seed recipe; a base and three 2.6 GB models for `ties`), then times in one run, alternating: the
seed recipe (mergesmith, cp, mergekit) and `ties` (mergesmith --device cuda, cp, mergekit --cuda).
mergekit 0.1.5 must be importable (carried as wheels: see benchmarks/README.md). Prints markdown
tables; with --json PATH also writes the figures there. Stops repeating once --budget-s is spent.

Bytecode: the lent GPU machines set PYTHONDONTWRITEBYTECODE=1 and their torch has no __pycache__,
so every process there compiles torch from source (about 5 s of each tool's time). An installed
system has bytecode; to measure as it would, run under
`env -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX=/tmp/pycache` after one warm-up import.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import MULTI_MODEL_RECIPES, measure  # noqa: E402

from mergesmith.demo import SEED_MODEL, seed_recipe_text  # noqa: E402
from mergesmith.synthetic import llama_style_tensors, mistral_config, write_synthetic_model  # noqa: E402

# 48 layers each; about 7.9 GB and 2.6 GB of bf16 weights.
SIZES = {
    "8g": dict(layers=48, hidden=2560, intermediate=8192, heads=20, kv_heads=4, vocab=32000),
    "2.6g": dict(layers=48, hidden=1536, intermediate=4096, heads=12, kv_heads=4, vocab=32000),
}
# --smoke: the same script on tiny models, on the CPU (to check it before spending GPU time)
SMOKE = dict(layers=48, hidden=64, intermediate=128, heads=4, kv_heads=2, vocab=256)


def build(folder: Path, size: str, seed: int, device: str) -> Path:
    # In a child process: a child forked from a parent that holds torch and the models' buffers
    # starts with those pages resident, which would inflate every measured peak RSS.
    if not (folder / "config.json").exists():
        command = [sys.executable, __file__, "--build", str(folder), "--size", size, "--seed", str(seed)]
        subprocess.run([*command, "--device", device], check=True)
    return folder


def build_here(folder: Path, size: str, seed: int, device: str) -> None:
    config = mistral_config(**(SIZES[size] if device != "cpu" else SMOKE))
    write_synthetic_model(folder, config, llama_style_tensors(config), seed=seed, device=device)


def for_mergekit(recipe: str, models: dict[str, Path]) -> str:
    for name, folder in models.items():  # mergekit has no --model-path: write the folders in
        recipe = re.sub(rf"(model:\s*){re.escape(name)}(?=[\s,}}]|$)", rf"\g<1>{folder}", recipe, flags=re.M)
    return recipe


def scenario_tools(
    name: str, work: Path, mergekit: str, gpu: str, workers: int | None, baseline: Path | None = None
) -> tuple[dict[str, str], float]:
    if name == "seed":
        models = {SEED_MODEL: build(work / "seed-8g", "8g", 1, gpu)}
        recipe, device, cuda = seed_recipe_text(), "cpu", ""
    else:
        models = {m: build(work / f"{m}-2.6g", "2.6g", i, gpu) for i, m in enumerate(("base", "ft1", "ft2", "ft3"))}
        recipe, device, cuda = MULTI_MODEL_RECIPES["ties"], gpu, " --cuda" if gpu != "cpu" else ""
    (work / f"{name}.yaml").write_text(recipe)
    (work / f"{name}-mergekit.yaml").write_text(for_mergekit(recipe, models))
    size = sum(p.stat().st_size for m in models.values() for p in m.glob("*.safetensors")) / 1e9
    paths = " ".join(f"--model-path {n}={f}" for n, f in models.items())
    out = work / "out"
    merge = f"-m mergesmith.cli -q merge {work}/{name}.yaml {out} --device {device} {paths}"
    merge += f" --workers {workers}" if workers else ""
    tools = {
        f"mergesmith (--device {device})": f"rm -rf {out} && {sys.executable} {merge} && sync",
        f"cp -r + sync ({size:.1f} GB)": f"rm -rf {out} && mkdir {out} && "
        + " && ".join(f"cp -r {m} {out}/" for m in models.values())
        + " && sync",
        f"mergekit 0.1.5{cuda}": f"rm -rf {out} && {mergekit} {work}/{name}-mergekit.yaml {out} --quiet{cuda} && sync",
    }
    if baseline:  # the same merge by another version of mergesmith, in the same run
        tools[f"mergesmith baseline (--device {device})"] = (
            f"rm -rf {out} && PYTHONPATH={baseline}:$PYTHONPATH {sys.executable} {merge} && sync"
        )
    return tools, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--mergekit-yaml", default=f"{sys.executable} -m mergekit.scripts.run_yaml")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=300)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", choices=["seed", "ties"], help="run one scenario")
    parser.add_argument("--workers", type=int, help="mergesmith --workers (default: its own)")
    parser.add_argument("--baseline-src", type=Path, help="another mergesmith's src folder, timed alongside")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: check the script itself")
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        build_here(args.build, args.size, args.seed, args.device)
        return
    gpu = "cpu" if args.smoke else "cuda"
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    scenarios = {}
    for name in [args.only] if args.only else ["seed", "ties"]:
        built = time.perf_counter()
        tools, size = scenario_tools(name, args.workdir, args.mergekit_yaml, gpu, args.workers, args.baseline_src)
        print(f"{name}: inputs {size:.2f} GB built in {time.perf_counter() - built:.0f} s", flush=True)
        scenarios[name] = (tools, size)
    results: dict[str, dict[str, list]] = {name: {t: [] for t in tools} for name, (tools, _) in scenarios.items()}
    for repeat in range(args.repeats):
        if repeat and time.perf_counter() - started > args.budget_s:
            break
        for name, (tools, _) in scenarios.items():
            for tool, command in tools.items():
                results[name][tool].append(measure(command))
                print(f"{name} {tool}: {results[name][tool][-1]}", flush=True)
    shutil.rmtree(args.workdir / "out", ignore_errors=True)

    summary = {}
    for name, runs in results.items():
        median = {tool: [statistics.median(r[i] for r in rs) for i in range(3)] for tool, rs in runs.items()}
        cp = next(v for t, v in median.items() if t.startswith("cp"))[0]
        mk = next(v for t, v in median.items() if t.startswith("mergekit"))[0]
        print(f"\n{name}, {scenarios[name][1]:.2f} GB in, {len(next(iter(runs.values())))} runs, medians\n")
        print("| tool | wall s | CPU s | peak RSS MB | wall vs cp | mergekit wall / this |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for tool, (wall, cpu, rss) in median.items():
            print(f"| {tool} | {wall:.2f} | {cpu:.2f} | {rss:.0f} | {wall / cp:.2f}x | {mk / wall:.2f}x |")
        summary[name] = {tool: dict(zip(("wall_s", "cpu_s", "rss_mb"), v)) for tool, v in median.items()}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
