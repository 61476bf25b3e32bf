"""`model+adapter` references: a PEFT LoRA applied tensor by tensor while the merge reads the base.
Oracles: PEFT's own merge_and_unload on the model loaded with transformers, and plain torch
(W + alpha / r * B A) on the adapter's tensors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from factory import AUTO_CLASS, cached_model, derive_model, fill_cache, lora_adapter
from mergesmith.checkpoints.reference import resolve_reference
from mergesmith.cli import main

ATTENTION_AND_MLP = ["q_proj", "v_proj", "down_proj"]


def run(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, capsys.readouterr().err


def merge(tmp_path: Path, recipe: str, capsys, *extra: str) -> tuple[int, str, Path]:
    (tmp_path / "r.yaml").write_text(recipe)
    out = tmp_path / "out"
    code, err = run(["merge", str(tmp_path / "r.yaml"), str(out), *extra], capsys)
    return code, err, out


def refused(code: int, err: str, out: Path, *expected: str) -> None:
    assert code == 1, err
    assert "Traceback" not in err and err.count("error:") == 1, err
    for part in expected:
        assert part in err, f"{part!r} not in:\n{err}"
    assert not out.exists() and not list(out.parent.glob(f"{out.name}*"))


def peft_merged(base: Path, adapter: Path, arch: str = "llama") -> dict[str, torch.Tensor]:
    """The oracle: PEFT applies the adapter to the model transformers loads, in float32."""
    from peft import PeftModel

    model = getattr(transformers, AUTO_CLASS[arch]).from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(model, adapter).merge_and_unload().state_dict()


def by_hand(base: Path, adapter: Path, module: str) -> torch.Tensor:
    """W + alpha / r * B A for one module (plain torch on the files), rank and alpha as configured."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    tensors = load_file(adapter / "adapter_model.safetensors")
    a = tensors[f"base_model.model.{module}.lora_A.weight"].float()
    b = tensors[f"base_model.model.{module}.lora_B.weight"].float()
    short = module.split(".")[-1]
    r = config["rank_pattern"].get(short, config["r"])
    alpha = config["alpha_pattern"].get(short, config["lora_alpha"])
    return load_file(base / "model.safetensors")[f"{module}.weight"].float() + alpha / r * (b @ a)


@pytest.fixture(scope="module")
def llama_adapter(tmp_path_factory) -> tuple[Path, Path]:
    base = cached_model("llama")
    adapter = tmp_path_factory.mktemp("adapters") / "llama-lora"
    settings = dict(r=4, lora_alpha=8, rank_pattern={"down_proj": 2}, alpha_pattern={"q_proj": 16})
    lora_adapter(base, adapter, "llama", seed=1, target_modules=[*ATTENTION_AND_MLP, "embed_tokens"], **settings)
    return base, adapter


def test_passthrough_of_a_model_with_its_adapter_equals_peft_merge_and_unload(tmp_path, capsys, llama_adapter):
    base, adapter = llama_adapter
    code, err, out = merge(
        tmp_path, f"models:\n  - model: {base}+{adapter}\nmerge_method: passthrough\ndtype: float32\n", capsys
    )
    assert code == 0, err
    merged, expected, source = (
        load_file(out / "model.safetensors"),
        peft_merged(base, adapter),
        load_file(base / "model.safetensors"),
    )
    assert set(merged) == set(source)
    changed = {n for n in merged if not torch.equal(merged[n], source[n].float())}
    # the embeddings and q, v, down of each of the 4 layers
    assert changed == {"model.embed_tokens.weight"} | {
        f"model.layers.{i}.{m}.weight"
        for i in range(4)
        for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")
    }
    for name, tensor in merged.items():  # float32 throughout: equal up to the order of the matmul's sums
        torch.testing.assert_close(tensor, expected[name].float(), rtol=1e-6, atol=1e-7, msg=name)
    for module in ("model.layers.2.self_attn.q_proj", "model.layers.3.mlp.down_proj"):  # alpha 16 / r 4; alpha 8 / r 2
        torch.testing.assert_close(merged[f"{module}.weight"], by_hand(base, adapter, module), rtol=1e-6, atol=1e-7)


def test_adapted_model_in_a_linear_merge_with_another(tmp_path, capsys, llama_adapter):
    base, adapter = llama_adapter
    other = derive_model(base, tmp_path / "other", seed=3)
    recipe = f"""
models:
  - model: {base}+{adapter}
    parameters: {{weight: 0.25}}
  - model: {other}
    parameters: {{weight: 0.75}}
merge_method: linear
dtype: float32
"""
    code, err, out = merge(tmp_path, recipe, capsys)
    assert code == 0, err
    merged, others = load_file(out / "model.safetensors"), load_file(other / "model.safetensors")
    module = "model.layers.1.self_attn.v_proj"
    expected = (0.25 * by_hand(base, adapter, module) + 0.75 * others[f"{module}.weight"].float()) / 1.0
    torch.testing.assert_close(merged[f"{module}.weight"], expected, rtol=1e-6, atol=1e-7)


def test_bfloat16_output_is_peft_within_one_rounding(tmp_path, capsys, llama_adapter):
    base, adapter = llama_adapter
    code, err, out = merge(
        tmp_path, f"models:\n  - model: {base}+{adapter}\nmerge_method: passthrough\ndtype: bfloat16\n", capsys
    )
    assert code == 0, err
    merged, expected = load_file(out / "model.safetensors"), peft_merged(base, adapter)
    for name, tensor in merged.items():
        assert tensor.dtype == torch.bfloat16
        # both round a float32 value to bfloat16 once: at most one bfloat16 step (2^-8 relative) apart
        torch.testing.assert_close(tensor.float(), expected[name].to(torch.bfloat16).float(), rtol=2**-8, atol=1e-6)


def test_long_reference_form_with_revisions_is_the_short_one(tmp_path, capsys, llama_adapter):
    base, adapter = llama_adapter
    short = tmp_path / "short"
    code, err, _ = (
        merge(short, f"models:\n  - model: {base}+{adapter}\nmerge_method: passthrough\n", capsys)
        if short.mkdir() is None
        else (0, "", None)
    )
    assert code == 0, err
    recipe = f"models:\n  - model:\n      model: {{path: {base}}}\n      lora: {{path: {adapter}}}\nmerge_method: passthrough\n"
    code, err, out = merge(tmp_path, recipe, capsys)
    assert code == 0, err
    assert load_file(out / "model.safetensors").keys() == load_file(short / "out" / "model.safetensors").keys()
    for name, tensor in load_file(out / "model.safetensors").items():
        assert torch.equal(tensor, load_file(short / "out" / "model.safetensors")[name]), name


def test_references_split_model_adapter_and_their_revisions():
    ref = resolve_reference("org/model@v1+org/adapter@v2")
    assert (ref.repo_id, ref.revision) == ("org/model", "v1")
    assert ref.adapter is not None and (ref.adapter.repo_id, ref.adapter.revision) == ("org/adapter", "v2")


def test_hub_model_and_hub_adapter_from_the_local_cache(tmp_path, llama_adapter):
    base, adapter = llama_adapter
    cache = tmp_path / "cache"
    fill_cache(cache, "org/base", base)
    fill_cache(cache, "org/lora", adapter)
    (tmp_path / "r.yaml").write_text(
        "models:\n  - model: org/base@main+org/lora\nmerge_method: passthrough\ndtype: float32\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf-home")}
    args = [sys.executable, "-m", "mergesmith.cli", "merge", str(tmp_path / "r.yaml"), str(tmp_path / "out")]
    result = subprocess.run(args, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    module = "model.layers.0.self_attn.q_proj"
    merged = load_file(tmp_path / "out" / "model.safetensors")[f"{module}.weight"]
    torch.testing.assert_close(merged, by_hand(base, adapter, module), rtol=1e-6, atol=1e-7)


def test_gpt2_conv1d_adapter_with_rslora_and_a_saved_head(tmp_path, capsys):
    # fan_in_fan_out: GPT-2 stores its weights (in, out), so the delta is (B A)^T; rsLoRA scales by
    # alpha / sqrt(r); modules_to_save replaces lm_head... GPT-2 ties it, so the saved module is the
    # final norm instead
    base = cached_model("gpt2")
    adapter = lora_adapter(
        base, tmp_path / "gpt2-lora", "gpt2", seed=2, r=4, lora_alpha=6, use_rslora=True,
        target_modules=["c_attn", "c_fc"], fan_in_fan_out=True, modules_to_save=["ln_f"],
    )  # fmt: skip
    with torch.no_grad():  # a visible change to the saved module (PEFT saves it as trained)
        tensors = load_file(adapter / "adapter_model.safetensors")
        saved = [n for n in tensors if "ln_f" in n]
        assert saved, list(tensors)
        for name in saved:
            tensors[name] = tensors[name] + 0.5
        save_file(tensors, adapter / "adapter_model.safetensors", metadata={"format": "pt"})
    code, err, out = merge(
        tmp_path, f"models:\n  - model: {base}+{adapter}\nmerge_method: passthrough\ndtype: float32\n", capsys
    )
    assert code == 0, err
    merged, expected = load_file(out / "model.safetensors"), peft_merged(base, adapter, "gpt2")
    source = load_file(base / "model.safetensors")
    assert not torch.equal(
        merged["transformer.h.0.attn.c_attn.weight"], source["transformer.h.0.attn.c_attn.weight"].float()
    )
    assert torch.equal(merged["transformer.ln_f.weight"], source["transformer.ln_f.weight"].float() + 0.5)
    for name in merged:
        key = name if name in expected else name.removeprefix("transformer.")
        torch.testing.assert_close(
            merged[name], expected.get(key, expected.get(name)).float(), rtol=1e-6, atol=1e-7, msg=name
        )


# --- bad adapters: each a clear error, nothing written


def _edited(adapter: Path, folder: Path, **config) -> Path:
    shutil.copytree(adapter, folder)
    settings = json.loads((folder / "adapter_config.json").read_text()) | config
    (folder / "adapter_config.json").write_text(json.dumps(settings))
    return folder


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"use_dora": True}, "DoRA (use_dora: true) is not plain LoRA; mergesmith cannot apply it exactly"),
        ({"peft_type": "IA3"}, "a IA3 adapter; only LoRA adapters can be applied exactly"),
    ],
    ids=["dora", "ia3"],
)
def test_adapters_that_are_not_plain_lora_are_refused(tmp_path, capsys, llama_adapter, config, expected):
    base, adapter = llama_adapter
    edited = _edited(adapter, tmp_path / "edited", **config)
    code, err, out = merge(tmp_path, f"models:\n  - model: {base}+{edited}\nmerge_method: passthrough\n", capsys)
    refused(code, err, out, expected, "hint:")


def test_rank_disagreeing_with_the_config_names_the_module(tmp_path, capsys, llama_adapter):
    base, adapter = llama_adapter
    edited = _edited(adapter, tmp_path / "edited", rank_pattern={})  # down_proj's A has 2 rows, r says 4
    code, err, out = merge(tmp_path, f"models:\n  - model: {base}+{edited}\nmerge_method: passthrough\n", capsys)
    refused(code, err, out, "adapter_config.json gives model.layers.0.mlp.down_proj rank 4, but its lora_A has 2 rows")


def test_adapter_of_another_base_is_refused_by_shape(tmp_path, capsys, llama_adapter):
    _, adapter = llama_adapter
    wider = cached_model("llama", vocab=256)  # same tensor names, embeddings of other sizes
    code, err, out = merge(tmp_path, f"models:\n  - model: {wider}+{adapter}\nmerge_method: passthrough\n", capsys)
    refused(
        code, err, out, "the adapter saves model.embed_tokens.weight as [128, 32], but the model's is [256, 32]",
        "the adapter was trained for another base model",
    )  # fmt: skip


def test_adapter_naming_a_module_the_model_lacks_is_refused(tmp_path, capsys, llama_adapter):
    _, adapter = llama_adapter
    other = cached_model("gpt2")
    code, err, out = merge(tmp_path, f"models:\n  - model: {other}+{adapter}\nmerge_method: passthrough\n", capsys)
    refused(
        code,
        err,
        out,
        "the model has no tensor model.embed_tokens.weight",
        "the adapter was trained for another base model",
    )


def test_adapter_folder_without_its_config_is_refused(tmp_path, capsys, llama_adapter):
    base, adapter = llama_adapter
    broken = tmp_path / "broken"
    shutil.copytree(adapter, broken)
    os.remove(broken / "adapter_config.json")
    code, err, out = merge(tmp_path, f"models:\n  - model: {base}+{broken}\nmerge_method: passthrough\n", capsys)
    refused(code, err, out, f"no adapter_config.json in {broken}")


def test_three_part_reference_is_refused(tmp_path, capsys, llama_adapter):
    base, adapter = llama_adapter
    code, err, out = merge(
        tmp_path, f"models:\n  - model: {base}+{adapter}+{adapter}\nmerge_method: passthrough\n", capsys
    )
    refused(code, err, out, "a LoRA reference is MODEL+ADAPTER, one '+' between two non-empty parts")


def test_adapter_file_linking_outside_its_folder_is_refused(tmp_path, capsys, llama_adapter):
    base, adapter = llama_adapter
    linked = tmp_path / "linked"
    linked.mkdir()
    shutil.copy(adapter / "adapter_config.json", linked)
    (linked / "adapter_model.safetensors").symlink_to(adapter / "adapter_model.safetensors")
    code, err, out = merge(tmp_path, f"models:\n  - model: {base}+{linked}\nmerge_method: passthrough\n", capsys)
    refused(code, err, out, "adapter_model.safetensors resolves to", "outside the adapter folder")


def test_adapter_whose_product_does_not_fit_the_weight_is_refused(tmp_path, capsys, llama_adapter):
    base, adapter = llama_adapter
    narrower = tmp_path / "narrower"
    shutil.copytree(base, narrower)
    tensors = load_file(narrower / "model.safetensors")
    tensors["model.layers.0.self_attn.q_proj.weight"] = tensors["model.layers.0.self_attn.q_proj.weight"][:16].clone()
    save_file(tensors, narrower / "model.safetensors", metadata={"format": "pt"})
    code, err, out = merge(tmp_path, f"models:\n  - model: {narrower}+{adapter}\nmerge_method: passthrough\n", capsys)
    refused(
        code, err, out,
        "lora_A [4, 32] and lora_B [32, 4] of model.layers.0.self_attn.q_proj.weight do not fit the model's "
        "model.layers.0.self_attn.q_proj.weight [16, 32]",
    )  # fmt: skip


# --- mergesmith lora merge BASE ADAPTER... OUT


def test_lora_merge_of_one_adapter_is_peft_merge_and_unload(tmp_path, capsys, llama_adapter):
    base, adapter = llama_adapter
    code, err = run(["lora", "merge", str(base), str(adapter), str(tmp_path / "out"), "--dtype", "float32"], capsys)
    assert code == 0, err
    merged, expected = load_file(tmp_path / "out" / "model.safetensors"), peft_merged(base, adapter)
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, expected[name].float(), rtol=1e-6, atol=1e-7, msg=name)
    assert "passthrough" in (tmp_path / "out" / "README.md").read_text()


def test_lora_merge_adds_the_weighted_changes_of_several_adapters(tmp_path, capsys, llama_adapter):
    base, first = llama_adapter
    second = lora_adapter(base, tmp_path / "second", "llama", seed=7, r=2, lora_alpha=4, target_modules=["v_proj"])
    out = tmp_path / "out"
    args = ["lora", "merge", str(base), str(first), str(second), str(out), "--weight", "0.5", "--weight", "2"]
    code, err = run([*args, "--dtype", "float32"], capsys)
    assert code == 0, err
    merged, source = load_file(out / "model.safetensors"), load_file(base / "model.safetensors")
    module = "model.layers.1.self_attn.v_proj"
    w = source[f"{module}.weight"].float()
    expected = w + 0.5 * (by_hand(base, first, module) - w) + 2.0 * (by_hand(base, second, module) - w)
    torch.testing.assert_close(merged[f"{module}.weight"], expected, rtol=1e-5, atol=1e-6)
    untouched = "model.layers.1.mlp.up_proj.weight"  # neither adapter changes it
    assert torch.equal(merged[untouched], source[untouched].float())


def test_lora_merge_with_a_weight_per_adapter_missing_is_refused(tmp_path, capsys, llama_adapter):
    base, adapter = llama_adapter
    out = tmp_path / "out"
    code, err = run(["lora", "merge", str(base), str(adapter), str(adapter), str(out), "--weight", "0.5"], capsys)
    refused(code, err, out, "lora merge: 1 --weight values for 2 adapters", "hint: give one --weight per adapter")
