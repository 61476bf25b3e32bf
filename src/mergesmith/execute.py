"""Plan -> tensors on disk: read each entry's sources, apply its method, write it into its shard."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mergesmith.card import model_card
from mergesmith.checkpoints import Checkpoint
from mergesmith.checkpoints.safetensors_file import piece_spans, read_into
from mergesmith.dtypes import element_size, tensor_bytes, tensor_from_bytes, torch_dtype
from mergesmith.errors import MergeError, MergesmithError
from mergesmith.methods import get_method
from mergesmith.output import STAGING_MARKER, staging_folder
from mergesmith.plan import Plan, PlanEntry
from mergesmith.vocabulary import align_rows
from mergesmith.write import Journal, ShardWriter, layout_shards, write_metadata

log = logging.getLogger(__name__)

DEFAULT_SHARD_BYTES = 5 * 10**9


@dataclass(frozen=True)
class MergeOptions:
    out_shard_bytes: int = DEFAULT_SHARD_BYTES
    overwrite: bool = False
    progress: bool = False  # a byte progress bar on stderr (only shown on a terminal)
    # Large tensors stream through in pieces of this size. Small pieces are faster, not slower: a
    # piece's float32 temporaries then stay below glibc's mmap threshold and are reused from the
    # heap, where 16 MiB pieces got fresh pages from the kernel every time (a page fault per 4 KiB
    # cost more than the arithmetic: linear over 3 models went from 10.5 to 7.5 CPU seconds).
    chunk_bytes: int = 2**20
    # Threads running plan entries; None: min(4, CPUs) on the CPU, min(8, CPUs) with a GPU, whose
    # workers mostly wait (on reads, transfers and kernels): ties over 4 x 2.6 GB on an H200 took
    # 7.8 s with 8 workers, 9.6 s with 4.
    workers: int | None = None
    max_memory_bytes: int = 4 * 2**30  # estimated bytes in flight across workers
    sync: bool = True  # fsync shards before the folder is renamed into place
    random_seed: int | None = None  # for DARE, DELLA, arcee_fusion; chosen and reported when None
    # "cpu", "cuda" (or "cuda:N") or "auto": where the heavy methods (all but the elementwise ones)
    # compute. Elementwise methods are bound by I/O and stay on the CPU, where they are exact.
    device: str = "cpu"
    resume: bool = False  # continue the interrupted merge into the same OUT, keeping its verified tensors


@dataclass(frozen=True)
class MergeReport:
    out: Path
    tensors: int
    shards: tuple[str, ...]
    bytes_written: int
    elapsed_s: float
    files: tuple[str, ...] = field(default_factory=tuple)
    random_seed: int | None = None  # the seed random methods drew from
    warnings: tuple[str, ...] = ()  # the plan's: recipe keys the merge ignored


def run_plan(
    plan: Plan, checkpoints: Mapping[str, Checkpoint], out: Path, options: MergeOptions | None = None
) -> MergeReport:
    """Execute `plan` into the folder `out`, atomically: complete and valid, or not there at all."""
    options = options or MergeOptions()
    requested = options.device
    if requested == "auto" and not any(uses_device(e) for e in plan.entries):
        requested = "cpu"  # nothing would compute on a GPU: no torch import to look for one
    device = resolve_device(requested)
    workers = options.workers or min(4 if device == "cpu" else 8, os.cpu_count() or 1)
    if (device, workers) != (options.device, options.workers):
        options = dataclasses.replace(options, device=device, workers=workers)
    is_random = get_method(plan.method)[0].is_random
    started = time.perf_counter()
    if any(needs_torch(e) for e in plan.entries):
        import_torch_in_background()
    layout = layout_shards(plan.entries, options.out_shard_bytes)
    copied = {name: checkpoints[model].file_path(name) for model, name in plan.copied_files}
    needed = sum(layout.sizes) + sum(path.stat().st_size for path in copied.values() if path is not None)
    inputs = input_paths(checkpoints)
    with staging_folder(
        out, overwrite=options.overwrite, needed_bytes=needed, resume=options.resume, inputs=inputs
    ) as folder:
        journal = Journal(folder, merge_id(plan, layout, checkpoints), options.random_seed, resume=options.resume)
        seed = journal.seed
        if is_random and options.random_seed is None and not journal.resumed:
            log.warning(
                "%s draws random numbers; no --random-seed given, so using %d (saved in the card)", plan.method, seed
            )
        writer = ShardWriter(folder, layout, keep=journal.resumed)
        finished = journal.verified(writer) if journal.resumed else set()
        if options.resume:
            log.info("resuming: %d of %d tensors already written and verified", len(finished), len(plan.entries))
        entries = tuple(e for e in plan.entries if e.output not in finished)
        ok = False
        try:
            with _progress(sum(e.nbytes for e in entries), options.progress) as bar:

                def run(task: Task) -> None:
                    if moves_raw_bytes(task[0]):  # so are the others of a task of several; not journaled
                        _move_raw_bytes(task, checkpoints, writer, options.chunk_bytes)
                        return
                    (entry,) = task
                    _run_entry(entry, plan, checkpoints, writer, options, seed)
                    if entry.output in writer.crcs:  # computed, not copied
                        journal.record(entry.output, writer.crcs[entry.output])

                _run_tasks(group_tasks(entries), run, options, bar)
            ok = True
        finally:
            writer.close(sync=ok and options.sync)
            journal.close(keep=not ok)
        card = model_card(plan, random_seed=seed if is_random else None)
        write_metadata(folder, plan, layout, {k: v for k, v in copied.items() if v is not None}, card)
        files = tuple(sorted(p.name for p in folder.iterdir() if p.name != STAGING_MARKER))
    elapsed = time.perf_counter() - started
    total = sum(e.nbytes for e in plan.entries)
    log.info("wrote %d tensors, %.2f GB in %.1f s", len(plan.entries), total / 1e9, elapsed)
    return MergeReport(
        out, len(plan.entries), layout.filenames, total, elapsed, files, seed if is_random else None, plan.warnings
    )


def input_paths(checkpoints: Mapping[str, Checkpoint]) -> list[tuple[str, Path]]:
    """Every folder a merge reads, by model: the model's folder, the folders its weight files
    really lie in (shards linked from elsewhere), and for a hub model its whole cache folder
    (models--org--name, whose snapshots link into its blobs). OUT must keep apart from all of them."""
    paths = []
    for name, checkpoint in checkpoints.items():
        what = f"model {name!r}"
        paths.append((what, checkpoint.folder))
        if checkpoint.ref.folder is None and checkpoint.folder.parent.name == "snapshots":
            paths.append((what, checkpoint.folder.parent.parent))
        for filename in sorted(set(checkpoint.weight_map.values())):
            weights = checkpoint.folder / filename
            if weights.exists():
                paths.append((what, weights.resolve().parent))
    return paths


def import_torch_in_background() -> None:
    """torch takes seconds to import; copies (and numpy-scaled tensors) need none of it, so they
    run while it loads. A merge that needs no torch never imports it."""
    import importlib

    threading.Thread(target=importlib.import_module, args=("torch",), daemon=True, name="import-torch").start()


def merge_id(plan: Plan, layout, checkpoints: Mapping[str, Checkpoint]) -> str:
    """What an interrupted merge must share with this one to be resumed: the plan, the shard
    layout, and the input files (path, size, modification time)."""
    import hashlib

    inputs = sorted({str(checkpoints[s.model].tensor_info(s.tensor).path) for e in plan.entries for s in e.sources})
    stats = [(p, st.st_size, st.st_mtime_ns) for p in inputs for st in [os.stat(p)]]
    # repr of the frozen entries (names, tuples, numbers): deterministic, and ten times faster than
    # JSON of dataclasses.asdict, which deep-copies every entry
    identity = repr((plan.entries, layout.filenames, layout.headers, stats))
    return hashlib.sha256(identity.encode()).hexdigest()


Task = tuple[PlanEntry, ...]  # what one worker runs: one entry, or entries that share their input


def group_tasks(entries: tuple[PlanEntry, ...]) -> list[Task]:
    """Entries that move or scale one tensor's raw bytes are grouped by that tensor, so that a
    layer a recipe repeats (depth up-scaling, frankenmerges) is read once for all its copies;
    every other entry is a task of its own. Tasks keep the order of their first entry."""
    tasks: list[list[PlanEntry]] = []
    by_source: dict[tuple[str, str], list[PlanEntry]] = {}
    for entry in entries:
        if not moves_raw_bytes(entry):
            tasks.append([entry])
            continue
        key = (entry.sources[0].model, entry.sources[0].tensor)
        if key in by_source:
            by_source[key].append(entry)
        else:
            by_source[key] = [entry]
            tasks.append(by_source[key])
    return [tuple(task) for task in tasks]


def _run_tasks(tasks: list[Task], run: Callable[[Task], None], options: MergeOptions, bar) -> None:
    """Run tasks on a bounded pool of worker threads, with at most `max_memory_bytes` in flight.

    Reads, torch kernels and writes all release the GIL, so workers overlap I/O with compute. Each
    entry writes its own byte range of its shard, so workers never touch the same bytes. A failure
    stops new work; the tasks already running finish, then the error propagates.
    """
    # What needs no torch first (copies, numpy-scaled tensors): it runs while torch is still being
    # imported in the background, and its I/O overlaps the computed entries' later.
    tasks = sorted(tasks, key=lambda task: needs_torch(task[0]))
    assert options.workers is not None  # set by run_plan
    if options.workers <= 1:
        for task in tasks:
            run(task)
            bar.update(sum(e.nbytes for e in task))
        return
    budget = _Budget(options.max_memory_bytes)
    threads = _TorchThreads(max(1, (os.cpu_count() or 1) // options.workers))
    failed = threading.Event()  # set by the first task that raises: no more work starts
    with ThreadPoolExecutor(options.workers) as pool:
        futures: list[Future] = []
        try:
            for task in tasks:
                cost = max(memory_cost(e, options.chunk_bytes, options.device) for e in task)
                budget.acquire(cost)
                if failed.is_set():
                    budget.release(cost)
                    break
                future = pool.submit(threads.wrap(run) if needs_torch(task[0]) else run, task)
                future.add_done_callback(_finisher(budget, bar, cost, sum(e.nbytes for e in task), failed))
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


def moves_raw_bytes(entry: PlanEntry) -> bool:
    """One input's bytes, copied unchanged or scaled by numpy: no decoding into torch tensors."""
    return entry.compute_dtype is not None and len(entry.sources) == 1 and not needs_torch(entry)


def _move_raw_bytes(task: Task, checkpoints: Mapping[str, Checkpoint], writer: ShardWriter, chunk_bytes: int) -> None:
    """Copy (or scale) one input tensor into each of the task's outputs, reading it once: the input
    streams through in pieces, each written to every output (scaled where the output says so).

    Not copy_file_range: from one file offset to another that is not aligned with it (nearly every
    copy: headers differ, layers move), the kernel fills the output's page cache one 4 KiB page at
    a time, and writeback then sends the disk requests of half the size that large folios give
    (Linux 6.18, ext4: 2.7 s instead of 1.8 s to sync 1.44 GB). Reading into a buffer and writing
    it costs one more memory copy and nothing on the disk.
    """
    from mergesmith.methods.passthrough import scale_raw

    checkpoint, tensor = checkpoints[task[0].sources[0].model], task[0].sources[0].tensor
    info = checkpoint.tensor_info(tensor)
    factors = [dict(entry.params)["scale"][0] for entry in task]
    buffer = _piece_buffer(max(chunk_bytes, element_size(info.dtype))) if info.start >= 0 else None
    for offset, count in piece_spans(info, chunk_bytes):
        data: bytes | bytearray | memoryview
        if buffer is not None:
            data = buffer[:count]
            read_into(info, data, offset)
        else:  # a .bin checkpoint: no byte offsets to read from
            data = checkpoint.read_bytes(tensor, offset, count)
        for entry, factor in zip(task, factors):
            # not journaled: a resume that redoes them reads as many bytes as checking them would,
            # and a CRC-32 of every scaled byte costs each merge CPU (0.2 of the seed recipe's 1.8 s)
            result = data if factor is None else scale_raw(data, entry.dtype, factor)
            writer.write(entry.output, offset, result, checksum=False)


_piece_buffers = threading.local()


def _piece_buffer(size: int) -> memoryview:
    """This thread's reusable buffer of at least `size` bytes (fresh ones would cost page faults)."""
    buffer = getattr(_piece_buffers, "buffer", None)
    if buffer is None or len(buffer) < size:
        buffer = _piece_buffers.buffer = memoryview(bytearray(size))
    return buffer


def scales_without_torch(entry: PlanEntry) -> bool:
    """Passthrough with a scale and no cast: numpy scales the raw bytes (methods/passthrough.py)."""
    from mergesmith.methods.passthrough import RAW_SCALABLE

    return (
        entry.method == "passthrough"
        and not entry.vocabulary
        and entry.dtype == entry.stored_dtype == entry.compute_dtype
        and entry.dtype in RAW_SCALABLE
        and dict(entry.params)["scale"] != (None,)
    )


def needs_torch(entry: PlanEntry) -> bool:
    return not (is_plain_copy(entry) or scales_without_torch(entry))


def is_plain_copy(entry: PlanEntry) -> bool:
    """Entries whose bytes move unchanged: integer buffers, and passthrough without scale or cast."""
    if entry.compute_dtype is None:
        return True
    unscaled = entry.method == "passthrough" and dict(entry.params)["scale"] == (None,)
    return unscaled and entry.dtype == entry.stored_dtype and not entry.vocabulary


class _TorchThreads:
    """Give torch's intra-op pool `count` threads in each worker (importing torch when the first
    computed entry runs, not before), and put the old count back at the end.

    torch's thread setting belongs to the thread that makes it (OpenMP and MKL keep it per thread;
    a new thread starts from the last count set anywhere), so every task sets it in its own worker.
    Methods whose result depends on the count get torch's default, the count mergekit computes with.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.before: int | None = None
        self.lock = threading.Lock()

    def wrap(self, run: Callable[[Task], None]) -> Callable[[Task], None]:
        def configured(task: Task) -> None:
            import torch

            with self.lock:
                if self.before is None:
                    self.before = torch.get_num_threads()
            sensitive = get_method(task[0].method)[0].threads_change_result
            torch.set_num_threads(self.before if sensitive else self.count)
            run(task)

        return configured

    def restore(self) -> None:
        if self.before is not None:
            import torch

            torch.set_num_threads(self.before)


def _finisher(budget: _Budget, bar, cost: int, nbytes: int, failed: threading.Event) -> Callable[[Future], None]:
    def finish(future: Future) -> None:
        budget.release(cost)
        bar.update(nbytes)
        if not future.cancelled() and future.exception() is not None:
            failed.set()

    return finish


class _Budget:
    """Bytes in flight: acquire waits until the cost fits (one entry always runs, however large)."""

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


def memory_cost(entry: PlanEntry, chunk_bytes: int, device: str = "cpu") -> int:
    """A generous estimate of the host memory one entry needs while it runs."""
    spec = get_method(entry.method)[0]
    if is_plain_copy(entry):
        return chunk_bytes  # copies
    if spec.elementwise and not entry.vocabulary:  # vocabulary entries run whole
        return chunk_bytes * (len(entry.sources) + 3)
    count = entry.nbytes // element_size(entry.dtype)
    if compute_device(entry, spec, device) != "cpu":  # host memory: pinned inputs (float32 at most) and result
        return count * 4 * len(entry.sources) + entry.nbytes
    assert entry.compute_dtype is not None  # copies returned above
    # inputs, their task vectors, masks and a few tensor-sized temporaries
    return count * element_size(entry.compute_dtype) * (3 * len(entry.sources) + 4)


def uses_device(entry: PlanEntry) -> bool:
    """Whether `--device cuda` would move this entry's arithmetic to the GPU."""
    return entry.compute_dtype is not None and compute_device(entry, get_method(entry.method)[0], "cuda") != "cpu"


def compute_device(entry: PlanEntry, spec, device: str) -> str:
    """Where an entry computes: elementwise methods and vocabulary entries always on the CPU."""
    return "cpu" if spec.elementwise or entry.vocabulary else device


def _run_entry(
    entry: PlanEntry,
    plan: Plan,
    checkpoints: Mapping[str, Checkpoint],
    writer: ShardWriter,
    options: MergeOptions,
    seed: int,
) -> None:
    spec, function = get_method(entry.method)
    params = dict(entry.params)
    readers = [checkpoints[s.model] for s in entry.sources]
    infos = [c.tensor_info(s.tensor) for c, s in zip(readers, entry.sources)]
    if entry.compute_dtype is None:
        _copy_buffer(entry, readers, writer)
        return
    device = compute_device(entry, spec, options.device)
    if spec.is_random:
        params["generator"] = tensor_generator(seed, entry.output, device)
    if device != "cpu":
        _run_on_device(entry, spec, function, params, readers, infos, writer, device)
        return
    if entry.vocabulary:
        base = entry.sources[0].model if entry.has_base else plan.base_model
        _run_vocabulary_entry(entry, readers, infos, function, params, writer, plan.vocabulary, base)
        return
    count = entry.nbytes // element_size(entry.dtype)
    widest = max(element_size(entry.dtype), *(element_size(i.dtype) for i in infos))
    step = max(1, options.chunk_bytes // widest) if spec.elementwise else max(count, 1)
    compute = torch_dtype(entry.compute_dtype)
    for first in range(0, count, step):
        n = min(step, count - first)
        tensors = [
            _read_elements(c, s.tensor, i.dtype, first, n).to(compute) for c, s, i in zip(readers, entry.sources, infos)
        ]
        if not spec.elementwise:
            tensors = [t.reshape(entry.shape) for t in tensors]
        result = _apply(entry, spec, function, tensors, params)
        writer.write(entry.output, first * element_size(entry.dtype), tensor_bytes(result.to(torch_dtype(entry.dtype))))


def _run_on_device(entry: PlanEntry, spec, function, params, readers, infos, writer: ShardWriter, device: str) -> None:
    """A whole tensor on the GPU: inputs read into pinned memory and copied without blocking, on
    this worker thread's own stream, so one entry's transfers overlap another's compute."""
    import torch

    assert entry.compute_dtype is not None
    compute = torch_dtype(entry.compute_dtype)
    stream = _thread_stream(device)
    with torch.cuda.stream(stream):
        sources = zip(readers, entry.sources, infos)
        tensors = [_read_to_device(c, s.tensor, i, device).to(compute) for c, s, i in sources]
        count = entry.nbytes // element_size(entry.dtype)  # fewer than an input's under --unsafe-truncate-embeddings
        result = _apply(entry, spec, function, [t.reshape(-1)[:count].reshape(entry.shape) for t in tensors], params)
        # Back into pinned memory too: a copy to pageable memory goes through a staging buffer.
        host = torch.empty(result.shape, dtype=torch_dtype(entry.dtype), pin_memory=True)
        host.copy_(result.to(host.dtype), non_blocking=True)
    stream.synchronize()  # this worker's stream only
    writer.write(entry.output, 0, tensor_bytes(host))


def _read_to_device(checkpoint: Checkpoint, name: str, info, device: str):
    import torch

    if info.start >= 0:
        pinned = torch.empty(info.nbytes, dtype=torch.uint8, pin_memory=True)  # cached by torch
        read_into(info, memoryview(pinned.numpy()))  # type: ignore[arg-type]
        host = pinned.view(torch_dtype(info.dtype))
    else:
        host = _read_elements(checkpoint, name, info.dtype, 0, info.nbytes // element_size(info.dtype))
    return host.to(device, non_blocking=True)


_streams = threading.local()


def _thread_stream(device: str):
    import torch

    if getattr(_streams, "stream", None) is None:
        _streams.stream = torch.cuda.Stream(device=device)
    return _streams.stream


def resolve_device(requested: str) -> str:
    """ "auto" -> "cuda" when a GPU is usable, else "cpu"; "cuda" without one is an error."""
    if requested == "cpu":
        return "cpu"
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not requested.startswith("cuda"):
        raise MergesmithError(f"--device {requested}: expected cpu, cuda, cuda:N or auto")
    if not torch.cuda.is_available():
        raise MergesmithError(
            f"--device {requested}: no CUDA device is available to torch",
            hint="use --device cpu (or auto), or install a CUDA build of torch",
        )
    return requested


def _apply(entry: PlanEntry, spec, function, tensors: list, params: dict):
    try:
        if entry.has_base:
            return function(tensors[0], tensors[1:], **params)
        if spec.inputs.uses_base:
            return function(None, tensors, **params)
        return function(tensors, **params)
    except MergeError as err:  # a method knows the values, not which tensor they are
        raise MergeError(f"tensor {entry.output}: {entry.method}: {err.message}", hint=err.hint) from err


def _run_vocabulary_entry(entry, readers, infos, function, params, writer, vocabulary, base) -> None:
    """Embeddings and lm_head under a merged vocabulary: whole tensors, rows aligned by token first."""
    assert entry.compute_dtype is not None and vocabulary is not None
    compute = torch_dtype(entry.compute_dtype)
    tensors = [
        _read_elements(c, s.tensor, i.dtype, 0, i.nbytes // element_size(i.dtype)).to(compute).reshape(i.shape)
        for c, s, i in zip(readers, entry.sources, infos)
    ]
    aligned = align_rows(tensors, [s.model for s in entry.sources], vocabulary, base)
    result = _apply(entry, get_method(entry.method)[0], function, aligned, params)
    writer.write(entry.output, 0, tensor_bytes(result.to(torch_dtype(entry.dtype))))


def _copy_buffer(entry: PlanEntry, readers: list[Checkpoint], writer: ShardWriter) -> None:
    """Integer buffers (position ids, ...) are copied; every input must hold the same values."""
    first = readers[0].read_bytes(entry.sources[0].tensor)
    for reader, source in zip(readers[1:], entry.sources[1:]):
        if reader.read_bytes(source.tensor) != first:
            raise MergesmithError(
                f"{entry.output}: integer tensor differs between {entry.sources[0].model} and {source.model}",
                hint="non-floating tensors cannot be merged; the models must agree on them",
            )
    writer.write(entry.output, 0, first)


def tensor_generator(seed: int, name: str, device: str = "cpu"):
    """A generator seeded by the merge's seed and the tensor's name: the same bytes whatever the
    order in which tensors are computed, or the number of workers (on a given device: a GPU
    draws other numbers from the same seed than the CPU does)."""
    import hashlib

    import torch

    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _read_elements(checkpoint: Checkpoint, name: str, dtype: str, first: int, count: int):
    size = element_size(dtype)
    return tensor_from_bytes(checkpoint.read_bytes(name, first * size, count * size), dtype)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _progress(total: int, enabled: bool):
    if not (enabled and sys.stderr.isatty()):
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="merging", file=sys.stderr)
