"""RAM and RAM+ (arXiv 2601.13572): keep task-vector elements unique to one model at full
strength, average the ones several models change; RAM+ boosts unique elements by overlap."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergesmith.methods.spec import Inputs, MethodEntry, MethodSpec, Param

if TYPE_CHECKING:
    from torch import Tensor

RAM = MethodSpec(
    name="ram",
    pretty_name="Reinforced Agent Merging",
    params=(Param("epsilon", float, default=1e-5, doc="smallest change counted as a contribution", minimum=0.0),),
    inputs=Inputs(base="required"),
    reference="https://arxiv.org/abs/2601.13572",
    summary="unique changes kept, shared changes averaged",
)

RAMPLUS_TL = MethodSpec(
    name="ramplus_tl",
    pretty_name="Reinforced Agent Merging Plus (Tensor-Local)",
    params=(
        Param("r", float, default=0.1, doc="boost per unit of overlap ratio"),
        Param("alpha", float, default=0.2, doc="largest overlap ratio counted", minimum=0.0),
        Param("epsilon", float, default=1e-5, doc="smallest change counted as a contribution", minimum=0.0),
    ),
    inputs=Inputs(base="required"),
    reference="https://arxiv.org/abs/2601.13572",
    summary="RAM with unique changes boosted by each model's overlap ratio",
    result_dtype="at_least_float32",  # the float32 boost factors promote the sum (as in mergekit)
)


def ram(base: Tensor, tensors: list[Tensor], *, epsilon: float) -> Tensor:
    return _ram(base, tensors, epsilon=epsilon, boost=None)


def ramplus_tl(base: Tensor, tensors: list[Tensor], *, r: float, alpha: float, epsilon: float) -> Tensor:
    return _ram(base, tensors, epsilon=epsilon, boost=(r, alpha))


def _ram(base: Tensor, tensors: list[Tensor], *, epsilon: float, boost: tuple[float, float] | None) -> Tensor:
    import torch

    if not tensors:
        return base
    flat = torch.stack([t - base for t in tensors], dim=0).view(len(tensors), -1)  # (N, numel)
    contributes = flat.abs() > epsilon
    counts = contributes.sum(dim=0, keepdim=True)  # (1, numel)
    shared, unique = counts > 1, counts == 1
    kept = flat * contributes
    unique_part = kept * unique
    if boost is not None:
        r, alpha = boost
        ratio = (contributes & shared).sum(dim=1) / (contributes & unique).sum(dim=1).clamp(min=epsilon)  # (N,)
        unique_part = unique_part * (1 + r * ratio.clamp(min=0, max=alpha)).unsqueeze(-1)
    merged = (unique_part + kept * shared / counts.clamp(min=1)).sum(dim=0, keepdim=True)
    return base + merged.reshape_as(base)


METHODS: dict[str, MethodEntry] = {"ram": (RAM, ram), "ramplus_tl": (RAMPLUS_TL, ramplus_tl)}
