"""mergesmith evolve on a real Ray cluster (a head and two worker nodes): the actors score the
candidates on both worker nodes, and the search is the one this process runs alone."""

from __future__ import annotations

import json
from pathlib import Path

from factory import cached_model, derive_model, write_tokenizer
from mergesmith.api import evolve
from mergesmith.search.evolve import SearchSettings

TEXT = Path(__file__).resolve().parents[2] / "src" / "mergesmith" / "data" / "sample-english.txt"


def test_candidates_are_scored_on_every_worker_node(ray_cluster, tmp_path):
    base = derive_model(cached_model("llama"), tmp_path / "base", seed=0, scale=0.0)
    models = {
        "base": base,
        "ft1": derive_model(base, tmp_path / "ft1", seed=1),
        "ft2": derive_model(base, tmp_path / "ft2", seed=2),
    }
    for folder in models.values():
        write_tokenizer(folder)
    genome = tmp_path / "genome.yaml"
    genome.write_text(
        "genome:\n  models: [ft1, ft2]\n  base_model: base\n  merge_method: ties\n"
        f"tasks:\n  - name: perplexity\n    text: {TEXT}\n    max_tokens: 32\n"
    )
    common = dict(max_evaluations=8, population=4, seed=2)
    on_cluster = evolve(genome, tmp_path / "cluster", settings=SearchSettings(**common, workers=2,
                        ray_address=ray_cluster.address), model_paths=models, merge_best=False)  # fmt: skip
    alone = evolve(
        genome, tmp_path / "alone", settings=SearchSettings(**common, workers=0), model_paths=models, merge_best=False
    )
    assert {e["node"] for e in on_cluster.evaluations} == set(ray_cluster.worker_node_ids)
    assert [(e["genotype"], e["fitness"]) for e in on_cluster.evaluations] == [
        (e["genotype"], e["fitness"]) for e in alone.evaluations
    ]
    assert json.loads(json.dumps(on_cluster.best["genotype"])) == alone.best["genotype"]
