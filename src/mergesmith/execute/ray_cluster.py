"""Ray plumbing for `--executor ray` that does not depend on the plan: joining or starting a cluster and
leaving it as found, giving a task's MergesmithError back unchanged, refusing a GPU request no node can
meet, and byte progress from running tasks. Ray is an optional extra (mergesmith[ray]), so it is
imported only when these run. Measurements and pitfalls: docs/notes-ray.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from typing import Any

from mergesmith.errors import ClusterError, MergesmithError, UnsupportedError

log = logging.getLogger(__name__)


def import_ray() -> Any:
    """The ray module, or an UnsupportedError saying how to install it."""
    # Ray replaces builtins.print in a driver that receives a worker's log lines; a merge run from a
    # user's program must not change its print
    os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")
    try:
        import ray
    except ImportError as err:
        raise UnsupportedError(
            "--executor ray needs the ray package, which is not installed",
            hint="pip install 'mergesmith[ray]' (the same version on every node of the cluster)",
        ) from err
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Join the cluster at `address` (host:port of its GCS), or start a private local instance when it is
    None; on exit disconnect, or stop the instance, and leave a connection the caller made alone.

    >>> with ray_session("10.0.0.5:6379"):
    ...     digests = ray.get(refs, timeout=3600)
    """
    ray = import_ray()
    if ray.is_initialized():  # a notebook or a test connected already: theirs to shut down
        joined = ray.get_runtime_context().gcs_address
        if address is not None and address != joined:
            raise ClusterError(
                f"--ray-address {address}: this process is already connected to the Ray cluster at {joined}",
                hint="leave --ray-address out to use that cluster, or call ray.shutdown() first",
            )
        yield
        return
    if address is not None:
        check_reachable(address)
    # "local", not None: a bare ray.init() joins whatever cluster `ray start` last left on this machine
    # (RAY_ADDRESS, /tmp/ray/ray_current_cluster) instead of starting a new one.
    try:
        # log_to_driver=False: tasks' output stays in Ray's session logs; their errors come back as exceptions
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, ray.exceptions.RaySystemError, ray.exceptions.AuthenticationError) as err:
        raise _init_error(address, err) from err
    try:
        yield
    finally:
        # Joined: this only disconnects. Started: this stops the raylet, GCS and workers it started,
        # and waits until they are gone, so none outlives the merge.
        ray.shutdown(wait_for_processes=address is None)


def check_reachable(address: str, *, timeout_s: float = 5.0) -> None:
    """Refuse an address nothing listens on: ray.init retries one for minutes before it gives up."""
    if "://" in address:  # ray:// is Ray Client: ray[client], and a driver outside the cluster
        raise ClusterError(
            f"--ray-address {address}: Ray Client addresses are not supported",
            hint="run mergesmith on a node of the cluster and give the GCS address host:port",
        )
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(
            f"--ray-address {address}: not host:port",
            hint="give the head node's GCS address as printed by `ray start --head`, e.g. 10.0.0.5:6379",
        )
    try:  # an IPv6 address is written [::1]:6379; the socket takes it without brackets
        socket.create_connection((host.removeprefix("[").removesuffix("]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ClusterError(
            f"--ray-address {address}: nothing answers there ({err.strerror or err})",
            hint="start the cluster with `ray start --head` on that node, or check the host and port",
        ) from err


def _init_error(address: str | None, err: Exception) -> ClusterError:
    if address is None:
        return ClusterError(
            f"cannot start a local Ray instance: {err}",
            hint="give --ray-address of a running cluster, or leave out --executor ray",
        )
    return ClusterError(
        f"--ray-address {address}: cannot join the Ray cluster there: {err}",
        hint="give the head node's GCS address (host:port printed by `ray start --head`); with token "
        "authentication (Ray's default) the cluster's token must be in ~/.ray/auth_token or RAY_AUTH_TOKEN",
    )


def get_results(refs: Sequence[Any], *, timeout_s: float | None) -> list[Any]:
    """ray.get, raising a task's MergesmithError as itself: Ray wraps it in RayTaskError(<its class>),
    which is still an instance of it, but whose str() is the remote traceback instead of message + hint."""
    ray = import_ray()
    try:
        return ray.get(list(refs), timeout=timeout_s)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, MergesmithError):
            raise err.cause from err
        raise


def check_gpus(gpus_per_task: float) -> None:
    """Refuse before submitting when no live node has `gpus_per_task` GPUs: Ray would keep such tasks
    pending forever (it cannot know no such node will join), and ray.get would hang."""
    if gpus_per_task <= 0:
        return
    ray = import_ray()
    most = max((node["Resources"].get("GPU", 0) for node in ray.nodes() if node["Alive"]), default=0)
    if most < gpus_per_task:
        raise ClusterError(
            f"each merge task asks for {gpus_per_task:g} GPU, but the Ray cluster's largest node has {most:g}",
            hint="leave out --device cuda to merge on CPUs, or add GPU nodes (ray start --num-gpus N)",
        )


class ByteProgress:
    """Bytes done per task, summed for one progress bar. Run it as an actor (start_progress); tasks call
    report(key, done_bytes) with an absolute count, so a retried task restarts its share at 0 instead of
    counting its bytes twice."""

    def __init__(self) -> None:
        self.done_bytes: dict[str, int] = {}

    def report(self, key: str, done_bytes: int) -> None:
        self.done_bytes[key] = done_bytes

    def total(self) -> int:
        return sum(self.done_bytes.values())


def start_progress() -> Any:
    """A ByteProgress actor. num_cpus=0: it holds no CPU, so it takes none from the tasks it counts
    (an actor asks for 1 CPU to be placed unless told otherwise)."""
    ray = import_ray()
    return ray.remote(num_cpus=0)(ByteProgress).remote()
