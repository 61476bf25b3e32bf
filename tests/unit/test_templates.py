"""The built-in chat templates render their formats; expected strings written out by hand (chatml
and mistral are also what mergekit 0.1.5's templates render)."""

from __future__ import annotations

import pytest

from mergesmith.errors import RecipeError
from mergesmith.templates import BUILT_IN, chat_template_text

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Name a colour."},
]
EXPECTED = {
    "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
    "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n",
    "mistral": "<s> [INST] Be brief.\n\nHi there [/INST] Hello!</s> [INST] Name a colour. [/INST]",
    "llama3": "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nName a colour.<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "alpaca": "Be brief.\n\n### Instruction:\nHi there\n\n### Response:\nHello!\n\n### Instruction:\nName a colour."
    "\n\n### Response:\n",
    "exaone": "[|system|]Be brief.[|endofturn|]\n[|user|]Hi there\n[|assistant|]Hello![|endofturn|]\n"
    "[|user|]Name a colour.\n[|assistant|]",
}


def render(template: str, messages: list[dict]) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    # transformers renders chat templates with these settings
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["raise_exception"] = raise_exception
    return environment.from_string(template).render(
        messages=messages, add_generation_prompt=True, bos_token="<s>", eos_token="</s>"
    )


@pytest.mark.parametrize("name", BUILT_IN)
def test_built_in_templates_render_their_format(name: str) -> None:
    assert render(chat_template_text(name), CONVERSATION) == EXPECTED[name]


def test_mistral_refuses_roles_out_of_turn() -> None:
    with pytest.raises(ValueError, match="alternate"):
        render(chat_template_text("mistral"), [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_jinja_text_is_kept_and_other_names_are_refused() -> None:
    assert chat_template_text("{{ messages[0]['content'] }}") == "{{ messages[0]['content'] }}"
    with pytest.raises(RecipeError, match="did you mean 'llama3'"):
        chat_template_text("lama3")
