"""Evolutionary search throughput on SmolLM2-135M: evaluations per minute of `mergesmith evolve`
(candidates merged in memory) in this process and on 1 and 2 Ray actors, against a loop that
writes each candidate to disk with `mergesmith merge`, loads it with transformers and scores it
(what mergekit-evolve does without vLLM; mergekit-evolve itself needs lm-eval's task data, which
this machine cannot download).

    python benchmarks/evolve.py [--evaluations 12] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from factory import derive_model  # noqa: E402
from mergesmith.api import evolve, merge  # noqa: E402
from mergesmith.search.evolve import SearchSettings  # noqa: E402
from real_model import build_smollm2  # noqa: E402

TOKENS = 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluations", type=int, default=12)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mergesmith-evolve-"))
    smol = build_smollm2(Path.home() / ".cache" / "mergesmith-tests")
    models = {"ft1": work / "ft1", "ft2": work / "ft2"}
    for seed, folder in enumerate(models.values(), 1):
        if not (folder / "model.safetensors").exists():
            derive_model(smol, folder, seed=seed, scale=0.004 * seed)
            for file in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copy(smol / file, folder / file)
    text = HERE.parent / "src" / "mergesmith" / "data" / "sample-english.txt"
    genome = work / "genome.yaml"
    genome.write_text(
        "genome:\n  models: [ft1, ft2]\n  merge_method: linear\n"
        f"tasks:\n  - name: perplexity\n    text: {text}\n    max_tokens: {TOKENS}\n"
    )
    rows = []
    for workers in (0, 1, 2):
        storage = work / f"search-{workers}"
        shutil.rmtree(storage, ignore_errors=True)
        settings = SearchSettings(max_evaluations=args.evaluations, population=4, seed=1, workers=workers)
        started = time.perf_counter()
        state = evolve(genome, storage, settings=settings, model_paths=models, merge_best=False)
        elapsed = time.perf_counter() - started
        label = "in this process" if workers == 0 else f"{workers} Ray actor{'s' if workers > 1 else ''}"
        rows.append((f"mergesmith evolve, {label}", len(state.evaluations), elapsed))
    rows.append(("merge to disk + load + score, per candidate", *_disk_loop(work, models, text, args.evaluations)))
    print(f"SmolLM2-135M, 2 models, linear, perplexity on {TOKENS} tokens\n")
    print("| how | evaluations | wall s (incl. start-up) | evaluations / min |")
    print("| --- | ---: | ---: | ---: |")
    for label, count, elapsed in rows:
        print(f"| {label} | {count} | {elapsed:.1f} | {60 * count / elapsed:.1f} |")


def _disk_loop(work: Path, models: dict[str, Path], text: Path, count: int) -> tuple[int, float]:
    """The same candidates (the in-process search's), each written to disk, loaded and scored."""
    import json

    import torch
    import transformers

    evaluations = [json.loads(line) for line in (work / "search-0" / "evaluations.jsonl").read_text().splitlines()]
    tokenizer = transformers.AutoTokenizer.from_pretrained(models["ft1"])
    ids = tokenizer(text.read_text(), return_tensors="pt", add_special_tokens=False).input_ids[:, :TOKENS]
    started = time.perf_counter()
    for evaluation in evaluations[:count]:
        w1, w2 = (abs(v) for v in evaluation["genotype"])
        sources = [{"model": "ft1", "parameters": {"weight": w1}}, {"model": "ft2", "parameters": {"weight": w2}}]
        recipe = {"models": sources, "merge_method": "linear", "dtype": "bfloat16"}
        (work / "candidate.yaml").write_text(yaml.safe_dump(recipe))
        from mergesmith.execute import MergeOptions

        merge(work / "candidate.yaml", work / "candidate", model_paths=models, options=MergeOptions(overwrite=True))
        model = transformers.AutoModelForCausalLM.from_pretrained(work / "candidate", dtype=torch.float32)
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1], -1)
        float(logp.gather(-1, ids[0, 1:, None]).mean())
    return len(evaluations[:count]), time.perf_counter() - started


if __name__ == "__main__":
    main()
