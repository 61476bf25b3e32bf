"""checkpoints/ties.py: the tensors a tie replaces, read from transformers' source without importing it."""

from __future__ import annotations

import importlib.util

import pytest

from mergesmith.checkpoints import ties
from mergesmith.checkpoints.names import TIED_OUTPUT_NAMES
from mergesmith.checkpoints.ties import tied_targets, writes_tied_target

# (class, model_type): each declares its tie in a different place or shape
DECLARING_CLASSES = [
    ("LlamaForCausalLM", "llama"),  # lm_head.weight
    ("RobertaForMaskedLM", "roberta"),  # lm_head.decoder.weight and .bias
    ("BertForMaskedLM", "bert"),  # cls.predictions.decoder.*
    ("LlavaForConditionalGeneration", "llava"),  # lm_head.weight beside model.language_model
    ("GPTNeoXForCausalLM", "gpt_neox"),  # tied to gpt_neox.embed_in, not embed_tokens
    ("T5ForConditionalGeneration", "t5"),  # three targets of one shared embedding
]


@pytest.mark.parametrize(("name", "model_type"), DECLARING_CLASSES)
def test_declared_targets_are_the_class_attribute(name, model_type):
    import transformers  # the oracle: the class itself, imported

    declared = getattr(transformers, name)._tied_weights_keys
    config = {"architectures": [name], "model_type": model_type}
    assert ties._declared_targets(config) == frozenset(declared)
    outputs = {key for key in declared if not key.endswith("embed_tokens.weight")}  # T5 ties its inputs too
    assert tied_targets(config) == frozenset(outputs) | frozenset(TIED_OUTPUT_NAMES)


def test_input_embeddings_a_class_ties_do_not_decide_the_flag():
    config = {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5"}
    written = ["shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]
    assert writes_tied_target(config, written) is None
    assert writes_tied_target(config, [*written, "lm_head.weight"]) == "lm_head.weight"


def test_without_transformers_the_name_table_decides(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    config = {"architectures": ["RobertaForMaskedLM"], "model_type": "roberta"}
    assert tied_targets(config) == frozenset(TIED_OUTPUT_NAMES)
    assert writes_tied_target(config, ["lm_head.dense.weight", "lm_head.bias", "lm_head.layer_norm.weight"]) is None
    assert writes_tied_target(config, ["lm_head.decoder.weight", "lm_head.bias"]) == "lm_head.decoder.weight"


@pytest.mark.parametrize(
    "config",
    [
        {},  # no architectures
        {"architectures": ["NoSuchModel"], "model_type": "llama"},  # not in that file
        {"architectures": ["LlamaForCausalLM"], "model_type": "../llama"},  # not a model type
        {"architectures": ["LlamaForCausalLM"], "model_type": "no_such_type"},
    ],
)
def test_unknown_architectures_fall_back_to_the_table(config):
    assert tied_targets(config) == frozenset(TIED_OUTPUT_NAMES)


def test_name_table_has_no_duplicates():
    assert len(set(TIED_OUTPUT_NAMES)) == len(TIED_OUTPUT_NAMES)
