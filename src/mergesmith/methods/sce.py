"""SCE (arXiv 2408.07990): Select the task-vector elements that vary most across models,
Calculate per-model weights from their energy, Erase elements against the elected sign."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergesmith.methods.spec import Inputs, MethodEntry, MethodSpec, Param
from mergesmith.methods.task_arithmetic import sign_consensus

if TYPE_CHECKING:
    import torch
    from torch import Tensor

SPEC = MethodSpec(
    name="sce",
    pretty_name="SCE",
    params=(
        Param(
            "select_topk",
            float,
            default=1.0,
            doc="share of elements kept, by variance across models",
            minimum=0.0,
            maximum=1.0,
        ),
        Param("int8_mask", bool, default=False, doc="store masks as int8 (same result)"),
    ),
    inputs=Inputs(base="required"),
    reference="https://arxiv.org/abs/2408.07990",
    summary="variance-selected, energy-weighted, sign-elected task vectors",
)


def sce(base: Tensor, tensors: list[Tensor], *, select_topk: float, int8_mask: bool) -> Tensor:
    import torch

    if not tensors:
        return base
    mask_dtype = torch.int8 if int8_mask else base.dtype
    task_vectors = torch.stack([t - base for t in tensors], dim=0)  # (N, *shape)
    if select_topk < 1:
        task_vectors = task_vectors * _variance_mask(task_vectors, select_topk, mask_dtype).unsqueeze(0)
    erase = sign_consensus(task_vectors, mask_dtype=mask_dtype)
    weights = _energy_weights(task_vectors)  # (N,)
    while weights.dim() < task_vectors.dim():
        weights = weights.unsqueeze(-1)
    kept_weights = weights * erase
    merged = (task_vectors * kept_weights).sum(dim=0)
    return base + merged / torch.sum(kept_weights, dim=0).clamp(min=1e-6)


def _energy_weights(task_vectors: Tensor) -> Tensor:
    import torch

    energy = task_vectors.square().reshape(task_vectors.shape[0], -1).mean(dim=1)
    total = torch.sum(energy).item()
    if abs(total) < 1e-6:
        return torch.ones_like(energy) / energy.shape[0]
    return energy / total


def _variance_mask(task_vectors: Tensor, share: float, mask_dtype: torch.dtype) -> Tensor:
    import torch

    if share <= 0:
        return torch.zeros_like(task_vectors[0], dtype=mask_dtype)
    variance = torch.var(task_vectors, dim=0, unbiased=False)
    k = int(torch.count_nonzero(variance) * share)
    mask = torch.zeros_like(variance, dtype=mask_dtype)
    if k:
        mask.view(-1)[torch.topk(variance.abs().view(-1), k=k, largest=True).indices] = 1
    return mask


METHODS: dict[str, MethodEntry] = {"sce": (SPEC, sce)}
