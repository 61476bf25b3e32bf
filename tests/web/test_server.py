"""The page's server without a browser: its guards (roots, origins, one merge per output folder),
its messages (the command line's, word for word), its history across restarts, and a stopped
server leaving no half-written output."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys

import httpx
import pytest

from factory import fill_cache
from mergesmith.demo import SEED_MODEL
from page_server import WIDE_TIES, start_server, stop_server

RECIPE = f"""slices:
  - sources:
      - model: {SEED_MODEL}
        layer_range: [0, 40]
merge_method: passthrough
dtype: bfloat16
"""


def cli_error(recipe_text: str, cwd, tmp_path) -> tuple[str, str]:
    """What `mergesmith plan` prints for a recipe, run from the root: (message, hint)."""
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe_text)
    done = subprocess.run(
        [sys.executable, "-m", "mergesmith", "plan", str(path)],
        capture_output=True, text=True, cwd=cwd, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    first, _, hint = done.stderr.strip().partition("\n  hint: ")
    return first.removeprefix("error: ").replace(str(path), "recipe"), hint


@pytest.mark.parametrize(
    "change",
    [
        ("layer_range: [0, 40]", "layer_range: [0, 94]"),  # a plan error: past the model's layers
        ("merge_method:", "merge_methd:"),  # a typo of a key
        ("merge_method: passthrough", "merge_method: pasthrough"),  # a typo of a method
        (SEED_MODEL, "nobody/no-such-model"),  # a hub id not in the cache
        ("slices:", "slices: ["),  # not YAML
    ],
)
def test_a_bad_recipe_gets_the_command_lines_message(server, model_root, tmp_path, change):
    text = RECIPE.replace(*change)
    answer = server.client().post("/api/check", json={"recipe": text}).json()
    assert answer["ok"] is False
    message, hint = cli_error(text, model_root, tmp_path)
    assert (answer["error"]["message"], answer["error"]["hint"]) == (message, hint)
    started = server.client().post("/api/merges", json={"recipe": text, "out": "merges/never"})
    assert started.status_code == 400
    assert started.json()["error"]["message"] == message
    assert not (model_root / "merges" / "never").exists()


def test_errors_point_at_their_line(server):
    text = RECIPE.replace("layer_range: [0, 40]", "layer_rnge: [0, 40]")
    error = server.client().post("/api/check", json={"recipe": text}).json()["error"]
    assert error["message"] == "slices[0].sources[0].layer_rnge: unknown key"
    assert error["line"] == 4


def test_models_outside_the_roots_are_refused(server, model_root, tmp_path):
    outside = tmp_path / "outside-model"
    (model_root / SEED_MODEL).rename(outside)  # the same model, moved out of the root
    try:
        (model_root / "link-out").symlink_to(outside)  # and a link to it from inside
        for reference, shown in ((str(outside), outside), ("link-out", model_root / "link-out")):
            answer = server.client().post("/api/check", json={"recipe": RECIPE.replace(SEED_MODEL, reference)}).json()
            assert answer["error"]["kind"] == "AccessError"
            assert answer["error"]["message"] == (
                f"model {reference!r}: {shown} is outside the folders this page may read ({model_root})"
            )
        relative = os.path.relpath(outside, model_root)
        answer = server.client().post("/api/check", json={"recipe": RECIPE.replace(SEED_MODEL, relative)}).json()
        assert answer["error"]["kind"] == "AccessError", answer
    finally:
        (model_root / "link-out").unlink(missing_ok=True)
        outside.rename(model_root / SEED_MODEL)
    assert server.client().post("/api/check", json={"recipe": RECIPE}).json()["ok"] is True


@pytest.mark.parametrize("out", ["../escape", "/tmp/escape", ".", "", "link-out/escape"])
def test_outputs_outside_the_roots_are_refused(server, model_root, tmp_path, out):
    (model_root / "link-out").symlink_to(tmp_path)
    try:
        answer = server.client().post("/api/merges", json={"recipe": RECIPE, "out": out})
    finally:
        (model_root / "link-out").unlink()
    assert answer.status_code == 403
    assert answer.json()["error"]["kind"] == "AccessError"
    assert not list(tmp_path.iterdir())
    assert not (model_root.parent / "escape").exists()


def test_a_merge_cannot_replace_the_history(model_root, tmp_path):
    server = start_server(model_root, model_root / "state" / "deep" / "history.sqlite")
    try:
        for out in ("state/deep", "state"):  # the folder itself, and one around it
            answer = server.client().post("/api/merges", json={"recipe": RECIPE, "out": out, "overwrite": True})
            assert answer.status_code == 403
            assert answer.json()["error"]["message"] == (
                f"output {model_root / out}: the page keeps its history in {model_root / 'state' / 'deep'}"
            )
        beside = server.client().post("/api/merges", json={"recipe": RECIPE, "out": "state/beside"})
        assert beside.status_code == 202
        assert events(server.client(), beside.json()["id"])[-1]["state"] == "done"
        assert (model_root / "state" / "deep" / "history.sqlite").is_file()
    finally:
        stop_server(server)
        shutil.rmtree(model_root / "state")


@pytest.mark.parametrize("out", [SEED_MODEL, "Sao10K"])
def test_an_output_that_is_or_holds_an_input_is_refused_before_any_run(server, model_root, out):
    client = server.client()
    before = len(client.get("/api/merges").json())
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in (model_root / SEED_MODEL).iterdir())
    answer = client.post("/api/merges", json={"recipe": RECIPE, "out": out, "overwrite": True})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["kind"] == "OutputError"
    assert error["message"].startswith(f"{model_root / out}: the output folder ")
    assert error["message"].endswith(f"(model '{SEED_MODEL}')")
    assert len(client.get("/api/merges").json()) == before  # no run was started
    assert (
        sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in (model_root / SEED_MODEL).iterdir()) == files
    )


def test_an_evaluation_request_with_bad_fields_is_refused(server):
    client = server.client()
    merge_id = client.post("/api/merges", json={"recipe": RECIPE, "out": "merges/to-evaluate"}).json()["id"]
    assert events(client, merge_id)[-1]["state"] == "done"
    for body, message in (
        ({"max_tokens": [1]}, "max_tokens: [1] is not a whole number of at least 2"),
        ({"max_tokens": "many"}, "max_tokens: 'many' is not a whole number of at least 2"),
        ({"max_tokens": 1}, "max_tokens: 1 is not a whole number of at least 2"),
        ({"base": 3}, "base: a model folder or hub id, as text"),
        ({"base": "/etc"}, None),
    ):
        answer = client.post(f"/api/merges/{merge_id}/evaluate", json=body)
        assert answer.status_code in (400, 403), answer.text
        if message:
            assert answer.json()["error"]["message"] == message
        else:
            assert answer.json()["error"]["kind"] == "AccessError"
    assert client.post("/api/merges/99999/evaluate", json={}).json()["error"]["message"] == (
        "merge 99999 has no finished output to evaluate"
    )


@pytest.mark.parametrize(
    "headers, reason",
    [
        ({"Origin": "http://evil.example"}, "requests from http://evil.example are not accepted"),
        ({"Origin": "http://localhost:1"}, "requests from http://localhost:1 are not accepted"),
        ({"Sec-Fetch-Site": "cross-site"}, "requests from other sites are not accepted"),
        ({"Host": "evil.example"}, "Host 'evil.example' is not this machine's loopback name"),
    ],
)
def test_requests_from_other_origins_are_refused(server, model_root, headers, reason):
    for method, path, body in (("POST", "/api/merges", {"recipe": RECIPE, "out": "merges/cross"}), ("GET", "/", None)):
        answer = httpx.request(method, server.url + path, json=body, headers=headers)
        assert answer.status_code == 403
        assert answer.json()["error"]["message"] == reason
    assert not (model_root / "merges" / "cross").exists()
    own = server.url.removeprefix("http://")
    assert httpx.get(server.url + "/api/info", headers={"Origin": f"http://{own}"}).status_code == 200


def events(client: httpx.Client, merge_id: int) -> list[dict]:
    with client.stream("GET", f"/api/merges/{merge_id}/events") as stream:
        return [json.loads(line.removeprefix("data: ")) for line in stream.iter_lines() if line]


def wait_for_progress(client: httpx.Client, merge_id: int) -> None:
    with client.stream("GET", f"/api/merges/{merge_id}/events") as stream:
        for line in stream.iter_lines():
            if line and json.loads(line.removeprefix("data: "))["event"] == "progress":
                return
    raise AssertionError("the merge ended before any progress")


def test_one_merge_per_output_folder_and_cancel_removes_it(server, model_root):
    client = server.client()
    first = client.post("/api/merges", json={"recipe": WIDE_TIES, "out": "merges/busy"})
    assert first.status_code == 202
    merge_id = first.json()["id"]
    wait_for_progress(client, merge_id)
    second = client.post("/api/merges", json={"recipe": RECIPE, "out": "merges/busy", "overwrite": True})
    assert second.status_code == 409
    assert (
        second.json()["error"]["message"]
        == f"output {model_root / 'merges' / 'busy'}: merge {merge_id} is writing it now"
    )
    # another folder is free
    other = client.post("/api/merges", json={"recipe": RECIPE, "out": "merges/free"})
    assert other.status_code == 202
    assert client.post(f"/api/merges/{merge_id}/cancel").status_code == 202
    finished = events(client, merge_id)[-1]
    assert (finished["event"], finished["state"]) == ("finished", "cancelled")
    assert events(client, other.json()["id"])[-1]["state"] == "done"
    assert not [p for p in (model_root / "merges").iterdir() if "busy" in p.name]
    assert client.get(f"/api/merges/{merge_id}").json()["outcome"] == "cancelled"
    assert client.post(f"/api/merges/{merge_id}/cancel").status_code == 409  # no longer running


def test_the_history_outlives_the_server_and_a_stopped_server_leaves_no_partial_output(model_root, tmp_path):
    history = tmp_path / "history.sqlite"
    server = start_server(model_root, history)
    try:
        client = server.client()
        done = client.post("/api/merges", json={"recipe": RECIPE, "out": "merges/kept"}).json()["id"]
        assert events(client, done)[-1]["state"] == "done"
        running = client.post("/api/merges", json={"recipe": WIDE_TIES, "out": "merges/stopped"}).json()["id"]
        wait_for_progress(client, running)
    finally:
        output = stop_server(server)  # Ctrl-C while a merge runs
    assert server.process.returncode == 0, output
    assert not [p for p in (model_root / "merges").iterdir() if "stopped" in p.name]
    restarted = start_server(model_root, history)
    try:
        client = restarted.client()
        records = {m["id"]: m for m in client.get("/api/merges").json()}
        assert records[done]["outcome"] == "done" and records[running]["outcome"] == "cancelled"
        found = client.get("/api/merges", params={"q": "merges/kept"}).json()
        assert [m["id"] for m in found] == [done]
        assert [m["id"] for m in client.get("/api/merges", params={"outcome": "cancelled"}).json()] == [running]
        record = client.get(f"/api/merges/{done}").json()
        assert record["recipe"] == RECIPE
        assert record["inputs"][SEED_MODEL]["folder"] == str(model_root / SEED_MODEL)
        files = {f["name"]: f for f in record["result"]["files"]}
        on_disk = hashlib.sha256((model_root / "merges" / "kept" / "model.safetensors").read_bytes()).hexdigest()
        assert files["model.safetensors"]["sha256"] == on_disk
        planned = client.post("/api/check", json={"recipe": RECIPE}).json()["plan"]
        assert record["result"]["verify"] == {"ok": True, "tensors": len(planned["entries"]), "problems": []}
    finally:
        stop_server(restarted)


def test_a_worker_killed_outright_is_reported_failed(server, model_root):
    client = server.client()
    merge_id = client.post("/api/merges", json={"recipe": WIDE_TIES, "out": "merges/killed"}).json()["id"]
    wait_for_progress(client, merge_id)
    worker = subprocess.run(["pgrep", "-f", "mergesmith.web.worker"], capture_output=True, text=True).stdout.split()
    for pid in worker:
        os.kill(int(pid), signal.SIGKILL)
    last = events(client, merge_id)
    assert last[-2]["message"] == "the worker stopped (exit code -9)"
    assert last[-1]["state"] == "failed"
    assert not [p.name for p in (model_root / "merges").iterdir() if "killed" in p.name]


def test_hub_models_come_from_the_local_cache(model_root, tmp_path):
    """A hub id is offered from the hub cache and read from it; the page never downloads."""
    cache = tmp_path / "hub"
    fill_cache(cache, "someone/cached-model", model_root / SEED_MODEL)
    server = start_server(model_root, tmp_path / "history.sqlite", env={"HF_HUB_CACHE": str(cache)})
    try:
        client = server.client()
        assert client.get("/api/models").json()["hub"] == ["someone/cached-model"]
        checked = client.post("/api/check", json={"recipe": RECIPE.replace(SEED_MODEL, "someone/cached-model")}).json()
        assert checked["ok"] is True and checked["inputs"] == {
            "someone/cached-model": {"folder": None, "from": "hub cache"}
        }
        merge_id = client.post(
            "/api/merges", json={"recipe": RECIPE.replace(SEED_MODEL, "someone/cached-model"), "out": "merges/hub"}
        ).json()["id"]
        assert events(client, merge_id)[-1]["state"] == "done"
        missing = client.post("/api/check", json={"recipe": RECIPE.replace(SEED_MODEL, "someone/not-cached")}).json()
        assert missing["error"]["message"] == (
            "model 'someone/not-cached': not in the local hub cache, and the hub cannot be reached"
        )
    finally:
        stop_server(server)
