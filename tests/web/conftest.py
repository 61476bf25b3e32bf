"""A real `mergesmith serve` on a free loopback port, over a root folder of models; and Debian's
Chromium driven by Playwright (its own browser downloads are not used: .ci/run installs chromium)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from factory import build_model, build_wide_model, write_tokenizer
from mergesmith.demo import SEED_MODEL
from page_server import start_server, stop_server


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
