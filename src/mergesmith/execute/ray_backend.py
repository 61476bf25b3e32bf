"""The Ray backend: one Ray task per output shard, spread over the nodes of a Ray cluster.

Each task reads its entries' inputs, computes and writes its shard with the local backend's
threads into `.NAME.incomplete` in the staging folder, fsyncs it, renames it to its own name and
returns its SHA-256. Every node must see the inputs and OUT's parent folder at the same paths
(one machine, or storage shared by the nodes: NFS, Lustre, ...). A task whose worker or node dies
is run again (its half-written file is replaced); a task's MergesmithError is not retried, and
reaches the caller as itself. The driver verifies every digest before it writes anything else.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Sequence

from mergesmith.errors import MergesmithError
from mergesmith.execute.backend import Events
from mergesmith.execute.local import LocalBackend
from mergesmith.execute.options import MergeOptions
from mergesmith.execute.tasks import ShardResult, ShardTask
from mergesmith.output.shards import file_digest
from mergesmith.plan import Route

log = logging.getLogger(__name__)

RETRIES = 3  # attempts after the first, for tasks whose worker process or node died
PROGRESS_EVERY_BYTES = 64 * 2**20  # a task reports its progress at most this often (and at its end)


class RayBackend:
    resumes_tensors = False  # shards are written whole under temporary names: resumed by shard

    def __init__(self, options: MergeOptions) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise MergesmithError(
                "--executor ray: Ray is not installed", hint="pip install 'mergesmith[ray]'"
            ) from None
        self.options = options

    def run(self, tasks: Sequence[ShardTask], events: Events) -> list[ShardResult]:
        import ray

        joined = ray.is_initialized()  # a caller (a test, a notebook) already connected: leave it so
        if not joined:
            address = self.options.executor_address
            log.info("starting a local Ray instance" if address is None else "joining the Ray cluster at %s", address)
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        try:
            return self._run(ray, tasks, events)
        finally:
            if not joined:
                ray.shutdown()

    def _run(self, ray, tasks: Sequence[ShardTask], events: Events) -> list[ShardResult]:
        gpus = 1 if any(e.route is Route.DEVICE for task in tasks for e in task.entries) else 0
        if gpus and ray.cluster_resources().get("GPU", 0) < 1:
            raise MergesmithError(
                "--device cuda: the Ray cluster has no GPU", hint="add GPU nodes to the cluster, or use --device cpu"
            )
        progress = _progress_actor_class().options(num_cpus=0).remote()
        remote = ray.remote(run_shard).options(
            num_cpus=1, num_gpus=gpus, max_retries=RETRIES, retry_exceptions=False, scheduling_strategy="SPREAD"
        )
        options = dataclasses.replace(self.options, executor="local")
        refs = [remote.remote(task, i, options, progress) for i, task in enumerate(tasks)]
        results: dict[int, ShardResult] = {}
        pending, reported = list(refs), 0
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
                for ref in done:
                    result = _result(ray, ref)
                    results[refs.index(ref)] = result
                    events.shard_written(result)
                total = ray.get(progress.total.remote())
                events.progress(total - reported)
                reported = total
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)  # kills the workers: nothing more is written
            ray.wait(pending, num_returns=len(pending), timeout=60)
            raise
        return [results[i] for i in range(len(refs))]


def _result(ray, ref) -> ShardResult:
    """A task's result; its error as the exception the task raised (a MergesmithError's message
    and hint unchanged), not Ray's wrapper."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None
        raise


def run_shard(task: ShardTask, index: int, options: MergeOptions, progress) -> ShardResult:
    """In a Ray worker: write one shard under a temporary name, rename it when complete, and
    return its digest."""
    import ray

    started = time.time()
    final = task.folder / task.shard.filename
    temporary = task.folder / f".{task.shard.filename}.incomplete"
    events = _TaskEvents(progress, index)
    (local,) = LocalBackend(options).write([task], [temporary], events)
    events.flush()
    digest = file_digest(temporary)
    assert digest is not None  # just written
    os.replace(temporary, final)
    return dataclasses.replace(
        local,
        digest=digest,
        node=ray.get_runtime_context().get_node_id(),
        started_s=started,
        finished_s=time.time(),
    )


class _TaskEvents:
    """A task's progress, sent to the driver's progress actor now and then (cumulative per task,
    so a task run again after its worker died starts its count over)."""

    def __init__(self, progress, index: int) -> None:
        self.progress_actor, self.index = progress, index
        self.done = self.sent = 0
        self.lock = threading.Lock()

    def progress(self, nbytes: int) -> None:
        with self.lock:
            self.done += nbytes
            if self.done - self.sent >= PROGRESS_EVERY_BYTES:
                self._send()

    def flush(self) -> None:
        with self.lock:
            self._send()

    def _send(self) -> None:
        self.progress_actor.report.remote(self.index, self.done)
        self.sent = self.done

    def tensor_written(self, name: str, crc: int) -> None:
        pass  # resumed by whole shards

    def shard_written(self, result: ShardResult) -> None:
        pass  # the driver hears of it from the task's result


def _progress_actor_class():
    import ray

    @ray.remote
    class Progress:
        """Bytes written so far by each task (its latest report)."""

        def __init__(self) -> None:
            self.done: dict[int, int] = {}

        def report(self, index: int, nbytes: int) -> None:
            self.done[index] = nbytes

        def total(self) -> int:
            return sum(self.done.values())

    return Progress
