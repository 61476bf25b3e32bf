"""Passthrough: copy one model's tensor, optionally scaled (frankenmerges, depth up-scaling)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergesmith.methods.spec import Inputs, MethodSpec, Param

if TYPE_CHECKING:
    from torch import Tensor

SPEC = MethodSpec(
    name="passthrough",
    pretty_name="Passthrough",
    params=(Param("scale", float, scope="input", doc="multiply the tensor by this factor"),),
    inputs=Inputs(base="ignored", min_count=1, max_count=1),
    summary="copy tensors from one model per slice, optionally scaled",
    elementwise=True,
)


def passthrough(tensors: list[Tensor], *, scale: list[float | None]) -> Tensor:
    # (same shape as the input) `tensor * scale` in the input's dtype: mergekit 0.1.5's arithmetic,
    # so results are bit-identical. The executor has already cast to the recipe's `dtype`.
    (tensor,), (factor,) = tensors, scale
    return tensor if factor is None else tensor * factor
