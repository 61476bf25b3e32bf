"""`--executor ray` on the session's real cluster (a head and two one-CPU worker nodes): merges give
the local backend's bytes, spread over the nodes, survive a killed worker and a killed driver, and
a bad input fails as it does locally, leaving nothing behind."""

from __future__ import annotations

import dataclasses
import filecmp
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from factory import build_model, fp8_model, resize_vocabulary, write_tokenizer
from mergesmith.api import merge, merge_plan, plan
from mergesmith.checkpoints import open_checkpoints
from mergesmith.cli import main
from mergesmith.demo import SEED_MODEL, build_demo_model, seed_recipe_text
from mergesmith.errors import CheckpointError
from mergesmith.execute import MergeOptions
from mergesmith.output.shards import layout_shards
from polling import wait_for

ray = pytest.importorskip("ray")
PRINT = print  # Ray replaces builtins.print in a driver unless told not to

HOOKS = Path(__file__).resolve().parent / "hooks"
SHARD_BYTES = 20_000  # four or more shards per merge of the small models: both nodes get work
TIES = (
    "models:\n  - {model: ft1, parameters: {weight: 0.6, density: 0.5}}\n"
    "  - {model: ft2, parameters: {weight: 0.4, density: 0.7}}\nbase_model: base\nmerge_method: ties\n"
    "dtype: bfloat16\n"
)
UNION = (
    "models:\n  - {model: chat, parameters: {weight: 0.6, density: 0.5}}\n"
    "  - {model: ft1, parameters: {weight: 0.4, density: 0.5}}\nbase_model: base\nmerge_method: ties\n"
    "tokenizer: {source: union, pad_to_multiple_of: 64}\nchat_template: chatml\n"
)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ray-models")
    base = write_tokenizer(build_model(folder / "base", layers=4, vocab=64, seed=1))
    return {
        SEED_MODEL: build_demo_model(folder / "fimbulvetr"),
        "base": base,
        "ft1": write_tokenizer(build_model(folder / "ft1", layers=4, vocab=64, seed=2)),
        "ft2": build_model(folder / "ft2", layers=4, vocab=64, seed=3),
        "chat": write_tokenizer(
            resize_vocabulary(base, folder / "chat", 66, seed=4), added=("<|im_start|>", "<|im_end|>")
        ),
    }


def same_folders(a: Path, b: Path) -> list[str]:
    """Names of the files that differ (or exist in one folder only); [] when every byte agrees."""
    names = sorted({p.name for p in a.iterdir()} | {p.name for p in b.iterdir()})
    return [n for n in names if not ((a / n).is_file() and (b / n).is_file() and filecmp.cmp(a / n, b / n, False))]


def write_recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "name, text", [("seed", None), ("ties", TIES), ("union", UNION)], ids=["seed", "ties", "union"]
)
def test_the_ray_backend_writes_the_local_backends_bytes_on_both_nodes(ray_cluster, models, tmp_path, name, text):
    recipe = write_recipe(tmp_path, text or seed_recipe_text())
    options = MergeOptions(out_shard_bytes=240_000 if name == "seed" else SHARD_BYTES, random_seed=3)
    local = merge(recipe, tmp_path / "local", model_paths=models, options=options)
    remote = merge(
        recipe, tmp_path / "ray", model_paths=models, options=MergeOptions(**{**options.__dict__, "executor": "ray"})
    )
    assert len(local.shards) > 2 and remote.shards == local.shards
    assert same_folders(tmp_path / "local", tmp_path / "ray") == []
    nodes = {result.node for result in remote.shard_results}
    assert nodes == set(ray_cluster.worker_node_ids)  # spread over both; none on the head (no CPUs)
    assert all(r.digest and r.bytes_written > 0 for r in remote.shard_results)
    import builtins

    assert builtins.print is PRINT
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging, lock or attempt files


def test_a_worker_killed_in_the_middle_of_a_shard_is_retried_and_the_bytes_are_the_same(ray_cluster, models, tmp_path):
    recipe = write_recipe(tmp_path, TIES)
    options = MergeOptions(out_shard_bytes=SHARD_BYTES, random_seed=3)
    merge(recipe, tmp_path / "local", model_paths=models, options=options)
    gate = tmp_path / "gate" / "open"
    gate.parent.mkdir()
    # A job of its own whose workers wait at their first shard write until the gate opens.
    ray.shutdown()
    ray.init(
        address=ray_cluster.address,
        log_to_driver=False,
        logging_level=logging.WARNING,
        runtime_env={
            "worker_process_setup_hook": "gate_hook.install",
            "env_vars": {"MERGESMITH_TEST_GATE": str(gate), "PYTHONPATH": os.pathsep.join([str(HOOKS), *sys.path])},
        },
    )
    try:
        outcome: dict[str, object] = {}

        def run() -> None:
            try:
                outcome["report"] = merge(
                    recipe, tmp_path / "ray", model_paths=models,
                    options=MergeOptions(out_shard_bytes=SHARD_BYTES, random_seed=3, executor="ray"),
                )  # fmt: skip
            except BaseException as err:  # noqa: BLE001 - handed to the test thread
                outcome["error"] = err

        thread = threading.Thread(target=run)
        thread.start()
        waiting = wait_for(lambda: sorted(gate.parent.glob("waiting-*")), what="a worker at the gate", timeout_s=120)
        victim = int(waiting[0].name.removeprefix("waiting-"))
        staging = tmp_path / ".ray.partial"
        assert list(staging.glob(".model-*.incomplete"))  # mid-shard: attempt files hold their headers only
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: not psutil.pid_exists(victim) or psutil.Process(victim).status() == "zombie",
            what="the kill",
            timeout_s=120,
        )
        gate.touch()
        thread.join(timeout=180)
        assert not thread.is_alive() and "error" not in outcome, outcome.get("error")
    finally:
        ray.shutdown()
        ray.init(address=ray_cluster.address, log_to_driver=False, logging_level=logging.WARNING)
    assert same_folders(tmp_path / "local", tmp_path / "ray") == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_truncated_input_fails_in_its_task_as_it_does_locally_and_leaves_nothing(ray_cluster, models, tmp_path):
    """The input is cut after the plan read its header: only a task reading it can find out."""
    recipe = write_recipe(tmp_path, TIES)
    planned = plan(recipe, model_paths=models)
    checkpoints = open_checkpoints(list(planned.models), {m: models[m] for m in planned.models})
    weights = models["ft2"] / "model.safetensors"
    original = weights.read_bytes()
    messages = {}
    try:
        weights.write_bytes(original[: len(original) // 2])
        for executor in ("local", "ray"):
            out = tmp_path / executor
            with pytest.raises(CheckpointError) as raised:
                merge_plan(planned, checkpoints, out, MergeOptions(out_shard_bytes=SHARD_BYTES, executor=executor))
            messages[executor] = str(raised.value)
            assert not out.exists()
    finally:
        weights.write_bytes(original)
    assert "file ended early (truncated?)" in messages["ray"] and "Traceback" not in messages["ray"]
    assert messages["ray"].split(": tensor")[0] == messages["local"].split(": tensor")[0]  # the file, named
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_merge_error_in_a_task_exits_1_with_the_local_message(ray_cluster, make_model, tmp_path, capsys):
    """multislerp over a, -a and 0: the method's error, met in a task, through the command line."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    a = make_model("a", layers=1, dtype="F32", seed=7)
    paths = {"a": a}
    for name, change in (("neg", torch.neg), ("zero", torch.zeros_like)):
        folder = tmp_path / "models" / name
        folder.mkdir()
        shutil.copy(a / "config.json", folder / "config.json")
        save_file({k: change(v) for k, v in load_file(a / "model.safetensors").items()}, folder / "model.safetensors")
        paths[name] = folder
    recipe = write_recipe(
        tmp_path,
        "models: [{model: a, parameters: {weight: 0.3}}, {model: neg, parameters: {weight: 0.3}}, "
        "{model: zero, parameters: {weight: 0.4}}]\nmerge_method: multislerp\n",
    )
    out = tmp_path / "out"
    args = ["merge", str(recipe), str(out), "--executor", "ray", "--ray-address", ray_cluster.address]
    with pytest.raises(SystemExit) as exit_info:
        main(args + [f"--model-path={k}={v}" for k, v in paths.items()])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1, err
    assert "multislerp: the weighted sum of the models' directions is zero" in err
    assert "hint: change the weights so they do not cancel, or merge these models with linear" in err
    assert "Traceback" not in err and "ray::" not in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("resume_with", ["ray", "local"])
def test_a_killed_merge_is_resumed_keeping_the_shards_it_finished(ray_cluster, models, tmp_path, resume_with):
    """Killed after its first verified shard, and resumed on the cluster or on this machine alone."""
    recipe = write_recipe(tmp_path, TIES)
    out = tmp_path / "out"
    paths = [f"--model-path={k}={v}" for k, v in models.items()]
    args = ["merge", str(recipe), str(out), "--executor", "ray", "--ray-address", ray_cluster.address,
            "--out-shard-size", str(SHARD_BYTES // 4), "--random-seed", "3", *paths]  # fmt: skip
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": ray_cluster.auth_token}
    driver = subprocess.Popen([sys.executable, "-m", "mergesmith.cli", "-q", *args], env=env, stderr=subprocess.PIPE)
    journal = tmp_path / ".out.partial" / ".mergesmith-progress.jsonl"
    try:
        wait_for(
            lambda: journal.exists() and '"shard"' in journal.read_text(), what="a first verified shard", timeout_s=120
        )
    finally:
        driver.kill()
        driver.wait()
    assert not out.exists()
    done = [json.loads(line)["shard"] for line in journal.read_text().splitlines()[1:]]
    again = (
        args
        if resume_with == "ray"
        else [a for a in args if a not in ("--executor", "ray", "--ray-address", ray_cluster.address)]
    )
    resumed = subprocess.run(
        [sys.executable, "-m", "mergesmith.cli", "-v", *again, "--resume"], env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    kept = int(resumed.stderr.split("tensors and ")[1].split(" of ")[0])
    assert kept >= len(done) >= 1
    merge(recipe, tmp_path / "local", model_paths=models,
          options=MergeOptions(out_shard_bytes=SHARD_BYTES // 4, random_seed=3))  # fmt: skip
    assert same_folders(tmp_path / "local", out) == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


class RecordedEvents:
    def __init__(self) -> None:
        self.progress_bytes, self.progress_tensors, self.tensors, self.shards = 0, 0, [], []

    def progress(self, nbytes: int, tensors: int = 0) -> None:
        self.progress_bytes += nbytes
        self.progress_tensors += tensors

    def tensor_written(self, name: str, crc: int) -> None:
        self.tensors.append(name)

    def shard_written(self, result) -> None:
        self.shards.append(result)


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_backend_reports_every_byte_once_and_every_shard(ray_cluster, models, tmp_path, executor):
    """The backend contract: progress adds up to the output's bytes (one bar across all tasks), each
    shard is reported once, with a digest that matches its file where the backend computes one."""
    from mergesmith.execute.run import run_plan
    from mergesmith.output.shards import file_digest, layout_shards

    planned = plan(write_recipe(tmp_path, TIES), model_paths=models)
    checkpoints = open_checkpoints(list(planned.models), {m: models[m] for m in planned.models})
    layout = layout_shards(planned.entries, SHARD_BYTES)
    folder = tmp_path / "shards"
    folder.mkdir()
    events = RecordedEvents()
    options = MergeOptions(executor=executor, out_shard_bytes=SHARD_BYTES)
    results = run_plan(planned, checkpoints, folder, layout, options, seed=3, events=events)
    assert events.progress_bytes == sum(e.nbytes for e in planned.entries)
    # the local backend counts tensors as well as bytes (the page shows both); Ray counts bytes only
    assert events.progress_tensors == (len(planned.entries) if executor == "local" else 0)
    assert sorted(r.filename for r in events.shards) == sorted(layout.filenames) == sorted(r.filename for r in results)
    assert sorted(p.name for p in folder.iterdir()) == sorted(layout.filenames)
    for result in results:
        assert result.digest == (file_digest(folder / result.filename) if executor == "ray" else None)
    # the local backend journals each computed tensor; the ray backend resumes whole shards instead
    assert sorted(events.tensors) == (sorted(e.output for e in planned.entries) if executor == "local" else [])


def test_a_method_whose_result_depends_on_the_thread_count_gives_the_local_bytes(ray_cluster, make_model, tmp_path):
    """karcher sums whole tensors: torch splits a large sum between its threads, and the rounding
    follows the split. A Ray worker starts with one torch thread (Ray sets OMP_NUM_THREADS to the
    task's CPUs); the local backend computes such methods with torch's default count."""
    paths = {
        name: make_model(name, layers=1, vocab=65536, dtype="F32", seed=seed) for name, seed in (("a", 1), ("b", 2))
    }
    recipe = write_recipe(tmp_path, "models: [{model: a}, {model: b}]\nmerge_method: karcher\n")
    local = merge(recipe, tmp_path / "local", model_paths=paths, options=MergeOptions(out_shard_bytes=2**22))
    remote = merge(
        recipe, tmp_path / "ray", model_paths=paths, options=MergeOptions(out_shard_bytes=2**22, executor="ray")
    )
    assert remote.shards == local.shards
    assert same_folders(tmp_path / "local", tmp_path / "ray") == []


def test_a_resume_refused_for_its_ray_address_keeps_the_interrupted_merge(models, tmp_path, capsys):
    """An unreachable --ray-address (a typo) is refused before the interrupted merge's staging
    folder is touched: its journal and shards are still there for the corrected command."""
    import socket

    recipe = write_recipe(tmp_path, TIES)
    out = tmp_path / "out"
    paths = [f"--model-path={k}={v}" for k, v in models.items()]
    args = ["merge", str(recipe), str(out), "--out-shard-size", str(SHARD_BYTES), "--random-seed", "3", *paths]
    # a merge that dies (as if killed) once it has journaled its first computed tensor
    killed = (
        "import os, sys, mergesmith.driver as d\n"
        "record = d._Events.tensor_written\n"
        "d._Events.tensor_written = lambda self, n, c: (record(self, n, c), os._exit(9))\n"
        "from mergesmith.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    died = subprocess.run([sys.executable, "-c", killed, "-q", *args, "--workers", "1"], capture_output=True, text=True)
    assert died.returncode == 9, died.stderr
    staging = tmp_path / ".out.partial"
    journal = staging / ".mergesmith-progress.jsonl"
    before = {p.name: p.read_bytes() for p in staging.iterdir()}
    assert len(journal.read_text().splitlines()) == 2  # the header and one tensor
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--resume", "--executor", "ray", "--ray-address", f"127.0.0.1:{port}"])
    assert exit_info.value.code == 1
    assert "nothing answers there" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in staging.iterdir()} == before
    assert not out.exists()


def _with_int_buffer(folder: Path) -> Path:
    """The model with an integer buffer added (equal in every model: it is copied)."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    tensors["model.position_ids"] = torch.arange(40, dtype=torch.int64).reshape(1, 40)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("case", ["bin", "sharded-cast", "truncate", "dare", "int-buffer"])
def test_each_kind_of_input_and_route_gives_the_local_bytes(ray_cluster, make_model, tmp_path, case):
    kwargs = {"bin": {"fmt": "bin"}, "sharded-cast": {"dtype": "F32", "max_shard_bytes": 20_000}}.get(case, {})
    a = make_model("a", layers=2, vocab=64, seed=1, **kwargs)
    b = make_model("b", layers=2, vocab=66 if case == "truncate" else 64, seed=2, **kwargs)
    if case == "int-buffer":
        a, b = _with_int_buffer(a), _with_int_buffer(b)
    method = "dare_ties\nbase_model: a" if case == "dare" else "linear"
    params = "{weight: 0.5, density: 0.6}" if case == "dare" else "{weight: 0.5}"
    recipe = write_recipe(
        tmp_path, f"models: [{{model: a, parameters: {params}}}, {{model: b, parameters: {params}}}]\n"
        f"merge_method: {method}\ndtype: bfloat16\n",
    )  # fmt: skip
    truncate = case == "truncate"
    options = MergeOptions(out_shard_bytes=SHARD_BYTES, random_seed=5)
    merge(
        recipe, tmp_path / "local", model_paths={"a": a, "b": b}, options=options, unsafe_truncate_embeddings=truncate
    )
    merge(
        recipe, tmp_path / "ray", model_paths={"a": a, "b": b},
        options=dataclasses.replace(options, executor="ray"), unsafe_truncate_embeddings=truncate,
    )  # fmt: skip
    assert same_folders(tmp_path / "local", tmp_path / "ray") == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_fp8_weight_and_its_scales_in_two_shards_give_the_local_bytes(ray_cluster, make_model, tmp_path):
    """out_dtype float8_e4m3fn: an FP8 weight's entry and its scales' are one unit of work when one
    task holds both; cut into two shards (two Ray tasks), each task merges the weight itself."""
    models = {
        name: fp8_model(make_model(name, layers=2, vocab=64, seed=seed), tmp_path / f"{name}-fp8", (24, 24))
        for name, seed in [("a", 1), ("b", 2)]
    }
    recipe = write_recipe(
        tmp_path,
        "models: [{model: a, parameters: {weight: 0.3}}, {model: b, parameters: {weight: 0.7}}]\n"
        "merge_method: linear\nout_dtype: float8_e4m3fn\n",
    )
    entries = plan(recipe, model_paths=models).entries
    # shards of exactly the bytes up to an FP8 weight a third of the way in: its scales start the next
    ends = [sum(e.nbytes for e in entries[: i + 1]) for i in range(len(entries))]
    cut = next(i for i, e in enumerate(entries) if e.fp8 and e.output == e.fp8.weight and ends[i] > ends[-1] / 3)
    shard_bytes = ends[cut]
    slots = layout_shards(entries, shard_bytes).slots
    assert slots[entries[cut].output].shard + 1 == slots[entries[cut + 1].output].shard  # the case this test is for
    options = MergeOptions(out_shard_bytes=shard_bytes)
    merge(recipe, tmp_path / "local", model_paths=models, options=options)
    merge(recipe, tmp_path / "ray", model_paths=models, options=dataclasses.replace(options, executor="ray"))
    assert same_folders(tmp_path / "local", tmp_path / "ray") == []
