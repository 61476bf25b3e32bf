"""The page in a real browser (Debian's Chromium, driven by Playwright) against a real server:
compose the seed recipe from its card, see its map, run it, open the history, evaluate and compare,
cancel a second merge. Expected values come from the recipe read by hand and from torch on the files.

With MERGESMITH_SCREENSHOTS=DIR set, each page is saved there (docs/img/ holds the committed ones).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mergesmith.demo import SEED_MODEL
from page_server import WIDE_TIES

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CARD = Path(__file__).resolve().parents[1] / "data" / "seed_card_page_copy.txt"
TIMEOUT_MS = 120_000


def shoot(page, name: str) -> None:
    folder = os.environ.get("MERGESMITH_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=False)


def seed_scale(layer: int) -> float | None:
    """The seed card's o_proj/down_proj scale of output layer `layer`, read off the card by hand:
    layers 0-3 unscaled, then 1.5, 1.5, 2.0, 2.0, ... 3.5 for each block of four, 4.0 for 44-46."""
    if layer < 4:
        return None
    return [1.5, 1.5, 2.0, 2.0, 2.5, 2.5, 3.0, 3.0, 3.5, 3.5, 4.0][layer // 4 - 1]


def wait_text(page, selector: str, pattern: str) -> str:
    page.wait_for_function(
        "([s, p]) => new RegExp(p).test(document.querySelector(s)?.textContent ?? '')", arg=[selector, pattern],
        timeout=TIMEOUT_MS,
    )  # fmt: skip
    return page.text_content(selector)


def wait_run(page) -> str:
    """The run's end state, or the error that kept it from starting."""
    page.wait_for_function(
        "() => /^(done|failed|cancelled)$/.test(document.querySelector('#run-state').textContent)"
        " || !document.querySelector('#merge-error').hidden",
        timeout=TIMEOUT_MS,
    )
    assert page.is_hidden("#merge-error"), page.text_content("#merge-error")
    assert page.is_hidden("#run-error"), page.text_content("#run-error")
    return page.text_content("#run-state")


def type_recipe(page, text: str) -> None:
    page.fill("#recipe", text)


def test_compose_the_seed_from_its_card_see_it_run_it_and_find_it_in_the_history(page, server, model_root):
    assert "seed" in page.locator("#examples option").first.text_content()
    type_recipe(page, CARD.read_text(encoding="utf-8"))
    status = wait_text(page, "#check-status", "^valid")
    assert status.startswith("valid: passthrough, 426 tensors, 47 layers"), status
    # the card's flattened recipe was rebuilt: the page offers it as a recipe to edit
    page.click("#use-extracted")
    wait_text(page, "#check-status", "^valid: passthrough")
    recipe = page.input_value("#recipe")
    assert recipe.startswith("slices:") and "layer_range: [44, 47]" in recipe
    shoot(page, "compose")

    # a typo: the error, its hint, and the line marked beside it
    typo = recipe.replace("merge_method:", "merge_methd:")
    type_recipe(page, typo)
    error = wait_text(page, "#check-error", "merge_methd")
    line = typo.splitlines().index(next(x for x in typo.splitlines() if x.startswith("merge_methd"))) + 1
    assert error == f"line {line}: merge_methd: unknown keyhint: did you mean 'merge_method'?"
    assert page.text_content("#gutter .bad") == str(line)
    assert page.is_disabled("#start-merge")
    shoot(page, "compose-error")
    type_recipe(page, recipe)
    wait_text(page, "#check-status", "^valid")

    # the map: output layer i is source layer i (the first 47 of 48), scales as the card sets them
    page.click("nav button[data-page=map]")
    dots = page.locator("[data-testid=layer-map] circle")
    pairs = {(int(d.get_attribute("data-output-layer")), int(d.get_attribute("data-source-layer"))) for d in dots.all()}
    assert pairs == {(i, i) for i in range(47)}
    page.select_option("#heat-param", "scale")
    shown = page.eval_on_selector_all(
        "[data-testid=heat-map] rect", "cells => cells.map(c => [c.dataset.output, c.dataset.value])"
    )
    expected = {}
    for layer in range(47):
        for kind in ("self_attn.o_proj.weight", "mlp.down_proj.weight", "self_attn.q_proj.weight"):
            scale = seed_scale(layer) if kind != "self_attn.q_proj.weight" else None
            expected[f"model.layers.{layer}.{kind}"] = "unset" if scale is None else f"{scale:g}"
    assert {name: value for name, value in shown if name in expected} == expected
    assert len(shown) == 47 * 9  # every tensor of every layer has its cell
    page.hover("[data-testid=heat-map] rect[data-output='model.layers.30.self_attn.o_proj.weight']")
    tip = page.text_content("#tooltip")
    assert tip.startswith("model.layers.30.self_attn.o_proj.weight  [32, 32] BF16\npassthrough()  route: scale\n"), tip
    assert tip.endswith(f"sources:\n  {SEED_MODEL}: model.layers.30.self_attn.o_proj.weight  scale=3"), tip
    shoot(page, "map")

    # run it: progress to 100%, verify's report, the files
    page.click("nav button[data-page=compose]")
    page.fill("#out", "merges/seed-47")
    page.click("#start-merge")
    assert wait_run(page) == "done"
    assert page.text_content("#progress-text") == "100%"
    assert page.text_content("#run-tensors") == "426 / 426"
    assert page.is_visible("[data-testid=verify-ok]")
    assert "model.safetensors" in page.text_content("#run-files")
    shoot(page, "run")
    out = model_root / "merges" / "seed-47"
    merged, source = load_file(out / "model.safetensors"), load_file(model_root / SEED_MODEL / "model.safetensors")
    assert len([n for n in merged if n.endswith("input_layernorm.weight")]) == 47
    for layer in (2, 30, 46):
        for kind in ("self_attn.o_proj.weight", "mlp.down_proj.weight", "mlp.up_proj.weight"):
            name = f"model.layers.{layer}.{kind}"
            scale = seed_scale(layer) if "up_proj" not in kind else None
            expected = source[name] if scale is None else (source[name].float() * scale).to(torch.bfloat16)
            assert torch.equal(merged[name], expected), name

    # the history: found, searchable, with the recipe as run
    page.click("nav button[data-page=history]")
    wait_text(page, "#history-table tbody", "seed-47")
    page.fill("#history-search", "no-such-merge")
    wait_text(page, "#history-table", "^#startedmethodoutputoutcomeduration$")
    page.fill("#history-search", "seed-47")
    wait_text(page, "#history-table tbody", "seed-47")
    page.click("#history-table tbody tr")
    wait_text(page, "#detail-recipe", "merge_method: passthrough")
    assert "done" in page.text_content("#detail-figures")
    shoot(page, "history")


def test_evaluate_and_compare_two_merges(page, server, model_root):
    """Two merges (the seed's scales and twice them), each evaluated against the source from the page:
    the numbers shown are those `mergesmith evaluate --json` prints for the same folders."""
    client = server.client()
    seed = client.get("/api/info").json()["examples"][0]["text"]
    doubled = re.sub(r"value: (\d\.\d)", lambda m: f"value: {2 * float(m[1])}", seed)
    ids = []
    for name, text in (("cmp-seed", seed), ("cmp-doubled", doubled)):
        started = client.post("/api/merges", json={"recipe": text, "out": f"merges/{name}"})
        assert started.status_code == 202, started.text
        ids.append(started.json()["id"])
    for merge_id in ids:
        with client.stream("GET", f"/api/merges/{merge_id}/events") as events:
            last = [line for line in events.iter_lines() if line][-1]
        assert json.loads(last.removeprefix("data: "))["state"] == "done"

    page.click("nav button[data-page=history]")
    for merge_id in ids:
        page.click(f"#history-table tbody tr[data-id='{merge_id}']")
        wait_text(page, "#detail-title", f"merge {merge_id}:")
        page.fill("#eval-base", SEED_MODEL)
        page.fill("#eval-tokens", "48")
        page.click("#start-eval")
        wait_text(page, "#eval-state", "^evaluated$")
        wait_text(page, "#detail-evaluations", "perplexity")

    expected = []
    for name in ("cmp-seed", "cmp-doubled"):
        command = [sys.executable, "-m", "mergesmith", "evaluate", str(model_root / "merges" / name), "--base",
                   str(model_root / SEED_MODEL), "--max-tokens", "48", "--json"]  # fmt: skip
        expected.append(json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout))
    page.click("nav button[data-page=compare]")
    page.select_option("#compare-a", str(ids[0]))
    page.select_option("#compare-b", str(ids[1]))
    rows = wait_text(page, "#compare-table", "perplexity")
    table = page.locator("#compare-table tr:has(td)")
    cells = {
        row.locator("th").text_content(): [c.text_content() for c in row.locator("td").all()] for row in table.all()
    }
    assert page.locator("#compare-table thead th").all_text_contents() == [
        "",
        f"#{ids[0]} cmp-seed",
        f"#{ids[1]} cmp-doubled",
    ]
    for column, result in enumerate(expected):
        assert float(cells["perplexity"][column]) == pytest.approx(result["model"]["perplexity"], rel=1e-3), rows
        assert float(cells["KL(base || model), nats/token"][column]) == pytest.approx(result["kl_mean"], rel=1e-3)
        assert cells["top-1 agreement"][column] == f"{100 * result['top1_agreement']:.1f}%"
    for chart in ("#compare-norm", "#compare-ratio", "#compare-lens"):
        assert page.locator(f"{chart} polyline").count() >= 2
    shoot(page, "compare")


def test_a_cancelled_merge_leaves_nothing_and_one_output_takes_one_merge(page, server, model_root):
    type_recipe(page, WIDE_TIES)
    wait_text(page, "#check-status", "^valid: ties")
    page.fill("#out", "merges/wide-ties")
    page.click("#start-merge")
    page.wait_for_function(
        "() => /^([1-9]|[1-9][0-9])%$/.test(document.querySelector('#progress-text').textContent)", timeout=TIMEOUT_MS
    )
    # a second merge into the same folder, while the first runs: refused
    second = server.client().post("/api/merges", json={"recipe": WIDE_TIES, "out": "merges/wide-ties"})
    assert second.status_code == 409
    assert re.fullmatch(r"output \S+/merges/wide-ties: merge \d+ is writing it now", second.json()["error"]["message"])
    shoot(page, "run-progress")
    page.click("#cancel-merge")
    wait_text(page, "#run-state", "^cancelled$")
    assert not (model_root / "merges" / "wide-ties").exists()
    assert not [p.name for p in (model_root / "merges").iterdir() if "wide-ties" in p.name]
    page.click("nav button[data-page=history]")
    wait_text(page, "#history-table tbody tr:first-child", "wide-tiescancelled")
