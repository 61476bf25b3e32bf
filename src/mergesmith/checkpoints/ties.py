"""Which tensors `tie_word_embeddings` replaces: the architecture's own declaration in transformers
(a class's `_tied_weights_keys`, target -> source, read from its source file), and the name table
in names.py (older layouts, and transformers absent or without the class).

The tie flag a folder may claim follows from them: tied only when none of them is written, since
transformers then drops a written one (or, untied, initialises a missing one at random).
"""

from __future__ import annotations

import ast
import importlib.util
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mergesmith.checkpoints.names import TIED_OUTPUT_NAMES

log = logging.getLogger(__name__)

# A declared key that names one tensor, not a regex or a module (transformers' own test, in
# PreTrainedModel.get_expanded_tied_weights_keys).
_PLAIN_TENSOR_NAME = re.compile(r"^[A-Za-z0-9_.]+\.(weight|bias)$")
_INPUT_EMBEDDING = re.compile(r"(^|\.)(embed_tokens|embed_in|wte|word_embeddings)\.weight$")


def tied_targets(config: dict[str, Any]) -> frozenset[str]:
    """The tensor names tied to the input embeddings (or to their bias) in `config`'s architecture.

    >>> "lm_head.decoder.weight" in tied_targets({"architectures": ["RobertaForMaskedLM"], "model_type": "roberta"})
    True
    """
    # The table's older layouts stay in: transformers renames them on load (conversion_mapping.py),
    # so a checkpoint may still carry them under the old name. Input embeddings a class also ties
    # (T5's encoder and decoder embed_tokens, to `shared`) are the same tensor whatever the flag
    # says: the flag is about the output embedding, so they do not decide it.
    declared = {name for name in _declared_targets(config) if not _INPUT_EMBEDDING.search(name)}
    return frozenset(TIED_OUTPUT_NAMES) | declared


def writes_tied_target(config: dict[str, Any], names: Iterable[str]) -> str | None:
    """The first written tensor (sorted) that a tie would replace, or None: then the folder is tied."""
    targets = tied_targets(config)
    return next((n for n in sorted(names) if n in targets), None)


def _declared_targets(config: dict[str, Any]) -> frozenset[str]:
    architectures, model_type = config.get("architectures"), config.get("model_type")
    if not (isinstance(architectures, list) and architectures and isinstance(architectures[0], str)):
        return frozenset()
    if not isinstance(model_type, str) or not re.fullmatch(r"[a-z0-9_-]+", model_type):
        return frozenset()
    declared = _class_attribute(_modeling_file(model_type.replace("-", "_")), architectures[0], "_tied_weights_keys")
    # transformers 5 declares {target: source}; transformers 4, a list of targets
    keys = declared if isinstance(declared, (dict, list, tuple)) else ()
    return frozenset(k for k in keys if isinstance(k, str) and _PLAIN_TENSOR_NAME.match(k))


def _modeling_file(model_type: str) -> Path | None:
    """transformers/models/<model_type>/modeling_<model_type>.py, found without importing
    transformers: that would cost a second, and its model modules import torch (planning does not)."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "models" / model_type / f"modeling_{model_type}.py"
    return path if path.is_file() else None


def _class_attribute(path: Path | None, class_name: str, attribute: str) -> Any:
    """A literal class attribute read from source, following base classes defined in the same file."""
    if path is None:
        return None
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError) as err:
        log.debug("cannot read %s (%s); tied tensors come from the name table", path, err)
        return None
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    seen: set[str] = set()
    while class_name in classes and class_name not in seen:
        seen.add(class_name)
        node = classes[class_name]
        for statement in node.body:
            targets = statement.targets if isinstance(statement, ast.Assign) else [getattr(statement, "target", None)]
            if any(isinstance(t, ast.Name) and t.id == attribute for t in targets) and statement.value is not None:
                try:
                    return ast.literal_eval(statement.value)
                except ValueError:
                    return None
        class_name = next((b.id for b in node.bases if isinstance(b, ast.Name) and b.id in classes), "")
    return None
