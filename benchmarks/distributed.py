"""The Ray executor on this machine, per-shard timings, and the cost model of docs/distributed.md.

    python benchmarks/distributed.py ties [--size 1g] [--shard-size 200M] [--repeats 2] [--workdir DIR]
    python benchmarks/distributed.py seed ...
    python benchmarks/distributed.py --project-only      # only the 70B projection table

Runs the scenario's merge with `--executor local` and `--executor ray` (a local Ray instance,
started and stopped by each merge, as a user's first run does), alternating, and prints wall and
CPU time. From the Ray run's report (`--json`: every shard's node, start, end and bytes) it prints
the per-shard timings, checks the cost model's prediction of the tasks' span against the measured
one, and projects a 70B three-input TIES merge onto N nodes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import scenario, warm_page_cache  # noqa: E402

GB = 1e9


def run_merge(recipe: Path, out: Path, paths: list[str], executor: str, shard_size: str) -> tuple[float, float, dict]:
    """(wall s, CPU s of the driver process and its children, the --json report)."""
    command = [
        shutil.which("mergesmith") or "mergesmith", "-q", "merge", str(recipe), str(out), "--overwrite", "--json",
        "--executor", executor, "--out-shard-size", shard_size, *paths,
    ]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout = process.stdout.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(process.pid, 0)
    subprocess.run(["sync"], check=True)
    wall = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed: {process.stderr.read().decode()[-3000:]}")  # type: ignore[union-attr]
    return wall, usage.ru_utime + usage.ru_stime, json.loads(stdout)


@dataclass(frozen=True)
class Cluster:
    """What the model needs to know of a cluster and of the merge's arithmetic."""

    nodes: int
    cores_per_node: int
    tasks_per_node: int  # shard tasks a node runs at once (each gets cores_per_node / tasks_per_node)
    core_rate: float  # bytes of output one core computes per second (measured on this machine)
    node_read: float  # bytes/s one node reads and writes from the shared storage (its NIC, say)
    storage: float  # bytes/s the shared storage serves to all nodes together
    driver_read: float  # bytes/s the driver reads back shards to verify them
    start_s: float  # Ray start (or join) and the first task's worker start


def predict(cluster: Cluster, out_bytes: float, inputs: int, shard_bytes: float) -> dict[str, float]:
    """Wall seconds of a merge writing `out_bytes` from `inputs` models of the same size, in shards
    of `shard_bytes`: tasks run in waves over the task slots; each task is bound by its cores or by
    its share of the node's I/O; storage and the driver's verification set floors."""
    shards = math.ceil(out_bytes / shard_bytes)
    slots = cluster.nodes * cluster.tasks_per_node
    task_cores = cluster.cores_per_node / cluster.tasks_per_node
    compute_s = shard_bytes / (cluster.core_rate * task_cores)
    io_s = (inputs + 1) * shard_bytes / (cluster.node_read / cluster.tasks_per_node)
    waves = math.ceil(shards / slots)
    span = waves * max(compute_s, io_s)
    storage_floor = (inputs + 1) * out_bytes / cluster.storage
    driver_floor = out_bytes / cluster.driver_read  # every shard is read back once, as it arrives
    body = max(span, storage_floor, driver_floor)
    return {
        "shards": shards,
        "waves": waves,
        "task compute s": compute_s,
        "task I/O s": io_s,
        "span s": span,
        "storage floor s": storage_floor,
        "driver floor s": driver_floor,
        "wall s": cluster.start_s + body + shard_bytes / cluster.driver_read,
    }


def simulated_span(durations: list[float], slots: int) -> float:
    """The span of tasks of these durations run in order on `slots` slots (the earliest free first)."""
    free = [0.0] * slots
    for duration in durations:
        free.sort()
        free[0] += duration
    return max(free)


def report_shards(report: dict) -> tuple[float, float, int, float]:
    """Print the per-shard timings; return the measured span s, the span list scheduling gives for
    the tasks' own durations, the concurrency seen and the median task s."""
    shards = report["shard_results"]
    first = min(s["started_s"] for s in shards)
    print("\n| shard | node | start s | end s | task s | written MB | read MB | written MB/s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in shards:
        took = s["finished_s"] - s["started_s"]
        print(
            f"| {s['filename']} | {(s['node'] or '-')[:8]} | {s['started_s'] - first:.2f} | "
            f"{s['finished_s'] - first:.2f} | {took:.2f} | {s['bytes_written'] / 1e6:.0f} | "
            f"{s['bytes_read'] / 1e6:.0f} | {s['bytes_written'] / 1e6 / took:.0f} |"
        )
    span = max(s["finished_s"] for s in shards) - first
    events = sorted([(s["started_s"], 1) for s in shards] + [(s["finished_s"], -1) for s in shards])
    running = concurrency = 0
    for _, change in events:
        running += change
        concurrency = max(concurrency, running)
    durations = [s["finished_s"] - s["started_s"] for s in sorted(shards, key=lambda s: s["started_s"])]
    return span, simulated_span(durations, concurrency), concurrency, statistics.median(durations)


def project(core_rate: float, start_s: float) -> None:
    out = 140 * GB  # a 70B model in bf16
    print(
        f"\n70B TIES of three 140 GB inputs (a base and two fine-tunes), 5 GB shards; nodes of 32 cores running "
        f"8 tasks each; {core_rate / 1e6:.1f} MB/s of output per core (this machine's TIES rate); "
        f"start {start_s:.0f} s\n"
    )
    print("| storage | node I/O GB/s | nodes | shard GB | waves | task s (compute / I/O) | storage floor s | ", end="")
    print("driver floor s | wall s |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    storages = (("one NVMe disk, one machine", 2 * GB, 2 * GB), ("NFS 10 GB/s", 10 * GB, 3 * GB))
    for storage_name, storage, node_read in (*storages, ("Lustre 40 GB/s", 40 * GB, 12 * GB)):
        shapes = [(n, 5) for n in (1, 2, 4, 8, 16)] + [(8, 1), (16, 1)]
        for nodes, shard_gb in shapes if storage is not storages[0][1] else [(1, 5)]:
            cluster = Cluster(nodes, 32, 8, core_rate, node_read, storage, node_read, start_s)
            p = predict(cluster, out, inputs=3, shard_bytes=shard_gb * GB)
            print(
                f"| {storage_name} | {node_read / GB:.0f} | {nodes} | {shard_gb} | {p['waves']:.0f} | "
                f"{p['task compute s']:.0f} / {p['task I/O s']:.0f} | {p['storage floor s']:.0f} | "
                f"{p['driver floor s']:.0f} | {p['wall s']:.0f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", choices=["seed", "ties", "linear", "dus"], default="ties")
    parser.add_argument("--size", default="1g")
    parser.add_argument("--shard-size", default="200M")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--project-only", action="store_true")
    parser.add_argument("--core-rate", type=float, help="bytes/s of output per core, for --project-only")
    parser.add_argument("--start-s", type=float, default=6.3, help="Ray's start and stop, for --project-only")
    args = parser.parse_args()
    if args.project_only:
        project(args.core_rate or 15e6, args.start_s)
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mergesmith-distributed-"))
    work.mkdir(parents=True, exist_ok=True)
    recipe_text, models, input_bytes = scenario(args.scenario, work, args.size)
    recipe = work / f"{args.scenario}.yaml"
    recipe.write_text(recipe_text)
    paths = [arg for name, folder in models.items() for arg in ("--model-path", f"{name}={folder}")]
    warm_page_cache(models.values())
    runs: dict[str, list[tuple[float, float]]] = {"local": [], "ray": []}
    reports: dict[str, dict] = {}
    for _ in range(args.repeats):
        for executor in runs:
            wall, cpu, reports[executor] = run_merge(recipe, work / f"out-{executor}", paths, executor, args.shard_size)
            runs[executor].append((wall, cpu))
            print(f"{executor}: {wall:.2f} s wall, {cpu:.2f} s CPU (driver)", file=sys.stderr, flush=True)
    same = all(
        (work / "out-local" / f).read_bytes() == (work / "out-ray" / f).read_bytes()
        for f in os.listdir(work / "out-local")
        if f.endswith(".safetensors")
    )
    out_bytes = reports["local"]["bytes_written"]
    print(f"{args.scenario}, {input_bytes / GB:.2f} GB in, {out_bytes / GB:.2f} GB out, shards of {args.shard_size}")
    print(f"{args.repeats} runs each, medians; the shards of both executors are byte-identical: {same}\n")
    print("| executor | wall s | CPU s (driver) |")
    print("| --- | ---: | ---: |")
    for executor, measured in runs.items():
        wall, cpu = (statistics.median(m[i] for m in measured) for i in (0, 1))
        print(f"| {executor} | {wall:.2f} | {cpu:.2f} |")
    span, scheduled, concurrency, task_s = report_shards(reports["ray"])
    ray_wall = statistics.median(w for w, _ in runs["ray"])
    # The model on this machine: one node, its cores, the tasks it ran at once, the cores' rate
    # measured from the local run's CPU time, and the page cache's read rate (inputs are cached).
    core_rate = out_bytes / statistics.median(c for _, c in runs["local"])
    shard_bytes = out_bytes / len(reports["ray"]["shard_results"])
    here = Cluster(1, os.cpu_count() or 1, concurrency, core_rate, 4 * GB, 4 * GB, 4 * GB, ray_wall - span)
    model = predict(here, out_bytes, inputs=len(models), shard_bytes=shard_bytes)
    print(
        f"\nmeasured: median task {task_s:.2f} s, span {span:.2f} s (list scheduling of the measured tasks: "
        f"{scheduled:.2f} s), Ray's overhead (wall - span) {ray_wall - span:.2f} s"
    )
    print(
        f"model ({concurrency} tasks at once on {here.cores_per_node} cores, {core_rate / 1e6:.1f} MB/s per core): "
        f"task {max(model['task compute s'], model['task I/O s']):.2f} s, span {model['span s']:.2f} s"
    )
    # What a Ray task really computed per core (its own process, sharing the cores with the raylet,
    # the GCS and the driver): the rate the projection uses, the more cautious of the two.
    task_rate = statistics.median(
        r["bytes_written"] / (r["finished_s"] - r["started_s"]) for r in reports["ray"]["shard_results"]
    ) / (here.cores_per_node / concurrency)
    print(f"a Ray task's own rate: {task_rate / 1e6:.1f} MB/s per core")
    project(min(core_rate, task_rate), ray_wall - span)


if __name__ == "__main__":
    main()
