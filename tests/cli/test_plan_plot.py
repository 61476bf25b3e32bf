"""mergesmith plan --plot draws the recipe."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from mergesmith.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_plan_plot_writes_a_png(tmp_path, capsys):
    from mergesmith.demo import SEED_MODEL, build_demo_model

    model = build_demo_model(tmp_path / "m")
    out = tmp_path / "plan.png"
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "plan",
                str(EXAMPLES / "fimbulvetr-11b-v2-47-layers.yaml"),
                "--model-path",
                f"{SEED_MODEL}={model}",
                "--plot",
                str(out),
            ]
        )
    assert exit_info.value.code == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24]) == (1430, 550)
    assert len(data) > 20_000
    assert f"wrote {out}" in capsys.readouterr().err
