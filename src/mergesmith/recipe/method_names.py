"""What loading a recipe knows of the merge methods, as plain data.

Two decisions of loading hang on parameter names: where the lines of a recipe that lost its
indentation belong (unflatten.py), and whether an unknown top-level key is ignorable or a misplaced
parameter (load.py). recipe/ imports no method code, so the caller builds this from the method
registry (mergesmith.api.method_names) and passes it in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class MethodNames:
    parameters: Mapping[str, frozenset[str]]  # method name -> the names of its parameters
    per_model: Mapping[str, frozenset[str]]  # method name -> those each model sets for itself

    @property
    def all_parameters(self) -> frozenset[str]:
        """Every parameter name some method knows."""
        return frozenset().union(*self.parameters.values())
