"""The options of a merge's execution, shared by the command line and the library."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_SHARD_BYTES = 5 * 10**9


@dataclass(frozen=True)
class MergeOptions:
    out_shard_bytes: int = DEFAULT_SHARD_BYTES
    overwrite: bool = False
    progress: bool = False  # a byte progress bar on stderr (only shown on a terminal)
    # Large tensors stream through in pieces of this size. Small pieces are faster, not slower: a
    # piece's float32 temporaries then stay below glibc's mmap threshold and are reused from the
    # heap, where 16 MiB pieces got fresh pages from the kernel every time.
    chunk_bytes: int = 2**20
    # Threads running plan entries (per task, for backends that run several tasks); None: min(4,
    # CPUs) on the CPU, min(8, CPUs) with a GPU, whose workers mostly wait on reads and transfers.
    workers: int | None = None
    max_memory_bytes: int = 4 * 2**30  # estimated bytes in flight across workers
    sync: bool = True  # fsync shards before the folder is renamed into place
    random_seed: int | None = None  # for DARE, DELLA, arcee_fusion; chosen and reported when None
    # "cpu", "cuda" (or "cuda:N") or "auto": where the heavy methods (all but the elementwise ones)
    # compute. Elementwise methods are bound by I/O and stay on the CPU, where they are exact.
    device: str = "cpu"
    resume: bool = False  # continue the interrupted merge into the same OUT, keeping its verified work
    executor: str = "local"  # the backend that runs the tasks: see execute/backend.py
    executor_address: str | None = None  # the cluster a distributed backend joins (Ray: the GCS's host:port)
