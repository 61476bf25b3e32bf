"""Installed in every Ray worker of a test job (runtime_env worker_process_setup_hook): a worker's
first shard write waits until the gate file exists, after announcing its PID, so that a test can
kill a worker in the middle of a shard deterministically."""

from __future__ import annotations

import os
import time
from pathlib import Path


def install() -> None:
    gate = Path(os.environ["MERGESMITH_TEST_GATE"])
    from mergesmith.output import shards

    original = shards.ShardWriter.write

    def write_after_the_gate(self, *args, **kwargs):
        if not gate.exists():
            (gate.parent / f"waiting-{os.getpid()}").touch()
            deadline = time.monotonic() + 120
            while not gate.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        return original(self, *args, **kwargs)

    shards.ShardWriter.write = write_after_the_gate
