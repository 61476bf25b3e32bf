"""The recipe schema: mergekit 0.1.5's YAML, one pydantic model per level, unknown keys refused.

The classes mirror mergekit's `config.py` one to one (`MergeConfiguration` is our `Recipe`), so the
schema reads as a document. Unlike mergekit, every level forbids unknown keys: a typo such as
`layer_rnage` is an error naming the key path, not a silently ignored line.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, field_validator, model_validator
from pydantic_core import PydanticCustomError

from mergesmith.recipe.settings import Setting, SettingError, parse_setting


def _parse_parameters(raw: Any) -> Any:
    if raw is None or not isinstance(raw, dict):
        return raw  # None passes; anything else fails the dict type check with its own message
    parsed: dict[str, Setting] = {}
    for name, value in raw.items():
        try:
            parsed[str(name)] = parse_setting(value)
        except SettingError as err:
            raise PydanticCustomError(
                "bad_setting", "{message}", {"message": err.message, "subpath": f"{name}{err.subpath}"}
            ) from None
    return parsed


Parameters = Annotated[dict[str, Any] | None, BeforeValidator(_parse_parameters)]


def _reference_text(raw: Any) -> Any:
    """mergekit's long form of a reference, `{model: {path, revision}, lora: {path, revision}}` (each
    part also a plain string), as the short one: `path@revision+lora@revision`."""
    if not isinstance(raw, dict):
        return raw
    unknown = sorted(set(raw) - {"model", "lora"})
    if unknown or "model" not in raw:
        found = f"unknown key {unknown[0]!r}" if unknown else "no model"
        extra = " (override_architecture is not supported: merge models of one architecture)" if unknown else ""
        raise PydanticCustomError(
            "reference",
            "a model reference as a mapping has keys model and lora; found {found}{extra}",
            {"found": found, "extra": extra},
        )
    parts = [_path_text(raw["model"], "model")]
    if raw.get("lora") is not None:
        parts.append(_path_text(raw["lora"], "lora"))
    return "+".join(parts)


def _path_text(raw: Any, key: str) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, dict) and isinstance(raw.get("path"), str) and set(raw) <= {"path", "revision"}:
        revision = raw.get("revision")
        if revision is not None and not isinstance(revision, str):
            raise PydanticCustomError("reference", "{key}.revision must be a string", {"key": key})
        return f"{raw['path']}@{revision}" if revision else raw["path"]
    raise PydanticCustomError(
        "reference",
        "{key}: expected a path or {{path: ..., revision: ...}}, found {found}",
        {"key": key, "found": repr(raw)},
    )


ModelRef = Annotated[
    str, BeforeValidator(_reference_text), "a model reference: hub id, org/name@revision, or a folder path"
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSlice(_Strict):
    """One source of an output slice: `layer_range` (half-open) of `model`."""

    model: ModelRef
    layer_range: tuple[int, int]
    parameters: Parameters = None

    @field_validator("model")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        return _check_reference(value)


class InputModel(_Strict):
    """One whole model of a `models:` merge."""

    model: ModelRef
    parameters: Parameters = None

    @field_validator("model")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        return _check_reference(value)


class OutputSlice(_Strict):
    sources: list[InputSlice]
    base_model: ModelRef | None = None
    residual_weight: float | None = None
    parameters: Parameters = None

    @field_validator("sources")
    @classmethod
    def _has_sources(cls, value: list[InputSlice]) -> list[InputSlice]:
        if not value:
            raise PydanticCustomError("empty", "an output slice needs at least one source")
        return value


class OutputModule(_Strict):
    slices: list[OutputSlice] | None = None
    models: list[InputModel] | None = None
    parameters: Parameters = None

    @model_validator(mode="after")
    def _one_kind_of_input(self) -> OutputModule:
        if bool(self.slices) == bool(self.models):
            raise PydanticCustomError("inputs", "a module needs exactly one of 'slices' or 'models'")
        return self


class ModelTokenEmbedding(_Strict):
    kind: Literal["model_token"]
    model: ModelRef
    token_id: int | None = None
    token: str | None = None

    @model_validator(mode="after")
    def _one_token(self) -> ModelTokenEmbedding:
        if (self.token_id is None) == (self.token is None):
            raise PydanticCustomError("token", "give exactly one of 'token_id' or 'token'")
        return self


class ZeroEmbedding(_Strict):
    kind: Literal["zero"]


class TokenEmbedding(_Strict):
    source: ModelTokenEmbedding | ZeroEmbedding | ModelRef | None = None
    force: bool = False


class TokenizerSettings(_Strict):
    source: ModelRef = "union"  # "union", "base" or a model reference
    tokens: dict[str, TokenEmbedding] | None = None
    pad_to_multiple_of: int | None = None


class Recipe(_Strict):
    """A whole recipe, as mergekit 0.1.5's `MergeConfiguration` reads it."""

    modules: dict[str, OutputModule] | None = None
    slices: list[OutputSlice] | None = None
    models: list[InputModel] | None = None
    merge_method: str
    base_model: ModelRef | None = None
    dtype: str | None = None
    tokenizer_source: ModelRef | None = None  # "union", "base" or a model reference
    tokenizer: TokenizerSettings | None = None
    chat_template: str | None = None
    out_dtype: str | None = None
    parameters: Parameters = None

    @field_validator("tokenizer_source")
    @classmethod
    def _no_old_spelling(cls, value: str | None) -> str | None:
        # Old mergekit versions wrote `model:NAME`; 0.1.5 takes it for a model called "model:NAME".
        if value is not None and value.startswith("model:"):
            name = value.removeprefix("model:").strip()
            raise PydanticCustomError(
                "old_spelling",
                "'{value}' is an old spelling that mergekit 0.1.5 no longer reads; write tokenizer_source: {name}",
                {"value": value, "name": name},
            )
        return value

    @model_validator(mode="after")
    def _one_kind_of_output(self) -> Recipe:
        given = [key for key in ("modules", "slices", "models") if getattr(self, key)]
        if len(given) != 1:
            found = ", ".join(given) if given else "none of them"
            raise PydanticCustomError(
                "outputs",
                "a recipe needs exactly one of 'models', 'slices' or 'modules' (found: {found})",
                {"found": found},
            )
        if self.tokenizer_source is not None and self.tokenizer is not None:
            raise PydanticCustomError("tokenizer", "give either 'tokenizer_source' or a 'tokenizer' block, not both")
        return self

    def referenced_models(self) -> list[str]:
        """Every model the recipe names, in the order it first names them (base model first)."""
        seen: dict[str, None] = {}
        if self.base_model:
            seen[self.base_model] = None
        for slices, models in self._outputs():
            for out_slice in slices or ():
                if out_slice.base_model:
                    seen.setdefault(out_slice.base_model, None)
                for source in out_slice.sources:
                    seen.setdefault(source.model, None)
            for model in models or ():
                seen.setdefault(model.model, None)
        return list(seen)

    def models_to_open(self) -> list[str]:
        """The referenced models, and the model whose tokenizer is taken when it is another one."""
        models = self.referenced_models()
        source = self.tokenizer.source if self.tokenizer is not None else self.tokenizer_source
        if source is not None and source not in ("union", "base", *models):
            models.append(source)
        return models

    def _outputs(self) -> list[tuple[list[OutputSlice] | None, list[InputModel] | None]]:
        if self.modules:
            return [(m.slices, m.models) for m in self.modules.values()]
        return [(self.slices, self.models)]


def _check_reference(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("reference", "a model reference cannot be empty")
    return value
