"""Model Stock (arXiv 2403.19522): move from the base toward the inputs' average, by how aligned
their task vectors are (the mean pairwise cosine)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergesmith.methods.spec import Inputs, MethodEntry, MethodSpec, Param

if TYPE_CHECKING:
    from torch import Tensor

SPEC = MethodSpec(
    name="model_stock",
    pretty_name="Model Stock",
    params=(Param("filter_wise", bool, default=False, doc="one ratio per row instead of per tensor"),),
    inputs=Inputs(base="required", min_count=3),
    reference="https://arxiv.org/abs/2403.19522",
    summary="interpolate base and average by the task vectors' mean cosine",
)


def model_stock(base: Tensor, tensors: list[Tensor], *, filter_wise: bool) -> Tensor:
    import torch

    shape = base.shape
    if filter_wise:
        if base.dim() == 1:
            base, tensors = base.unsqueeze(0), [t.unsqueeze(0) for t in tensors]
    else:
        base, tensors = base.reshape(-1), [t.reshape(-1) for t in tensors]
    offsets = [t - base for t in tensors]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1 :]:
            norm_product = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
            cosines.append(((a * b).sum(dim=-1) / norm_product.clamp(min=1e-6)).clamp(-1, 1))
    cos_theta = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    count = len(tensors)
    denominator = 1 + (count - 1) * cos_theta
    # No finite ratio at the singularity: keep the base there rather than amplify opposing updates.
    singular = denominator.abs() < 1e-6
    ratio = torch.where(
        singular,
        torch.zeros_like(cos_theta),
        (count * cos_theta) / torch.where(singular, torch.ones_like(denominator), denominator),
    )
    average = sum(tensors[1:], tensors[0]) / count
    return (ratio * average + (1 - ratio) * base).reshape(shape)


METHODS: dict[str, MethodEntry] = {"model_stock": (SPEC, model_stock)}
