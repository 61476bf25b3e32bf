"""`mergesmith lora extract`: an adapter whose B A approximates FT - BASE. Oracles: PEFT loading the
adapter onto the base (merge_and_unload) against FT's weights; torch's SVD of each difference
(Eckart-Young: the best rank-r error is sqrt(sum of the dropped S^2) / ||delta||)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from factory import cached_model, derive_model, resize_vocabulary
from mergesmith.cli import main


def run(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    base = cached_model("llama")
    return base, derive_model(base, tmp_path_factory.mktemp("extract") / "ft", seed=4, scale=0.02)


def extract(pair, out: Path, capsys, *options: str) -> tuple[int, str, str]:
    base, tuned = pair
    return run(["lora", "extract", "--model", str(tuned), "--base", str(base), str(out), *options], capsys)


def singular_values(pair, name: str) -> torch.Tensor:
    base, tuned = pair
    delta = load_file(tuned / "model.safetensors")[name].float() - load_file(base / "model.safetensors")[name].float()
    return torch.linalg.svdvals(delta)


def test_full_energy_reproduces_the_fine_tune_through_peft(tmp_path, pair, capsys):
    from peft import PeftModel

    code, _, err = extract(pair, tmp_path / "adapter", capsys, "--energy", "1.0")
    assert code == 0, err
    base, tuned = pair
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, tmp_path / "adapter").merge_and_unload().state_dict()
    expected = load_file(tuned / "model.safetensors")
    for name, tensor in expected.items():
        # float32 SVD of a bf16 difference: the product holds it to float32 rounding
        torch.testing.assert_close(merged[name], tensor.float(), rtol=0, atol=2e-6, msg=name)
    assert (tmp_path / "adapter" / "README.md").read_text().startswith("---\nbase_model: ")


def test_error_falls_as_rank_grows_and_is_the_best_possible(tmp_path, pair, capsys):
    errors = {}
    for rank in (1, 2, 4, 8):
        code, out, err = extract(pair, tmp_path / f"r{rank}", capsys, "--rank", str(rank), "--json")
        assert code == 0, err
        errors[rank] = json.loads(out)["modules"]
    module = "model.layers.2.mlp.down_proj"
    s = singular_values(pair, f"{module}.weight")
    for rank, found in errors.items():
        assert found[module]["rank"] == rank
        best = float(s[rank:].square().sum().sqrt() / s.square().sum().sqrt())
        assert found[module]["relative_error"] == pytest.approx(best, rel=1e-4, abs=1e-6)
    for each in errors[1]:
        series = [errors[r][each]["relative_error"] for r in (1, 2, 4, 8)]
        assert series == sorted(series, reverse=True) and series[-1] < series[0], (each, series)
    a = load_file(tmp_path / "r4" / "adapter_model.safetensors")
    assert a[f"base_model.model.{module}.lora_A.weight"].shape == (4, 64)  # (r, in)
    assert a[f"base_model.model.{module}.lora_B.weight"].shape == (32, 4)  # (out, r)


def test_energy_chooses_each_modules_rank(tmp_path, pair, capsys):
    code, out, err = extract(pair, tmp_path / "adapter", capsys, "--energy", "0.9", "--json")
    assert code == 0, err
    found = json.loads(out)["modules"]
    for module in ("model.layers.0.self_attn.k_proj", "model.layers.3.mlp.up_proj"):
        energy = singular_values(pair, f"{module}.weight").square()
        share = torch.cumsum(energy, 0) / energy.sum()
        expected = int((share < 0.9).sum()) + 1  # the least rank keeping 90%
        assert found[module]["rank"] == expected
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    ranks = {m: v["rank"] for m, v in found.items()}
    assert config["r"] in ranks.values() and config["lora_alpha"] == config["r"]
    for module, rank in ranks.items():  # a module of another rank has a pattern of its own, alpha = rank
        if rank != config["r"]:
            key = module.replace(".", "\\.")
            assert config["rank_pattern"][key] == rank == config["alpha_pattern"][key]


def test_include_and_exclude_patterns(tmp_path, pair, capsys):
    code, _, err = extract(pair, tmp_path / "adapter", capsys, "--rank", "2", "-i", "mlp", "-e", r"layers\.0\.")
    assert code == 0, err
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] == sorted(
        f"model.layers.{i}.mlp.{m}" for i in (1, 2, 3) for m in ("down_proj", "gate_proj", "up_proj")
    )
    assert "model.norm" in config["modules_to_save"] and "model.embed_tokens" in config["modules_to_save"]


def test_a_grown_vocabulary_is_saved_whole(tmp_path, pair, capsys):
    base, _ = pair
    grown = resize_vocabulary(base, tmp_path / "grown", 136, seed=5)
    code, _, err = run(
        ["lora", "extract", "--model", str(grown), "--base", str(base), str(tmp_path / "a"), "--rank", "1"], capsys
    )
    assert code == 0, err
    saved = load_file(tmp_path / "a" / "adapter_model.safetensors")
    assert saved["base_model.model.model.embed_tokens.weight"].shape[0] == 136
    assert torch.equal(
        saved["base_model.model.model.embed_tokens.weight"],
        load_file(grown / "model.safetensors")["model.embed_tokens.weight"].float(),
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--rank", "20"], "--rank 20 is above what model.layers.0.self_attn.k_proj.weight [16, 32] can hold (16)"),
        (["--rank", "0"], "--rank 0: a rank is at least 1"),
        (["--rank", "2", "--energy", "0.5"], "give --rank R or --energy E (one of them)"),
        (["--energy", "1.5"], "--energy 1.5: a share of the singular values' energy, in (0, 1]"),
        (["--rank", "2", "-i", "("], "pattern '(' is not a regular expression"),
        (["--rank", "2", "-i", "nothing-matches"], "no linear layer of"),
    ],
    ids=["rank-too-high", "rank-zero", "both", "energy", "regex", "nothing"],
)
def test_bad_settings_are_refused_and_nothing_is_written(tmp_path, pair, capsys, options, message):
    code, _, err = extract(pair, tmp_path / "adapter", capsys, *options)
    assert code == 1 and "Traceback" not in err and err.count("error:") == 1, err
    assert message in err
    assert not (tmp_path / "adapter").exists() and not list(tmp_path.glob(".adapter*"))


def test_models_of_other_architectures_are_refused(tmp_path, pair, capsys):
    base, _ = pair
    other = cached_model("gpt2")
    code, _, err = run(
        ["lora", "extract", "--model", str(other), "--base", str(base), str(tmp_path / "a"), "--rank", "2"], capsys
    )
    assert code == 1 and "is in" in err and "only" in err and "the same architecture" in err, err
    assert not (tmp_path / "a").exists()


def test_an_existing_output_is_kept_without_overwrite(tmp_path, pair, capsys):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "mine.txt").write_text("keep")
    code, _, err = extract(pair, tmp_path / "adapter", capsys, "--rank", "2")
    assert code == 1 and "exists" in err and "--overwrite" in err, err
    assert (tmp_path / "adapter" / "mine.txt").read_text() == "keep"
    code, _, err = extract(pair, tmp_path / "adapter", capsys, "--rank", "2", "--overwrite")
    assert code == 0, err
    assert not (tmp_path / "adapter" / "mine.txt").exists()


def test_gpt2_conv1d_weights_are_extracted_for_fan_in_fan_out(tmp_path, capsys):
    # GPT-2 stores its linear layers (in, out): the adapter says fan_in_fan_out, and PEFT rebuilds FT
    from peft import PeftModel

    base = cached_model("gpt2")
    tuned = derive_model(base, tmp_path / "ft", seed=6, scale=0.02)
    code, _, err = run(
        ["lora", "extract", "--model", str(tuned), "--base", str(base), str(tmp_path / "a"), "--energy", "1"], capsys
    )
    assert code == 0, err
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is True and "transformer.h.0.attn.c_attn" in config["target_modules"]
    assert "transformer.wpe" in config["modules_to_save"]  # position embeddings: a table, saved whole
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    rebuilt = PeftModel.from_pretrained(model, tmp_path / "a").merge_and_unload().state_dict()
    for name, tensor in load_file(tuned / "model.safetensors").items():
        key = name if name in rebuilt else f"transformer.{name}"
        torch.testing.assert_close(rebuilt[key], tensor.float(), rtol=0, atol=2e-6, msg=name)
    # and mergesmith's own reading of the adapter (lora merge) rebuilds FT as PEFT does
    code, _, err = run(
        ["lora", "merge", str(base), str(tmp_path / "a"), str(tmp_path / "m"), "--dtype", "float32"], capsys
    )
    assert code == 0, err
    for name, tensor in load_file(tmp_path / "m" / "model.safetensors").items():
        torch.testing.assert_close(
            tensor, load_file(tuned / "model.safetensors")[name].float(), rtol=0, atol=2e-6, msg=name
        )
