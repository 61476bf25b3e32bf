"""Which tensors `tie_word_embeddings` replaces: the architecture's own declaration in transformers
(a class's `_tied_weights_keys`, target -> source), else the name table in names.py.

The tie flag a folder may claim follows from them: tied only when none of them is written, since
transformers then drops a written one (or, untied, initialises a missing one at random).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from mergesmith.checkpoints.names import TIED_OUTPUT_NAMES

log = logging.getLogger(__name__)

# A declared key that names one tensor, not a regex or a module (transformers' own test, in
# PreTrainedModel.get_expanded_tied_weights_keys).
_PLAIN_TENSOR_NAME = re.compile(r"^[A-Za-z0-9_.]+\.(weight|bias)$")


def tied_targets(config: dict[str, Any]) -> frozenset[str]:
    """The tensor names tied to the input embeddings (or to their bias) in `config`'s architecture.

    >>> sorted(tied_targets({"architectures": ["LlamaForCausalLM"]}))[-1]
    'lm_head.weight'
    """
    # The table's older layouts stay in: transformers renames them on load (conversion_mapping.py),
    # so a checkpoint may still carry them under the old name.
    return frozenset(TIED_OUTPUT_NAMES) | _declared_targets(config)


def writes_tied_target(config: dict[str, Any], names: Iterable[str]) -> str | None:
    """The first written tensor (sorted) that a tie would replace, or None: then the folder is tied."""
    targets = tied_targets(config)
    return next((n for n in sorted(names) if n in targets), None)


def _declared_targets(config: dict[str, Any]) -> frozenset[str]:
    architectures = config.get("architectures")
    if not isinstance(architectures, list) or not architectures or not isinstance(architectures[0], str):
        return frozenset()
    try:
        import transformers
    except ImportError:
        return frozenset()
    try:  # the class attribute only: building a model would read no less than its whole config
        declared = getattr(getattr(transformers, architectures[0]), "_tied_weights_keys", None)
    except (AttributeError, ImportError, RuntimeError) as err:  # unknown class, or its extra is missing
        log.debug("transformers has no class %s (%s); tied tensors come from the name table", architectures[0], err)
        return frozenset()
    if isinstance(declared, dict):  # transformers 5: target -> source
        return frozenset(k for k in declared if isinstance(k, str) and _PLAIN_TENSOR_NAME.match(k))
    if isinstance(declared, (list, tuple)):  # transformers 4: a list of targets
        return frozenset(k for k in declared if isinstance(k, str) and _PLAIN_TENSOR_NAME.match(k))
    return frozenset()
