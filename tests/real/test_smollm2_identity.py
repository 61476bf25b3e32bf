"""On the real SmolLM2-135M: copies of layers with zeroed o_proj/down_proj change nothing, bit for bit."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mergesmith.api import merge
from real_model import IDENTITY_RECIPE


@pytest.mark.real_model
def test_inserted_zero_scaled_layers_leave_logits_unchanged(tmp_path, smollm2, gpl3_text):
    (tmp_path / "identity.yaml").write_text(IDENTITY_RECIPE)
    out = tmp_path / "identity"
    merge(tmp_path / "identity.yaml", out, model_paths={"smollm2": smollm2})
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 40

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    ids = tokenizer(gpl3_text, return_tensors="pt", add_special_tokens=False).input_ids[:, :512]
    logits = {}
    for name, folder in (("original", smollm2), ("merged", out)):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
        model.eval()
        with torch.no_grad():
            logits[name] = model(ids).logits
    assert len(model.model.layers) == 40
    assert torch.equal(logits["merged"], logits["original"])
    # and the model is a real one: it predicts this licence text well
    loss = torch.nn.functional.cross_entropy(logits["original"][0, :-1].float(), ids[0, 1:])
    assert loss.exp().item() < 40
