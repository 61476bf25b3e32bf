"""Spherical interpolation: slerp (two models), nuslerp (weighted, optionally row-wise), multislerp
(N models, barycentric on the sphere) and the Karcher mean.

Each follows mergekit 0.1.5's numerics operation for operation (float32 work for slerp and
karcher, chunked norms for slerp, the same thresholds), so outputs agree bit for bit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergesmith.errors import MergeError
from mergesmith.methods.spec import LARGEST_INT, Inputs, MethodEntry, MethodSpec, Param

if TYPE_CHECKING:
    from torch import Tensor

_CHUNK_ELEMENTS = 1024 * 1024  # slerp reduces in pieces of this many elements, as mergekit does

SLERP = MethodSpec(
    name="slerp",
    pretty_name="SLERP",
    params=(Param("t", float, required=True, doc="0 gives the base model, 1 the other"),),
    inputs=Inputs(base="required", min_count=2, max_count=2),
    reference="https://en.wikipedia.org/wiki/Slerp",
    summary="spherical interpolation between the base and one other model",
)


def slerp(base: Tensor, tensors: list[Tensor], *, t: float, dot_threshold: float = 0.9995, eps: float = 1e-8) -> Tensor:
    import torch

    (other,) = tensors
    dtype = torch.float64 if base.dtype == torch.float64 else torch.float32
    a, b = base.reshape(1, -1), other.reshape(1, -1)  # (1, numel)
    tt = torch.tensor([t], dtype=dtype, device=a.device).reshape(-1, 1)  # (1, 1)
    if not a.shape[1]:
        return ((1 - tt) * a + tt * b).reshape(base.shape).to(base.dtype)
    pieces = range(0, a.shape[1], _CHUNK_ELEMENTS)

    def piece(x: Tensor, start: int) -> Tensor:
        return x[:, start : start + _CHUNK_ELEMENTS].to(dtype)

    norm_a = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(piece(a, s), dim=1, keepdim=True) for s in pieces]), dim=0
    )
    norm_b = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(piece(b, s), dim=1, keepdim=True) for s in pieces]), dim=0
    )
    norm_a = torch.where(norm_a > eps, norm_a, 1)
    norm_b = torch.where(norm_b > eps, norm_b, 1)
    dot = torch.stack([(piece(a, s) / norm_a * (piece(b, s) / norm_b)).sum(dim=1, keepdim=True) for s in pieces])
    dot = dot.sum(dim=0).clamp(-1, 1)  # (1, 1)
    is_linear = dot.abs() > dot_threshold  # nearly collinear: interpolate linearly
    theta = torch.acos(torch.where(is_linear, 0, dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(is_linear, 1 - tt, torch.sin((1 - tt) * theta) / sin_theta)
    coef_b = torch.where(is_linear, tt, torch.sin(tt * theta) / sin_theta)
    result = torch.empty_like(a)  # in the inputs' dtype
    for s in pieces:
        result[:, s : s + _CHUNK_ELEMENTS] = coef_a * piece(a, s) + coef_b * piece(b, s)
    return result.reshape(base.shape)


NUSLERP = MethodSpec(
    name="nuslerp",
    pretty_name="NuSLERP",
    params=(
        Param("weight", float, required=True, scope="non_base", doc="relative share of each of the two models"),
        Param("nuslerp_row_wise", bool, default=False, doc="interpolate rows rather than columns"),
        Param("nuslerp_flatten", bool, default=True, doc="treat the whole tensor as one vector"),
    ),
    inputs=Inputs(base="optional", min_non_base=2, max_non_base=2),
    summary="slerp between two models by weight, or between their task vectors when a base is given",
)


def nuslerp(
    base: Tensor | None, tensors: list[Tensor], *, weight: list[float], nuslerp_row_wise: bool, nuslerp_flatten: bool
) -> Tensor:
    total = sum(weight)
    t = 0.5 if abs(total) < 1e-6 else weight[1] / total
    dim = 0 if nuslerp_row_wise else -1
    first, second = tensors
    if base is None:
        return _nuslerp(t, first, second, dim=dim, flatten=nuslerp_flatten)
    return base + _nuslerp(t, first - base, second - base, dim=dim, flatten=nuslerp_flatten)


def _nuslerp(t: float, v0: Tensor, v1: Tensor, *, dim: int, flatten: bool, eps: float = 1e-8) -> Tensor:
    import torch

    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif dim != -1:
        v0, v1 = v0.transpose(dim, -1), v1.transpose(dim, -1)
    u0 = v0 / torch.norm(v0, dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / torch.norm(v1, dim=-1, keepdim=True).clamp(min=1e-7)
    cos_theta = torch.sum(u0 * u1, dim=-1, keepdim=True).clamp(-1, 1)
    collinear = (1 - cos_theta.square()) <= eps**2
    theta = torch.acos(torch.where(collinear, 0, cos_theta))
    result = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    result = torch.where(collinear, (1 - t) * v0 + t * v1, result)
    if dim != -1 and not flatten:
        result = result.transpose(dim, -1)
    return result.reshape(shape)


MULTISLERP = MethodSpec(
    name="multislerp",
    pretty_name="Multi-SLERP",
    params=(
        Param("weight", float, required=True, scope="non_base", doc="this model's share"),
        Param("normalize_weights", bool, default=True, doc="divide weights by their sum"),
        Param("eps", float, default=1e-8, doc="numerical floor", minimum=0.0),
    ),
    inputs=Inputs(base="optional", min_non_base=1),
    reference="https://goddard.blog/posts/multislerp-wow-what-a-cool-idea",
    summary="barycentric interpolation of N models on the hypersphere",
)


def multislerp(
    base: Tensor | None, tensors: list[Tensor], *, weight: list[float], normalize_weights: bool, eps: float
) -> Tensor:
    import torch

    if len(tensors) == 1:
        return tensors[0]
    stacked = torch.stack(tensors, dim=0)  # (N, *shape)
    if base is not None:
        stacked -= base
    flat = stacked.view(stacked.shape[0], -1)  # (N, numel)
    weights = torch.tensor(weight, dtype=stacked.dtype, device=stacked.device)
    if normalize_weights:
        weights = weights / weights.sum()
    norms = torch.norm(flat, dim=-1, keepdim=True)  # (N, 1)
    units = flat / (norms + eps)
    mean = (units * weights.view(-1, 1)).sum(0)  # (numel,)
    mean_norm = torch.norm(mean)
    if mean_norm < eps:
        if stacked.shape[0] != 2:  # mergekit 0.1.5 stops here too (a ValueError)
            raise MergeError(
                "the weighted sum of the models' directions is zero: their tensors point in opposite "
                "directions with weights that balance out, so the mean direction is undefined",
                hint="change the weights so they do not cancel, or merge these models with linear",
            )
        result = (stacked[0] * weights[0] + stacked[1] * weights[1]).view(stacked.shape[1:])
        return result if base is None else result + base
    mean = mean / mean_norm
    tangents = units - (units * mean).sum(-1, keepdim=True) * mean  # (N, numel)
    tangent = (tangents * weights.view(-1, 1)).sum(0)
    tangent_norm = torch.norm(tangent) + eps
    result = mean * torch.cos(tangent_norm) + tangent * (torch.sin(tangent_norm) / tangent_norm)
    result = (result * (norms.squeeze(-1) * weights).sum()).view(stacked.shape[1:])
    return result if base is None else result + base


KARCHER = MethodSpec(
    name="karcher",
    pretty_name="Karcher Mean",
    params=(
        Param("max_iter", int, default=10, doc="most iterations", minimum=0, maximum=LARGEST_INT),
        Param("tol", float, default=1e-5, doc="convergence tolerance", minimum=0.0),
    ),
    inputs=Inputs(base="ignored", min_count=1),
    reference="https://arxiv.org/abs/2603.04972",
    summary="the Riemannian (Karcher) mean of the inputs on the hypersphere",
    threads_change_result=True,  # torch.dot of whole tensors
)


def karcher(tensors: list[Tensor], *, max_iter: int, tol: float) -> Tensor:
    import torch

    if len(tensors) == 1:
        return tensors[0]
    alphas = [1.0 / len(tensors)] * len(tensors)
    dtype = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    norms = [torch.linalg.vector_norm(t.to(dtype)) for t in tensors]
    units = [torch.zeros_like(t) if n.item() == 0.0 else (t / n).to(t.dtype) for t, n in zip(tensors, norms)]
    valid = [i for i, n in enumerate(norms) if n.item() > tol]
    if not valid:
        return sum((t * 0 for t in tensors[1:]), tensors[0] * 0)
    valid_sum = sum(alphas[i] for i in valid)
    shares = [alphas[i] / valid_sum for i in valid]
    valid_units = [units[i] for i in valid]
    mean = torch.zeros_like(valid_units[0])
    for share, unit in zip(shares, valid_units):
        mean += share * unit
    mean_norm = torch.linalg.vector_norm(mean.to(dtype))
    mean = valid_units[0].clone() if mean_norm.item() < tol else (mean / mean_norm).to(mean.dtype)
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for share, unit in zip(shares, valid_units):
            dot = torch.clamp(torch.dot(mean.flatten(), unit.flatten()), -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta.item() < tol:
                continue
            tangent += share * (theta / torch.sin(theta)) * (unit - dot * mean)
        tangent_norm = torch.linalg.vector_norm(tangent.to(dtype))
        if tangent_norm.item() < tol:
            break
        mean = (torch.cos(tangent_norm) * mean + torch.sin(tangent_norm) * (tangent / tangent_norm)).to(mean.dtype)
        unit_norm = torch.linalg.vector_norm(mean.to(dtype))
        if unit_norm.item() > tol:
            mean = (mean / unit_norm).to(mean.dtype)
    scale = sum((alpha * norm for alpha, norm in zip(alphas[1:], norms[1:])), alphas[0] * norms[0])
    return scale * mean


METHODS: dict[str, MethodEntry] = {
    "slerp": (SLERP, slerp),
    "nuslerp": (NUSLERP, nuslerp),
    "multislerp": (MULTISLERP, multislerp),
    "karcher": (KARCHER, karcher),
}
