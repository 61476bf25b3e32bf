"""Model references, lazy tensor reading, layer structure."""

from mergesmith.checkpoints.checkpoint import Checkpoint, open_checkpoints
from mergesmith.checkpoints.layers import LayerLayout, find_layers
from mergesmith.checkpoints.reference import ModelReference, resolve_reference

__all__ = ["Checkpoint", "LayerLayout", "ModelReference", "find_layers", "open_checkpoints", "resolve_reference"]
