"""mergesmith plan --plot draws the recipe."""

from __future__ import annotations

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
    pixels = drawn_pixels(out)  # (height, width): True where something is drawn
    height, width = pixels.shape
    assert width > height  # the source map and the scale heat map side by side
    left, right = pixels[:, : width // 2], pixels[:, width // 2 :]
    assert left.mean() > 0.02 and right.mean() > 0.05, "a panel is empty"
    assert distinct_colours(out) > 50  # the heat map's colour scale, not a few flat colours
    assert f"wrote {out}" in capsys.readouterr().err


def drawn_pixels(path: Path):
    """The image decoded as a PNG; True where a pixel is not the white background."""
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rgb = matplotlib.image.imread(path)[..., :3]
    return (rgb < 0.98).any(axis=-1)


def distinct_colours(path: Path) -> int:
    import matplotlib.image
    import numpy as np

    rgb = matplotlib.image.imread(path)[..., :3].reshape(-1, 3)
    return len(np.unique((rgb * 255).round().astype(np.uint8), axis=0))
