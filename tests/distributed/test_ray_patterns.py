"""The Ray patterns the ray executor is built on, each proven on the session's real cluster with toy
tasks: spreading, retry after a killed worker, a MergesmithError coming back unchanged and untried
twice, starting vs joining, byte progress, an impossible GPU request. Notes: docs/notes-ray.md."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import mergesmith
from mergesmith.errors import CheckpointError, ClusterError
from mergesmith.execute import ray_cluster as ray_support
from polling import wait_for

ray = pytest.importorskip("ray")

GET_TIMEOUT_S = 60  # generous on a loaded two-core machine; a hang fails here instead of stalling pytest


@ray.remote(num_cpus=1, scheduling_strategy="SPREAD")
def where_am_i() -> str:
    time.sleep(0.2)  # holds the node's one CPU a moment, as a real shard would
    return ray.get_runtime_context().get_node_id()


def test_spread_puts_tasks_on_both_worker_nodes_and_none_on_the_head(ray_cluster):
    nodes = ray.get([where_am_i.remote() for _ in range(8)], timeout=GET_TIMEOUT_S)
    assert set(nodes) == set(ray_cluster.worker_node_ids)


@ray.remote(num_cpus=1)
def where_is_mergesmith() -> str:
    return mergesmith.__file__


def test_workers_import_the_same_mergesmith_as_the_driver(ray_cluster):
    # on one machine the workers inherit PYTHONPATH; a real cluster needs it installed on every node
    assert ray.get(where_is_mergesmith.remote(), timeout=GET_TIMEOUT_S) == mergesmith.__file__


PIECES, PIECE_BYTES = 6, 4096


def shard_bytes() -> bytes:
    return b"".join(bytes([i]) * PIECE_BYTES for i in range(PIECES))


@ray.remote(num_cpus=1, max_retries=2, retry_exceptions=False)
def write_in_pieces(target: str, attempts: str, pause_s: float) -> str:
    """Writes target as a shard would: to a temporary name unique to this attempt, renamed when whole."""
    Path(attempts, str(os.getpid())).touch()  # tells the test which process to kill
    partial = Path(f"{target}.partial-{os.getpid()}")
    digest = hashlib.sha256()
    with open(partial, "wb") as file:
        for i in range(PIECES):
            piece = bytes([i]) * PIECE_BYTES
            file.write(piece)
            file.flush()
            digest.update(piece)
            time.sleep(pause_s)
    os.replace(partial, target)
    return digest.hexdigest()


def test_a_killed_worker_is_retried_and_the_retry_writes_the_whole_file(ray_cluster, tmp_path):
    target, attempts = tmp_path / "model-00001-of-00001.safetensors", tmp_path / "attempts"
    attempts.mkdir()
    ref = write_in_pieces.remote(str(target), str(attempts), 0.5)
    pid = int(wait_for(lambda: [p.name for p in attempts.iterdir()], what="the task to start")[0])
    partial = tmp_path / f"{target.name}.partial-{pid}"
    wait_for(lambda: partial.exists() and partial.stat().st_size >= PIECE_BYTES, what="the first piece")
    os.kill(pid, signal.SIGKILL)

    digest = ray.get(ref, timeout=GET_TIMEOUT_S)
    assert target.read_bytes() == shard_bytes()
    assert digest == hashlib.sha256(shard_bytes()).hexdigest()
    retried = sorted(int(p.name) for p in attempts.iterdir())
    assert len(retried) == 2 and pid in retried
    # the killed attempt's partial file stays behind, shorter than the shard; the driver removes
    # *.partial-* from the staging folder before it renames the folder into place
    leftovers = sorted(p.name for p in tmp_path.glob("*.partial-*"))
    assert leftovers == [partial.name]
    assert 0 < partial.stat().st_size < len(shard_bytes())


@ray.remote(num_cpus=1, max_retries=3, retry_exceptions=False)
def read_truncated_shard(attempts: str) -> None:
    with open(attempts, "a") as file:
        file.write("attempt\n")
    raise CheckpointError(
        "model-00002-of-00004.safetensors: 1000 bytes, but its header says 4096",
        hint="the file is truncated: download it again",
    )


def test_a_mergesmith_error_reaches_the_driver_as_itself_after_one_attempt(ray_cluster, tmp_path):
    attempts = tmp_path / "attempts.txt"
    with pytest.raises(CheckpointError) as raised:
        ray.get(read_truncated_shard.remote(str(attempts)), timeout=GET_TIMEOUT_S)
    # plain ray.get: an instance of both classes, message and hint kept, but str() is Ray's traceback
    assert isinstance(raised.value, ray.exceptions.RayTaskError)
    assert raised.value.hint == "the file is truncated: download it again"
    assert str(raised.value).endswith("4096\n  hint: the file is truncated: download it again")
    assert str(raised.value).startswith("\x1b[36mray::read_truncated_shard()")

    with pytest.raises(CheckpointError) as raised:
        ray_support.get_results([read_truncated_shard.remote(str(attempts))], timeout_s=GET_TIMEOUT_S)
    assert type(raised.value) is CheckpointError
    assert str(raised.value) == (
        "model-00002-of-00004.safetensors: 1000 bytes, but its header says 4096\n"
        "  hint: the file is truncated: download it again"
    )
    assert attempts.read_text() == "attempt\n" * 2  # one attempt per call: user errors are not retried


def run_driver(code: str, **env: str) -> str:
    """Runs code as another driver process (what `mergesmith merge --executor ray` would be)."""
    done = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


LOCAL_DRIVER = """
import json, psutil, ray
from mergesmith.execute.ray_cluster import ray_session
with ray_session(None):
    node = ray.get(ray.remote(lambda: ray.get_runtime_context().get_node_id()).remote(), timeout=60)
    started = [p.pid for p in psutil.Process().children(recursive=True)]
print(json.dumps({"node": node, "started": started, "connected_after": ray.is_initialized()}))
"""


def test_without_an_address_a_private_instance_is_started_and_stopped(ray_cluster):
    report = json.loads(run_driver(LOCAL_DRIVER).splitlines()[-1])
    assert report["node"] not in {ray_cluster.head_node_id, *ray_cluster.worker_node_ids}
    assert report["started"] and not report["connected_after"]
    # the raylet, GCS and workers it started are gone (children of an exited process: poll briefly)
    wait_for(lambda: not any(psutil.pid_exists(pid) for pid in report["started"]), what="its processes to exit")


def test_a_bare_ray_init_joins_the_running_cluster_instead_of_starting_one(ray_cluster):
    # why ray_session passes address="local": ray.init() joins the cluster this file names
    if Path("/tmp/ray/ray_current_cluster").read_text().strip() != ray_cluster.address:
        pytest.skip("another Ray cluster was started on this machine after the tests' own")
    code = "import ray; ray.init(); print(ray.get_runtime_context().gcs_address); ray.shutdown()"
    assert run_driver(code).splitlines()[-1] == ray_cluster.address


JOINING_DRIVER = """
import ray, sys
from mergesmith.execute.ray_cluster import ray_session
with ray_session(sys.argv[1]):
    print(sorted(node["NodeID"] for node in ray.nodes() if node["Alive"]))
"""


def test_joining_then_leaving_disconnects_and_leaves_the_cluster_running(ray_cluster):
    out = subprocess.run(
        [sys.executable, "-c", JOINING_DRIVER, ray_cluster.address], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines()[-1] == str(sorted({ray_cluster.head_node_id, *ray_cluster.worker_node_ids}))
    alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert alive == {ray_cluster.head_node_id, *ray_cluster.worker_node_ids}
    assert ray.get(where_am_i.remote(), timeout=GET_TIMEOUT_S) in ray_cluster.worker_node_ids


def test_a_connection_the_caller_made_is_used_and_left_open(ray_cluster):
    with ray_support.ray_session(ray_cluster.address):
        assert ray.get(where_am_i.remote(), timeout=GET_TIMEOUT_S) in ray_cluster.worker_node_ids
    with ray_support.ray_session(None):
        pass
    assert ray.is_initialized()
    with pytest.raises(ClusterError) as raised, ray_support.ray_session("127.0.0.1:1"):
        pass
    assert str(raised.value) == (
        f"--ray-address 127.0.0.1:1: this process is already connected to the Ray cluster at {ray_cluster.address}\n"
        "  hint: leave --ray-address out to use that cluster, or call ray.shutdown() first"
    )


@pytest.mark.parametrize(
    "address, expected",
    [
        # port 1 on this machine: nothing listens, refused at once instead of ray.init's minutes of retries
        ("127.0.0.1:1", "--ray-address 127.0.0.1:1: nothing answers there (Connection refused)"),
        ("headnode", "--ray-address headnode: not host:port"),
        ("ray://10.0.0.5:10001", "--ray-address ray://10.0.0.5:10001: Ray Client addresses are not supported"),
    ],
)
def test_an_address_that_cannot_work_is_refused_before_ray_init(address, expected):
    with pytest.raises(ClusterError) as raised:
        ray_support.check_reachable(address)
    assert raised.value.message == expected


@ray.remote(num_cpus=1, scheduling_strategy="SPREAD")
def write_and_report(key: str, progress, go: str) -> int:
    """Reports each piece as it is done, and waits after the first until the test says go."""
    done = 0
    for i in range(PIECES):
        done += PIECE_BYTES
        progress.report.remote(key, done)  # fire and forget: costs the task nothing to wait for
        if i == 0:
            deadline = time.monotonic() + GET_TIMEOUT_S
            while not Path(go).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
    ray.get(progress.report.remote(key, done), timeout=GET_TIMEOUT_S)  # the last is in before we return
    return done


def test_running_tasks_report_bytes_to_one_progress_total(ray_cluster, tmp_path):
    progress = ray_support.start_progress()
    go = tmp_path / "go"
    refs = [write_and_report.remote(f"shard-{i}", progress, str(go)) for i in range(2)]
    # both tasks are mid-way (blocked after their first piece), and the driver already sees their bytes
    wait_for(lambda: ray.get(progress.total.remote(), timeout=GET_TIMEOUT_S) == 2 * PIECE_BYTES, what="progress")
    assert not ray.wait(refs, timeout=0)[0]
    go.touch()
    assert ray.get(refs, timeout=GET_TIMEOUT_S) == [len(shard_bytes())] * 2
    assert ray.get(progress.total.remote(), timeout=GET_TIMEOUT_S) == 2 * len(shard_bytes())
    ray.kill(progress)


@ray.remote(num_cpus=1)
def needs_a_gpu() -> str:
    return "ran"


def test_a_gpu_request_no_node_can_meet_is_refused_instead_of_hanging(ray_cluster):
    with pytest.raises(ClusterError) as raised:
        ray_support.check_gpus(1)
    assert str(raised.value) == (
        "each merge task asks for 1 GPU, but the Ray cluster's largest node has 0\n"
        "  hint: leave out --device cuda to merge on CPUs, or add GPU nodes (ray start --num-gpus N)"
    )
    ray_support.check_gpus(0)
    # what the check prevents: Ray accepts the task and keeps it pending (infeasible), never failing it
    ref = needs_a_gpu.options(num_gpus=1).remote()
    ready, _ = ray.wait([ref], timeout=3)
    assert not ready
    ray.cancel(ref)
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(ref, timeout=GET_TIMEOUT_S)


def test_a_task_on_a_node_that_dies_is_retried_on_another(ray_cluster, tmp_path):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    doomed = ray_cluster.cluster.add_node(num_cpus=1)
    try:
        ray_cluster.cluster.wait_for_nodes(timeout=60)
        target, attempts = tmp_path / "model-00001-of-00001.safetensors", tmp_path / "attempts"
        attempts.mkdir()
        # soft: the retry may go to any node once the doomed one is gone
        strategy = NodeAffinitySchedulingStrategy(node_id=doomed.node_id, soft=True)
        ref = write_in_pieces.options(scheduling_strategy=strategy).remote(str(target), str(attempts), 0.5)
        wait_for(lambda: list(attempts.iterdir()), what="the task to start")
        ray_cluster.cluster.remove_node(doomed, allow_graceful=False)  # SIGKILLs its raylet and workers
        digest = ray.get(ref, timeout=GET_TIMEOUT_S)
    finally:  # the other tests expect the session's two worker nodes and no more
        if doomed in ray_cluster.cluster.worker_nodes:
            ray_cluster.cluster.remove_node(doomed, allow_graceful=False)
    assert target.read_bytes() == shard_bytes()
    assert digest == hashlib.sha256(shard_bytes()).hexdigest()
    assert len(list(attempts.iterdir())) == 2
