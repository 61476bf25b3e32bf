"""LoRA extraction and MoE assembly on synthetic 48-layer models: mergesmith vs mergekit 0.1.5's
own tools (mergekit-extract-lora, mergekit-moe). Wall time, CPU time and peak RSS of each child.

    python benchmarks/toolbox.py extract|moe [--size 1g] [--repeats 1] [--workdir DIR] [--mergekit-bin DIR]

(A `base+adapter` input is `python benchmarks/bench.py lora`.)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench import HERE, SIZES, build, measure, warm_page_cache

sys.path.insert(0, str(HERE.parent / "tests"))
from factory import write_tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=["extract", "moe"])
    parser.add_argument("--size", choices=sorted(SIZES), default="1g")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--mergekit-bin", type=Path, default=Path("benchmarks/.venv-mergekit/bin"))
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mergesmith-toolbox-"))
    work.mkdir(parents=True, exist_ok=True)
    base = build(work / f"base-{args.size}", args.size, seed=1)
    tuned = build(work / f"ft-{args.size}", args.size, seed=2)
    for folder in (base, tuned):  # mergekit-moe loads the base's tokenizer even for random gates
        if not (folder / "tokenizer.json").exists():
            write_tokenizer(folder)
    mergesmith = shutil.which("mergesmith") or f"{sys.executable} -m mergesmith.cli"
    mk = args.mergekit_bin
    if args.scenario == "extract":
        tools = {
            "mergesmith lora extract": f"{mergesmith} -q lora extract --model {tuned} --base {base} {work}/out-ms "
            f"--rank {args.rank} --overwrite",
            "mergekit-extract-lora": f"rm -rf {work}/out-mk && {mk}/mergekit-extract-lora --model {tuned} "
            f"--base-model {base} --out-path {work}/out-mk --max-rank {args.rank} --quiet",
        }
    else:
        config = (
            f"base_model: {base}\ngate_mode: random\ndtype: bfloat16\nexperts_per_token: 2\nexperts:\n"
            f"  - source_model: {base}\n  - source_model: {tuned}\n"
        )
        (work / "moe.yaml").write_text(config)
        tools = {
            "mergesmith moe": f"{mergesmith} -q moe {work}/moe.yaml {work}/out-ms --overwrite && sync",
            "mergekit-moe": f"rm -rf {work}/out-mk && {mk}/mergekit-moe {work}/moe.yaml {work}/out-mk --quiet && sync",
        }
    warm_page_cache([base, tuned])
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in tools}
    for _ in range(args.repeats):
        for name, command in tools.items():
            results[name].append(measure(command))
            wall, cpu, rss = results[name][-1]
            print(f"{name}: {wall:.2f} s wall, {cpu:.2f} s CPU, {rss:.0f} MB", file=sys.stderr, flush=True)
    print(f"{args.scenario}, synthetic 48-layer models ({args.size}), {args.repeats} runs, medians\n")
    print("| tool | wall s | CPU s | peak RSS MB |")
    print("| --- | ---: | ---: | ---: |")
    for name, runs in results.items():
        wall, cpu, rss = (statistics.median(r[i] for r in runs) for i in range(3))
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
