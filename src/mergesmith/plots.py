"""PNG pictures of a plan and of an evaluation (matplotlib, drawn off-screen)."""

from __future__ import annotations

import contextlib
import errno
import os
import re
from pathlib import Path
from typing import Any

from mergesmith.errors import MergesmithError, OutputError
from mergesmith.evaluate import Evaluation
from mergesmith.methods import get_method
from mergesmith.methods.spec import Unset
from mergesmith.output.folder import DISK_FULL, FREE_SPACE_HINT
from mergesmith.plan import Plan


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as err:
        raise MergesmithError("plots need matplotlib", hint="pip install 'mergesmith[eval]'") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_evaluation(result: Evaluation, folder: str | os.PathLike[str]) -> list[Path]:
    """profile.png (residual norm and update ratio per layer, model vs base) and, with a base,
    logit_lens_kl.png. Returns the files written."""
    plt = _pyplot()
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _unwritable(folder, err, "create the folder for the plots") from err
    written = []
    fig, (norms, ratios) = plt.subplots(1, 2, figsize=(11, 4))
    for report, style in ((result.model, "-o"), (result.base, "--s")):
        if report is None:
            continue
        depth = _relative_depth(len(report.profile.residual_norm))
        label = Path(report.name).name
        norms.plot(depth, report.profile.residual_norm, style, markersize=3, label=label)
        ratios.plot(
            depth[: len(report.profile.update_ratio)], report.profile.update_ratio, style, markersize=3, label=label
        )
    norms.set(title="residual stream norm after each layer", xlabel="relative depth", ylabel="mean L2 norm")
    norms.set_yscale("log")
    ratios.set(title="each layer's update / its input", xlabel="relative depth", ylabel="mean ratio")
    norms.legend()
    fig.tight_layout()
    written.append(_save(fig, folder / "profile.png", plt))
    if result.logit_lens_kl:
        fig, axis = plt.subplots(figsize=(6, 4))
        axis.plot(range(len(result.logit_lens_kl)), result.logit_lens_kl, "-o", markersize=3)
        axis.set(title="KL(base final || model layer read-out)", xlabel="model layer", ylabel="nats / token")
        axis.set_yscale("log")
        fig.tight_layout()
        written.append(_save(fig, folder / "logit_lens_kl.png", plt))
    return written


def plot_plan(plan: Plan, path: str | os.PathLike[str]) -> Path:
    """Output layer vs source layer for each model, and the resolved per-model parameter (scale,
    weight, ...) per layer and tensor as a heat map."""
    import numpy as np

    plt = _pyplot()
    layer_of = re.compile(r"\.(\d+)\.(.+)$")
    sources: dict[str, list[tuple[int, int]]] = {}
    values: dict[str, dict[int, float]] = {}
    # the method's first per-model parameter (scale, weight, ...)
    param_name = next((p.name for p in get_method(plan.method)[0].params if p.per_input), None)
    for entry in plan.entries:
        match = layer_of.search(entry.output)
        if not match:
            continue
        out_layer, rest = int(match[1]), match[2]
        for source in entry.sources:
            src = layer_of.search(source.tensor)
            if src:
                sources.setdefault(source.model, []).append((out_layer, int(src[1])))
        if param_name:
            value = entry.params[param_name]
            values.setdefault(rest, {})[out_layer] = 1.0 if isinstance(value, Unset) else float(value[0])
    fig, (mapping, heat) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1, 1.6]})
    for model, pairs in sources.items():
        xs, ys = zip(*sorted(set(pairs)))
        mapping.plot(xs, ys, "o", markersize=3, label=model)
    mapping.set(title="where each output layer comes from", xlabel="output layer", ylabel="source layer")
    mapping.legend(fontsize=7)
    if values:
        rows = sorted(values)
        width = max(max(v) for v in values.values()) + 1
        grid = np.full((len(rows), width), np.nan)
        for i, row in enumerate(rows):
            for layer, value in values[row].items():
                grid[i, layer] = value
        image = heat.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
        heat.set_yticks(range(len(rows)), [r.removesuffix(".weight") for r in rows], fontsize=6)
        heat.set(title=f"{param_name} of the first model, per layer and tensor", xlabel="output layer")
        fig.colorbar(image, ax=heat)
    fig.tight_layout()
    return _save(fig, Path(path), plt)


def _relative_depth(count: int) -> list[float]:
    return [(i + 1) / count for i in range(count)]


def _save(fig: Any, path: Path, plt: Any) -> Path:
    """Write the PNG whole or not at all: drawn into a hidden file beside `path`, then renamed."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        fig.savefig(partial, dpi=110, format="png")
        os.replace(partial, path)
    except OSError as err:
        with contextlib.suppress(OSError):  # not there when its folder is missing
            partial.unlink(missing_ok=True)
        raise _unwritable(path, err, "write the picture") from err
    finally:
        plt.close(fig)
    return path


def _unwritable(path: Path, err: OSError, doing: str) -> OutputError:
    """Why a plot cannot be written where the user asked, and what to give instead."""
    hints = {
        errno.ENOENT: f"create the folder first: mkdir -p {path.parent}",
        errno.ENOTDIR: "a folder on the path is a file; give a path inside a folder",
        errno.EISDIR: f"{path} is a folder; give a file name such as {path / 'plan.png'}",
        **{code: FREE_SPACE_HINT for code in DISK_FULL},
    }
    hint = hints.get(err.errno or 0, "choose a place you can write to")
    return OutputError(f"{path}: cannot {doing} ({err.strerror or err})", hint=hint)
