"""mergekit-evolve's genome configuration, and what a point of the search space means: a genotype
(one number per layer group, model, filter and parameter) turned into a normal recipe.

The mapping follows mergekit-evolve 0.1.5's documented behaviour: weights (and slerp's t) are taken
by absolute value unless `allow_negative_weights`; densities are clamped to [0, 1]; `filters` give
each parameter one value per filter plus one for everything else; `layer_granularity` cuts the
layers into groups of that size, each its own slice (or, with `smooth`, a gradient over the groups);
slerp takes, per group, the two models of highest weight, t from their softmax. `normalize` defaults
to true for linear, ties and dare_ties. The recipe is written in bfloat16, as mergekit-evolve writes it.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

METHOD_PARAMETERS = {
    "linear": ("weight",),
    "task_arithmetic": ("weight",),
    "ties": ("weight", "density"),
    "dare_ties": ("weight", "density"),
    "slerp": ("t",),
}
MEASURES = ("perplexity", "kl", "agreement")  # mergesmith's own fitness measures; other names are lm-eval tasks


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GenomeDefinition(_Strict):
    models: list[str] = Field(min_length=2)
    merge_method: Literal["linear", "task_arithmetic", "ties", "dare_ties", "slerp"]
    base_model: str | None = None
    tokenizer_source: str | None = None
    layer_granularity: int = Field(0, ge=0)
    normalize: bool | None = None
    allow_negative_weights: bool = False
    filters: list[str] | None = None
    smooth: bool = False


class Task(_Strict):
    """A fitness term: mergesmith's `perplexity` (on `text`), `kl` or `agreement` (against
    `reference`, on `text`); any other name is an lm-eval task scored by `metric`. A bare string
    is a task's name, as mergekit-evolve reads it."""

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    name: str
    weight: float = 1.0
    metric: str = "acc,none"
    text: str | None = None  # a text file: what perplexity, kl and agreement are measured on
    reference: str | None = None  # the model kl and agreement compare with
    max_tokens: int = Field(512, ge=2)


class EvolveConfig(_Strict):
    genome: GenomeDefinition
    tasks: list[Task] = Field(min_length=1)
    # mergekit-evolve's lm-eval settings, passed to lm-eval tasks
    limit: int | None = None
    num_fewshot: int | None = None
    shuffle: bool = False
    random_init: bool = False
    apply_chat_template: bool = True
    fewshot_as_multiturn: bool = True


class Genome:
    """The search space of a genome definition over models of `layers` layers."""

    def __init__(self, definition: GenomeDefinition, layers: int) -> None:
        self.definition = definition
        self.layers = layers
        step = definition.layer_granularity
        self.groups = layers // step if step > 0 else 1
        self.step = step if step > 0 else layers
        self.sets = len(definition.filters or []) + 1
        self.parameters = METHOD_PARAMETERS[definition.merge_method]
        self.shape = (self.groups, len(definition.models), self.sets, len(self.parameters))

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def initial(self) -> list[float]:
        """Equal weights (1 / models), densities 1: mergekit-evolve's starting point."""
        models = len(self.definition.models)
        return [1 / models if i % len(self.parameters) == 0 else 1.0 for i in range(self.size)]

    def recipe(self, genotype: list[float]) -> dict[str, Any]:
        """The recipe (as YAML would load it) that a genotype stands for."""
        values = self._values(genotype)
        d = self.definition
        if d.merge_method == "slerp":
            body: dict[str, Any] = {"slices": self._slerp_slices(genotype)}
        elif d.smooth:
            body = {"models": self._smooth_models(values)}
        else:
            body = {"slices": self._slices(values)}
        normalize = d.normalize if d.normalize is not None else d.merge_method in ("ties", "dare_ties", "linear")
        recipe = {"merge_method": d.merge_method, **body, "dtype": "bfloat16"}
        if d.merge_method != "slerp":
            recipe["parameters"] = {"normalize": normalize}
        if d.base_model is not None:
            recipe["base_model"] = d.base_model
        if d.tokenizer_source is not None:
            recipe["tokenizer_source"] = d.tokenizer_source
        return recipe

    def _at(self, genotype: list[float], group: int, model: int, filter_set: int, parameter: int) -> float:
        g, m, s, p = self.shape
        return float(genotype[((group * m + model) * s + filter_set) * p + parameter])

    def _values(self, genotype: list[float]) -> dict[str, list[list[list[float]]]]:
        """Per parameter: [group][model][filter set], each value made valid for its parameter."""
        if len(genotype) != self.size:
            raise ValueError(f"a genotype of this genome has {self.size} values, not {len(genotype)}")
        out: dict[str, list[list[list[float]]]] = {}
        for p, name in enumerate(self.parameters):
            out[name] = [
                [
                    [self._valid(name, self._at(genotype, g, m, s, p)) for s in range(self.sets)]
                    for m in range(self.shape[1])
                ]
                for g in range(self.groups)
            ]
        return out

    def _valid(self, name: str, value: float) -> float:
        if name == "density":
            return min(abs(value), 1.0)
        return value if self.definition.allow_negative_weights else abs(value)

    def _setting(self, per_set: list[Any]) -> Any:
        """One value per filter (then everything else), as a recipe writes them."""
        if self.sets == 1:
            return per_set[0]
        filters = self.definition.filters or []
        return [{"filter": f, "value": v} for f, v in zip(filters, per_set)] + [{"value": per_set[-1]}]

    def _range(self, group: int) -> list[int]:
        return [group * self.step, (group + 1) * self.step]

    def _slices(self, values: dict[str, list[list[list[float]]]]) -> list[dict[str, Any]]:
        d = self.definition
        slices = []
        for g in range(self.groups):
            sources = [
                {
                    "model": model,
                    "layer_range": self._range(g),
                    "parameters": {name: self._setting(values[name][g][m]) for name in self.parameters},
                }
                for m, model in enumerate(d.models)
            ]
            if d.base_model is not None and d.base_model not in d.models:
                sources.append({"model": d.base_model, "layer_range": self._range(g)})
            slices.append({"sources": sources})
        return slices

    def _smooth_models(self, values: dict[str, list[list[list[float]]]]) -> list[dict[str, Any]]:
        d = self.definition
        models = []
        for m, model in enumerate(d.models):
            per_set = {
                name: [[values[name][g][m][s] for g in range(self.groups)] for s in range(self.sets)]
                for name in self.parameters
            }
            parameters = {
                name: self._setting([v[0] if len(v) == 1 else v for v in sets]) for name, sets in per_set.items()
            }
            models.append({"model": model, "parameters": parameters})
        if d.base_model is not None and d.base_model not in d.models:
            models.append({"model": d.base_model})
        return models

    def _slerp_slices(self, genotype: list[float]) -> list[dict[str, Any]]:
        d = self.definition
        slices = []
        for g in range(self.groups):
            weights = [self._at(genotype, g, m, 0, 0) for m in range(len(d.models))]
            first, second = sorted(range(len(weights)), key=lambda m: (-weights[m], m))[:2]
            # softmax of the two weights: the second's share is t
            t = 1.0 / (1.0 + math.exp(weights[first] - weights[second]))
            sources = [{"model": d.models[m], "layer_range": self._range(g)} for m in (first, second)]
            slices.append({"sources": sources, "base_model": d.models[first], "parameters": {"t": t}})
        return slices


def parse_config(text: str, source: str) -> EvolveConfig:
    """A genome configuration from YAML text; unknown keys are errors naming the closest real one."""
    from mergesmith.recipe.strict import parse_strict

    return parse_strict(EvolveConfig, text, source)
