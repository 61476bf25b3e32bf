"""Two-model element selection: Arcee Fusion (take the other model's value where it matters most)
and NearSwap (take it where the two are close)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergesmith.methods.spec import Inputs, MethodEntry, MethodSpec, Param

if TYPE_CHECKING:
    import torch
    from torch import Tensor

_QUANTILE_SAMPLE = 1_000_000  # quantiles of larger tensors come from this many sampled elements

ARCEE_FUSION = MethodSpec(
    name="arcee_fusion",
    pretty_name="Arcee Fusion",
    params=(),
    inputs=Inputs(base="required", min_count=2, max_count=2),
    reference="https://arcee.ai",
    summary="adopt the other model's elements whose importance is an upper outlier",
    is_random=True,
    result_dtype="at_least_float32",
)

NEARSWAP = MethodSpec(
    name="nearswap",
    pretty_name="NearSwap",
    params=(Param("t", float, required=True, doc="closeness below which the other model's value is taken"),),
    inputs=Inputs(base="required", min_count=2, max_count=2),
    reference="https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
    summary="interpolate toward the other model where the two are within t",
    elementwise=True,
)


def arcee_fusion(base: Tensor, tensors: list[Tensor], *, generator: torch.Generator) -> Tensor:
    import torch
    import torch.nn.functional as F

    (other,) = tensors
    p = F.softmax(other, dim=-1) + 1e-8
    q = F.softmax(base, dim=-1) + 1e-8
    importance = (other - base).abs() * torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)
    q1, median, q3 = _quantiles(importance, generator)
    mask = (importance >= median + 1.5 * (q3 - q1)).float()
    return base + (other - base) * mask


def _quantiles(values: Tensor, generator: torch.Generator) -> Tensor:
    import torch

    flat = values.reshape(-1)
    if flat.numel() > _QUANTILE_SAMPLE:
        # mergekit samples with its global RNG, so runs differ; we draw from the seeded generator.
        flat = flat[torch.randint(flat.numel(), (_QUANTILE_SAMPLE,), generator=generator)]
    ordered = torch.sort(flat).values
    return ordered[(torch.tensor([0.25, 0.5, 0.75], device=ordered.device) * (ordered.numel() - 1)).long()]


def nearswap(base: Tensor, tensors: list[Tensor], *, t: float) -> Tensor:
    (other,) = tensors
    weight = (t / (base - other).abs().clamp(min=1e-6)).clamp(min=0, max=1)
    return weight * other + (1 - weight) * base


METHODS: dict[str, MethodEntry] = {"arcee_fusion": (ARCEE_FUSION, arcee_fusion), "nearswap": (NEARSWAP, nearswap)}
