"""A merge or an evaluation started from the page, in its own process: `python -m
mergesmith.web.worker` reads one job (JSON) on stdin and writes its events on stdout, one JSON
object per line. A process of its own makes cancelling a merge what Ctrl-C is on the command line
(SIGINT: the staging folder is removed, OUT is never created) and keeps the server's memory small.

Events: {"event": "planned", ...}, {"event": "progress", ...}, then one of {"event": "done", ...},
{"event": "error", "message", "hint"} or {"event": "cancelled"}.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mergesmith.errors import MergesmithError

_EVERY_S = 0.2  # at most five progress events a second reach the page


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}, default=str) + "\n")
    sys.stdout.flush()


class _Reporter:
    """Turns the driver's progress into throttled events with a rate and a time left."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.sent = 0.0  # the driver calls in order, one call at a time

    def __call__(self, progress: Any) -> None:
        now = time.monotonic()
        last = progress.bytes_done >= progress.bytes_total
        if not last and now - self.sent < _EVERY_S:
            return
        self.sent = now
        elapsed = max(now - self.started, 1e-6)
        rate = progress.bytes_done / elapsed
        left = (progress.bytes_total - progress.bytes_done) / rate if rate > 0 else None
        emit("progress", **asdict(progress), elapsed_s=elapsed, bytes_per_s=rate, seconds_left=left)


def run_merge(job: dict[str, Any]) -> dict[str, Any]:
    from mergesmith import api
    from mergesmith.execute import MergeOptions
    from mergesmith.output.shards import file_digest
    from mergesmith.verify import verify_folder

    model_paths = {name: Path(folder) for name, folder in job["model_paths"].items()}
    loaded = api.parse_recipe(job["recipe"], source="the page's recipe")
    out = Path(job["out"])
    options = MergeOptions(overwrite=bool(job.get("overwrite")))
    planned = api.plan(loaded, model_paths=model_paths)
    emit("planned", tensors=len(planned.entries), bytes=sum(e.nbytes for e in planned.entries))
    report = api.merge(loaded, out, model_paths=model_paths, options=options, on_progress=_Reporter())
    checked = verify_folder(out, planned)
    files = [
        {"name": p.name, "bytes": p.stat().st_size, "sha256": file_digest(p) if p.suffix == ".safetensors" else None}
        for p in sorted(out.iterdir())
        if p.is_file()
    ]
    return {
        "tensors": report.tensors,
        "bytes_written": report.bytes_written,
        "elapsed_s": report.elapsed_s,
        "warnings": list(report.warnings),
        "random_seed": report.random_seed,
        "files": files,
        "verify": {"ok": checked.ok, "tensors": checked.tensors, "problems": checked.problems},
    }


def run_evaluate(job: dict[str, Any]) -> dict[str, Any]:
    from mergesmith import evaluate as measure

    result = measure.evaluate(job["model"], base_dir=job.get("base"), max_tokens=job["max_tokens"])
    return asdict(result)


def main() -> int:
    job = json.loads(sys.stdin.read())
    run = {"merge": run_merge, "evaluate": run_evaluate}[job["kind"]]
    try:
        emit("done", result=run(job))
    except MergesmithError as err:
        emit("error", kind=type(err).__name__, message=err.message, hint=err.hint)
        return 1
    except KeyboardInterrupt:  # the page's Cancel: what the merge wrote is already removed
        emit("cancelled")
        return 130
    except Exception as err:  # a bug: the traceback goes to the server's log, the page says so
        traceback.print_exc()
        emit("error", kind="bug", message=f"mergesmith failed unexpectedly: {err!r}", hint="please report this")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
