"""mergesmith moe on the real SmolLM2-135M: a two-expert Mixtral from two "fine-tunes" of it (seeded
noise), routed by `hidden` gates from prompts taken from two different texts (the GPL-3 licence and
the Declaration of Independence). On held-out parts of each text the router sends most tokens to
that text's expert, and perplexity stays close to the fine-tune's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from factory import derive_model
from mergesmith.cli import main
from mergesmith.evaluate import perplexity

SAMPLE = Path(__file__).resolve().parents[2] / "src" / "mergesmith" / "data" / "sample-english.txt"


def chunks(text: str, count: int, size: int = 300) -> list[str]:
    return [text[i * size : (i + 1) * size] for i in range(count)]


@pytest.mark.real_model
def test_two_expert_moe_routes_each_text_to_its_expert(smollm2, tmp_path, gpl3_text, capsys):
    texts = {"law": gpl3_text, "history": SAMPLE.read_text()}
    models = {"law": derive_model(smollm2, tmp_path / "law", seed=1, scale=0.002),
              "history": derive_model(smollm2, tmp_path / "history", seed=2, scale=0.002)}  # fmt: skip
    for folder in models.values():  # each fine-tune's perplexity is measured with SmolLM2's tokenizer
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (folder / name).write_bytes((smollm2 / name).read_bytes())
    experts = "".join(
        f"  - source_model: {name}\n    positive_prompts: {json.dumps(chunks(texts[name], 6))}\n" for name in models
    )
    (tmp_path / "moe.yaml").write_text(
        f"base_model: smollm2\ngate_mode: hidden\nexperts_per_token: 1\nexperts:\n{experts}"
    )
    paths = [a for n, f in {**models, "smollm2": smollm2}.items() for a in ("--model-path", f"{n}={f}")]
    with pytest.raises(SystemExit) as exit_info:
        main(["moe", str(tmp_path / "moe.yaml"), str(tmp_path / "moe"), *paths])
    assert exit_info.value.code == 0, capsys.readouterr().err

    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "moe", dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "moe")
    shares = {}
    for expert, name in enumerate(models):
        held_out = texts[name][len(texts[name]) // 2 :]  # the prompts came from the first 1,800 characters
        ids = tokenizer(held_out, return_tensors="pt", add_special_tokens=False).input_ids[:, :256]
        with torch.no_grad():
            logits = model(ids, output_router_logits=True).router_logits  # per layer: (tokens, experts)
        chosen = torch.stack([layer.argmax(-1) for layer in logits])  # (layers, tokens)
        shares[name] = float((chosen == expert).float().mean())
    (tmp_path / "shares.json").write_text(json.dumps(shares))
    assert all(share > 0.5 for share in shares.values()), shares
    for name in models:
        tuned = perplexity(models[name], texts[name], max_tokens=256).value
        moe = perplexity(tmp_path / "moe", texts[name], max_tokens=256).value
        assert moe == pytest.approx(tuned, rel=0.1), (name, moe, tuned)
