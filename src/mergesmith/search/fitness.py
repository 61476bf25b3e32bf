"""Scoring a candidate recipe: planned against opened checkpoints, merged in memory, loaded into a
transformers model and measured on text. Higher is better: a perplexity task scores the negative
mean log-likelihood loss (-log perplexity), kl the negative mean KL(reference || candidate), agreement
the share of tokens whose top-1 prediction matches the reference's; the fitness is their weighted sum.
lm-eval tasks run through lm-eval's Python API where it is installed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergesmith.checkpoints.checkpoint import Checkpoint, open_checkpoints
from mergesmith.errors import MergesmithError, RecipeError, UnsupportedError
from mergesmith.execute.memory import merge_to_memory
from mergesmith.plan import Plan
from mergesmith.recipe.load import LoadedRecipe
from mergesmith.search.genome import MEASURES, EvolveConfig, Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Score:
    fitness: float
    terms: dict[str, float]  # per task: its score before weighting
    node: str = "local"  # where it was scored: a Ray node id, or this process


def check_tasks(config: EvolveConfig, source: str) -> None:
    """Every task has what it needs, before any evaluation: text files that exist, a reference for
    kl and agreement, lm-eval for other task names."""
    for i, task in enumerate(config.tasks):
        where = f"{source}: tasks[{i}] ({task.name})"
        if task.name in MEASURES:
            if task.text is None or not Path(task.text).is_file():
                found = "no text" if task.text is None else f"text {task.text!r} is not a file"
                raise RecipeError(f"{where}: {found}", hint="give text: a text file to measure on")
            if task.name != "perplexity" and task.reference is None:
                raise RecipeError(f"{where}: no reference", hint=f"{task.name} compares with a model: reference: MODEL")
        else:
            try:
                import lm_eval  # noqa: F401
            except ImportError:
                raise UnsupportedError(
                    f"{where}: an lm-eval task, and lm-eval is not installed",
                    hint=f"pip install lm-eval (and its data for {task.name}), or use mergesmith's measures: "
                    + ", ".join(MEASURES),
                ) from None


class Scorer:
    """What one worker needs to score candidates: the inputs opened once, the texts tokenized once,
    the references' log-probabilities computed once, one model object reused for every candidate."""

    def __init__(
        self,
        config: EvolveConfig,
        plan: Any,
        model_paths: Mapping[str, Path] | None = None,
        threads: int = 1,
    ) -> None:
        import torch
        import transformers

        self._threads = torch.get_num_threads()  # restored by close(): a scorer in this process borrows it
        torch.set_num_threads(threads)  # sums split across threads round differently: a fixed split
        self.config, self._plan = config, plan  # plan(loaded, checkpoints) -> Plan
        genome = config.genome
        models = list(dict.fromkeys([*genome.models, *([genome.base_model] if genome.base_model else [])]))
        self.checkpoints: dict[str, Checkpoint] = open_checkpoints(models, model_paths)
        tokenizer_model = self.checkpoints[genome.base_model or genome.models[0]].folder
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_model)
        self.inputs, self.references = {}, {}
        for task in config.tasks:
            if task.name not in MEASURES:
                continue
            text = Path(task.text).read_text()  # type: ignore[arg-type]
            ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[:, : task.max_tokens]
            self.inputs[task.name, task.text, task.max_tokens] = ids
        for task in config.tasks:
            if task.reference is not None:
                key = (task.reference, task.text, task.max_tokens)
                if key not in self.references:
                    self.references[key] = self._reference_logprobs(task, model_paths)
        self._model: Any = None

    def close(self) -> None:
        import torch

        torch.set_num_threads(self._threads)

    def score(self, loaded: LoadedRecipe) -> Score:
        import torch

        plan: Plan = self._plan(loaded, self.checkpoints)
        state = merge_to_memory(plan, self.checkpoints)
        model = self._load(plan, state)
        terms: dict[str, float] = {}
        fitness = 0.0
        with torch.no_grad():
            for i, task in enumerate(self.config.tasks):
                value = self._measure(model, task)
                terms[f"{i}:{task.name}"] = value
                fitness += task.weight * value
        return Score(fitness, terms)

    def _measure(self, model: Any, task: Task) -> float:
        import torch

        if task.name not in MEASURES:
            return _lm_eval_score(model, self.tokenizer, task, self.config)
        ids = self.inputs[task.name, task.text, task.max_tokens]
        logits = model(ids).logits[0, :-1].float()  # (T-1, V): each position predicts the next token
        logp = torch.log_softmax(logits, dim=-1)
        if task.name == "perplexity":
            return float(logp.gather(-1, ids[0, 1:, None]).mean())  # -log perplexity
        reference = self.references[task.reference, task.text, task.max_tokens]
        if task.name == "kl":
            return -float((reference.exp() * (reference - logp)).sum(-1).clamp(min=0).mean())
        return float((reference.argmax(-1) == logp.argmax(-1)).float().mean())

    def _load(self, plan: Plan, state: dict[str, Any]) -> Any:
        import transformers

        if self._model is None:
            config = dict(plan.config)
            hf_config = transformers.AutoConfig.for_model(config.pop("model_type"), **config)
            self._model = transformers.AutoModelForCausalLM.from_config(hf_config).float().eval()
        missing, unexpected = self._model.load_state_dict(state, strict=False)
        tied = {k for k in missing if self._model.config.tie_word_embeddings and k.startswith("lm_head.")}
        if set(missing) - tied or unexpected:
            raise MergesmithError(
                f"the candidate's tensors do not fit {type(self._model).__name__}: "
                f"missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]}"
            )
        if tied:
            self._model.tie_weights()
        return self._model

    def _reference_logprobs(self, task: Task, model_paths: Mapping[str, Path] | None) -> Any:
        import torch
        import transformers

        reference = open_checkpoints([task.reference], model_paths)[task.reference]  # type: ignore[list-item]
        model = transformers.AutoModelForCausalLM.from_pretrained(reference.folder, dtype=torch.float32).eval()
        with torch.no_grad():
            logits = model(self.inputs[task.name, task.text, task.max_tokens]).logits[0, :-1].float()
        return torch.log_softmax(logits, dim=-1)


def _lm_eval_score(model: Any, tokenizer: Any, task: Task, config: EvolveConfig) -> float:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    results = simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer),
        tasks=[task.name],
        limit=config.limit,
        num_fewshot=config.num_fewshot,
        apply_chat_template=config.apply_chat_template,
        fewshot_as_multiturn=config.fewshot_as_multiturn,
    )
    return float(results["results"][task.name][task.metric])
