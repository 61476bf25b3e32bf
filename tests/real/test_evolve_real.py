"""mergesmith evolve on the real SmolLM2-135M: the linear weights of two "fine-tunes" (noise of
two sizes added to SmolLM2, so that the best mix lies inside the range, near 0.5 when measured)
searched on the GPL-3 text, against a brute-force grid over the same weights computed here
with plain torch and transformers."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file

from factory import derive_model
from mergesmith.api import evolve
from mergesmith.search.evolve import SearchSettings

TOKENS = 256
MARGIN = 0.01  # nats per token: the search's best may fall this far below the grid's best point


@pytest.mark.real_model
def test_evolved_linear_weights_reach_the_best_of_a_grid(smollm2, tmp_path, gpl3_text):
    ft1 = derive_model(smollm2, tmp_path / "ft1", seed=1, scale=0.004)
    ft2 = derive_model(smollm2, tmp_path / "ft2", seed=2, scale=0.008)
    text = tmp_path / "text.txt"
    text.write_text(gpl3_text)
    genome = tmp_path / "genome.yaml"
    genome.write_text(
        "genome:\n  models: [ft1, ft2]\n  merge_method: linear\n"
        f"tasks:\n  - name: perplexity\n    text: {text}\n    max_tokens: {TOKENS}\n"
    )
    paths = {"ft1": ft1, "ft2": ft2, "smollm2": smollm2}
    for folder in (ft1, ft2):  # the genome's first model gives the tokenizer
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (folder / name).write_bytes((smollm2 / name).read_bytes())
    settings = SearchSettings(max_evaluations=16, population=4, sigma=0.3, seed=3, workers=0)
    state = evolve(genome, tmp_path / "search", settings=settings, model_paths=paths, merge_best=False)

    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2)
    ids = tokenizer(gpl3_text, return_tensors="pt", add_special_tokens=False).input_ids[:, :TOKENS]
    model = transformers.AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    a, b = load_file(ft1 / "model.safetensors"), load_file(ft2 / "model.safetensors")
    grid = {}
    for step in range(11):
        r = step / 10
        state_dict = {n: (r * a[n].float() + (1 - r) * b[n].float()).to(torch.bfloat16).float() for n in a}
        model.load_state_dict(state_dict, strict=False)
        model.tie_weights()
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        grid[r] = float(logp.gather(-1, ids[0, 1:, None]).mean())
    best_r = max(grid, key=grid.get)
    assert 0.1 <= best_r <= 0.9, grid  # inside the range: the search has something to find
    found = state.best["fitness"]
    report = {"grid": grid, "best_r": best_r, "evolved": found, "genotype": state.best["genotype"]}
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert found >= grid[best_r] - MARGIN, report
    assert len(state.evaluations) == 16
