"""mergekit-moe's configuration, as mergekit-moe 0.1.5 reads it; unknown keys are refused, naming
the closest real one."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mergesmith.recipe.schema import ModelRef


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Expert(_Strict):
    source_model: ModelRef
    positive_prompts: list[str] | None = None
    negative_prompts: list[str] | None = None
    noise_scale: float | None = None
    residual_scale: float | None = None


class MoEConfig(_Strict):
    base_model: ModelRef
    experts: list[Expert] = Field(min_length=1)
    gate_mode: Literal["hidden", "cheap_embed", "random", "uniform_random"] = "hidden"
    dtype: str | None = None
    experts_per_token: int = Field(2, ge=1)
    shared_experts: list[Expert] | None = None
    architecture: str | None = None
    tokenizer_source: ModelRef | None = None

    @field_validator("architecture")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value
