"""Task arithmetic and its sparsified, sign-elected relatives: one function, eight configurations.

Each input's task vector (input - base) is sparsified (TIES: magnitude, DARE: random, breadcrumbs:
magnitude without outliers, DELLA: rank-weighted random), weighted, optionally reduced to the
elected sign (TIES' consensus), summed, normalised and added back to the base.
Papers: task arithmetic arXiv 2212.04089, TIES 2306.01708, DARE 2311.03099, breadcrumbs 2312.06795,
DELLA 2406.11617. Beyond mergekit, consensus_ta / consensus_ties (TALL masks, arXiv 2405.07813, as
mergekitty offers them) keep only the elements of the merged task vector that at least `k` models
find important: |delta_i| > lambda_i * |merged - delta_i|.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from mergesmith.methods import sparsify
from mergesmith.methods.spec import LARGEST_INT, Inputs, MethodEntry, MethodSpec, Param

if TYPE_CHECKING:
    import torch
    from torch import Tensor

Sparsification = Literal["magnitude", "random", "magnitude_outliers", "della"] | None


def _check_epsilon(params: dict[str, Any]) -> str | None:
    for density, epsilon in zip(params["density"], params["epsilon"]):
        if density < 1 and not (0 < density - epsilon and density + epsilon < 1):
            return (
                f"epsilon {epsilon} with density {density}: density - epsilon and density + epsilon must lie in (0, 1)"
            )
    return None


def _spec(
    name: str,
    pretty: str,
    paper: str,
    sparsification: Sparsification,
    consensus: bool,
    normalize: bool,
    rescale: bool,
    tall: bool = False,
) -> MethodSpec:
    params = [
        Param("weight", float, required=True, scope="non_base", doc="scale of this model's task vector"),
        Param(
            "density",
            float,
            default=1.0,
            scope="non_base",
            doc="share of the task vector kept",
            minimum=0.0,
            maximum=1.0,
        ),
        Param("normalize", bool, default=normalize, doc="divide by the sum of the (kept) weights"),
        Param("rescale", bool, default=rescale, doc="restore each sparsified task vector's L1 norm"),
        Param("int8_mask", bool, default=False, doc="store sign masks as int8 (same result)"),
    ]
    if tall:
        params.append(Param("lambda", float, default=1.0, scope="non_base", doc="TALL mask threshold factor"))
        params.append(
            Param("k", int, default=1, doc="models that must find an element important", minimum=0, maximum=LARGEST_INT)
        )
    else:
        params.append(Param("lambda", float, default=1.0, doc="scale of the merged task vector"))
    if sparsification == "magnitude_outliers":
        params.append(
            Param(
                "gamma",
                float,
                default=0.01,
                scope="non_base",
                doc="share of largest magnitudes removed",
                minimum=0.0,
                maximum=1.0,
            )
        )
    if sparsification == "della":
        params.append(
            Param("epsilon", float, default=0.15, scope="non_base", doc="spread of keep probabilities", minimum=0.0)
        )
    return MethodSpec(
        name=name,
        pretty_name=pretty,
        params=tuple(params),
        inputs=Inputs(base="required"),
        reference=paper,
        summary=f"task vectors{', ' + sparsification + ' sparsified' if sparsification else ''}"
        f"{', sign consensus' if consensus else ''}",
        is_random=sparsification in ("random", "della"),
        check=_check_epsilon if sparsification == "della" else None,
    )


def merge_task_vectors(
    base: Tensor,
    tensors: list[Tensor],
    *,
    sparsification: Sparsification,
    consensus: bool,
    weight: list[float],
    density: list[float],
    normalize: bool,
    rescale: bool,
    scale: float | list[float],
    int8_mask: bool,
    gamma: list[float] | None = None,
    epsilon: list[float] | None = None,
    generator: torch.Generator | None = None,
    tall_k: int | None = None,
) -> Tensor:
    import torch

    if not tensors:
        return base
    deltas = base.new_empty((len(tensors), *base.shape))  # (N, *shape), in the inputs' dtype
    for i, tensor in enumerate(tensors):
        delta = tensor - base
        if sparsification == "magnitude":
            delta = sparsify.magnitude(delta, density[i], rescale=rescale)
        elif sparsification == "magnitude_outliers":
            assert gamma is not None
            delta = sparsify.magnitude_outliers(delta, density[i], gamma[i], rescale=rescale)
        elif sparsification == "random":
            assert generator is not None
            delta = sparsify.random_drop(delta, density[i], rescale=rescale, generator=generator)
        elif sparsification == "della":
            assert generator is not None and epsilon is not None
            delta = sparsify.della_magprune(delta, density[i], epsilon[i], rescale=rescale, generator=generator)
        deltas[i] = delta
        del delta
    weights = torch.tensor(weight, dtype=deltas.dtype, device=deltas.device)
    weights = weights.reshape(-1, *([1] * base.dim()))  # (N, 1, ...)
    deltas.mul_(weights)
    if consensus:
        mask = sign_consensus(deltas, mask_dtype=torch.int8 if int8_mask else base.dtype)  # (N, *shape) bool
        mixed = (deltas * mask).sum(dim=0)
        divisor = (weights * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(dim=0)
        divisor = weights.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed /= divisor
    if tall_k is not None:
        assert isinstance(scale, list)
        mixed *= tall_consensus(base, tensors, mixed, factors=scale, k=tall_k)
    elif isinstance(scale, float) and scale != 1:
        mixed *= scale
    return (base + mixed).to(base.dtype)


def tall_consensus(base: Tensor, tensors: list[Tensor], merged: Tensor, *, factors: list[float], k: int) -> Tensor:
    """Consensus mask (arXiv 2405.07813): True where at least k inputs' TALL masks hold the element."""
    import torch

    agreeing = torch.zeros(base.shape, dtype=torch.int32, device=base.device)
    for tensor, factor in zip(tensors, factors):
        delta = tensor - base  # the unsparsified, unweighted task vector
        agreeing += delta.abs() > factor * (merged - delta).abs()
    return agreeing >= k


def sign_consensus(deltas: Tensor, *, mask_dtype: torch.dtype, method: str = "sum") -> Tensor:
    """TIES sign election: True where a delta's sign agrees with the elected sign (>= 0 counts as +)."""
    signs = deltas.sign().to(mask_dtype)
    votes = deltas.sum(dim=0) if method == "sum" else signs.sum(dim=0)
    elected = (votes >= 0).to(mask_dtype) * 2 - 1
    return signs == elected


_CONFIGS: dict[str, tuple[str, str, Sparsification, bool, bool, bool]] = {
    # name: (pretty name, paper, sparsification, sign consensus, normalize default, rescale default)
    "task_arithmetic": ("Task Arithmetic", "https://arxiv.org/abs/2212.04089", None, False, False, False),
    "ties": ("TIES", "https://arxiv.org/abs/2306.01708", "magnitude", True, True, False),
    "dare_ties": ("DARE TIES", "https://arxiv.org/abs/2311.03099", "random", True, False, True),
    "dare_linear": ("Linear DARE", "https://arxiv.org/abs/2311.03099", "random", False, False, True),
    "breadcrumbs": ("Model Breadcrumbs", "https://arxiv.org/abs/2312.06795", "magnitude_outliers", False, False, False),
    "breadcrumbs_ties": (
        "Model Breadcrumbs with TIES",
        "https://arxiv.org/abs/2312.06795",
        "magnitude_outliers",
        True,
        False,
        False,
    ),
    "della": ("DELLA", "https://arxiv.org/abs/2406.11617", "della", True, True, True),
    "della_linear": ("Linear DELLA", "https://arxiv.org/abs/2406.11617", "della", False, False, True),
    "consensus_ta": ("Consensus Task Arithmetic", "https://arxiv.org/abs/2405.07813", None, False, False, False),
    "consensus_ties": ("Consensus TIES", "https://arxiv.org/abs/2405.07813", "magnitude", True, True, False),
}


def _function(sparsification: Sparsification, consensus: bool, tall: bool):
    def run(base: Tensor, tensors: list[Tensor], **params: Any) -> Tensor:
        params["scale"] = params.pop("lambda")
        if tall:
            params["tall_k"] = params.pop("k")
        return merge_task_vectors(base, tensors, sparsification=sparsification, consensus=consensus, **params)

    return run


METHODS: dict[str, MethodEntry] = {
    name: (
        _spec(name, pretty, paper, sparse, consensus, normalize, rescale, tall=name.startswith("consensus_")),
        _function(sparse, consensus, tall=name.startswith("consensus_")),
    )
    for name, (pretty, paper, sparse, consensus, normalize, rescale) in _CONFIGS.items()
}
