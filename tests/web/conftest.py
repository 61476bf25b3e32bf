"""A real `mergesmith serve` on a free loopback port, over a root folder of models; and Debian's
Chromium driven by Playwright (its own browser downloads are not used: .ci/run installs chromium)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from factory import build_model, build_wide_model, write_tokenizer

from mergesmith.demo import SEED_MODEL


@dataclass
class Server:
    url: str
    root: Path
    history: Path
    process: subprocess.Popen

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(root: Path, history: Path, *extra_roots: Path) -> Server:
    port = free_port()
    roots = [arg for folder in (root, *extra_roots) for arg in ("--root", str(folder))]
    command = [sys.executable, "-m", "mergesmith", "serve", "--port", str(port), *roots, "--history", str(history)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mergesmith serve exited: {process.stdout.read()}")
        try:
            httpx.get(url + "/api/info", timeout=1)
            return Server(url, root, history, process)
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("mergesmith serve did not answer within 30 s")


def stop_server(server: Server) -> str:
    """Stop it as Ctrl-C would; return what it printed."""
    server.process.send_signal(2)
    try:
        output, _ = server.process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        server.process.kill()
        output, _ = server.process.communicate()
    return output


@pytest.fixture(scope="module")
def model_root(tmp_path_factory) -> Path:
    """The seed's model (48 layers, with a tokenizer so it can be evaluated) where the seed recipe
    names it, and three wider models of one base for a merge that takes a few seconds."""
    root = tmp_path_factory.mktemp("root")
    seed = build_model(root / SEED_MODEL, "mistral", layers=48, vocab=128, seed=1)
    write_tokenizer(seed)
    for name, seed_value in (("wide/base", 0), ("wide/tune-a", 1), ("wide/tune-b", 2)):
        build_wide_model(root / name, seed=seed_value)
    return root


@pytest.fixture(scope="module")
def server(model_root, tmp_path_factory):
    running = start_server(model_root, tmp_path_factory.mktemp("state") / "history.sqlite")
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = os.environ.get("MERGESMITH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("the page's browser tests need Chromium: apt-get install chromium (.ci/run installs it)")
    return path


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda err: errors.append(str(err)))
    opened.goto(server.url + "/")
    yield opened
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
