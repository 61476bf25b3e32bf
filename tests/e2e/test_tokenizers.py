"""Merged vocabularies end to end: token ids in the metadata follow their tokens, chat templates,
and the errors of tokenizer settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from factory import build_model, resize_vocabulary, write_tokenizer
from mergesmith.api import merge, plan
from mergesmith.errors import CheckpointError, PlanError, RecipeError

CHAT = ("<|im_start|>", "<|im_end|>")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tok-models")
    base = write_tokenizer(build_model(folder / "base", layers=2, vocab=64, seed=1))
    chat = write_tokenizer(resize_vocabulary(base, folder / "chat", 66, seed=2), added=CHAT, eos=("</s>", "<|im_end|>"))
    # the same two tokens, in the other order: ids 64 and 65 swap
    reverse = write_tokenizer(resize_vocabulary(base, folder / "reverse", 66, seed=3), added=CHAT[::-1])
    bare = build_model(folder / "bare", layers=2, vocab=64, seed=4)  # no tokenizer files at all
    return {"base": base, "chat": chat, "reverse": reverse, "bare": bare}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_eos_ids_follow_their_tokens_into_another_tokenizer(models, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    recipe = write(
        tmp_path,
        "models: [{model: chat}, {model: reverse}]\nbase_model: chat\nmerge_method: slerp\n"
        "parameters: {t: 0.5}\ntokenizer_source: reverse\n",
    )
    out = merge(recipe, tmp_path / "out", model_paths=models).out
    settings = json.loads((out / "generation_config.json").read_text())
    assert settings["eos_token_id"] == [2, 64]  # </s>, and <|im_end|>, which is id 64 in `reverse`
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.convert_ids_to_tokens(settings["eos_token_id"]) == ["</s>", "<|im_end|>"]


def test_rows_follow_their_tokens(models, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    recipe = write(tmp_path, "models: [{model: chat}]\nmerge_method: passthrough\ntokenizer_source: reverse\n")
    out = merge(recipe, tmp_path / "out", model_paths=models).out
    merged = load_file(out / "model.safetensors")
    chat = load_file(models["chat"] / "model.safetensors")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert merged[name].shape == (66, 32)
        assert (merged[name][:64] == chat[name][:64]).all()
        assert (merged[name][64] == chat[name][65]).all() and (merged[name][65] == chat[name][64]).all()


def test_built_in_chat_template_is_written_where_transformers_reads_it(models, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    recipe = write(tmp_path, "models: [{model: chat}]\nmerge_method: passthrough\nchat_template: llama3\n")
    out = merge(recipe, tmp_path / "out", model_paths=models).out
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert (
        text
        == "<s><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert "chat_template" not in json.loads((out / "tokenizer_config.json").read_text())


@pytest.mark.parametrize(
    ("recipe", "error", "message"),
    [
        (
            "models: [{model: base}, {model: chat}]\nmerge_method: linear\nparameters: {weight: 1}\n",
            PlanError,
            "models: the models have vocabularies of different sizes (model.embed_tokens.weight rows: base: 64, "
            "chat: 66)\n  hint: set tokenizer_source: union",
        ),
        (
            "models: [{model: base}, {model: bare}]\nmerge_method: linear\nparameters: {weight: 1}\n"
            "tokenizer_source: union\n",
            CheckpointError,
            "model 'bare': no tokenizer.json in",
        ),
        (
            "models: [{model: base}, {model: chat}]\nmerge_method: linear\nparameters: {weight: 1}\n"
            "tokenizer_source: elsewhere\n",  # a model outside the recipe is opened for its tokenizer
            CheckpointError,
            "model 'elsewhere': not in the local hub cache",
        ),
        (
            "models: [{model: base}, {model: chat}]\nmerge_method: linear\nparameters: {weight: 1}\n"
            "tokenizer: {source: union, pad_to_multiple_of: 0}\n",
            RecipeError,
            "tokenizer.pad_to_multiple_of: 0 is not a positive number",
        ),
        (
            "models: [{model: chat}]\nmerge_method: passthrough\nchat_template: chatm\n",
            RecipeError,
            "chat_template: 'chatm' is neither a built-in template nor a Jinja template\n  hint: did you mean 'chatml'?",
        ),
    ],
)
def test_tokenizer_errors(models, tmp_path: Path, recipe: str, error: type, message: str) -> None:
    with pytest.raises(error) as err:
        plan(write(tmp_path, recipe), model_paths=models)
    assert str(err.value).startswith(message)


def test_a_literal_jinja_template_is_used_as_written(models, tmp_path: Path) -> None:
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    recipe = write(
        tmp_path, f"models: [{{model: chat}}]\nmerge_method: passthrough\nchat_template: {json.dumps(template)}\n"
    )
    out = merge(recipe, tmp_path / "out", model_paths=models).out
    assert (out / "chat_template.jinja").read_text() == template


def test_the_example_recipe_plans(models, tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "chat-union-ties.yaml"
    paths = {"org/base": models["base"], "org/chat-finetune": models["chat"], "org/domain-finetune": models["reverse"]}
    planned = plan(example, model_paths=paths)
    assert planned.vocabulary is not None and planned.vocabulary.size == 128  # 66 tokens, padded to 64s
    assert planned.config["vocab_size"] == 128 and planned.chat_template is not None
