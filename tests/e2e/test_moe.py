"""`mergesmith moe`: mixture-of-experts models from dense ones, mergekit-moe's config. Oracles: the
source models' tensors, the gates recomputed in plain torch (and transformers for `hidden`) from
what mergekit-moe documents, transformers loading and generating with the output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from factory import cached_model, derive_model, write_tokenizer
from mergesmith.cli import main

PROMPTS = {"ft1": ["the cat sat on the mat", "a dog ran"], "ft2": ["in the beginning was the word"]}


def run(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def dense(tmp_path_factory, arch: str) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp(arch)
    base = derive_model(cached_model(arch), folder / "base", seed=0, scale=0.0)
    models = {
        "base": base,
        "ft1": derive_model(base, folder / "ft1", seed=1),
        "ft2": derive_model(base, folder / "ft2", seed=2),
    }
    for path in models.values():
        write_tokenizer(path)
    return models


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> dict[str, Path]:
    return dense(tmp_path_factory, "llama")


def config(gate_mode: str = "cheap_embed", **extra) -> str:
    experts = "".join(f"  - source_model: {m}\n    positive_prompts: {json.dumps(p)}\n" for m, p in PROMPTS.items())
    lines = "".join(f"{k}: {json.dumps(v)}\n" for k, v in extra.items())
    return f"base_model: base\ngate_mode: {gate_mode}\nexperts:\n{experts}{lines}"


def build(tmp_path: Path, models: dict[str, Path], text: str, capsys, *extra: str) -> tuple[int, str, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "moe.yaml").write_text(text)
    out = tmp_path / "moe"
    paths = [a for name, folder in models.items() for a in ("--model-path", f"{name}={folder}")]
    code, _, err = run(["moe", str(tmp_path / "moe.yaml"), str(out), *paths, *extra], capsys)
    return code, err, out


def loads_and_generates(out: Path, architecture: str) -> None:
    model, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True, dtype=torch.float32)
    assert type(model).__name__ == architecture
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    generated = model.generate(torch.tensor([[1, 5, 9]]), max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 7)


def ids(tokenizer, prompt: str) -> list[int]:
    """A prompt's tokens after the BOS token, as mergekit-moe tokenizes them."""
    return tokenizer(tokenizer.bos_token + prompt, add_special_tokens=False).input_ids


def cheap_embed_router(models: dict[str, Path]) -> torch.Tensor:
    """Per expert: the sum of the embeddings of every token of its prompts, unit length."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(models["base"])
    embeddings = load_file(models["base"] / "model.safetensors")["model.embed_tokens.weight"].float()
    rows = []
    for prompts in PROMPTS.values():
        vector = sum(embeddings[ids(tokenizer, p)].sum(0) for p in prompts)
        rows.append(vector / vector.norm())
    return torch.stack(rows)  # (experts, hidden)


def test_mixtral_from_llama_experts_are_their_models_mlps(tmp_path, llama, capsys):
    code, err, out = build(tmp_path, llama, config(dtype="float32"), capsys)
    assert code == 0, err
    merged = load_file(out / "model.safetensors")
    base = load_file(llama["base"] / "model.safetensors")
    for e, name in enumerate(PROMPTS):
        source = load_file(llama[name] / "model.safetensors")
        for layer in range(4):
            for part, w in (("gate_proj", "w1"), ("down_proj", "w2"), ("up_proj", "w3")):
                got = merged[f"model.layers.{layer}.block_sparse_moe.experts.{e}.{w}.weight"]
                assert torch.equal(got, source[f"model.layers.{layer}.mlp.{part}.weight"].float())
    for name in (n for n in base if ".mlp." not in n):  # attention, norms, embeddings: the base's
        assert torch.equal(merged[name], base[name].float()), name
    expected = cheap_embed_router(llama)
    for layer in range(4):  # the same router at every layer
        torch.testing.assert_close(
            merged[f"model.layers.{layer}.block_sparse_moe.gate.weight"], expected, rtol=1e-6, atol=1e-7
        )
    written = json.loads((out / "config.json").read_text())
    assert (written["model_type"], written["num_local_experts"], written["num_experts_per_tok"]) == ("mixtral", 2, 2)
    assert "built by mergesmith moe: a MixtralForCausalLM of 2 experts" in (out / "README.md").read_text()
    loads_and_generates(out, "MixtralForCausalLM")


def test_hidden_gates_are_the_base_models_hidden_states(tmp_path, llama, capsys):
    code, err, out = build(tmp_path, llama, config("hidden", dtype="float32", experts_per_token=1), capsys)
    assert code == 0, err
    tokenizer = transformers.AutoTokenizer.from_pretrained(llama["base"])
    model = transformers.AutoModelForCausalLM.from_pretrained(llama["base"], dtype=torch.float32)
    merged = load_file(out / "model.safetensors")
    for e, prompts in enumerate(PROMPTS.values()):
        with torch.no_grad():
            states = [
                model(torch.tensor([ids(tokenizer, p)]), output_hidden_states=True).hidden_states for p in prompts
            ]
        for layer in range(4):  # the state entering the layer at the last token, averaged, unit length
            vector = torch.stack([s[layer][0, -1] for s in states]).mean(0)
            expected = vector / vector.norm()
            got = merged[f"model.layers.{layer}.block_sparse_moe.gate.weight"][e]
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    loads_and_generates(out, "MixtralForCausalLM")


def test_random_gates_are_seeded_and_uniform_random_bounded(tmp_path, llama, capsys):
    outs = []
    for i, seed in enumerate(("3", "3", "4")):
        code, err, out = build(tmp_path / str(i), llama, config("random"), capsys, "--random-seed", seed)
        assert code == 0, err
        outs.append(load_file(out / "model.safetensors")["model.layers.2.block_sparse_moe.gate.weight"])
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    code, err, out = build(tmp_path / "u", llama, config("uniform_random"), capsys)
    assert code == 0, err
    gate = load_file(out / "model.safetensors")["model.layers.0.block_sparse_moe.gate.weight"].float()
    assert gate.abs().max() <= 1 / 32**0.5 and gate.std() > 0  # U(-1/sqrt(hidden), 1/sqrt(hidden)), hidden 32


def test_qwen2_moe_with_a_shared_expert(tmp_path_factory, tmp_path, capsys):
    models = dense(tmp_path_factory, "qwen2")
    text = (
        config("cheap_embed", dtype="float32")
        + 'shared_experts:\n  - source_model: base\n    positive_prompts: ["hello"]\n'
    )
    code, err, out = build(tmp_path, models, text, capsys)
    assert code == 0, err
    merged, base = load_file(out / "model.safetensors"), load_file(models["base"] / "model.safetensors")
    assert torch.equal(
        merged["model.layers.1.mlp.shared_expert.down_proj.weight"], base["model.layers.1.mlp.down_proj.weight"].float()
    )
    assert merged["model.layers.1.mlp.shared_expert_gate.weight"].shape == (1, 32)
    ft2 = load_file(models["ft2"] / "model.safetensors")
    assert torch.equal(
        merged["model.layers.3.mlp.experts.1.up_proj.weight"], ft2["model.layers.3.mlp.up_proj.weight"].float()
    )
    loads_and_generates(out, "Qwen2MoeForCausalLM")


def test_qwen3_moe(tmp_path_factory, tmp_path, capsys):
    models = dense(tmp_path_factory, "qwen3")
    code, err, out = build(tmp_path, models, config("random", experts_per_token=1), capsys)
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen3_moe"
    loads_and_generates(out, "Qwen3MoeForCausalLM")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t + "experts_per_token: 3\n", "experts_per_token: 3, but there are 2 experts"),
        (lambda t: t.replace("source_model: ft2", "source_model: gpt2"), "experts[1].source_model 'gpt2' is a gpt2 model, the base 'base' a llama"),
        (lambda t: t.replace("source_model: ft2", "source_model: wide"), "experts[1].source_model 'wide' has vocab_size 256, the base 'base' 128"),
        (lambda t: t + "gate_mod: random\n", "gate_mod: unknown key"),
        (lambda t: t.replace("source_model: ft2", "source_model: ./nowhere"), "model './nowhere'"),
        (lambda t: t + "architecture: deepseek\n", "transformers' DeepSeek MoE models use multi-head latent attention"),
        (lambda t: t + "architecture: qwen3_moe\n", "architecture: qwen3_moe is built from qwen3 models; the base is llama"),
        (lambda t: t.replace('    positive_prompts: ["in the beginning was the word"]\n', ""), "experts[1] (ft2): gate_mode cheap_embed needs positive_prompts"),
    ],
    ids=["per-token", "architecture", "size", "typo", "missing", "deepseek", "wrong-layout", "no-prompts"],
)  # fmt: skip
def test_bad_configs_are_refused_and_nothing_is_left(tmp_path, llama, capsys, edit, message):
    models = {**llama, "gpt2": cached_model("gpt2"), "wide": cached_model("llama", vocab=256)}
    code, err, out = build(tmp_path, models, edit(config()), capsys)
    assert code == 1 and "Traceback" not in err and err.count("error:") == 1, err
    assert message in err, err
    assert not out.exists() and not list(tmp_path.glob(".moe*"))
