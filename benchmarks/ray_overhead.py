"""What Ray itself costs on this machine, before any merge work: starting and stopping the tests' cluster
layout, a private instance for one trivial task, per-task overhead, progress reports. Figures go to
docs/notes-ray.md. Run: PYTHONPATH=src python benchmarks/ray_overhead.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import time

os.environ.setdefault("RAY_AUTH_MODE", "token")  # Ray's default, token kept out of ~/.ray (see tests)
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))

PRIVATE = """
import json, time
t0 = time.monotonic()
import ray
from mergesmith.execute.ray_cluster import ray_session
t1 = time.monotonic()
with ray_session(None):
    t2 = time.monotonic()
    ray.get(ray.remote(lambda: 1).remote(), timeout=60)
    t3 = time.monotonic()
t4 = time.monotonic()
print(json.dumps({"import_s": t1 - t0, "init_s": t2 - t1, "first_task_s": t3 - t2, "shutdown_s": t4 - t3}))
"""


def time_private_instance() -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", PRIVATE], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def time_cluster() -> dict[str, float]:
    import ray
    from ray.cluster_utils import Cluster

    t = {"start": time.monotonic()}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    t["up"] = time.monotonic()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="warning")
    t["connected"] = time.monotonic()
    nop = ray.remote(num_cpus=1)(lambda: None)
    ray.get([nop.remote() for _ in range(20)], timeout=120)
    t["cold20"] = time.monotonic()
    ray.get([nop.remote() for _ in range(20)], timeout=120)
    t["warm20"] = time.monotonic()
    report_1000 = ray.remote(num_cpus=1)(_report_1000)
    from mergesmith.execute.ray_cluster import start_progress

    progress = start_progress()
    ray.get(progress.total.remote(), timeout=60)  # the actor is up before we time its use
    t["actor"] = time.monotonic()
    ray.get(report_1000.remote(progress), timeout=120)
    t["reports"] = time.monotonic()
    ray.shutdown()
    t["disconnected"] = time.monotonic()
    cluster.shutdown()
    t["down"] = time.monotonic()
    steps = list(t)
    return {f"{b}_s": t[b] - t[a] for a, b in zip(steps, steps[1:])}


def _report_1000(progress) -> None:
    import ray

    for i in range(1000):
        progress.report.remote("shard", i)
    ray.get(progress.report.remote("shard", 1000))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    repeats = parser.parse_args().repeats
    runs = [time_private_instance() for _ in range(repeats)] + [time_cluster() for _ in range(repeats)]
    keys = sorted({key for run in runs for key in run})
    for key in keys:
        values = [run[key] for run in runs if key in run]
        print(f"{key:16} median {statistics.median(values):7.3f} s   runs {', '.join(f'{v:.3f}' for v in values)}")


if __name__ == "__main__":
    main()
