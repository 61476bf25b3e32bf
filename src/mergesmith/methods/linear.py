"""Weighted average of N tensors ("model soups", Wortsman et al. 2022)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mergesmith.methods.spec import Inputs, MethodSpec, Param

if TYPE_CHECKING:
    from torch import Tensor


def _check(params: dict[str, Any]) -> str | None:
    # mergekit divides by a zero sum and writes inf/nan; we refuse at plan time.
    if params["normalize"] and sum(params["weight"]) == 0:
        return "the weights sum to 0, so normalize: true would divide by zero"
    return None


SPEC = MethodSpec(
    name="linear",
    pretty_name="Linear",
    params=(
        Param("weight", float, required=True, scope="input", doc="this model's share"),
        Param("normalize", bool, default=True, doc="divide by the sum of the weights"),
    ),
    inputs=Inputs(base="ignored", min_count=1),
    reference="https://arxiv.org/abs/2203.05482",
    summary="weighted average",
    elementwise=True,
    check=_check,
)


def linear(tensors: list[Tensor], *, weight: list[float], normalize: bool) -> Tensor:
    import torch

    first = tensors[0]
    # Accumulate in float32 (float64 for float64 inputs), weights rounded to that dtype first,
    # with addcmul: mergekit 0.1.5's operations, so the bits agree.
    dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
    coefficients = torch.tensor(weight, dtype=dtype)  # (N,)
    terms = coefficients.unbind(0)
    # mergekit adds the first product to a zero tensor; adding +0.0 gives the same bits (it turns
    # -0.0 into +0.0) one pass faster than zeros + addcmul.
    result = first.to(dtype).mul_(terms[0]).add_(0.0) if first.dtype != dtype else (first * terms[0]).add_(0.0)
    for tensor, coefficient in zip(tensors[1:], terms[1:], strict=True):
        result.addcmul_(tensor, coefficient)
    if normalize:
        result.div_(coefficients.sum())
    return result.to(first.dtype)
