"""A checkpoint's structure, found from its tensor names and config.json: its stacks of numbered
layers (a text decoder, a vision tower, an encoder and a decoder...), grouped into the modules that
mergekit's `modules:` recipes name, each with the config keys that count its layers.

Names decide what the stacks are. The tables in names.py decide what names cannot: which stack is
a vision tower or an encoder (STACK_ROLES), which config part describes it (ROLE_CONFIG_PARTS), and
which of its keys count its layers (ROLE_COUNT_KEYS).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mergesmith.checkpoints.names import (
    COUNT_KEY_WORDS,
    ENCODER_DECODER_ROLES,
    LAYER_NAME,
    MAIN_MODULE_ALIASES,
    PRE_LAYER_MARKERS,
    PROJECTOR_MARKERS,
    ROLE_CONFIG_PARTS,
    ROLE_COUNT_KEYS,
    STACK_ROLES,
)
from mergesmith.checkpoints.safe_json import is_count

TEXT_DECODER = "text_decoder"
PROJECTOR = "multi_modal_projector"


@dataclass(frozen=True)
class Stack:
    """`prefix.<i>.<rest>` names for i in range(count)."""

    prefix: str  # "model.layers", "model.visual.blocks"
    count: int
    layer_tensors: tuple[tuple[str, ...], ...]  # per layer i: the <rest> parts, sorted

    def layer_name(self, index: int, rest: str) -> str:
        return f"{self.prefix}.{index}.{rest}"

    @property
    def tensor_count(self) -> int:
        return sum(len(rests) for rests in self.layer_tensors)


@dataclass(frozen=True)
class Module:
    """A part of the model a recipe can address by name: a stack of layers with the tensors around it
    (embeddings before, norms and heads after), or a projector that has no numbered layers."""

    name: str  # "text_decoder", "vision_tower", "multi_modal_projector", "encoder", "decoder"
    stack: Stack | None
    pre_layer: tuple[str, ...]  # embeddings
    post_layer: tuple[str, ...]  # final norm, lm_head
    # the config parts describing it: ((),) for the top level, (("text_config",), ()) for a text
    # model whose count may be in both, (("vision_config",),)
    config_paths: tuple[tuple[str, ...], ...]
    count_keys: tuple[tuple[tuple[str, ...], str], ...]  # (part, key) holding stack.count; () when none

    @property
    def count(self) -> int:
        return self.stack.count if self.stack is not None else 0

    @property
    def tensors(self) -> tuple[str, ...]:
        stack = self.stack
        layers = (
            ()
            if stack is None
            else tuple(stack.layer_name(i, r) for i in range(stack.count) for r in stack.layer_tensors[i])
        )
        return (*self.pre_layer, *layers, *self.post_layer)


@dataclass(frozen=True)
class Structure:
    modules: tuple[Module, ...]  # the main module first: the one plain `slices:` refer to

    @property
    def main(self) -> Module:
        return self.modules[0]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modules)

    def module(self, name: str) -> Module | None:
        """A module by its name; the main one also answers to mergekit's "default"."""
        for module in self.modules:
            if module.name == name or (module is self.main and name in MAIN_MODULE_ALIASES):
                return module
        return None


@dataclass(frozen=True)
class Part:
    """What one module named in a `modules:` recipe builds of one module of the structure: its
    layers or not, and which of its tensors outside the layers."""

    module: str
    layers: bool
    loose: tuple[str, ...]


class UnknownModuleError(ValueError):
    pass


# mergekit's T5 file has a module of this name: the tensors the encoder and decoder share
# (shared.weight, lm_head.weight), outside both stacks
SHARED_MODULE = "shared"


def recipe_parts(structure: Structure, names: Iterable[str]) -> dict[str, tuple[Part, ...]]:
    """The parts each module a recipe names builds. Three naming schemes are read, as mergekit's:
    mergesmith's module names ("default" for the main one); an encoder-decoder's "encoder",
    "decoder" and "shared" (mergekit's T5 file: what is outside both stacks); and the layer
    prefixes mergekit infers for a model it has no file for ("model.language_model.layers"), with
    "default" then holding every tensor outside the layers. Raises UnknownModuleError for a name in
    none of them; whether the parts cover the model once is the caller's check.

    A recipe mixing schemes gets each name's own meaning."""
    names = list(names)
    by_prefix = {m.stack.prefix: m for m in structure.modules if m.stack is not None}
    prefixed = any(n in by_prefix and structure.module(n) is None for n in names)
    shared = _shared_tensors(structure) if SHARED_MODULE in names and structure.module(SHARED_MODULE) is None else {}
    parts: dict[str, tuple[Part, ...]] = {}
    for name in names:
        module = structure.module(name)
        if prefixed and name in MAIN_MODULE_ALIASES:
            parts[name] = tuple(Part(m.name, False, (*m.pre_layer, *m.post_layer)) for m in structure.modules)
        elif module is not None:
            own = tuple(t for t in (*module.pre_layer, *module.post_layer) if t not in shared.get(module.name, ()))
            parts[name] = (Part(module.name, module.stack is not None, own),)
        elif name in by_prefix:
            parts[name] = (Part(by_prefix[name].name, True, ()),)
        elif name == SHARED_MODULE and shared:
            parts[name] = tuple(Part(m, False, tensors) for m, tensors in shared.items())
        else:
            raise UnknownModuleError(name)
    return {name: tuple(p for p in found if p.layers or p.loose) for name, found in parts.items()}


def _shared_tensors(structure: Structure) -> dict[str, tuple[str, ...]]:
    """Of an encoder-decoder, per module, its tensors outside the layers and outside its stack's
    folder (T5's shared.weight and lm_head.weight, not encoder.final_layer_norm)."""
    if not all(structure.module(role) is not None for role in ENCODER_DECODER_ROLES):
        return {}
    shared = {}
    for module in structure.modules:
        if module.stack is None:
            continue
        folder = module.stack.prefix.rsplit(".", 1)[0] + "."
        outside = tuple(t for t in (*module.pre_layer, *module.post_layer) if not t.startswith(folder))
        if outside:
            shared[module.name] = outside
    return shared


class LayerGapError(ValueError):
    """Some layer below the highest index has no tensors: the checkpoint is incomplete, or one
    tensor name carries a wild index (model.layers.99999999.x would make 10**8 empty layers)."""

    def __init__(self, prefix: str, first_missing: int, count: int, missing: int) -> None:
        super().__init__(f"{prefix}.{first_missing} has no tensors, but the names go up to {prefix}.{count - 1}")
        self.prefix, self.first_missing, self.count, self.missing = prefix, first_missing, count, missing


def find_structure(names: Iterable[str], config: Mapping[str, Any] | None = None) -> Structure:
    """The modules of a checkpoint with these tensor names and this config.json (None: text only).
    Raises LayerGapError when a layer of the main stack below its highest is missing.

    >>> find_structure(["model.embed_tokens.weight", "model.layers.0.mlp.w", "model.norm.weight"]).main.count
    1
    """
    config = config or {}
    names = sorted(names)
    by_prefix: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for name in names:
        if match := LAYER_NAME.match(name):
            by_prefix[match["prefix"]][int(match["index"])].append(match["rest"])
    encoder_decoder = config.get("is_encoder_decoder") is True
    roles = {prefix: _stack_role(prefix, encoder_decoder) for prefix in by_prefix}
    main = _main_prefix(by_prefix, roles, encoder_decoder)
    stacks: dict[str, Stack] = {}
    for prefix, layers in by_prefix.items():
        count = max(layers) + 1
        if count > len(layers):
            if prefix == main:
                first_missing = next(i for i in range(count) if i not in layers)  # at most len(layers) + 1 steps
                raise LayerGapError(prefix, first_missing, count, count - len(layers))
            continue  # not a stack: visual.merger.mlp.0 and .2 (a Sequential with an activation between)
        stacks[prefix] = Stack(prefix, count, tuple(tuple(sorted(layers[i])) for i in range(count)))
    in_stacks = {
        stack.layer_name(i, r) for stack in stacks.values() for i in range(stack.count) for r in stack.layer_tensors[i]
    }
    loose = [n for n in names if n not in in_stacks]
    return Structure(_modules(stacks, roles, main, loose, config))


def _stack_role(prefix: str, encoder_decoder: bool) -> str:
    words = prefix.lower().split(".")
    if any(marker in word for word in words for marker in PROJECTOR_MARKERS):
        return PROJECTOR
    for role, markers in STACK_ROLES:
        if any(marker in word for word in words for marker in markers):
            return role
    if encoder_decoder:
        for role in ENCODER_DECODER_ROLES:
            if role in words:
                return role
    return TEXT_DECODER


def _main_prefix(
    by_prefix: Mapping[str, Mapping[int, list[str]]], roles: Mapping[str, str], encoder_decoder: bool
) -> str | None:
    """The text stack with the most tensors; of an encoder-decoder, its decoder."""
    wanted = "decoder" if encoder_decoder else TEXT_DECODER
    sizes = Counter({p: sum(len(r) for r in layers.values()) for p, layers in by_prefix.items() if roles[p] == wanted})
    if not sizes:  # no stack named as expected: the largest of any role (a model of one tower, say)
        sizes = Counter({p: sum(len(r) for r in layers.values()) for p, layers in by_prefix.items()})
    return sizes.most_common(1)[0][0] if sizes else None


def _modules(
    stacks: Mapping[str, Stack],
    roles: Mapping[str, str],
    main: str | None,
    loose: list[str],
    config: Mapping[str, Any],
) -> tuple[Module, ...]:
    main_role = roles[main] if main in stacks else TEXT_DECODER
    # the main stack, then the others largest first: a role's second stack is the smaller one
    ordered = sorted(stacks, key=lambda p: (p != main, -stacks[p].tensor_count, p))
    names = _module_names(ordered, roles)
    owner = {name: _owner(name, ordered, names, main) for name in loose}
    modules = []
    for prefix in ordered:
        paths = _config_paths(roles[prefix], config)
        keys = tuple(
            (path, k) for path in paths for k in _count_keys(stacks[prefix], names[prefix], config_part(config, path))
        )
        mine = [n for n in loose if owner[n] == names[prefix]]
        pre = tuple(n for n in mine if _is_pre(n))
        post = tuple(n for n in mine if not _is_pre(n))
        modules.append(Module(names[prefix], stacks[prefix], pre, post, paths, keys))
    if not stacks:
        mine = [n for n in loose if owner[n] == main_role]
        modules.append(
            Module(
                main_role,
                None,
                tuple(n for n in mine if _is_pre(n)),
                tuple(n for n in mine if not _is_pre(n)),
                ((),),
                (),
            )
        )
    projector = tuple(n for n in loose if owner[n] == PROJECTOR)
    if projector and PROJECTOR not in names.values():
        modules.append(Module(PROJECTOR, None, (), projector, (), ()))
    return tuple(modules)


def _module_names(ordered: list[str], roles: Mapping[str, str]) -> dict[str, str]:
    """Each stack's module name: its role, and for a second stack of one role (Mllama's vision
    global_transformer), the role and the word of its prefix that sets it apart."""
    names: dict[str, str] = {}
    for prefix in ordered:
        role = roles[prefix]
        if role not in names.values():
            names[prefix] = role
            continue
        first = next(p for p, n in names.items() if n == role)
        own = [w for w in prefix.split(".") if w not in first.split(".")]
        names[prefix] = f"{role}.{own[0] if own else prefix}"
    return names


def _owner(name: str, ordered: list[str], names: Mapping[str, str], main: str | None) -> str:
    """The module a tensor outside every stack belongs to: the projector by name, else the stack
    whose parent path it shares most of (model.visual.patch_embed -> model.visual.blocks), else
    the main stack (lm_head, a top-level norm)."""
    words = name.lower().split(".")
    if any(marker in word for word in words[:-1] for marker in PROJECTOR_MARKERS):
        return next((n for n in names.values() if n == PROJECTOR), PROJECTOR)
    best, best_shared = main, 0
    for prefix in ordered:
        parent = prefix.split(".")[:-1]
        shared = next(
            (i for i, (a, b) in enumerate(zip(parent, name.split("."))) if a != b), min(len(parent), len(words))
        )
        if shared > best_shared:
            best, best_shared = prefix, shared
    if best is None:
        return TEXT_DECODER
    return names[best]


def _config_paths(role: str, config: Mapping[str, Any]) -> tuple[tuple[str, ...], ...]:
    """The config parts of ROLE_CONFIG_PARTS present for the role (the top level is `()`)."""
    paths = ROLE_CONFIG_PARTS.get(role.split(".")[0], ((),))
    return tuple(p for p in paths if not p or isinstance(config_part(config, p[:-1]).get(p[-1]), Mapping)) or ((),)


def _count_keys(stack: Stack, module: str, part: Mapping[str, Any]) -> tuple[str, ...]:
    """The keys of the stack's config part that hold its layer count."""
    return tuple(k for k in _role_keys(stack, module, part) if part[k] == stack.count)


def _role_keys(stack: Stack, module: str, part: Mapping[str, Any]) -> list[str]:
    """The count keys in `part` that ROLE_COUNT_KEYS lists for the stack's role. A key with a word
    of COUNT_KEY_WORDS (num_global_layers) counts only a stack whose prefix has the word, and such a
    stack takes only such keys (Mllama's vision global_transformer against its transformer)."""
    keys = [k for k in ROLE_COUNT_KEYS.get(module.split(".")[0], ()) if is_count(part.get(k))]
    words = set(stack.prefix.lower().replace("_", ".").split("."))
    marked = [k for k in keys if any(w in k.split("_") and w in words for w in COUNT_KEY_WORDS)]
    if marked:
        return marked
    return [k for k in keys if not any(w in k.split("_") for w in COUNT_KEY_WORDS)]


def count_mismatches(structure: Structure, config: Mapping[str, Any]) -> list[tuple[str, int, int]]:
    """(key path, value, layer count) for each count key of a stack's config part that disagrees
    with the layers its tensors have."""
    found = []
    for module in structure.modules:
        if module.stack is None:
            continue
        for path in module.config_paths:
            part = config_part(config, path)
            for key in _role_keys(module.stack, module.name, part):
                if part[key] != module.count:
                    found.append((".".join((*path, key)), part[key], module.count))
    return found


def config_part(config: Mapping[str, Any], path: tuple[str, ...]) -> Mapping[str, Any]:
    part: Any = config
    for key in path:
        part = part.get(key) if isinstance(part, Mapping) else None
    return part if isinstance(part, Mapping) else {}


def _is_pre(name: str) -> bool:
    return any(marker in name for marker in PRE_LAYER_MARKERS)
