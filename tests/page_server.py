"""A real `mergesmith serve` on a free loopback port, started and stopped as a user would."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

# A TIES of the three wide models tests/web/conftest.py puts under the root: seconds of work,
# long enough to watch, cancel or interrupt a running merge.
WIDE_TIES = """models:
  - model: wide/base
  - model: wide/tune-a
    parameters: {density: 0.5, weight: 0.5}
  - model: wide/tune-b
    parameters: {density: 0.5, weight: 0.5}
merge_method: ties
base_model: wide/base
dtype: bfloat16
"""


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


def start_server(root: Path, history: Path, *extra_roots: Path, env: dict[str, str] | None = None) -> Server:
    port = free_port()
    roots = [arg for folder in (root, *extra_roots) for arg in ("--root", str(folder))]
    command = [sys.executable, "-m", "mergesmith", "serve", "--port", str(port), *roots, "--history", str(history)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
    )
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
