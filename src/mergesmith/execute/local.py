"""The local backend: every task's entries on a bounded pool of threads in this process.

Reads, torch kernels and writes all release the GIL, so threads overlap I/O with compute. Each
entry writes its own byte range of its shard, so threads never touch the same bytes. The units
of work of all tasks share one pool (a layer repeated across shards is still read once).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from mergesmith.dtypes import element_size
from mergesmith.execute.backend import Events
from mergesmith.execute.options import MergeOptions
from mergesmith.execute.routes import Work, group_work, is_raw, needs_torch, run_work
from mergesmith.execute.tasks import ShardResult, ShardTask, input_bytes
from mergesmith.methods import get_method
from mergesmith.output.shards import ShardWriter
from mergesmith.plan import PlanEntry, Route


class LocalBackend:
    resumes_tensors = True  # shards are written in place; each computed tensor is journaled

    def __init__(self, options: MergeOptions) -> None:
        assert options.workers is not None  # set by run_plan
        self.workers, self.max_memory_bytes = options.workers, options.max_memory_bytes

    def run(self, tasks: Sequence[ShardTask], events: Events) -> list[ShardResult]:
        results = self.write(tasks, [task.folder / task.shard.filename for task in tasks], events)
        for result in results:
            events.shard_written(result)
        return results

    def write(self, tasks: Sequence[ShardTask], paths: Sequence[Path], events: Events) -> list[ShardResult]:
        """Write each task's shard at the path given for it (another backend's tasks name a
        temporary file)."""
        if not tasks:
            return []
        started = time.time()
        keep = tasks[0].keep
        writer = ShardWriter([(path, task.shard) for path, task in zip(paths, tasks)], keep=keep)
        inputs = {key: info for task in tasks for key, info in task.inputs.items()}
        settings = tasks[0].settings
        ok = False
        try:

            def run(work: Work) -> None:
                run_work(work, inputs, writer, settings)
                for entry in work:
                    if entry.output in writer.crcs:  # computed, not moved: a resume may keep it
                        events.tensor_written(entry.output, writer.crcs[entry.output])

            self._run_units(group_work([e for task in tasks for e in task.entries]), run, events, settings.chunk_bytes)
            ok = True
        finally:
            writer.close(sync=ok and settings.sync)
        finished = time.time()
        return [
            ShardResult(
                task.shard.filename,
                None,
                started_s=started,
                finished_s=finished,
                bytes_written=task.nbytes,
                bytes_read=input_bytes(task),
            )
            for task in tasks
        ]

    def _run_units(self, units: list[Work], run: Callable[[Work], None], events: Events, chunk_bytes: int) -> None:
        """Run units on the pool, with at most `max_memory_bytes` in flight. A failure stops new
        work; the units already running finish, then the first error propagates."""
        # What needs no torch first (copies, raw-scaled tensors): it runs while torch is still
        # being imported in the background, and its I/O overlaps the computed entries' later.
        units = sorted(units, key=lambda unit: needs_torch(unit[0]))
        if self.workers <= 1:
            for unit in units:
                run(unit)
                events.progress(sum(e.nbytes for e in unit), len(unit))
            return
        budget = _Budget(self.max_memory_bytes)
        threads = _TorchThreads(max(1, (os.cpu_count() or 1) // self.workers))
        failed = threading.Event()  # set by the first unit that raises: no more work starts
        with ThreadPoolExecutor(self.workers) as pool:
            futures: list[Future] = []
            try:
                for unit in units:
                    cost = max(memory_cost(e, chunk_bytes) for e in unit)
                    budget.acquire(cost)
                    if failed.is_set():
                        budget.release(cost)
                        break
                    future = pool.submit(threads.wrap(run) if needs_torch(unit[0]) else run, unit)
                    future.add_done_callback(_finisher(budget, events, cost, unit, failed))
                    futures.append(future)
                if failed.is_set():
                    for future in futures:
                        future.cancel()  # those not started yet
                for future in futures:
                    if not future.cancelled():
                        future.result()  # re-raises a worker's error
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
            finally:
                threads.restore()


def memory_cost(entry: PlanEntry, chunk_bytes: int) -> int:
    """A generous estimate of the host memory one entry needs while it runs."""
    if is_raw(entry):
        return chunk_bytes
    if entry.route is Route.STREAM:
        return chunk_bytes * (len(entry.sources) + 3)
    # an FP8 output's scales are computed from their weight's merge, as large as the weight
    count = math.prod(entry.fp8.shape) if entry.fp8 is not None else entry.nbytes // element_size(entry.written_dtype)
    if entry.route is Route.DEVICE:  # host memory: pinned inputs (float32 at most) and result
        return count * 4 * len(entry.sources) + entry.nbytes
    compute = entry.compute_dtype or entry.written_dtype  # integer buffers: copies of each input
    # inputs, their task vectors, masks and a few tensor-sized temporaries
    return count * element_size(compute) * (3 * len(entry.sources) + 4)


class _TorchThreads:
    """Give torch's intra-op pool `count` threads in each worker (importing torch when the first
    computed entry runs, not before), and put the old count back at the end.

    torch's thread setting belongs to the thread that makes it (OpenMP and MKL keep it per thread;
    a new thread starts from the last count set anywhere), so every unit sets it in its own worker.
    Methods whose result depends on the count get torch's default, the count mergekit computes with.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.before: int | None = None
        self.lock = threading.Lock()

    def wrap(self, run: Callable[[Work], None]) -> Callable[[Work], None]:
        def configured(unit: Work) -> None:
            import torch

            with self.lock:
                if self.before is None:
                    self.before = torch.get_num_threads()
            sensitive = get_method(unit[0].method)[0].threads_change_result
            torch.set_num_threads(self.before if sensitive else self.count)
            run(unit)

        return configured

    def restore(self) -> None:
        if self.before is not None:
            import torch

            torch.set_num_threads(self.before)


def _finisher(budget: _Budget, events: Events, cost: int, unit: Work, failed: threading.Event):
    def finish(future: Future) -> None:
        budget.release(cost)
        events.progress(sum(e.nbytes for e in unit), len(unit))
        if not future.cancelled() and future.exception() is not None:
            failed.set()

    return finish


class _Budget:
    """Bytes in flight: acquire waits until the cost fits (one unit always runs, however large)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self.condition = threading.Condition()

    def acquire(self, cost: int) -> None:
        with self.condition:
            self.condition.wait_for(lambda: self.used == 0 or self.used + cost <= self.limit)
            self.used += cost

    def release(self, cost: int) -> None:
        with self.condition:
            self.used -= cost
            self.condition.notify_all()
