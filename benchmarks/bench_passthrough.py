"""Seed recipe on a synthetic 48-layer Mistral-shaped model: mergesmith vs `cp -r` + `sync` vs mergekit.

    python benchmarks/bench_passthrough.py [--size 1g|5g] [--repeats 3] [--workdir DIR] [--mergekit PATH]

Each command runs as a child process; wall time, CPU time and peak RSS are read from that child's
own rusage (os.wait4). Runs alternate between the tools so that cache state treats them alike.
mergekit 0.1.5 is installed into its own venv (benchmarks/.venv-mergekit) unless --mergekit names
a `mergekit-yaml`, or --no-mergekit is given.
"""

from __future__ import annotations

import argparse
import os
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
# 48 layers like Fimbulvetr-11B-v2; width chosen for about 1.3 GB and 5.2 GB of bf16 weights.
SIZES = {
    "1g": dict(layers=48, hidden=1024, intermediate=3584, heads=8, kv_heads=2, vocab=32000),
    "5g": dict(layers=48, hidden=2048, intermediate=7168, heads=16, kv_heads=4, vocab=32000),
}


def measure(command: list[str] | str) -> tuple[float, float, float]:
    """Run a command; return (wall seconds, CPU seconds, peak RSS in MB) of that child alone."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, shell=isinstance(command, str), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="1g")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--mergekit")
    parser.add_argument("--no-mergekit", action="store_true")
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        config = mistral_config(**SIZES[args.size])
        write_synthetic_model(args.build, config, llama_style_tensors(config), seed=1)
        return

    work = Path(args.workdir or tempfile.mkdtemp(prefix="mergesmith-bench-"))
    model = work / f"fimbulvetr-{args.size}"
    if not (model / "config.json").exists():
        # In a child process: a forked child starts with its parent's resident pages, so a parent
        # that had generated the model would inflate every measured child's peak RSS.
        subprocess.run([sys.executable, __file__, "--build", str(model), "--size", args.size], check=True)
    size_gb = sum(p.stat().st_size for p in model.glob("*.safetensors")) / 1e9
    recipe = work / "seed.yaml"
    recipe.write_text(seed_recipe_text())
    mk_recipe = work / "seed-mergekit.yaml"
    mk_recipe.write_text(seed_recipe_text().replace(SEED_MODEL, str(model)))  # mergekit has no --model-path

    tools = {
        "mergesmith": f"{shutil.which('mergesmith') or 'mergesmith'} -q merge {recipe} {work}/out-ms --overwrite "
        f"--model-path {SEED_MODEL}={model} && sync",
        "cp -r + sync": f"rm -rf {work}/out-cp && cp -r {model} {work}/out-cp && sync",
    }
    if not args.no_mergekit:
        tools["mergekit 0.1.5"] = (
            f"rm -rf {work}/out-mk && {mergekit_yaml(args.mergekit)} {mk_recipe} {work}/out-mk --quiet && sync"
        )
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in tools}
    for _ in range(args.repeats):
        for name, command in tools.items():
            results[name].append(measure(command))

    print(f"seed recipe, synthetic 48-layer model, {size_gb:.2f} GB bf16, {args.repeats} runs, medians\n")
    print("| tool | wall s | CPU s | peak RSS MB | wall vs cp |")
    print("| --- | ---: | ---: | ---: | ---: |")
    cp_wall = statistics.median(r[0] for r in results["cp -r + sync"])
    for name, runs in results.items():
        wall, cpu, rss = (statistics.median(r[i] for r in runs) for i in range(3))
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {rss:.0f} | {wall / cp_wall:.2f}x |")


if __name__ == "__main__":
    main()
