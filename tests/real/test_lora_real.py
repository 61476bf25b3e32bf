"""A random LoRA on the real SmolLM2-135M, applied while merging (`smollm2+adapter`): the tensors
PEFT's merge_and_unload gives in the same dtype, and the model's perplexity with them."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from factory import lora_adapter
from mergesmith.api import merge
from mergesmith.evaluate import evaluate, perplexity

MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.real_model
def test_smollm2_with_a_random_adapter_equals_peft_merge_and_unload(smollm2, tmp_path, gpl3_text):
    from peft import PeftModel

    adapter = lora_adapter(smollm2, tmp_path / "adapter", "llama", seed=5, r=8, lora_alpha=16, target_modules=MODULES)
    (tmp_path / "r.yaml").write_text(f"models:\n  - model: {smollm2}+{adapter}\nmerge_method: passthrough\n")
    merge(tmp_path / "r.yaml", tmp_path / "out")
    merged = load_file(tmp_path / "out" / "model.safetensors")

    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.bfloat16)
    expected = PeftModel.from_pretrained(model, adapter).merge_and_unload().state_dict()
    source = load_file(smollm2 / "model.safetensors")
    assert set(merged) == set(source)  # tied embeddings: no lm_head written, as in the base
    changed = [n for n in merged if not torch.equal(merged[n], source[n])]
    assert len(changed) == 30 * len(MODULES)
    worst = 0.0
    for name in changed:
        assert merged[name].dtype == torch.bfloat16
        # PEFT rounds B A to bfloat16 and then the sum; mergesmith rounds W + B A once: one bf16 step apart at most
        step = expected[name].float().abs().clamp_min(2**-20) * 2**-7
        worst = max(worst, float(((merged[name].float() - expected[name].float()).abs() / step).max()))
    assert worst <= 1.0, worst
    base = perplexity(smollm2, gpl3_text, max_tokens=256).value
    adapted = perplexity(tmp_path / "out", gpl3_text, max_tokens=256).value
    assert adapted != base and torch.isfinite(torch.tensor(adapted))
    # evaluate reads base+adapter too (PEFT applies it): against the merged folder, the same model
    result = evaluate(f"{smollm2}+{adapter}", base_dir=tmp_path / "out", text=gpl3_text, max_tokens=256)
    assert result.kl_mean < 1e-3 and result.top1_agreement > 0.98, (result.kl_mean, result.top1_agreement)
