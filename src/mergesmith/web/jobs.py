"""Merges and evaluations started from the page, each a worker process (worker.py) whose events
are kept and streamed to every page watching it. One merge per output folder at a time."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergesmith.errors import BusyError

log = logging.getLogger(__name__)


@dataclass
class Job:
    key: str  # "merge-3", "evaluation-7": the history row it reports to
    process: asyncio.subprocess.Process
    out: Path | None = None
    state: str = "running"  # then done, failed or cancelled
    events: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    seq: int = 0  # events are numbered, so a watcher sends each once

    def record(self, event: dict[str, Any]) -> None:
        self.seq += 1
        event = {**event, "seq": self.seq}
        # only the newest progress is worth replaying to a page that opens later
        if event.get("event") == "progress" and self.events and self.events[-1].get("event") == "progress":
            self.events[-1] = event
        else:
            self.events.append(event)
        self.changed.set()
        self.changed = asyncio.Event()


class Jobs:
    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.writing: dict[Path, str] = {}  # output folder -> the merge writing it
        self.tasks: set[asyncio.Task] = set()

    def check_free(self, out: Path) -> None:
        if out in self.writing:
            raise BusyError(
                f"output {out}: {self.writing[out].replace('-', ' ')} is writing it now",
                hint="wait for it to finish or cancel it, or choose another output folder",
            )

    async def start(
        self, key: str, job: dict[str, Any], finish: Callable[[str, dict[str, Any]], None], out: Path | None = None
    ) -> Job:
        """Start a worker on `job`; `finish(state, last_event)` is called once it has ended."""
        if out is not None:
            self.check_free(out)
            self.writing[out] = key
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "mergesmith.web.worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )
        except BaseException:
            self.writing.pop(out, None)  # type: ignore[arg-type]
            raise
        running = Job(key, process, out)
        self.jobs[key] = running
        assert process.stdin is not None
        process.stdin.write(json.dumps({**job, "out": str(out) if out else None}).encode())
        process.stdin.close()
        task = asyncio.create_task(self._follow(running, finish))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return running

    async def _follow(self, job: Job, finish: Callable[[str, dict[str, Any]], None]) -> None:
        assert job.process.stdout is not None
        last: dict[str, Any] = {}
        try:
            async for line in job.process.stdout:
                try:
                    event = json.loads(line)
                except ValueError:
                    log.warning("%s: not an event: %r", job.key, line[:200])
                    continue
                last = event
                job.record(event)
            code = await job.process.wait()
            if last.get("event") not in ("done", "error", "cancelled"):  # the worker died without a word
                last = {"event": "error", "kind": "bug", "message": f"the worker stopped (exit code {code})"}
                if job.out is not None:  # the page offers no --resume: what the merge left goes too
                    from mergesmith.output.folder import discard_interrupted

                    await asyncio.to_thread(discard_interrupted, job.out)
                job.record(last)
        finally:
            if job.out is not None:
                self.writing.pop(job.out, None)
        job.state = {"done": "done", "cancelled": "cancelled"}.get(last["event"], "failed")
        finish(job.state, last)
        job.record({"event": "finished", "state": job.state})

    def cancel(self, key: str) -> bool:
        """Interrupt a running job as Ctrl-C would; False when it is not running."""
        job = self.jobs.get(key)
        if job is None or job.state != "running" or job.process.returncode is not None:
            return False
        job.process.send_signal(signal.SIGINT)
        return True

    async def watch(self, key: str) -> AsyncIterator[dict[str, Any]]:
        """Every event of the job so far (of its progress, the newest), then each new one, until
        it has finished."""
        job = self.jobs[key]
        sent = 0
        while True:
            changed = job.changed
            for event in list(job.events):
                if event["seq"] > sent:
                    sent = event["seq"]
                    yield event
                    if event["event"] == "finished":
                        return
            await changed.wait()

    async def close(self) -> None:
        """Stop every running job (their outputs are removed as on Ctrl-C) and wait for them."""
        for key, job in self.jobs.items():
            if job.state == "running":
                self.cancel(key)
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=60)
