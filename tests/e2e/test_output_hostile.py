"""Hostile output folders: OUT on top of an input, things planted at the names mergesmith uses beside
OUT, a full disk, two merges at once, kills during the --overwrite swap, a tampered resume journal.

Every refusal leaves the whole temporary folder as it was, byte for byte (inputs, OUT, and
whatever was planted); every merge that completes equals an uninterrupted merge of the same recipe.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from factory import build_model, fill_cache
from mergesmith.api import merge
from mergesmith.cli import main
from mergesmith.execute import MergeOptions
from mergesmith.output.folder import MARKER_TEXT, STAGING_MARKER, partial_folder
from mergesmith.output.journal import Journal

LINEAR = (
    "models:\n  - {model: a, parameters: {weight: 0.25}}\n  - {model: b, parameters: {weight: 0.75}}\n"
    "merge_method: linear\ndtype: float32\n"
)


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under `folder`: links by target, files by bytes (links are not followed)."""
    found: dict[str, tuple] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            key = str(path.relative_to(folder))
            if path.is_symlink():
                found[key] = ("link", os.readlink(path))
            elif path.is_dir():
                found[key] = ("folder",)
            else:
                found[key] = ("file", path.read_bytes())
    return found


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("hostile-output-models")
    return {name: build_model(tmp / name, layers=2, seed=i) for i, name in enumerate("ab")}


@pytest.fixture
def freeze():
    """freeze(folder): make a folder unwritable even for root (chattr +i), else by its mode; undone
    after the test, so that pytest can clean up."""
    frozen: list[tuple[Path, bool]] = []

    def apply(folder: Path) -> None:
        if os.geteuid() == 0:
            result = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
            if result.returncode != 0:
                pytest.skip(f"cannot make a folder immutable here: {result.stderr.strip()}")
            frozen.append((folder, True))
        else:
            folder.chmod(0o555)
            frozen.append((folder, False))

    yield apply
    for folder, immutable in frozen:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        else:
            folder.chmod(0o755)


@dataclass
class World:
    """One test's folder: the recipe, OUT, and the models (copies of the built ones) by name."""

    tmp: Path
    recipe: Path
    out: Path
    models: dict[str, Path]
    args: list[str] = field(default_factory=list)


@dataclass
class Case:
    id: str
    setup: Callable[[World], None]  # plants things, moves OUT or the models, adds arguments
    expected: tuple[str, ...]  # parts of stderr, in order; "{...}" filled from the world
    code: int = 1
    patch: Callable[[pytest.MonkeyPatch], None] | None = None
    freeze: Callable[[World], Path] | None = None  # the folder made unwritable after setup


def ours(world: World) -> Path:
    """A staging folder as an interrupted merge leaves it (mergesmith's marker inside)."""
    staging = partial_folder(world.out)
    staging.mkdir()
    (staging / STAGING_MARKER).write_text(MARKER_TEXT)
    return staging


def out_is(world: World, path: Path, *, overwrite: bool = True) -> None:
    world.out = path
    world.args += ["--overwrite"] if overwrite else []


def models_under(world: World, folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    for name, model in list(world.models.items()):
        world.models[name] = model.rename(folder / name)


def linked_model(world: World) -> None:
    """Model a is read through a link to its folder."""
    link = world.tmp / "a-link"
    link.symlink_to(world.models["a"])
    world.models = {**world.models, "a": link}
    out_is(world, world.tmp / "models" / "a")


def linked_shard(world: World) -> None:
    """Model a's weights lie in another folder (a store), linked from the model folder."""
    store = world.tmp / "store"
    store.mkdir()
    shard = world.models["a"] / "model.safetensors"
    shard.rename(store / "a.safetensors")
    shard.symlink_to(store / "a.safetensors")
    out_is(world, store)


def with_tokenizer_file(world: World) -> None:
    (world.models["a"] / "tokenizer.model").write_bytes(bytes(range(256)) * 64)


def disk_fills_while_copying(patch: pytest.MonkeyPatch) -> None:
    """The disk fills half-way through a copied (not written) tokenizer file."""

    def copy_until_full(source, target, **kwargs):
        data = Path(source).read_bytes()
        Path(target).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    patch.setattr(shutil, "copyfile", copy_until_full)


def disk_fills_while_writing_shards(patch: pytest.MonkeyPatch) -> None:
    real = os.pwrite

    def pwrite(fd, data, offset):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".safetensors"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data, offset)

    patch.setattr(os, "pwrite", pwrite)


CASES = [
    # --- OUT on top of what the merge reads: refused with or without --overwrite
    Case(
        "out-is-model-overwrite",
        lambda w: out_is(w, w.models["a"]),
        ("{out}: the output folder is {rmodels}/a, which the merge reads (model 'a')", "apart from every model"),
    ),
    Case(
        "out-is-model",
        lambda w: out_is(w, w.models["a"], overwrite=False),
        ("{out}: the output folder is {rmodels}/a, which the merge reads (model 'a')",),
    ),
    Case(
        "out-is-a-link-to-a-model",
        lambda w: (w.tmp.joinpath("link").symlink_to(w.models["b"]), out_is(w, w.tmp / "link")),
        ("{out}: the output folder is {rmodels}/b, which the merge reads (model 'b')",),
    ),
    Case(
        "model-read-through-a-link",
        linked_model,
        ("{out}: the output folder is {rmodels}/a, which the merge reads (model 'a')",),
    ),
    Case(
        "out-contains-models",
        lambda w: out_is(w, w.tmp / "models"),
        ("{out}: the output folder contains {rmodels}/a, which the merge reads (model 'a')",),
    ),
    Case(
        "out-is-the-recipes-folder",  # recipe and models side by side in one project folder
        lambda w: (models_under(w, w.tmp), out_is(w, w.tmp)),
        ("{out}: the output folder contains {rtmp}/a, which the merge reads (model 'a')",),
    ),
    Case(
        "out-contains-the-recipe",
        lambda w: (setattr(w, "recipe", w.tmp / "project" / "recipe.yaml"), out_is(w, w.tmp / "project")),
        ("{out}: the output folder contains {rtmp}/project/recipe.yaml, which the merge reads (the recipe)",),
    ),
    Case(
        "out-inside-a-model",
        lambda w: out_is(w, w.models["b"] / "merged", overwrite=False),
        ("{out}: the output folder lies inside {rmodels}/b, which the merge reads (model 'b')",),
    ),
    Case(
        # A weight file linked from outside its model folder is refused before OUT is looked at
        # (tests/e2e/test_hostile_checkpoints.py), so OUT can never be where it lies.
        "out-is-where-linked-weights-lie",
        linked_shard,
        ("model 'a': model.safetensors resolves to {rtmp}/store/a.safetensors, outside the model folder",),
    ),
    # --- things at the names mergesmith uses beside OUT: never followed, never removed
    Case(
        "staging-links-to-a-model",
        lambda w: partial_folder(w.out).symlink_to(w.models["a"]),
        (
            "{tmp}/.out.partial: is in the way of the merge's temporary folder, and mergesmith did not make it "
            "(a link to {models}/a)",
            "move or remove it",
        ),
    ),
    Case(
        "staging-links-to-a-model-resume",
        lambda w: (partial_folder(w.out).symlink_to(w.models["a"]), w.args.append("--resume")),
        ("{tmp}/.out.partial: is in the way of the merge's temporary folder", "(a link to {models}/a)"),
    ),
    Case(
        "staging-is-a-foreign-folder",
        lambda w: (partial_folder(w.out).mkdir(), (partial_folder(w.out) / "notes.txt").write_text("mine")),
        (
            "{tmp}/.out.partial: is in the way of the merge's temporary folder, and mergesmith did not make it "
            "(a folder)",
        ),
    ),
    Case(
        "staging-is-a-file",
        lambda w: partial_folder(w.out).write_text("mine"),
        ("{tmp}/.out.partial: is in the way of the merge's temporary folder", "(a file)"),
    ),
    Case(
        "staging-is-a-file-resume",
        lambda w: (partial_folder(w.out).write_text("mine"), w.args.append("--resume")),
        ("{tmp}/.out.partial: is in the way of the merge's temporary folder", "(a file)"),
    ),
    Case(
        "staging-ours-but-unremovable",
        ours,
        ("{tmp}/.out.partial: cannot remove an interrupted merge's files", "remove the folder yourself"),
        freeze=lambda w: partial_folder(w.out),
    ),
    Case(
        "staging-ours-but-unwritable-resume",
        lambda w: (ours(w), w.args.append("--resume")),
        ("{tmp}/.out.partial/.mergesmith-progress.jsonl: cannot write it",),
        freeze=lambda w: partial_folder(w.out),
    ),
    Case(
        "lock-is-a-link-to-a-model-file",
        lambda w: w.tmp.joinpath(".out.lock").symlink_to(w.models["a"] / "config.json"),
        ("{tmp}/.out.lock: is in the way of the lock file (a link to {models}/a/config.json)",),
    ),
    Case(
        "lock-is-a-folder",
        lambda w: w.tmp.joinpath(".out.lock").mkdir(),
        ("{tmp}/.out.lock: is in the way of the lock file (a folder)",),
    ),
    Case(
        "swap-record-is-junk",
        lambda w: w.tmp.joinpath(".out.swap").write_text('{"aside": "../models"}'),
        ("{tmp}/.out.swap: not a record of an interrupted merge that mergesmith can read",),
    ),
    Case(
        "out-is-a-broken-link",
        lambda w: w.out.symlink_to(w.tmp / "gone"),
        ("{out}: is a link to nothing ({tmp}/gone)",),
    ),
    # --- the disk fills: exit 1, the staging folder removed
    Case(
        "disk-full-copying-the-tokenizer",
        with_tokenizer_file,
        ("{tmp}/.out.partial/tokenizer.model: the disk is full (No space left on device)", "free some space"),
        patch=disk_fills_while_copying,
    ),
    Case(
        "disk-full-writing-a-shard",
        lambda w: None,
        ("{tmp}/.out.partial/model.safetensors: the disk is full (No space left on device)", "free some space"),
        patch=disk_fills_while_writing_shards,
    ),
    # --- --model-path (usage errors, exit 2)
    Case(
        "model-path-two-equals",
        lambda w: w.args.extend(["--model-path", "a=y=DIR"]),
        ("'a=y=DIR': more than one '='", "NAME 'a' and DIR 'y=DIR', which is not a folder"),
        code=2,
    ),
    Case(
        "model-path-two-folders",
        lambda w: w.args.extend(["--model-path", f"a={w.models['b']}"]),
        ("'a' is given two folders", "give one"),
        code=2,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_output(case: Case, built, tmp_path: Path, capsys, monkeypatch, freeze) -> None:
    models = tmp_path / "models"
    world = World(tmp_path, tmp_path / "recipe.yaml", tmp_path / "out", {})
    for name, folder in built.items():
        world.models[name] = Path(shutil.copytree(folder, models / name))
    case.setup(world)
    world.recipe.parent.mkdir(exist_ok=True)
    world.recipe.write_text(LINEAR)
    if case.freeze:
        freeze(case.freeze(world))
    before = snapshot(tmp_path)
    if case.patch:
        case.patch(monkeypatch)
    paths = [arg for name, folder in world.models.items() for arg in ("--model-path", f"{name}={folder}")]
    with pytest.raises(SystemExit) as exit_info:
        main(["merge", str(world.recipe), str(world.out), *paths, *world.args])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert exit_info.value.code == case.code, err
    assert "Traceback" not in err
    position = 0
    for part in case.expected:
        real = Path(os.path.realpath(tmp_path))
        part = part.format(out=world.out, tmp=tmp_path, models=models, rtmp=real, rmodels=real / "models")
        found = err.find(part, position)
        assert found >= 0, f"{part!r} not in:\n{err}"
        position = found
    assert snapshot(tmp_path) == before  # inputs, OUT and whatever was planted: byte for byte


def test_the_hub_cache_folder_of_a_model_is_an_input(built, tmp_path: Path) -> None:
    """A hub model's snapshot links into its blobs: its whole cache folder is kept apart from OUT."""
    cache = tmp_path / "hub"
    snapshot_folder = fill_cache(cache, "org/tiny", built["a"])
    repo = cache / "models--org--tiny"
    (repo / "blobs").mkdir()
    for i, file in enumerate(sorted(snapshot_folder.iterdir())):  # as huggingface_hub lays them out
        file.rename(repo / "blobs" / f"blob{i}")
        file.symlink_to(Path("../../blobs") / f"blob{i}")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("slices:\n- sources: [{model: org/tiny, layer_range: [0, 2]}]\nmerge_method: passthrough\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf-home")}
    before = snapshot(tmp_path)
    for out, relation, real in [  # the first of the model's folders that OUT meets is named
        (snapshot_folder, "is", snapshot_folder),
        (repo, "contains", snapshot_folder),
        (repo / "blobs", "lies inside", repo),
        (cache, "contains", snapshot_folder),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "mergesmith.cli", "merge", str(recipe), str(out), "--overwrite"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert result.returncode == 1, result.stderr
        message = f"error: {out}: the output folder {relation} {real}, which the merge reads (model 'org/tiny')"
        assert message in result.stderr
        assert snapshot(tmp_path) == before


# --- processes: the lock, kills during the swap, a tampered journal

MODEL_ARGS = ("--model-path", "a={a}", "--model-path", "b={b}")

# Runs the command line with one function wrapped; argv: [setting, mergesmith arguments...]
WRAPPED = {
    # SIGKILL right after a given rename of the --overwrite swap
    "kill-at-swap": """
import os, signal, sys
from pathlib import Path
when = sys.argv[1]
rename = os.rename
def rename_then_die(source, target, *args, **kwargs):
    rename(source, target, *args, **kwargs)
    moved_aside = ".old-" in Path(target).name
    moved_in = Path(source).name.endswith(".partial")
    if (when == "aside" and moved_aside) or (when == "in-place" and moved_in):
        os.kill(os.getpid(), signal.SIGKILL)
os.rename = rename_then_die
""",
    # wait at the first tensor write (holding OUT) until a gate file appears, at most 60 s
    "gate": """
import sys, time
from pathlib import Path
from mergesmith.output import shards as write
gate = Path(sys.argv[1])
original = write.ShardWriter.write
def wait_at_the_gate(self, *args, **kwargs):
    gate.with_suffix(".waiting").touch()
    deadline = time.monotonic() + 60
    while not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return original(self, *args, **kwargs)
write.ShardWriter.write = wait_at_the_gate
""",
    # SIGKILL once the journal has recorded this many tensors
    "kill-after-records": """
import os, signal, sys
from mergesmith.output import journal as write
count = int(sys.argv[1])
original = write.Journal.record
def record_then_die(self, name, crc):
    original(self, name, crc)
    count_now = len(self.path.read_text().splitlines()) - 1
    if count_now >= count:
        os.kill(os.getpid(), signal.SIGKILL)
write.Journal.record = record_then_die
""",
}
TAIL = "\nfrom mergesmith.cli import main\nmain(sys.argv[2:])\n"


def cli(*args: str, wrap: str | None = None, setting: str = "") -> subprocess.Popen:
    if wrap:
        command = [sys.executable, "-c", WRAPPED[wrap] + TAIL, setting, *args]
    else:
        command = [sys.executable, "-m", "mergesmith.cli", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=180)
    return process.returncode, err


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists(), f"{path} never appeared; the process said: {process.communicate(timeout=30)[1]}"


@pytest.fixture(scope="module")
def reference(built, tmp_path_factory) -> dict[str, bytes]:
    """The files of an uninterrupted merge of LINEAR."""
    folder = tmp_path_factory.mktemp("reference")
    (folder / "recipe.yaml").write_text(LINEAR)
    merge(folder / "recipe.yaml", folder / "out", model_paths=built, options=MergeOptions(workers=1))
    return contents(folder / "out")


@pytest.fixture
def job(built, reference, tmp_path: Path):
    """The recipe, its uninterrupted merge's files, and the arguments of a merge into tmp/out."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(LINEAR)
    paths = [arg.format(**built) for arg in MODEL_ARGS]
    return {"recipe": recipe, "out": tmp_path / "out", "reference": reference, "args": paths}


def beside(out: Path) -> list[str]:
    """What mergesmith may leave beside OUT: staging, lock, swap record, old OUT."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def test_a_second_merge_into_the_same_out_is_refused_while_the_first_runs(job, tmp_path: Path) -> None:
    out, gate = job["out"], tmp_path / "gate"
    first = cli("merge", str(job["recipe"]), str(out), "--workers", "1", *job["args"], wrap="gate", setting=str(gate))
    try:
        wait_for(gate.with_suffix(".waiting"), first)
        for extra in ((), ("--overwrite",), ("--resume",)):
            code, err = finish(cli("merge", str(job["recipe"]), str(out), *job["args"], *extra))
            assert code == 1, err
            assert f"error: {out}: another merge into it is running (process {first.pid})" in err
            assert "hint: wait for it to finish, or choose another output folder" in err
            assert "Traceback" not in err and not out.exists()
        gate.touch()
        code, err = finish(first)
    finally:
        if first.poll() is None:
            first.kill()
    assert code == 0, err
    assert contents(out) == job["reference"] and beside(out) == []


def test_the_lock_dies_with_the_process_that_held_it(job, tmp_path: Path) -> None:
    out, gate = job["out"], tmp_path / "gate"
    first = cli("merge", str(job["recipe"]), str(out), "--workers", "1", *job["args"], wrap="gate", setting=str(gate))
    wait_for(gate.with_suffix(".waiting"), first)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert beside(out) == [".out.lock", ".out.partial"]  # a killed merge leaves both; the lock holds nothing
    code, err = finish(cli("merge", str(job["recipe"]), str(out), *job["args"]))
    assert code == 0, err
    assert "removing an interrupted merge's files" in err
    assert contents(out) == job["reference"] and beside(out) == []


@pytest.mark.parametrize(
    "moment, then, said",
    [
        # killed with OUT moved aside and the new folder not yet in place: the old OUT comes back
        ("aside", (), "{out}: restored the previous output from .out.old-"),
        # killed with the new OUT in place and the old one not yet removed: the old one goes
        ("in-place", ("--resume",), "{out}: removed .out.old-"),
    ],
)
def test_a_kill_during_the_overwrite_swap_is_undone_by_the_next_run(job, moment, then, said) -> None:
    out = job["out"]
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"the previous output")
    (out / "notes.txt").write_text("kept until replaced")
    previous = contents(out)
    code, err = finish(
        cli("merge", str(job["recipe"]), str(out), "--overwrite", *job["args"], wrap="kill-at-swap", setting=moment)
    )
    assert code == -signal.SIGKILL, err
    assert ".out.swap" in beside(out) and any(".out.old-" in name for name in beside(out))
    assert out.exists() == (moment == "in-place")

    # the next run, refused because OUT exists (no --overwrite), still finishes the swap and says so
    code, err = finish(cli("merge", str(job["recipe"]), str(out), *job["args"], *then))
    assert code == 1 and f"error: {out}: folder exists and is not empty" in err, err
    assert said.format(out=out) in err
    if moment == "aside":
        assert contents(out) == previous
        assert beside(out) == [".out.partial"]  # the killed merge's folder, removed by the next merge
    else:
        assert contents(out) == job["reference"]
        assert beside(out) == []
    code, err = finish(cli("merge", str(job["recipe"]), str(out), "--overwrite", *job["args"]))
    assert code == 0, err
    assert contents(out) == job["reference"] and beside(out) == []


def replace_line(number: int, text: str) -> Callable[[list[str]], list[str]]:
    return lambda lines: [text if i == number else line for i, line in enumerate(lines)]


def crc_of_line(value: str) -> Callable[[list[str]], list[str]]:
    """Line 1's checksum replaced by `value` (JSON as written, e.g. Infinity)."""

    def change(lines: list[str]) -> list[str]:
        head, _, _ = lines[1].rpartition('"crc32": ')
        return [lines[0], f'{head}"crc32": {value}}}', *lines[2:]]

    return change


JOURNALS = [
    # (id, change to the journal's lines, tensors kept by the resume, what stderr says)
    ("crc-infinity", crc_of_line("Infinity"), 1, "skipped 1 unreadable lines"),
    ("crc-nan", crc_of_line("NaN"), 1, "skipped 1 unreadable lines"),
    ("crc-overflowing-float", crc_of_line("1e400"), 1, "skipped 1 unreadable lines"),
    ("crc-not-32-bits", crc_of_line(str(2**40)), 1, "skipped 1 unreadable lines"),
    ("crc-negative", crc_of_line("-1"), 1, "skipped 1 unreadable lines"),
    ("crc-boolean", crc_of_line("true"), 1, "skipped 1 unreadable lines"),
    ("crc-wrong", crc_of_line("12345"), 1, "resuming: 1 of"),  # read, and refused by the checksum
    ("tensor-a-list", lambda lines: [lines[0], '{"tensor": ["x"], "crc32": 1}', *lines[1:]], 2, "skipped 1"),
    ("deep-nesting", lambda lines: [*lines, "[" * 100_000], 2, "skipped 1 unreadable lines"),
    ("not-utf8-junk", lambda lines: [*lines, "\udcff\x00 junk"], 2, "skipped 1 unreadable lines"),
    ("header-seed-infinity", replace_line(0, '{"merge": "x", "seed": Infinity}'), 0, "not one mergesmith wrote"),
    ("header-a-list", replace_line(0, "[1, 2]"), 0, "the progress journal is not one mergesmith wrote"),
    ("empty", lambda lines: [], 0, "the progress journal is not one mergesmith wrote"),
]


@pytest.fixture(scope="module")
def killed(built, tmp_path_factory) -> Path:
    """The staging folder of a merge killed once its journal listed two tensors (made once)."""
    folder = tmp_path_factory.mktemp("killed")
    (folder / "recipe.yaml").write_text(LINEAR)
    out = folder / "out"
    paths = [arg.format(**built) for arg in MODEL_ARGS]
    args = ("merge", str(folder / "recipe.yaml"), str(out), "--workers", "1", *paths)
    code, err = finish(cli(*args, wrap="kill-after-records", setting="2"))
    assert code == -signal.SIGKILL, err
    journal = partial_folder(out) / Journal.FILENAME
    assert len(journal.read_text().splitlines()) == 3 and not out.exists()
    return partial_folder(out)


@pytest.fixture
def interrupted(job, killed: Path) -> Path:
    """The killed merge's staging folder, copied beside this test's OUT; returns its journal."""
    staging = Path(shutil.copytree(killed, partial_folder(job["out"]), symlinks=True))
    return staging / Journal.FILENAME


@pytest.mark.parametrize("change, kept, said", [j[1:] for j in JOURNALS], ids=[j[0] for j in JOURNALS])
def test_a_tampered_journal_only_costs_rewrites(job, built, interrupted: Path, change, kept, said) -> None:
    lines = interrupted.read_text().splitlines()
    text = "\n".join(change(lines)) + "\n"
    interrupted.write_bytes(text.encode("utf-8", errors="surrogateescape"))
    inputs = {name: snapshot(folder) for name, folder in built.items()}
    out = job["out"]
    code, err = finish(cli("-v", "merge", str(job["recipe"]), str(out), "--resume", "--workers", "1", *job["args"]))
    assert code == 0, err
    assert said in err and f"resuming: {kept} of " in err, err
    assert contents(out) == job["reference"] and beside(out) == []
    assert {name: snapshot(folder) for name, folder in built.items()} == inputs


def test_a_resume_never_writes_through_a_link_planted_in_its_folder(job, built, interrupted: Path) -> None:
    """The staging folder is the user's to edit: a shard and the journal replaced by links to an
    input's files are replaced, not written through."""
    staging = interrupted.parent
    (staging / "model.safetensors").unlink()
    (staging / "model.safetensors").symlink_to(built["a"] / "model.safetensors")
    interrupted.unlink()
    interrupted.symlink_to(built["b"] / "config.json")
    inputs = {name: snapshot(folder) for name, folder in built.items()}
    out = job["out"]
    code, err = finish(cli("-v", "merge", str(job["recipe"]), str(out), "--resume", "--workers", "1", *job["args"]))
    assert code == 0, err
    assert "the progress journal is not one mergesmith wrote; starting over" in err and "resuming: 0 of" in err
    assert contents(out) == job["reference"] and beside(out) == []
    assert {name: snapshot(folder) for name, folder in built.items()} == inputs


PLOTS = [
    # (id, the --plot path under tmp, what makes it unwritable, exit code, parts of stderr)
    (
        "missing-folder",
        "missing/plan.png",
        None,
        1,
        (
            "{path}: cannot write the picture (No such file or directory)",
            "hint: create the folder first: mkdir -p {tmp}/missing",
        ),
    ),
    (
        "a-file-as-the-folder",
        "notes.txt/plan.png",
        "file",
        1,
        ("{path}: cannot write the picture (Not a directory)", "a folder on the path is a file"),
    ),
    ("a-folder-as-the-file", "pictures", "folder", 2, ("Invalid value for '--plot'", "is a directory")),
    (
        "no-permission",
        "locked/plan.png",
        "frozen",
        1,
        ("{path}: cannot write the picture (", "hint: choose a place you can write to"),
    ),
]


@pytest.mark.parametrize("where, blocker, code, expected", [p[1:] for p in PLOTS], ids=[p[0] for p in PLOTS])
def test_plan_plot_to_an_unwritable_place(built, tmp_path: Path, capsys, freeze, where, blocker, code, expected):
    pytest.importorskip("matplotlib")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(LINEAR)
    path = tmp_path / where
    if blocker == "file":
        path.parent.write_text("not a folder")
    elif blocker == "folder":
        path.mkdir()
    elif blocker == "frozen":
        path.parent.mkdir()
        freeze(path.parent)
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "plan",
                str(recipe),
                "--model-path",
                f"a={built['a']}",
                "--model-path",
                f"b={built['b']}",
                "--plot",
                str(path),
            ]
        )
    err = capsys.readouterr().err
    assert exit_info.value.code == code, err
    assert "Traceback" not in err
    for part in expected:
        assert part.format(path=path, tmp=tmp_path) in err, err
    assert snapshot(tmp_path) == before  # no picture, and no half-written one
