"""Plan -> shard files: one task per output shard (tasks.py), run by a backend (backend.py: the
interface and the registry; local.py, ray_backend.py), each entry produced by its route (routes.py).
run.py builds the tasks and hands them to the backend."""

from mergesmith.execute.options import DEFAULT_SHARD_BYTES, MergeOptions

__all__ = ["DEFAULT_SHARD_BYTES", "MergeOptions"]
