"""The page's server: a Starlette application. Routes answer with JSON (a recipe's check and plan,
models, runs, history) or a server-sent event stream (a run's progress); the page is static/.

Guards, for a server that can read and write model folders: every path is checked against the
roots (roots.py); a request whose Host is not this machine's loopback name (DNS rebinding) or that
comes from another origin is refused before any route runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from mergesmith import __version__
from mergesmith.errors import AccessError, BusyError, MergesmithError
from mergesmith.plan_json import json_default
from mergesmith.web.history import History
from mergesmith.web.jobs import Jobs
from mergesmith.web.roots import Roots, cached_hub_models

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")  # --host values that keep the page on this machine
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")  # the same, as a Host header names them


def create_app(roots: Roots, history_path: Path, *, host_names: tuple[str, ...] = LOOPBACK_NAMES) -> ASGIApp:
    """The application; `host_names` are the names the page may be reached by (the Host header)."""
    history = History(history_path)
    jobs = Jobs()
    site = _Site(roots, history, jobs, history_path)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await jobs.close()  # a stopped server leaves no half-written output behind

    app = Starlette(
        routes=[
            Route("/", lambda request: FileResponse(STATIC / "index.html")),
            Route("/api/info", site.info),
            Route("/api/models", site.models),
            Route("/api/check", site.check, methods=["POST"]),
            Route("/api/merges", site.merges),
            Route("/api/merges", site.start_merge, methods=["POST"]),
            Route("/api/merges/{id:int}", site.merge),
            Route("/api/merges/{id:int}/events", site.merge_events),
            Route("/api/merges/{id:int}/cancel", site.cancel, methods=["POST"]),
            Route("/api/merges/{id:int}/evaluate", site.start_evaluation, methods=["POST"]),
            Route("/api/evaluations/{id:int}/events", site.evaluation_events),
            Mount("/static", StaticFiles(directory=STATIC)),
        ],
        lifespan=lifespan,
    )
    return _SameOrigin(app, host_names)


class _SameOrigin:
    """Refuse requests addressed to another host name (a rebound DNS name reaching this port) and
    requests made by pages of other origins (their Origin header, or the browser's Sec-Fetch-Site)."""

    def __init__(self, app: ASGIApp, host_names: tuple[str, ...]) -> None:
        self.app, self.host_names = app, host_names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        reason = None
        if _host_name(host) not in self.host_names:
            reason = f"Host {host!r} is not this machine's loopback name"
        elif "origin" in headers and headers["origin"] != f"http://{host}":
            reason = f"requests from {headers['origin']} are not accepted"
        elif headers.get("sec-fetch-site") in ("cross-site", "same-site"):
            reason = "requests from other sites are not accepted"
        if reason is None:
            await self.app(scope, receive, send)
            return
        response = JSONResponse({"error": {"kind": "Forbidden", "message": reason, "hint": None}}, status_code=403)
        await response(scope, receive, send)


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if ":" in host else host


def _error(err: MergesmithError, text: str | None = None, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": error_document(err, text)}, status_code=status)


def error_document(err: MergesmithError, text: str | None = None) -> dict[str, Any]:
    from mergesmith.recipe.locate import error_line

    line = error_line(text, err.message) if text is not None else None
    return {"kind": type(err).__name__, "message": err.message, "hint": err.hint, "line": line}


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as err:
        raise MergesmithError("the request is not JSON") from err
    if not isinstance(body, dict):
        raise MergesmithError("the request is not a JSON object")
    return body


def _text_field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise MergesmithError(f"the request has no text {name!r}")
    return value


class _Site:
    def __init__(self, roots: Roots, history: History, jobs: Jobs, history_path: Path) -> None:
        self.roots, self.history, self.jobs = roots, history, jobs
        self.state_folder = Path(os.path.realpath(history_path.parent))

    def _check_apart_from_state(self, out: Path) -> None:
        """A merge must not replace the folder holding the history, nor one around it."""
        if out == self.state_folder or out in self.state_folder.parents:
            raise AccessError(
                f"output {out}: the page keeps its history in {self.state_folder}",
                hint="choose another output folder",
            )

    async def info(self, request: Request) -> Response:
        return JSONResponse(
            {"version": __version__, "roots": [str(r) for r in self.roots.folders], "examples": examples()}
        )

    async def models(self, request: Request) -> Response:
        folders = await run_in_threadpool(self.roots.models)
        return JSONResponse({"folders": folders, "hub": await run_in_threadpool(cached_hub_models)})

    async def check(self, request: Request) -> Response:
        try:
            text = _text_field(await _body(request), "recipe")
        except MergesmithError as err:
            return _error(err)
        checked = await run_in_threadpool(check_recipe, text, self.roots)
        return Response(json.dumps(checked, default=json_default), media_type="application/json")

    async def start_merge(self, request: Request) -> Response:
        from mergesmith.output.folder import check_output_folder

        text = None
        try:
            body = await _body(request)
            text = _text_field(body, "recipe")
            out = self.roots.output(_text_field(body, "out"))
            self._check_apart_from_state(out)
            overwrite = bool(body.get("overwrite"))
            checked = await run_in_threadpool(check_recipe, text, self.roots)
            if not checked["ok"]:
                return JSONResponse({"error": checked["error"]}, status_code=400)
            self.jobs.check_free(out)
            out.parent.mkdir(parents=True, exist_ok=True)  # inside a root (checked above), as a page user expects
            inputs = [(f"model {name!r}", Path(folder)) for name, folder in checked["model_paths"].items()]
            check_output_folder(out, overwrite=overwrite, inputs=inputs)  # refused now, not by the worker later
        except BusyError as err:
            return _error(err, status=409)
        except AccessError as err:
            return _error(err, status=403)
        except MergesmithError as err:
            return _error(err, text)
        merge_id = self.history.start_merge(checked["recipe"], checked["plan"]["method"], checked["inputs"], str(out))

        def finish(state: str, last: dict[str, Any]) -> None:
            self.history.finish_merge(merge_id, state, message=last.get("message"), result=last.get("result"))

        job = {
            "kind": "merge",
            "recipe": checked["recipe"],
            "model_paths": checked["model_paths"],
            "overwrite": overwrite,
        }
        await self.jobs.start(f"merge-{merge_id}", job, finish, out)
        return JSONResponse({"id": merge_id, "out": str(out)}, status_code=202)

    async def merges(self, request: Request) -> Response:
        query = request.query_params
        return JSONResponse(self.history.merges(query.get("q", ""), query.get("outcome")))

    async def merge(self, request: Request) -> Response:
        record = self.history.merge(request.path_params["id"])
        if record is None:
            return _error(MergesmithError(f"no merge {request.path_params['id']} in the history"), status=404)
        return JSONResponse(record)

    async def merge_events(self, request: Request) -> Response:
        return self._events(f"merge-{request.path_params['id']}")

    async def evaluation_events(self, request: Request) -> Response:
        return self._events(f"evaluation-{request.path_params['id']}")

    def _events(self, key: str) -> Response:
        if key not in self.jobs.jobs:
            return _error(MergesmithError(f"{key} is not running in this server"), status=404)

        async def stream() -> AsyncIterator[str]:
            async for event in self.jobs.watch(key):
                yield f"data: {json.dumps(event, default=str)}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def cancel(self, request: Request) -> Response:
        key = f"merge-{request.path_params['id']}"
        if not self.jobs.cancel(key):
            return _error(MergesmithError(f"merge {request.path_params['id']} is not running"), status=409)
        return JSONResponse({"cancelling": True}, status_code=202)

    async def start_evaluation(self, request: Request) -> Response:
        merge_id = request.path_params["id"]
        record = self.history.merge(merge_id)
        try:
            if record is None or record["outcome"] != "done":
                raise MergesmithError(f"merge {merge_id} has no finished output to evaluate")
            body = await _body(request)
            model = self.roots.folder(record["output"], "the merged model")
            base = body.get("base") or None
            if base is not None and not isinstance(base, str):
                raise MergesmithError("base: a model folder or hub id, as text")
            base_ref = None
            if base:
                mapped = self.roots.model_paths([base])
                base_ref = str(mapped.get(base, base))
            max_tokens = body.get("max_tokens", 512)
            if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 2:
                raise MergesmithError(f"max_tokens: {max_tokens!r} is not a whole number of at least 2")
        except AccessError as err:
            return _error(err, status=403)
        except MergesmithError as err:
            return _error(err)
        evaluation_id = self.history.start_evaluation(merge_id, base)

        def finish(state: str, last: dict[str, Any]) -> None:
            self.history.finish_evaluation(evaluation_id, state, message=last.get("message"), result=last.get("result"))

        job = {"kind": "evaluate", "model": str(model), "base": base_ref, "max_tokens": max_tokens}
        await self.jobs.start(f"evaluation-{evaluation_id}", job, finish)
        return JSONResponse({"id": evaluation_id}, status_code=202)


def check_recipe(text: str, roots: Roots) -> dict[str, Any]:
    """The recipe checked by the real planner, against the models under the roots: its plan, or
    the error the command line would print, with the line it is about."""
    from mergesmith import api
    from mergesmith.plan_json import plan_document

    try:
        loaded = api.parse_recipe(text, source="recipe")
        references = api.models_to_open(loaded)
        model_paths = roots.model_paths(references)
        planned = api.plan(loaded, model_paths=model_paths)
    except MergesmithError as err:
        return {"ok": False, "error": error_document(err, text)}
    return {
        "ok": True,
        "recipe": planned.recipe_text,
        "from_card": loaded.from_card,
        "rebuilt": loaded.rebuilt,
        "notes": list(loaded.notes),
        "plan": plan_document(planned),
        "model_paths": {name: str(path) for name, path in model_paths.items()},
        "inputs": {ref: _input_identity(model_paths.get(ref)) for ref in references},
    }


def _input_identity(folder: Path | None) -> dict[str, Any]:
    """What the history keeps of an input: its folder and its files' names, sizes and times."""
    if folder is None:
        return {"folder": None, "from": "hub cache"}
    files = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(folder.iterdir()) if p.is_file()]
    return {"folder": str(folder), "files": files}


def examples() -> list[dict[str, str]]:
    """Recipes to start from: the seed card's first, then one per common method."""
    from mergesmith.demo import seed_recipe_text

    found = [{"name": "seed: Fimbulvetr-11B-v2 cut to 47 layers, scaled by depth", "text": seed_recipe_text()}]
    folder = resources.files("mergesmith.data").joinpath("examples")
    for item in sorted(folder.iterdir(), key=lambda i: i.name):
        if item.name.endswith(".yaml"):
            text = item.read_text(encoding="utf-8")
            name = text.splitlines()[0].lstrip("# ").strip() if text.startswith("#") else item.name
            found.append({"name": name, "text": text})
    return found


def default_history(roots: Roots) -> Path:
    return roots.folders[0] / ".mergesmith" / "history.sqlite"


def serve(roots: Roots, *, host: str, port: int, history: Path | None) -> None:
    import uvicorn

    os.environ["HF_HUB_OFFLINE"] = "1"  # the page reads the hub cache, never the network
    names = LOOPBACK_NAMES
    if host not in LOOPBACK_HOSTS:
        log.warning("listening on %s: anyone who can reach it can read and write %s", host, roots.listed())
        names = (*LOOPBACK_NAMES, host)
    app = create_app(roots, history or default_history(roots), host_names=names)
    uvicorn.run(app, host=host, port=port, log_level="warning")
