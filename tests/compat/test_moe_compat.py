"""mergesmith moe against mergekit-moe 0.1.5's recorded output (expected_moe.json, written by
moe_compat.py): the same router, expert and other tensors, bit for bit, for cheap_embed gates."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from moe_compat import EXPECTED, MODELS, SCENARIOS, config, per_expert_digests  # noqa: E402
from suite_models import build_inputs, folder_digest  # noqa: E402

from mergesmith.cli import main  # noqa: E402

RECORDED = json.loads(EXPECTED.read_text())


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    folders = build_inputs(tmp_path_factory.mktemp("moe-inputs"), MODELS)
    assert {m: folder_digest(f) for m, f in folders.items()} == RECORDED["inputs"], "the stand-in models changed"
    return folders


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_moe_as_mergekit_moe(name, inputs, tmp_path, capsys):
    (tmp_path / "moe.yaml").write_text(config(name))
    paths = [a for model, folder in inputs.items() for a in ("--model-path", f"{model}={folder}")]
    with pytest.raises(SystemExit) as exit_info:
        main(["moe", str(tmp_path / "moe.yaml"), str(tmp_path / "out"), *paths])
    assert exit_info.value.code == 0, capsys.readouterr().err
    expected = RECORDED["scenarios"][name]
    found = per_expert_digests(tmp_path / "out")
    assert set(found) == set(expected["tensors"])
    differing = sorted(n for n in found if found[n] != expected["tensors"][n])
    assert not differing, differing
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert {k: written.get(k) for k in expected["config"]} == expected["config"]
