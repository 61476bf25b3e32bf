"""Model references, lazy tensor reading, model structure."""

from mergesmith.checkpoints.checkpoint import Checkpoint, open_checkpoints
from mergesmith.checkpoints.reference import ModelReference, resolve_reference
from mergesmith.checkpoints.structure import Module, Stack, Structure, find_structure

__all__ = [
    "Checkpoint",
    "ModelReference",
    "Module",
    "Stack",
    "Structure",
    "find_structure",
    "open_checkpoints",
    "resolve_reference",
]
