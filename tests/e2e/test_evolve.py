"""`mergesmith evolve` on tiny models: results written, the recorded fitness of the best candidate
recomputed independently from its merge on disk (transformers), kill and resume ending where an
uninterrupted search ends, Ray actors scoring as this process does, bad genomes refused before any
evaluation."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers
import yaml

from factory import cached_model, derive_model, write_tokenizer
from mergesmith.cli import main

TEXT = Path(__file__).resolve().parents[2] / "src" / "mergesmith" / "data" / "sample-english.txt"

GENOME = f"""
genome:
  models: [ft1, ft2]
  base_model: base
  merge_method: ties
tasks:
  - name: perplexity
    text: {TEXT}
    max_tokens: 48
  - name: kl
    reference: ft1
    text: {TEXT}
    max_tokens: 48
    weight: 0.5
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("evolve")
    base = derive_model(cached_model("llama"), folder / "base", seed=0, scale=0.0)
    found = {
        "base": base,
        "ft1": derive_model(base, folder / "ft1", seed=1),
        "ft2": derive_model(base, folder / "ft2", seed=2, scale=0.03),
    }
    for path in found.values():
        write_tokenizer(path)
    return found


def args_for(models: dict[str, Path]) -> list[str]:
    return [a for name, folder in models.items() for a in ("--model-path", f"{name}={folder}")]


def run(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def evaluations(storage: Path) -> list[dict]:
    return [json.loads(line) for line in (storage / "evaluations.jsonl").read_text().splitlines()]


def test_search_writes_its_results_and_the_best_fitness_is_that_of_its_merge(tmp_path, models, capsys):
    (tmp_path / "genome.yaml").write_text(GENOME)
    storage = tmp_path / "search"
    code, out, err = run(["evolve", str(tmp_path / "genome.yaml"), "--storage", str(storage), "--max-evals", "10",
                          "--workers", "0", "--json", *args_for(models)], capsys)  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    found = evaluations(storage)
    assert len(found) == 10 and result["evaluations"] == 10
    assert result["best_fitness"] == max(e["fitness"] for e in found)
    assert "generation 1:" not in err  # --json: no progress lines
    assert {p.name for p in storage.iterdir()} >= {
        "best.yaml",
        "evaluations.jsonl",
        "fitness.png",
        "state.pkl",
        "best-model",
    }
    recipe = yaml.safe_load((storage / "best.yaml").read_text())
    assert recipe["merge_method"] == "ties" and recipe["base_model"] == "base"
    # the fitness, recomputed from the merge written to disk: -NLL + 0.5 * -KL(ft1 || merged)
    tokenizer = transformers.AutoTokenizer.from_pretrained(models["base"])
    ids = tokenizer(TEXT.read_text(), return_tensors="pt", add_special_tokens=False).input_ids[:, :48]
    with torch.no_grad():
        merged = transformers.AutoModelForCausalLM.from_pretrained(storage / "best-model", dtype=torch.float32)
        reference = transformers.AutoModelForCausalLM.from_pretrained(models["ft1"], dtype=torch.float32)
        logp = torch.log_softmax(merged(ids).logits[0, :-1], -1)
        ref = torch.log_softmax(reference(ids).logits[0, :-1], -1)
    nll = -logp.gather(-1, ids[0, 1:, None]).mean()
    kl = (ref.exp() * (ref - logp)).sum(-1).clamp(min=0).mean()
    assert float(-nll - 0.5 * kl) == pytest.approx(result["best_fitness"], abs=1e-4)


def test_killed_search_resumes_and_ends_as_an_uninterrupted_one(tmp_path, models, capsys):
    (tmp_path / "genome.yaml").write_text(GENOME)
    common = ["--max-evals", "24", "--workers", "0", "--no-merge", "--population", "4", *args_for(models)]
    whole = tmp_path / "whole"
    assert run(["evolve", str(tmp_path / "genome.yaml"), "--storage", str(whole), *common], capsys)[0] == 0

    killed = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "mergesmith.cli",
        "evolve",
        str(tmp_path / "genome.yaml"),
        "--storage",
        str(killed),
        *common,
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (killed / "state.pkl").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (killed / "state.pkl").exists() and not (killed / "evaluations.jsonl").exists()  # stopped midway

    code, _, err = run(["evolve", str(tmp_path / "genome.yaml"), "--storage", str(killed), *common], capsys)
    assert code == 0, err
    assert [e["genotype"] for e in evaluations(killed)] == [e["genotype"] for e in evaluations(whole)]
    assert [e["fitness"] for e in evaluations(killed)] == [e["fitness"] for e in evaluations(whole)]
    assert (killed / "best.yaml").read_text() == (whole / "best.yaml").read_text()


def test_ray_actors_score_as_this_process_does(tmp_path, models, capsys):
    (tmp_path / "genome.yaml").write_text(GENOME)
    common = ["--max-evals", "6", "--no-merge", "--population", "3", *args_for(models)]
    here, ray = tmp_path / "here", tmp_path / "ray"
    assert (
        run(["evolve", str(tmp_path / "genome.yaml"), "--storage", str(here), "--workers", "0", *common], capsys)[0]
        == 0
    )
    code, _, err = run(
        ["evolve", str(tmp_path / "genome.yaml"), "--storage", str(ray), "--workers", "2", *common], capsys
    )
    assert code == 0, err

    def scored(storage: Path) -> list[tuple]:
        return [(e["genotype"], e["fitness"], e["terms"]) for e in evaluations(storage)]

    assert scored(here) == scored(ray)
    assert {e["node"] for e in evaluations(here)} == {"local"} and "local" not in {e["node"] for e in evaluations(ray)}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda g: g.replace("merge_method: ties", "merge_method: ties\n  layer_granularty: 2"),
         "genome.layer_granularty: unknown key"),
        (lambda g: g.replace(f"    text: {TEXT}\n    max_tokens: 48\n  - name: kl", "    max_tokens: 48\n  - name: kl"),
         "tasks[0] (perplexity): no text"),
        (lambda g: g.replace(f"text: {TEXT}", "text: /no/such/file.txt", 1),
         "tasks[0] (perplexity): text '/no/such/file.txt' is not a file"),
        (lambda g: g + "  - name: arc_easy_train\n", "tasks[2] (arc_easy_train): an lm-eval task, and lm-eval is not installed"),
        (lambda g: g.replace("models: [ft1, ft2]", "models: [ft1, gpt2]"), "the genome's models cannot be merged"),
        (lambda g: g.replace("merge_method: ties", "merge_method: ties\n  layer_granularity: 3"),
         "genome.layer_granularity 3 does not divide 'ft1''s 4 layers"),
    ],
    ids=["typo", "no-text", "missing-text", "lm-eval", "cannot-merge", "granularity"],
)  # fmt: skip
def test_bad_genomes_are_refused_before_any_evaluation(tmp_path, models, capsys, edit, message):
    if "lm-eval" in message and importlib.util.find_spec("lm_eval") is not None:
        pytest.skip("lm-eval is installed here")
    (tmp_path / "genome.yaml").write_text(edit(GENOME))
    paths = {**models, "gpt2": cached_model("gpt2")}
    storage = tmp_path / "search"
    code, _, err = run(
        ["evolve", str(tmp_path / "genome.yaml"), "--storage", str(storage), "--workers", "0", *args_for(paths)], capsys
    )
    assert code == 1 and "Traceback" not in err and err.count("error:") == 1, err
    assert message in err, err
    assert not storage.exists()
