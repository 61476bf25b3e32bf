"""Recipe + checkpoint headers -> Plan: every output tensor with its sources and resolved parameters.

Planning reads configs and safetensors headers only, never tensor data, and checks everything a
merge could trip on later: the method's input contract, parameter names and types, layer ranges,
shapes. A Plan is plain frozen data: print it, diff it, test it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from mergesmith import metadata
from mergesmith.checkpoints import Checkpoint, Module, Stack, Structure
from mergesmith.checkpoints.adapter import LoraDelta
from mergesmith.checkpoints.fp8 import FP8, BlockScales, input_scales, scale_shape
from mergesmith.checkpoints.layer_config import layer_kinds, lists_layers
from mergesmith.checkpoints.names import (
    FIRST_LAYER_SHARED_MARKERS,
    MAIN_MODULE_ALIASES,
    PER_LAYER_BLOCK_MARKERS,
    is_vocabulary_tensor,
)
from mergesmith.checkpoints.safetensors_file import TensorInfo
from mergesmith.checkpoints.structure import TEXT_DECODER, Part, UnknownModuleError, config_part, recipe_parts
from mergesmith.checkpoints.ties import writes_tied_target
from mergesmith.checkpoints.tokenizer import Tokenizer, read_tokenizer
from mergesmith.dtypes import FLOATING, dtype_code_from_recipe, promote, tensor_nbytes
from mergesmith.errors import PlanError, RecipeError
from mergesmith.methods import get_method
from mergesmith.methods.spec import UNSET, MethodSpec
from mergesmith.plan_checks import Ignored, check_parameter_names, check_slice_keys
from mergesmith.plan_fp8 import Fp8Output, Fp8Rules
from mergesmith.plan_parameters import Level, resolve_parameter
from mergesmith.plan_vocabulary import build_vocabulary, check_entry_models
from mergesmith.recipe import LoadedRecipe
from mergesmith.recipe.schema import InputModel, InputSlice, OutputSlice, Recipe
from mergesmith.vocabulary import Vocabulary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    model: str  # model reference as the recipe wrote it
    tensor: str  # tensor name inside that checkpoint
    fp8: BlockScales | None = None  # a block-scaled FP8 weight: its scales, read with it to dequantize it
    lora: LoraDelta | None = None  # a model+adapter's weight: the adapter's A and B, applied as it is read

    @property
    def tensor_names(self) -> tuple[str, ...]:
        """The tensors this source reads: its own, an FP8 weight's scales, an adapter's A and B."""
        scales = (self.fp8.tensor,) if self.fp8 is not None else ()
        return (self.tensor, *scales, *(self.lora.tensor_names if self.lora is not None else ()))


class Route(StrEnum):
    """How the executor produces an entry's bytes, decided once, here, from the method's spec."""

    COPY = "copy"  # the input's bytes unchanged (integer buffers: every input must hold the same)
    SCALE = "scale"  # the input's bytes through the method's raw-byte kernel (numpy, no torch)
    STREAM = "stream"  # an elementwise method on pieces of the inputs, in torch
    WHOLE = "whole"  # whole tensors through the method, on the CPU
    VOCABULARY = "vocabulary"  # whole tensors, each input's rows first aligned to the merged vocabulary
    DEVICE = "device"  # whole tensors through the method on the GPU (--device cuda)


class Params(Mapping[str, Any]):
    """An entry's resolved parameters, in the spec's order: read-only, hashable and picklable.
    Per-model parameters hold a tuple aligned with the entry's inputs; a parameter without value
    or default holds UNSET."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, Any]] = ()) -> None:
        self._items: tuple[tuple[str, Any], ...] = tuple(items)

    def __getitem__(self, name: str) -> Any:
        for key, value in self._items:
            if key == name:
                return value
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Params) and self._items == other._items

    def __repr__(self) -> str:
        return "Params(" + ", ".join(f"{key}={value!r}" for key, value in self._items) + ")"

    def __getstate__(self) -> tuple[tuple[str, Any], ...]:
        return self._items

    def __setstate__(self, items: tuple[tuple[str, Any], ...]) -> None:
        self._items = items


@dataclass(frozen=True)
class PlanEntry:
    output: str  # tensor name in the merged model
    method: str  # registry key
    sources: tuple[Source, ...]  # the base first when the method uses one (see has_base)
    has_base: bool
    params: Params
    shape: tuple[int, ...]
    written_dtype: str  # safetensors code ("BF16") of the output tensor
    compute_dtype: str | None  # inputs are cast to this before the method; None: not floating
    stored_dtype: str  # the first source's dtype in its checkpoint
    route: Route
    fp8: Fp8Output | None = None  # set on an FP8 output weight's entry and on its scales' entry

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.shape, self.written_dtype)


@dataclass(frozen=True)
class ModuleSummary:
    """One module of the output: what part of the recipe builds it and how many layers it has."""

    name: str  # "text_decoder", "vision_tower", "multi_modal_projector", "encoder", "decoder"
    built_from: str  # "slices", "models", "modules.vision_tower.slices", "slices[0]'s models (whole)"
    layers: int


@dataclass(frozen=True)
class Plan:
    entries: tuple[PlanEntry, ...]
    config: Mapping[str, Any]  # the output config.json
    method: str
    models: tuple[str, ...]  # every model reference, donor first when it is the base
    hub_ids: tuple[str, ...]  # those of `models` that are hub ids (named in the card's front matter)
    donor: str  # config, generation settings and chat template come from here
    base_model: str | None
    copied_files: tuple[tuple[str, str], ...]  # (model reference, file name) copied into the output
    recipe_text: str
    vocabulary: Vocabulary | None = None  # set when the recipe merges vocabularies (tokenizer settings)
    chat_template: str | None = None  # written as chat_template.jinja when the recipe chooses one
    generation_config: Mapping[str, Any] | None = None  # written instead of copied: token ids remapped
    warnings: tuple[str, ...] = ()  # recipe keys that mergekit ignores and so does this merge
    method_line: str | None = None  # the card's account of how it was built, when not a merge method's
    modules: tuple[ModuleSummary, ...] = ()  # the main module (plain `slices:` build it) first


def routed_to_cpu(plan: Plan) -> Plan:
    """The plan with entries routed to a GPU computed whole on the CPU instead."""
    entries = tuple(dataclasses.replace(e, route=Route.WHOLE) if e.route is Route.DEVICE else e for e in plan.entries)
    return dataclasses.replace(plan, entries=entries)


@dataclass(frozen=True)
class _SliceSpec:
    """An output slice after `models:` / `modules:` are normalised to slices."""

    path: str  # "slices[3]"
    sources: tuple[tuple[str, InputSlice], ...]  # (key path, source)
    levels: tuple[Level, ...]  # slice, module and top-level parameters, highest first
    base: str | None  # the slice's base_model, else the recipe's
    module: str = TEXT_DECODER  # the module (checkpoints.structure) whose layers layer_range counts


@dataclass(frozen=True)
class _ModuleSpec:
    """An output module and the slices that build it."""

    name: str  # the module of the structure it builds (all of it, or the part below)
    slices: tuple[_SliceSpec, ...]
    addressed_by: str  # what the plan prints: "slices", "modules.vision_tower.models", ...
    layers: bool = True  # builds the module's layers (where it has some)
    loose: tuple[str, ...] | None = None  # which of its tensors outside the layers; None: all


def plan_merge(
    loaded: LoadedRecipe,
    checkpoints: Mapping[str, Checkpoint],
    *,
    allow_crimes: bool = False,
    strict: bool = False,
    unsafe_truncate_embeddings: bool = False,
    device: str = "cpu",
) -> Plan:
    """Plan a merge from a loaded recipe and its opened checkpoints (reference -> Checkpoint).
    `allow_crimes` (mergekit's name) lets models of different architectures be merged. Keys that
    mergekit ignores are logged as warnings and listed in `Plan.warnings`; `strict` refuses them.
    `unsafe_truncate_embeddings` (mergekit's flag) cuts vocabularies of different sizes, when no
    tokenizer setting matches rows by token, to the first rows they all have. `device` ("cpu",
    "cuda", "cuda:N") decides whether whole-tensor methods are routed to a GPU."""
    recipe = loaded.recipe
    spec, _ = get_method(recipe.merge_method)
    ignored = Ignored(strict)
    for key in loaded.ignored_keys:
        ignored.add(f"{key}: unknown top-level key, ignored (as mergekit ignores it)", "remove the key")
    check_slice_keys(recipe, spec, ignored)
    if not allow_crimes:
        _check_architectures(recipe.referenced_models(), checkpoints)
    load_dtype = dtype_code_from_recipe(recipe.dtype, key="dtype") if recipe.dtype else None
    out_dtype = dtype_code_from_recipe(recipe.out_dtype, key="out_dtype") if recipe.out_dtype else None
    modules = _normalise(recipe, checkpoints)
    for module in modules:
        for out_slice in module.slices:
            _check_slice(out_slice, spec, checkpoints, ignored)

    tokenizers, vocabulary = _vocabulary(recipe, checkpoints)
    donor = recipe.base_model or recipe.referenced_models()[0]
    builder = _EntryBuilder(spec, checkpoints, load_dtype, out_dtype, vocabulary, tokenizers, checkpoints[donor])
    builder.truncate_vocabulary = unsafe_truncate_embeddings
    builder.device = device
    origins = [_plan_module(module, builder, checkpoints) for module in modules]
    layer_sources = {
        m.name: _donor_layers(m, found, checkpoints, donor) for m, found in zip(modules, origins) if m.layers
    }
    entries = tuple(builder.entries)
    # one entry per output tensor: two would be written into one file, leaving a hole safetensors refuses
    assert len({e.output for e in entries}) == len(entries), "a tensor is planned twice"
    tied_written = writes_tied_target(checkpoints[donor].config, (e.output for e in entries)) is not None
    config = metadata.output_config(
        checkpoints[donor], tied_written, layer_sources, builder.fp8.config_dtype(out_dtype), quantized=out_dtype == FP8
    )
    if builder.truncated_rows is not None and "vocab_size" in config:
        config = {**config, "vocab_size": builder.truncated_rows}  # as the cut tensors have it
    generation = None
    if vocabulary is not None:
        remap = metadata.token_id_remapper(tokenizers[donor], vocabulary)
        metadata.set_vocabulary_size(config, vocabulary, remap)
        generation = metadata.generation_config(checkpoints[donor], remap)
    models = tuple(recipe.referenced_models())
    return Plan(
        entries=entries,
        config=config,
        method=spec.name,
        models=models,
        hub_ids=tuple(m for m in models if checkpoints[m].ref.is_hub_id),
        donor=donor,
        base_model=recipe.base_model,
        copied_files=metadata.copied_files(donor, vocabulary, checkpoints),
        recipe_text=loaded.text,
        vocabulary=vocabulary,
        chat_template=metadata.chat_template(recipe.chat_template, models, checkpoints),
        generation_config=generation,
        warnings=tuple(ignored.messages),
        modules=tuple(ModuleSummary(m.name, m.addressed_by, len(layer_sources[m.name])) for m in modules if m.layers),
    )


def _vocabulary(
    recipe: Recipe, checkpoints: Mapping[str, Checkpoint]
) -> tuple[dict[str, Tokenizer], Vocabulary | None]:
    source, key = recipe.tokenizer_source, "tokenizer_source"
    settings, pad = None, None
    if recipe.tokenizer is not None:
        source, key = recipe.tokenizer.source, "tokenizer.source"
        settings, pad = recipe.tokenizer.tokens, recipe.tokenizer.pad_to_multiple_of
    if source is None:
        return {}, None
    if pad is not None and pad < 1:
        raise RecipeError(f"tokenizer.pad_to_multiple_of: {pad} is not a positive number")
    models = recipe.referenced_models()
    tokenizers = {m: read_tokenizer(checkpoints[m]) for m in [*models, source] if m in checkpoints}
    base = recipe.base_model or models[0]
    return tokenizers, build_vocabulary(source, tokenizers, base, settings, pad, key=key)


class _EntryBuilder:
    def __init__(
        self,
        spec: MethodSpec,
        checkpoints: Mapping[str, Checkpoint],
        load: str | None,
        out: str | None,
        vocabulary: Vocabulary | None,
        tokenizers: Mapping[str, Tokenizer],
        donor: Checkpoint,
    ):
        self.fp8 = Fp8Rules(load, out, donor)
        out = None if out == FP8 else out  # tensors written unquantized: as without out_dtype
        self.spec, self.checkpoints, self.load, self.out = spec, checkpoints, load, out
        self.vocabulary, self.tokenizers = vocabulary, tokenizers
        self.entries: list[PlanEntry] = []
        self.truncate_vocabulary = False  # --unsafe-truncate-embeddings
        self.truncated_rows: int | None = None  # the rows kept, once a vocabulary tensor was cut
        self.device = "cpu"

    def add(self, output: str, out_slice: _SliceSpec, inputs: list[tuple[InputSlice, str]], *, t: float) -> None:
        if self.fp8.is_scales(self.checkpoints[inputs[0][0].model], inputs[0][1]):
            return  # read with its weight; written with it when the output is FP8 too
        has_base = self.spec.inputs.uses_base and any(src.model == out_slice.base for src, _ in inputs)
        if has_base:  # the base goes first; the others keep the recipe's order
            inputs = sorted(inputs, key=lambda item: item[0].model != out_slice.base)
        infos = [self._info(out_slice, output, src.model, name) for src, name in inputs]
        shape = infos[0].shape
        is_vocabulary = is_vocabulary_tensor(output) and len(shape) >= 1
        aligned = is_vocabulary and self.vocabulary is not None  # rows matched by token
        truncated = False
        if aligned:
            shape = self._vocabulary_shape(out_slice, output, [src.model for src, _ in inputs], infos)
        elif is_vocabulary and len({info.shape[0] for info in infos}) > 1:
            found = ", ".join(f"{src.model}: {info.shape[0]}" for (src, _), info in zip(inputs, infos))
            if not self.truncate_vocabulary:
                raise PlanError(
                    f"{out_slice.path}: the models have vocabularies of different sizes ({output} rows: {found})",
                    hint="set tokenizer_source: union (every model's tokens), base, or one model's name, "
                    "so that rows are matched by token (--unsafe-truncate-embeddings cuts them to the smallest)",
                )
            shape, truncated = self._truncated_shape(output, infos, found), True
        shapes = {info.shape[1:] if truncated else info.shape for info in infos}
        if len(shapes) > 1 and not aligned:
            found = ", ".join(f"{src.model}: {list(info.shape)}" for (src, _), info in zip(inputs, infos))
            raise PlanError(f"{out_slice.path}: tensor {output} has different shapes across models ({found})")
        stored = [info.dtype for info in infos]
        scales = [input_scales(self.checkpoints[src.model], info) for (src, _), info in zip(inputs, infos)]
        compute = None
        if all(code in FLOATING for code in stored):
            values = [self.fp8.value_dtype(code, s, src.model) for code, s, (src, _) in zip(stored, scales, inputs)]
            compute = promote([self.load or code for code in values])
        elif len(set(stored)) > 1:
            raise PlanError(f"{out_slice.path}: tensor {output} is stored as {', '.join(stored)} across models")
        fp8 = self.fp8.output(output, shape, is_vocabulary) if compute is not None else None
        written = stored[0] if compute is None else (FP8 if fp8 else self.out or self._result_dtype(compute))
        params = self._params(output, out_slice, inputs, t, has_base)
        if self.spec.check and compute is not None and (problem := self.spec.check(dict(params))):
            raise PlanError(f"{out_slice.path}: {self.spec.name} for {output}: {problem}")
        loras = [self.checkpoints[src.model].lora_delta(name) for src, name in inputs]
        if fp8 is not None or any(scales) or any(loras):
            route = self._computed_route(params, [src.model for src, _ in inputs], scales, fp8, aligned, any(loras))
        else:
            route = self._route(params, len(inputs), compute, stored[0], written, aligned)
        sources = tuple(Source(src.model, name, s, lora) for (src, name), s, lora in zip(inputs, scales, loras))
        entry = PlanEntry(
            output, self.spec.name, sources, has_base, params, shape, written, compute, stored[0], route, fp8
        )
        self.entries.append(entry)
        if fp8 is not None:
            self.entries.append(self._fp8_scales_entry(entry, fp8))

    def _route(
        self, params: Params, count: int, compute: str | None, stored: str, written: str, aligned: bool
    ) -> Route:
        if compute is None:
            return Route.COPY
        raw = self.spec.raw_kernel
        if raw is not None and count == 1 and not aligned and written == stored:
            if raw.is_identity(params):  # any cast in between is exact: out to the stored dtype again
                return Route.COPY
            if written == compute and written in raw.dtypes:
                return Route.SCALE
        if aligned:
            return Route.VOCABULARY  # whole tensors on the CPU: rows are gathered by token
        if self.spec.elementwise:
            return Route.STREAM  # bound by reading and writing: a GPU would not speed it up
        return Route.WHOLE if self.device == "cpu" else Route.DEVICE

    def _computed_route(
        self,
        params: Params,
        models: list[str],
        scales: list[BlockScales | None],
        fp8: Fp8Output | None,
        aligned: bool,
        adapted: bool,
    ) -> Route:
        """An entry with FP8 inputs or output, or an input an adapter changes, computes on whole
        tensors: FP8 bytes are not values, a block's scale applies across rows, B A is a matrix
        product. One exception: an FP8 weight passed through unchanged into the same blocks is
        copied as it is, bytes and scales (its exact values)."""
        raw = self.spec.raw_kernel
        identity = raw is not None and raw.is_identity(params)
        if identity and not adapted and len(models) == 1 and fp8 is not None and scales[0]:
            scheme, donor = self.checkpoints[models[0]].fp8, self.fp8.donor.fp8
            if scheme and donor and (scheme.block, scheme.power_of_two) == (donor.block, donor.power_of_two):
                return Route.COPY
        if aligned:
            return Route.VOCABULARY
        return Route.WHOLE if self.device == "cpu" else Route.DEVICE

    def _fp8_scales_entry(self, weight: PlanEntry, fp8: Fp8Output) -> PlanEntry:
        """The entry of an FP8 output weight's scales, written right after the weight: computed with
        it, or for a copied weight copied from its source's scales."""
        if weight.route is not Route.COPY:
            shape = scale_shape(weight.shape, fp8.block)
            return dataclasses.replace(weight, output=fp8.scales, shape=shape, written_dtype="F32")
        (source,) = weight.sources
        assert source.fp8 is not None
        info = self.checkpoints[source.model].tensor_info(source.fp8.tensor)
        scales = Source(source.model, source.fp8.tensor)
        return dataclasses.replace(
            weight,
            output=fp8.scales,
            sources=(scales,),
            shape=info.shape,
            written_dtype=info.dtype,
            compute_dtype=info.dtype,
            stored_dtype=info.dtype,
        )

    def _truncated_shape(self, output: str, infos: list[TensorInfo], found: str) -> tuple[int, ...]:
        """mergekit 0.1.5's --unsafe-truncate-embeddings: every input keeps its first rows (a
        row-major prefix, which the executor reads as it reads any tensor)."""
        rows = min(info.shape[0] for info in infos)
        log.warning(
            "--unsafe-truncate-embeddings: %s cut to its first %d rows (%s); this assumes the models give "
            "those token ids the same meaning (a tokenizer setting, such as tokenizer_source: base, matches them)",
            output,
            rows,
            found,
        )
        self.truncated_rows = rows
        return (rows, *infos[0].shape[1:])

    def _vocabulary_shape(
        self, out_slice: _SliceSpec, output: str, models: list[str], infos: list[TensorInfo]
    ) -> tuple[int, ...]:
        assert self.vocabulary is not None
        for model, info in zip(models, infos):
            rows = self.tokenizers[model].rows
            if info.shape[0] != rows:
                raise PlanError(
                    f"{out_slice.path}: model {model!r}: {output} has {info.shape[0]} rows, "
                    f"but its config says vocab_size {rows}",
                    hint="the model's config.json and weights disagree; fix vocab_size in its config.json",
                )
        trailing = {info.shape[1:] for info in infos}
        if len(trailing) > 1:
            found = ", ".join(f"{m}: {list(i.shape)}" for m, i in zip(models, infos))
            raise PlanError(f"{out_slice.path}: tensor {output} has different widths across models ({found})")
        check_entry_models(self.vocabulary, output, models)
        return (self.vocabulary.size, *infos[0].shape[1:])

    def _info(self, out_slice: _SliceSpec, output: str, model: str, name: str) -> TensorInfo:
        checkpoint = self.checkpoints[model]
        if name not in checkpoint.weight_map:
            raise PlanError(
                f"{out_slice.path}: model {model!r} has no tensor {name!r}, which {output} needs",
                hint="all models of a slice must share an architecture",
            )
        return checkpoint.tensor_info(name)

    def _result_dtype(self, compute: str) -> str:
        return promote([compute, "F32"]) if self.spec.result_dtype == "at_least_float32" else compute

    def _params(
        self, output: str, out_slice: _SliceSpec, inputs: list[tuple[InputSlice, str]], t: float, has_base: bool
    ) -> Params:
        resolved: list[tuple[str, Any]] = []
        for param in self.spec.params:
            if not param.per_input:
                value = resolve_parameter(param, out_slice.levels, tensor_name=output, t=t)
                resolved.append((param.name, UNSET if value is None else value))
                continue
            values = []
            for index, (src, name) in enumerate(inputs):
                if param.scope == "non_base" and has_base and index == 0:
                    continue
                own = [
                    Level(f"{path}.parameters", s.parameters, True)
                    for path, s in out_slice.sources
                    if s.model == src.model
                ]
                values.append(resolve_parameter(param, [*own, *out_slice.levels], tensor_name=name, t=t))
            # no model sets it and it has no default (passthrough's scale): unset, not (None,)
            resolved.append((param.name, UNSET if values and all(v is None for v in values) else tuple(values)))
        return Params(resolved)


def _plan_module(
    module: _ModuleSpec, builder: _EntryBuilder, checkpoints: Mapping[str, Checkpoint]
) -> list[tuple[str, int]]:
    """Add the module's entries: the tensors before its layers (from the first slice's models), its
    layers slice by slice, the tensors after them (from the last slice's). Returns, per output
    layer, the model (its slice's first) and layer it is built from."""
    first, last = module.slices[0], module.slices[-1]
    first_module = _module(checkpoints, first.sources[0][1].model, module.name)
    for name in first_module.pre_layer:
        if module.loose is None or name in module.loose:
            builder.add(name, first, [(src, name) for _, src in first.sources], t=0.0)
    layer_sources: list[int] = []
    origins: list[tuple[str, int]] = []
    for out_slice in module.slices if module.layers else ():
        start, end = out_slice.sources[0][1].layer_range
        count = end - start
        for offset in range(count):
            t = offset / (count - 1) if count > 1 else 1.0
            out_index = len(layer_sources)
            layer_sources.append(start + offset)
            origins.append((out_slice.sources[0][1].model, start + offset))
            stack = _stack(checkpoints, out_slice.sources[0][1].model, module.name)
            shared = _first_layer_shared(stack)
            rests = [(r, False) for r in stack.layer_tensors[start + offset] if r not in shared]
            rests += [(r, True) for r in sorted(shared) if out_index == 0]  # from layer 0, whichever comes first
            for rest, from_first in rests:
                inputs = [
                    (
                        src,
                        _stack(checkpoints, src.model, module.name).layer_name(
                            0 if from_first else src.layer_range[0] + offset, rest
                        ),
                    )
                    for _, src in out_slice.sources
                ]
                builder.add(_out_stack(first_module).layer_name(out_index, rest), out_slice, inputs, t=t)
    for name in _module(checkpoints, last.sources[0][1].model, module.name).post_layer:
        if module.loose is None or name in module.loose:
            builder.add(name, last, [(src, name) for _, src in last.sources], t=0.0)
    if first_module.stack is not None and module.layers:
        _check_layer_order(module, checkpoints[first.sources[0][1].model], first_module, layer_sources)
    return origins


def _donor_layers(
    module: _ModuleSpec, origins: list[tuple[str, int]], checkpoints: Mapping[str, Checkpoint], donor: str
) -> list[int]:
    """Per output layer, the layer of the donor (whose config.json the output's is made from) that
    describes it: its source's index; for a layer beyond the donor's (of a deeper model, in a
    frankenmerge), the donor's first layer built alike as the configs say (layer_kinds: None for a
    config that says nothing per layer, such as a Llama's)."""
    own = checkpoints[donor].structure.module(module.name)
    if own is None or own.stack is None or all(index < own.count for _, index in origins):
        return [index for _, index in origins]
    donor_kinds = _layer_kinds(checkpoints[donor], module.name) or (None,) * own.count
    layers = []
    for out_index, (model, index) in enumerate(origins):
        kinds = _layer_kinds(checkpoints[model], module.name)
        kind = kinds[index] if kinds is not None else None
        alike = index if index < own.count else next((i for i, k in enumerate(donor_kinds) if k == kind), None)
        if alike is None:
            raise PlanError(
                f"{module.addressed_by}: output layer {out_index} of the {module.name} comes from layer {index} "
                f"of {model!r}, but the output's config.json is {donor!r}'s, whose {module.name} has "
                f"{own.count} layers, none of which its config describes as {model!r}'s describes that one ({kind})",
                hint=f"make {model!r} the recipe's first model (or its base_model): the output takes its config.json",
            )
        layers.append(alike)
    return layers


def _layer_kinds(checkpoint: Checkpoint, name: str) -> tuple[str, ...] | None:
    module = checkpoint.structure.module(name)
    assert module is not None and module.stack is not None  # the plan read layers of it
    part = config_part(checkpoint.config, module.config_paths[0]) if module.config_paths else {}
    return layer_kinds(part, module.count)


def _out_stack(module: Module) -> Stack:
    assert module.stack is not None  # a module with layers in its slices has a stack (layer ranges are checked)
    return module.stack


def _first_layer_shared(stack: Stack) -> frozenset[str]:
    if stack.count < 2:
        return frozenset()
    others = {r for rests in stack.layer_tensors[1:] for r in rests}
    return frozenset(
        r for r in stack.layer_tensors[0] if r not in others and any(m in r for m in FIRST_LAYER_SHARED_MARKERS)
    )


def _check_layer_order(module: _ModuleSpec, checkpoint: Checkpoint, first: Module, layer_sources: list[int]) -> None:
    """Refuse cuts the output could not describe: a layer 0 unlike every other layer (ModernBERT's
    has no attention norm) moved from the front, and per-layer blocks outside the layers."""
    stack = _out_stack(first)
    if layer_sources == list(range(stack.count)):
        return
    model = checkpoint.ref.text
    part = config_part(checkpoint.config, first.config_paths[0]) if first.config_paths else {}
    if not first.count_keys and not lists_layers(part, stack.count):
        raise PlanError(
            f"{module.addressed_by}: no setting in the config.json of {model!r} holds the {stack.count} layers "
            f"of its {first.name} ({stack.prefix}), so the output's config could not say how many it has",
            hint=f"merge the {first.name} with all its layers in order, or fix its layer count in config.json",
        )
    for name in (*first.pre_layer, *first.post_layer):
        if any(marker in name for marker in PER_LAYER_BLOCK_MARKERS):
            raise PlanError(
                f"{module.addressed_by}: {name} of {model!r} holds one block per layer of its {first.name}, "
                "so its shape follows the layer count; a cut that adds, drops or moves layers cannot keep it",
                hint=f"merge the {first.name} with all its layers in order "
                f"(models:, or slices covering [0, {stack.count}])",
            )
    shared = _first_layer_shared(stack)
    first_layer = set(stack.layer_tensors[0]) - shared
    if stack.count < 3 or any(set(rests) == first_layer for rests in stack.layer_tensors[1:]):
        return
    moved = next((i for i, s in enumerate(layer_sources) if (i == 0) != (s == 0)), None)
    if moved is not None:
        raise PlanError(
            f"{module.addressed_by}: output layer {moved} of the {first.name} comes from layer {layer_sources[moved]}, "
            f"but layer 0 of {model!r} is built unlike every other layer (its tensors differ), so it "
            "must stay first and only first",
            hint="start the first slice at layer 0 and take layer 0 nowhere else",
        )


def _module(checkpoints: Mapping[str, Checkpoint], model: str, name: str) -> Module:
    module = checkpoints[model].structure.module(name)
    assert module is not None  # _normalise checked that every model has it
    return module


def _stack(checkpoints: Mapping[str, Checkpoint], model: str, name: str) -> Stack:
    stack = _module(checkpoints, model, name).stack
    assert stack is not None
    return stack


def _normalise(recipe: Recipe, checkpoints: Mapping[str, Checkpoint]) -> list[_ModuleSpec]:
    """The recipe as output modules, each built by slices. `modules:` names them; `models:` builds
    every module of the models, whole (as mergekit does); plain `slices:` build the main module
    (a text decoder; of a vision-language model, its language model) and every other module is
    built whole from the first slice's models, as the tensors before the layers are."""
    top = Level("parameters", recipe.parameters)
    structure = checkpoints[recipe.referenced_models()[0]].structure
    if recipe.modules:
        parts = _module_parts(recipe, structure)
        return [spec for name, found in parts.items() for spec in _recipe_module(recipe, name, found, checkpoints, top)]
    if recipe.models:
        specs = []
        for module in structure.modules:
            slices = (_whole_slice(recipe, recipe.models, module.name, "models", (top,), checkpoints),)
            specs.append(_ModuleSpec(module.name, slices, "models"))
        return specs
    main = structure.main
    if structure.module("encoder") is not None and structure.module("decoder") is not None:
        raise RecipeError(
            "slices: an encoder-decoder model has two stacks of layers (encoder and decoder); "
            "plain slices cannot say which one their layer_range counts",
            hint="write the recipe with modules: (encoder: {slices: ...}, decoder: {slices: ...}), "
            "as mergekit requires",
        )
    slices = _recipe_slices(recipe.slices or [], "", (top,), recipe.base_model, main.name)
    specs = [_ModuleSpec(main.name, slices, "slices")]
    first = slices[0]
    for module in structure.modules[1:]:
        models = [InputModel.model_construct(model=src.model, parameters=src.parameters) for _, src in first.sources]
        whole = _whole_slice(recipe, models, module.name, first.path, first.levels, checkpoints, base=first.base)
        specs.append(_ModuleSpec(module.name, (whole,), f"{first.path}'s models, whole"))
    return specs


def _module_parts(recipe: Recipe, structure: Structure) -> dict[str, tuple[Part, ...]]:
    """The parts each module of the recipe builds, checked against the first model's structure:
    each name known, every tensor built once (an output without its vision tower would not load)."""
    assert recipe.modules is not None
    known = ", ".join(structure.names)
    try:
        parts = recipe_parts(structure, recipe.modules)
    except UnknownModuleError as err:
        raise RecipeError(
            f"modules.{err}: the models have no module {str(err)!r}",
            hint=f"their modules are: {known} (mergesmith plan shows what each holds)",
        ) from None
    built_by: dict[tuple[str, str], str] = {}
    for name, found in parts.items():
        for part in found:
            for what in (["layers"] if part.layers else []) + list(part.loose):
                if (part.module, what) in built_by:  # the plan would write a tensor twice
                    other = built_by[part.module, what]
                    module = structure.module(part.module)
                    assert module is not None  # parts are of the structure's modules
                    whole = len(part.loose) + part.layers == len(_items(module))
                    raise RecipeError(
                        f"modules.{name}: module {part.module!r} is built by modules.{other} already"
                        if whole
                        else f"modules.{name} builds the {_what(part.module, what)}, "
                        f"which modules.{other} builds already",
                        hint=f"list each module once "
                        f"({MAIN_MODULE_ALIASES[0]!r} is mergekit's name for the {structure.main.name})",
                    )
                built_by[part.module, what] = name
    missing: list[str] = []
    for m in structure.modules:
        items = _items(m)
        left = [what for what in items if (m.name, what) not in built_by]
        if left == items:
            missing.append(m.name)
        elif left and left == [*m.pre_layer, *m.post_layer]:
            missing.append(f"{m.name}'s tensors outside its layers")
        else:
            missing += [_what(m.name, what) for what in left]
    if missing:
        more = f" (and {len(missing) - 4} more)" if len(missing) > 4 else ""
        example = missing[0].split("'")[0]
        raise RecipeError(
            f"modules: the recipe builds {', '.join(parts)} but not {', '.join(missing[:4])}{more}; "
            "the output would lack those tensors",
            hint=f"add every module ({known}); one copied unchanged is `{example}: {{models: [{{model: NAME}}]}}` "
            "with merge_method passthrough, or the same models as the others",
        )
    return parts


def _items(module: Module) -> list[str]:
    """What a `modules:` recipe must build of a module: its layers (as one), each tensor outside them."""
    return (["layers"] if module.stack is not None else []) + [*module.pre_layer, *module.post_layer]


def _what(module: str, what: str) -> str:
    return f"{module}'s layers" if what == "layers" else f"{module}'s {what}"


def _recipe_module(
    recipe: Recipe, name: str, parts: tuple[Part, ...], checkpoints: Mapping[str, Checkpoint], top: Level
) -> list[_ModuleSpec]:
    assert recipe.modules is not None
    module_recipe = recipe.modules[name]
    prefix = f"modules.{name}."
    levels = (Level(f"modules.{name}.parameters", module_recipe.parameters), top)
    if module_recipe.models:
        return [
            _ModuleSpec(
                part.module,
                (_whole_slice(recipe, module_recipe.models, part.module, f"{prefix}models", levels, checkpoints),),
                f"{prefix}models",
                part.layers,
                part.loose,
            )
            for part in parts
        ]
    with_layers = [p for p in parts if p.layers]
    if len(with_layers) != 1 or len(parts) != 1 and not all(p.module == with_layers[0].module for p in parts):
        raise RecipeError(
            f"{prefix}slices: module {name!r} has no numbered layers for a layer_range to count",
            hint=f"build it with models: ({prefix}models)",
        )
    part = with_layers[0]
    slices = _recipe_slices(module_recipe.slices or [], prefix, levels, recipe.base_model, part.module)
    return [_ModuleSpec(part.module, slices, f"{prefix}slices", True, part.loose)]


def _recipe_slices(
    slices: list[OutputSlice], prefix: str, levels: tuple[Level, ...], base: str | None, module: str
) -> tuple[_SliceSpec, ...]:
    return tuple(
        _SliceSpec(
            f"{prefix}slices[{i}]",
            tuple((f"{prefix}slices[{i}].sources[{j}]", src) for j, src in enumerate(s.sources)),
            (Level(f"{prefix}slices[{i}].parameters", s.parameters), *levels),
            s.base_model or base,
            module,
        )
        for i, s in enumerate(slices)
    )


def _whole_slice(
    recipe: Recipe,
    models: list[InputModel],
    module: str,
    path: str,
    levels: tuple[Level, ...],
    checkpoints: Mapping[str, Checkpoint],
    *,
    base: str | None = None,
) -> _SliceSpec:
    """mergekit: a `models:` merge is one slice over every layer, with the base added if unnamed."""
    base = base or recipe.base_model
    sources = [
        (f"{path}[{i}]", _whole_source(m.model, m.parameters, module, checkpoints)) for i, m in enumerate(models)
    ]
    if base and all(m.model != base for m in models):
        sources.append(("base_model", _whole_source(base, None, module, checkpoints)))
    return _SliceSpec(path, tuple(sources), levels, base, module)


def _whole_source(model: str, parameters: Any, module: str, checkpoints: Mapping[str, Checkpoint]) -> InputSlice:
    found = checkpoints[model].structure.module(module)
    if found is None:
        known = ", ".join(checkpoints[model].structure.names)
        raise PlanError(
            f"model {model!r} has no module {module!r} (its modules: {known})",
            hint="all models of a merge must share an architecture",
        )
    return InputSlice.model_construct(model=model, layer_range=(0, found.count), parameters=parameters)


def _check_slice(
    out_slice: _SliceSpec, spec: MethodSpec, checkpoints: Mapping[str, Checkpoint], ignored: Ignored
) -> None:
    _check_contract(out_slice, spec)
    lengths = set()
    for path, src in out_slice.sources:
        _check_layer_range(path, src, checkpoints[src.model], out_slice.module)
        lengths.add(src.layer_range[1] - src.layer_range[0])
        for level in (Level(f"{path}.parameters", src.parameters, True), *out_slice.levels):
            check_parameter_names(level, spec, ignored)
    if len(lengths) > 1:
        found = ", ".join(f"{list(src.layer_range)}" for _, src in out_slice.sources)
        raise RecipeError(f"{out_slice.path}: every source of a slice needs the same number of layers (found {found})")


def _check_contract(out_slice: _SliceSpec, spec: MethodSpec) -> None:
    contract, name, where = spec.inputs, spec.name, out_slice.path
    models = [src.model for _, src in out_slice.sources]
    if len(set(models)) < len(models):
        twice = next(m for m in models if models.count(m) > 1)
        raise PlanError(f"{where}: model {twice!r} is named twice", hint="each model may be an input of a slice once")
    has_base = contract.uses_base and out_slice.base in models
    if contract.base == "required" and out_slice.base is None:
        raise PlanError(f"{where}: {name} needs a base model", hint="set base_model: at the top of the recipe")
    if contract.uses_base and out_slice.base is not None and not has_base:
        raise PlanError(
            f"{where}: the base model {out_slice.base!r} is not among this slice's sources ({', '.join(models)})",
            hint="add it as a source, or use a `models:` recipe, which adds the base by itself",
        )
    if contract.base == "forbidden" and out_slice.base in models:
        raise PlanError(f"{where}: {name} takes no base model, but {out_slice.base!r} is one of the inputs")
    non_base = len(models) - int(has_base)
    for what, count, low, high in (
        ("model", len(models), contract.min_count, contract.max_count),
        ("model besides the base", non_base, contract.min_non_base, contract.max_non_base),
    ):
        if (low is not None and count < low) or (high is not None and count > high):
            wanted = f"exactly {low}" if low == high else (f"at least {low}" if high is None else f"{low} to {high}")
            noun = what if high == 1 else what.replace("model", "models", 1)
            raise PlanError(
                f"{where}: {name} takes {wanted} {noun} per slice, found {count} ({', '.join(models)})",
                hint="passthrough copies one model per slice: give each source its own slice"
                if name == "passthrough"
                else None,
            )


def _check_layer_range(path: str, src: InputSlice, checkpoint: Checkpoint, module_name: str) -> None:
    start, end = src.layer_range
    structure = checkpoint.structure
    module = structure.module(module_name)
    if module is None:
        raise PlanError(
            f"{path}: model {src.model!r} has no module {module_name!r} (its modules: {', '.join(structure.names)})",
            hint="all models of a merge must share an architecture",
        )
    total = module.count
    if (start, end) == (0, 0) and total == 0:  # `models:` over a module without layers (a projector)
        return
    owner = src.model if len(structure.modules) == 1 else f"the {module.name} of {src.model}"
    if start < 0 or end <= start:
        raise RecipeError(
            f"{path}.layer_range: [{start}, {end}] is empty or negative",
            hint="layer_range is [first, last + 1]: [0, 4] means layers 0, 1, 2 and 3",
        )
    if end > total:
        raise RecipeError(
            f"{path}.layer_range: [{start}, {end}] reaches layer {end - 1}, "
            f"but {owner} has {total} layers (0-{total - 1})",
            hint=f"layer_range is half-open: [{start}, {total}] already includes layer {total - 1}",
        )


def _check_architectures(models: list[str], checkpoints: Mapping[str, Checkpoint]) -> None:
    """One architecture per merge, as mergekit requires: the plan follows the first model's
    tensors, and another architecture's extra tensors (Qwen3's q_norm, say) would be dropped."""
    found = {m: (checkpoints[m].config.get("architectures") or [None])[0] for m in models}
    if len(set(found.values())) > 1:
        listed = ", ".join(f"{m}: {a}" for m, a in found.items())
        raise PlanError(
            f"the models have different architectures ({listed})",
            hint="merge models of one architecture; --allow-crimes merges them anyway, following the first model",
        )
