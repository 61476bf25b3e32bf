"""The Ray backend: one Ray task per output shard, spread over the nodes of a Ray cluster.

Each task reads its entries' inputs, computes and writes its shard with the local backend's
threads into a file of its own in the staging folder (`.NAME.<attempt id>.incomplete`), fsyncs it,
renames it to the shard's name and returns its SHA-256. Every node must see the inputs and OUT's
parent folder at the same paths (one machine, or storage the nodes share: NFS, Lustre, ...). A
task whose worker or node dies is run again; a task's MergesmithError is not retried and reaches
the caller as itself. The driver checks each digest as it arrives (api.merge_plan's events).
Cluster plumbing (joining, GPU checks, progress actor): ray_cluster.py.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from mergesmith.errors import ClusterError, MergesmithError
from mergesmith.execute.backend import Events
from mergesmith.execute.local import LocalBackend
from mergesmith.execute.options import MergeOptions
from mergesmith.execute.ray_cluster import check_gpus, check_reachable, import_ray, ray_session, start_progress
from mergesmith.execute.tasks import ShardResult, ShardTask
from mergesmith.output.shards import attempt_path, file_digest, writing
from mergesmith.plan import Route

log = logging.getLogger(__name__)

RETRIES = 3  # attempts after the first, for tasks whose worker process or node died
PROGRESS_EVERY_BYTES = 64 * 2**20  # a task reports its progress at most this often (and at its end)
POLL_S = 0.5  # how often the driver updates the progress bar while it waits


class RayBackend:
    resumes_tensors = False  # shards are written whole under temporary names: resumed by shard

    def __init__(self, options: MergeOptions) -> None:
        import_ray()  # a clear error now if Ray is not installed
        if options.executor_address is not None:  # and if nothing answers at the address
            check_reachable(options.executor_address)
        self.options = options

    def run(self, tasks: Sequence[ShardTask], events: Events) -> list[ShardResult]:
        with ray_session(self.options.executor_address):
            return self._run(tasks, events)

    def _run(self, tasks: Sequence[ShardTask], events: Events) -> list[ShardResult]:
        ray = import_ray()
        gpus = 1 if any(e.route is Route.DEVICE for task in tasks for e in task.entries) else 0
        check_gpus(gpus)
        progress = start_progress()
        remote = ray.remote(run_shard).options(
            num_cpus=1, num_gpus=gpus, max_retries=RETRIES, retry_exceptions=False, scheduling_strategy="SPREAD"
        )
        options = dataclasses.replace(self.options, executor="local")
        if gpus:  # Ray gives a task its GPU as the only one the worker sees: cuda:N would not exist there
            tasks = [dataclasses.replace(t, settings=dataclasses.replace(t.settings, device="cuda")) for t in tasks]
        refs = [remote.remote(task, options, progress) for task in tasks]
        index = {ref: i for i, ref in enumerate(refs)}
        results: dict[int, ShardResult] = {}
        pending, reported = list(refs), 0
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=POLL_S)
                for ref in done:
                    results[index[ref]] = _result(ray, ref, tasks[index[ref]])
                    events.shard_written(results[index[ref]])
                total = ray.get(progress.total.remote())
                events.progress(total - reported)
                reported = total
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)  # stops their workers: nothing more is written
            ray.wait(pending, num_returns=len(pending), timeout=60)
            raise
        return [results[i] for i in range(len(refs))]


def _result(ray, ref, task: ShardTask) -> ShardResult:
    """A task's result; its error as the exception the task raised (a MergesmithError's message and
    hint unchanged), not Ray's wrapper; a task whose workers kept dying as a ClusterError."""
    try:
        result: ShardResult = ray.get(ref)
        return result
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, MergesmithError):
            raise err.cause from None
        raise
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as err:
        raise ClusterError(
            f"shard {task.shard.filename}: its task was lost {RETRIES + 1} times (a worker or node died: "
            f"{type(err).__name__})",
            hint="check the cluster's nodes (memory, disk); --resume keeps the shards already written",
        ) from err


def run_shard(task: ShardTask, options: MergeOptions, progress: Any) -> ShardResult:
    """In a Ray worker: write one shard under a name of this attempt's own, rename it when
    complete, and return its digest. A killed attempt leaves only its own file behind (the driver
    removes it: output.shards.remove_strays); an attempt the cluster wrongly gave up for dead
    cannot touch another's file."""
    ray = import_ray()
    started = time.time()
    final = task.folder / task.shard.filename
    attempt = attempt_path(task.folder, task.shard.filename)
    events = _TaskEvents(progress, task.shard.filename)
    if task.settings.torch_threads is not None:  # the local backend's count for them (Ray sets 1)
        import torch

        torch.set_num_threads(task.settings.torch_threads)
    (local,) = LocalBackend(options).write([task], [attempt], events)
    events.flush()
    digest = file_digest(attempt)
    if digest is None:
        raise ClusterError(f"{attempt}: the shard just written cannot be read back")
    with writing(final):
        os.replace(attempt, final)
    node = ray.get_runtime_context().get_node_id()
    return dataclasses.replace(local, digest=digest, node=node, started_s=started, finished_s=time.time())


class _TaskEvents:
    """A task's progress, sent to the driver's progress actor now and then: the bytes done so far
    by this attempt, so an attempt run again after its worker died starts its count over."""

    def __init__(self, progress: Any, key: str) -> None:
        self.progress_actor, self.key = progress, key
        self.done = self.sent = 0
        self.lock = threading.Lock()

    def progress(self, nbytes: int, tensors: int = 0) -> None:
        with self.lock:
            self.done += nbytes
            if self.done - self.sent >= PROGRESS_EVERY_BYTES:
                self.progress_actor.report.remote(self.key, self.done)
                self.sent = self.done

    def flush(self) -> None:
        """The last report, landed before the task returns (else the driver could see the result first)."""
        import_ray().get(self.progress_actor.report.remote(self.key, self.done))

    def tensor_written(self, name: str, crc: int) -> None:
        pass  # resumed by whole shards

    def shard_written(self, result: ShardResult) -> None:
        pass  # the driver hears of it from the task's result
