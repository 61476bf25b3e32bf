"""Output vocabularies and row alignment, against rules written out token by token in the test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mergesmith.checkpoints.tokenizer import Tokenizer
from mergesmith.errors import PlanError
from mergesmith.plan_vocabulary import build_vocabulary, check_entry_models
from mergesmith.recipe.schema import TokenEmbedding
from mergesmith.vocabulary import TokenRow, Vocabulary, align_rows


def tokenizer(model: str, tokens: list[str], *, added: tuple[str, ...] = (), rows: int | None = None) -> Tokenizer:
    vocab = {t: i for i, t in enumerate([*tokens, *added])}
    entries = {
        vocab[t]: {"id": vocab[t], "content": t, "special": True, "normalized": False, "lstrip": False} for t in added
    }
    return Tokenizer(model, Path("/nonexistent"), vocab, entries, rows if rows is not None else len(vocab))


BASE = ["<s>", "a", "b", "c", "ab"]


def tokenizers() -> dict[str, Tokenizer]:
    return {
        "base": tokenizer("base", BASE),
        "chat": tokenizer("chat", BASE, added=("<im>", "</im>")),
        "other": tokenizer("other", ["<s>", "b", "a", "bc", "c"], added=("<im>",)),
    }


def test_union_keeps_base_ids_then_adds_other_models_tokens_in_model_and_id_order() -> None:
    vocabulary = build_vocabulary("union", tokenizers(), "base")
    assert vocabulary.tokens == ("<s>", "a", "b", "c", "ab", "bc", "<im>", "</im>")
    assert vocabulary.size == 8
    assert vocabulary.rows["base"] == (0, 1, 2, 3, 4, -1, -1, -1)
    assert vocabulary.rows["chat"] == (0, 1, 2, 3, 4, -1, 5, 6)
    assert vocabulary.rows["other"] == (0, 2, 1, 4, -1, 3, 5, -1)
    # "bc" was a plain token of "other": it becomes a plain added token; "<im>" keeps its flags
    assert [(e["content"], e["id"], e["special"]) for e in vocabulary.appended] == [
        ("bc", 5, False),
        ("<im>", 6, True),
        ("</im>", 7, True),
    ]
    assert vocabulary.source == "base" and vocabulary.dropped == ()


def test_base_drops_ids_beyond_the_embedding_rows_and_pads() -> None:
    toks = tokenizers()
    toks["base"] = tokenizer("base", [*BASE, "unused"], rows=5)
    vocabulary = build_vocabulary("base", toks, "base", pad_to_multiple_of=4)
    assert vocabulary.tokens == tuple(BASE) and vocabulary.size == 8 and vocabulary.dropped == (5,)


def test_a_named_models_tokenizer_is_taken_whole() -> None:
    vocabulary = build_vocabulary("chat", tokenizers(), "base")
    assert vocabulary.tokens == (*BASE, "<im>", "</im>") and vocabulary.source == "chat"
    assert vocabulary.rows["other"][5:] == (5, -1)


def test_token_settings_add_tokens_and_resolve_their_rows() -> None:
    settings = {
        "new": TokenEmbedding.model_validate({"source": {"kind": "model_token", "model": "other", "token": "bc"}}),
        "a": TokenEmbedding.model_validate({"source": "chat", "force": True}),
        "</im>": TokenEmbedding.model_validate({"source": {"kind": "zero"}}),
        "c": TokenEmbedding.model_validate({"source": {"kind": "model_token", "model": "base", "token_id": 2}}),
    }
    vocabulary = build_vocabulary("union", tokenizers(), "base", settings)
    ids = vocabulary.ids()
    assert vocabulary.tokens[-1] == "new"
    assert vocabulary.configured == {
        ids["new"]: TokenRow("other", 3, force=False),  # "bc" is id 3 of "other"
        ids["a"]: TokenRow("chat", 1, force=True),  # a model reference: that model's own row of "a"
        ids["</im>"]: TokenRow(None, 0, force=False),  # zero
        ids["c"]: TokenRow("base", 2, force=False),
    }


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"zz": {"source": "chat"}}, "tokenizer.tokens['zz'].source: model 'chat' has no token 'zz' to take its row"),
        (
            {"a": {"source": {"kind": "model_token", "model": "base", "token": "zz"}}},
            "tokenizer.tokens['a'].source: model 'base' has no token 'zz'",
        ),
        (
            {"a": {"source": {"kind": "model_token", "model": "base", "token_id": 9}}},
            "tokenizer.tokens['a'].source: token id 9 is outside model 'base''s 5 rows",
        ),
        ({"a": {"force": True}}, "tokenizer.tokens['a'].source: force: true needs a source to take the row from"),
        ({"a": {"source": "nobody"}}, "tokenizer.tokens['a'].source: 'nobody' is not one of the recipe's models"),
    ],
)
def test_token_setting_errors(settings: dict, message: str) -> None:
    parsed = {token: TokenEmbedding.model_validate(value) for token, value in settings.items()}
    with pytest.raises(PlanError) as err:
        build_vocabulary("union", tokenizers(), "base", parsed)
    assert str(err.value).startswith(message)


def test_a_source_that_is_not_a_model_of_the_recipe() -> None:
    with pytest.raises(PlanError, match=r"tokenizer_source: 'elsewhere' is not one of the recipe's models"):
        build_vocabulary("elsewhere", tokenizers(), "base")


def test_configured_rows_must_come_from_a_model_of_the_tensor() -> None:
    settings = {"a": TokenEmbedding.model_validate({"source": "chat", "force": True})}
    vocabulary = build_vocabulary("union", tokenizers(), "base", settings)
    with pytest.raises(PlanError, match=r"takes its row from 'chat', but lm_head.weight is merged from base, other"):
        check_entry_models(vocabulary, "lm_head.weight", ["base", "other"])


def expected_rows(tensors, models, vocabulary: Vocabulary, base):
    """mergekit's rules, one token and one model at a time, in plain torch."""
    configured = vocabulary.configured
    out = []
    defaults = {}
    for token_id in range(len(vocabulary.tokens)):
        have = [m for m in models if vocabulary.rows[m][token_id] >= 0]
        setting = configured.get(token_id)
        if setting is not None and setting.row >= 0:
            if setting.model is None:
                defaults[token_id] = torch.zeros_like(tensors[0][0])
            else:
                defaults[token_id] = tensors[models.index(setting.model)][setting.row]
        elif len(have) == len(models):
            continue
        elif len(have) == 1:
            defaults[token_id] = tensors[models.index(have[0])][vocabulary.rows[have[0]][token_id]]
        elif not have:
            defaults[token_id] = torch.zeros_like(tensors[0][0])
        elif base in models and base in have:
            defaults[token_id] = tensors[models.index(base)][vocabulary.rows[base][token_id]]
        else:
            total = torch.zeros_like(tensors[0][0])
            for m in have:
                total = total + tensors[models.index(m)][vocabulary.rows[m][token_id]]
            total /= len(have)
            defaults[token_id] = total
    for m, tensor in zip(models, tensors):
        rows = []
        for token_id in range(len(vocabulary.tokens)):
            own = vocabulary.rows[m][token_id]
            setting = configured.get(token_id)
            forced = setting is not None and setting.force
            rows.append(tensor[own] if own >= 0 and not forced else defaults[token_id])
        real = torch.stack(rows)
        pad = real.mean(dim=0, keepdim=True).expand(vocabulary.size - len(rows), -1)
        out.append(torch.cat([real, pad]))
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("base", ["base", None])
def test_align_rows_follows_the_rules_token_by_token(dtype: torch.dtype, base: str | None) -> None:
    toks = tokenizers()
    toks["third"] = tokenizer("third", ["<s>", "a", "bc", "b"], added=("</im>",))
    settings = {
        "a": TokenEmbedding.model_validate({"source": "chat", "force": True}),
        "new": TokenEmbedding.model_validate({"source": {"kind": "model_token", "model": "other", "token": "bc"}}),
        "c": TokenEmbedding.model_validate({"source": {"kind": "zero"}}),
    }
    vocabulary = build_vocabulary("union", toks, "base", settings, pad_to_multiple_of=8)
    models = ["base", "chat", "other", "third"] if base else ["chat", "other", "third"]
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn((toks[m].rows, 6), generator=generator).to(dtype) for m in models]
    actual = align_rows(tensors, models, vocabulary, base)
    expected = expected_rows(tensors, models, vocabulary, base)
    assert vocabulary.size == 16
    for m, a, e in zip(models, actual, expected):
        assert a.shape == (16, 6) and a.dtype == dtype
        assert torch.equal(a, e), m
