"""mergesmith evaluate on the real SmolLM2-135M: identity merges measure as identical, damage as damage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mergesmith.api import merge
from mergesmith.evaluate import evaluate
from mergesmith.plots import plot_evaluation
from real_model import IDENTITY_RECIPE

ALL_ONES = "slices:\n  - sources: [{model: smollm2, layer_range: [0, 30]}]\n    parameters: {scale: 1.0}\nmerge_method: passthrough\n"
DAMAGING = """
slices:
  - sources: [{model: smollm2, layer_range: [0, 30]}]
    parameters:
      scale: [{filter: o_proj, value: 4.0}, {filter: down_proj, value: 4.0}]
merge_method: passthrough
"""


def merged(tmp_path: Path, smollm2: Path, name: str, recipe: str) -> Path:
    (tmp_path / f"{name}.yaml").write_text(recipe)
    merge(tmp_path / f"{name}.yaml", tmp_path / name, model_paths={"smollm2": smollm2})
    return tmp_path / name


def drawn_pixels(path: Path):
    """The image decoded as a PNG; True where a pixel is not the white background."""
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return (matplotlib.image.imread(path)[..., :3] < 0.98).any(axis=-1)


@pytest.mark.real_model
def test_identity_merge_measures_as_the_base(tmp_path, smollm2, gpl3_text):
    result = evaluate(
        merged(tmp_path, smollm2, "identity", IDENTITY_RECIPE), base_dir=smollm2, text=gpl3_text, max_tokens=512
    )
    assert result.kl_mean == 0.0 and result.top1_agreement == 1.0
    assert result.model.perplexity == result.base.perplexity
    assert len(result.model.profile.residual_norm) == 40 and len(result.base.profile.residual_norm) == 30
    # The ten inserted copies change nothing: their updates are exactly zero.
    assert all(r == 0.0 for r in result.model.profile.update_ratio[20:30])
    # (the lens re-runs a 256-token prefix, so its last layer matches to rounding, not bit for bit)
    assert result.logit_lens_kl[-1] < 1e-6 and len(result.logit_lens_kl) == 40
    assert result.model.completions == result.base.completions

    written = plot_evaluation(result, tmp_path / "plots")
    assert [p.name for p in written] == ["profile.png", "logit_lens_kl.png"]
    profile, lens = drawn_pixels(written[0]), drawn_pixels(written[1])
    # the profile has two panels side by side (norms, update ratios), each with its curves drawn
    assert profile.shape[1] > profile.shape[0] and lens.shape[1] < profile.shape[1]
    half = profile.shape[1] // 2
    assert profile[:, :half].mean() > 0.02 and profile[:, half:].mean() > 0.02, "a profile panel is empty"
    assert lens.mean() > 0.02, "the logit-lens plot is empty"


@pytest.mark.real_model
def test_all_scales_one_against_itself_and_a_damaging_merge(tmp_path, smollm2, gpl3_text):
    same = evaluate(merged(tmp_path, smollm2, "ones", ALL_ONES), base_dir=smollm2, text=gpl3_text, max_tokens=256)
    assert same.kl_mean == 0.0 and same.top1_agreement == 1.0
    damaged = evaluate(merged(tmp_path, smollm2, "damaged", DAMAGING), base_dir=smollm2, text=gpl3_text, max_tokens=256)
    assert damaged.kl_mean > 1.0 and damaged.top1_agreement < 0.7
    assert damaged.model.perplexity > 2 * damaged.base.perplexity
    assert damaged.model.profile.residual_norm[-1] > 2 * damaged.base.profile.residual_norm[-1]


@pytest.mark.real_model
def test_evaluate_cli_json_and_plots(tmp_path, smollm2):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mergesmith.cli",
            "evaluate",
            str(smollm2),
            "--max-tokens",
            "128",
            "--json",
            "--plot",
            str(tmp_path / "plots"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"model", "base", "kl_mean", "top1_agreement", "logit_lens_kl", "prompts"}
    assert report["base"] is None and 5 < report["model"]["perplexity"] < 100
    assert report["model"]["completions"][0].startswith("The capital of France is Paris")
    assert (tmp_path / "plots" / "profile.png").stat().st_size > 10_000
