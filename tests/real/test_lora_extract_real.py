"""mergesmith lora extract on the real SmolLM2-135M and a "fine-tune" of it (seeded noise, which
is full rank: the hardest case for a low-rank adapter), on layers 0-3 (28 modules) to keep it
short: the error falls as the rank grows, and at full rank PEFT rebuilds the fine-tune's weights."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file

from factory import derive_model
from mergesmith.cli import main

LAYERS = r"layers\.[0-3]\."


def extract(smollm2, tuned, out, capsys, *options) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "lora",
                "extract",
                "--model",
                str(tuned),
                "--base",
                str(smollm2),
                str(out),
                "-i",
                LAYERS,
                "--json",
                *options,
            ]
        )
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err
    return json.loads(captured.out)["modules"]


@pytest.mark.real_model
def test_smollm2_extraction_error_falls_with_rank_and_full_rank_rebuilds_the_fine_tune(smollm2, tmp_path, capsys):
    from peft import PeftModel

    tuned = derive_model(smollm2, tmp_path / "ft", seed=7, scale=0.002)
    errors = {rank: extract(smollm2, tuned, tmp_path / f"r{rank}", capsys, "--rank", str(rank)) for rank in (8, 64)}
    full = extract(smollm2, tuned, tmp_path / "full", capsys, "--energy", "1.0")
    assert len(full) == 28
    for module, found in errors[8].items():
        assert found["relative_error"] > errors[64][module]["relative_error"] > full[module]["relative_error"]
        assert full[module]["relative_error"] < 1e-5, (module, full[module])
    model = transformers.AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    rebuilt = PeftModel.from_pretrained(model, tmp_path / "full").merge_and_unload().state_dict()
    expected = load_file(tuned / "model.safetensors")
    for name in (n for n in expected if "layers.2." in n and n.endswith("proj.weight")):
        torch.testing.assert_close(rebuilt[name], expected[name].float(), rtol=0, atol=1e-5, msg=name)
