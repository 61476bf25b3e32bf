"""SIGKILL at any moment leaves OUT absent or complete; --resume then finishes it, bit-identical to
a merge that was never interrupted."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mergesmith.api import merge
from mergesmith.execute import MergeOptions
from mergesmith.output.folder import partial_folder
from mergesmith.output.journal import Journal
from mergesmith.synthetic import llama_style_tensors, mistral_config, write_synthetic_model

RECIPE = """models:
  - {model: ft1, parameters: {weight: 0.6, density: 0.5}}
  - {model: ft2, parameters: {weight: 0.4, density: 0.5}}
base_model: base
merge_method: dare_ties
dtype: bfloat16
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    # big enough that a merge spends a few seconds writing (about 50 MB per model)
    folder = tmp_path_factory.mktemp("kill-models")
    config = mistral_config(layers=8, hidden=512, intermediate=1536, heads=8, kv_heads=2, vocab=1024)
    return {
        name: write_synthetic_model(folder / name, config, llama_style_tensors(config), seed=i)
        for i, name in enumerate(("base", "ft1", "ft2"))
    }


def digests(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in (".safetensors", ".json")}


def start(recipe: Path, out: Path, models: dict[str, Path], *extra: str) -> subprocess.Popen:
    paths = [arg for name, folder in models.items() for arg in ("--model-path", f"{name}={folder}")]
    command = [sys.executable, "-m", "mergesmith.cli", *extra, "merge", str(recipe), str(out), "--resume"]
    command += ["--workers", "1", "--random-seed", "11", *paths]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def journal_lines(out: Path) -> int:
    path = partial_folder(out) / Journal.FILENAME
    return len(path.read_text().splitlines()) - 1 if path.exists() else 0


def half_written(shard: Path) -> bool:
    """Whether the bytes in the middle of a partial shard (created full-size, zero-filled) are written."""
    try:
        with shard.open("rb") as file:
            file.seek(shard.stat().st_size // 2)
            return any(file.read(4096))
    except FileNotFoundError:
        return False


def kill_once_written(recipe: Path, out: Path, models: dict[str, Path], *, tensors: int) -> None:
    """Start a merge and SIGKILL it once its journal lists `tensors` computed tensors."""
    process = start(recipe, out, models, "-q")
    deadline = time.monotonic() + 60
    while journal_lines(out) < tensors and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_sigkill_anywhere_leaves_out_absent_or_complete_and_resume_is_exact(models, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    reference = tmp_path / "reference"
    merge(recipe, reference, model_paths=models, options=MergeOptions(random_seed=11, workers=1))
    expected = digests(reference)
    out = tmp_path / "out"
    rng = random.Random(1)
    kills = finished = 0
    deadline = time.monotonic() + 240  # a merge that always ends before its kill must not loop forever
    while kills < 20 and time.monotonic() < deadline:
        process = start(recipe, out, models, "-q")
        time.sleep(rng.uniform(0.5, 5.0))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        _, err = process.communicate(timeout=120)
        if process.returncode == 0:
            finished += 1
        else:
            assert process.returncode == -signal.SIGKILL, err
        if out.exists():  # the merge got to the end before the kill: it must be whole
            assert digests(out) == expected
            shutil.rmtree(out)
        # a kill leaves the staging folder and the lock file (which holds nothing once its process is gone)
        assert {p.name for p in tmp_path.iterdir()} <= {"recipe.yaml", "reference", "out", ".out.partial", ".out.lock"}
    # the test means something only if kills landed mid-merge (each one then left OUT absent)
    assert kills >= 5, f"only {kills} kills landed before the merges finished ({finished} finished)"

    # a kill once some tensors are written, then --resume: it keeps them and finishes exactly
    kill_once_written(recipe, out, models, tensors=3)
    assert not out.exists() and journal_lines(out) >= 3
    result = start(recipe, out, models, "-v")
    _, err = result.communicate(timeout=120)
    assert result.returncode == 0, err
    kept = int(err.split("resuming: ")[1].split(" of ")[0])
    assert kept >= 3
    assert digests(out) == expected and not partial_folder(out).exists()


def test_a_changed_recipe_does_not_resume_the_old_merge(models, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    kill_once_written(recipe, out, models, tensors=2)
    recipe.write_text(RECIPE.replace("weight: 0.6", "weight: 0.7"))
    changed = tmp_path / "changed"
    merge(recipe, changed, model_paths=models, options=MergeOptions(random_seed=11, workers=1))
    result = start(recipe, out, models, "-v")
    _, err = result.communicate(timeout=120)
    assert result.returncode == 0, err
    assert "the interrupted merge differs from this one" in err and "resuming: 0 of" in err
    assert digests(out) == digests(changed)


SCALING_RECIPE = """slices:
  - sources: [{model: base, layer_range: [0, 8]}]
merge_method: passthrough
parameters:
  scale:
    - filter: o_proj
      value: [1.5, 4.0]
    - value: 1.0
dtype: bfloat16
"""


def test_a_killed_scaling_passthrough_journals_nothing_and_resumes_exactly(models, tmp_path: Path) -> None:
    """Copied and scaled tensors are not journaled: the resume writes them all again, over whatever
    the killed merge had half written, and the result is bit-identical."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(SCALING_RECIPE)
    reference = tmp_path / "reference"
    merge(recipe, reference, model_paths={"base": models["base"]})
    out = tmp_path / "out"
    journal, shard = partial_folder(out) / Journal.FILENAME, partial_folder(out) / "model.safetensors"
    for _ in range(10):  # until a kill lands before the merge has finished
        process = start(recipe, out, {"base": models["base"]}, "-q")
        deadline = time.monotonic() + 60
        while not half_written(shard) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        process.send_signal(signal.SIGKILL)
        process.wait()
        if not out.exists():
            break
        shutil.rmtree(out)
    assert journal.exists() and not out.exists()
    assert journal_lines(out) == 0  # the header line only
    result = start(recipe, out, {"base": models["base"]}, "-v")
    _, err = result.communicate(timeout=120)
    assert result.returncode == 0, err
    assert "resuming: 0 of" in err
    assert digests(out) == digests(reference) and not partial_folder(out).exists()


def test_a_resume_with_another_shard_size_leaves_none_of_the_killed_merges_shards(models, tmp_path: Path) -> None:
    """--resume with another --out-shard-size is another merge: it starts over in the same staging
    folder, and the killed merge's shards (other names, half written) must not end up in OUT."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    reference = tmp_path / "reference"
    merge(recipe, reference, model_paths=models, options=MergeOptions(random_seed=11))
    out = tmp_path / "out"
    paths = [arg for name, folder in models.items() for arg in ("--model-path", f"{name}={folder}")]
    args = ["merge", str(recipe), str(out), "--random-seed", "11", *paths]
    dies = (  # a merge that dies (as if killed) once it has journaled its first computed tensor
        "import os, sys, mergesmith.driver as d\n"
        "record = d._Events.tensor_written\n"
        "d._Events.tensor_written = lambda self, n, c: (record(self, n, c), os._exit(9))\n"
        "from mergesmith.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    killed = subprocess.run([sys.executable, "-c", dies, "-q", *args, "--out-shard-size", "20M"], capture_output=True)
    assert killed.returncode == 9, killed.stderr
    assert len(list(partial_folder(out).glob("model-*-of-*.safetensors"))) > 1
    resumed = subprocess.run([sys.executable, "-m", "mergesmith.cli", "-v", *args, "--resume"], capture_output=True)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    assert digests(out) == digests(reference)
