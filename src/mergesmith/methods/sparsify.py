"""Sparsification of task vectors: magnitude top-k, outlier trimming, random drop (DARE), DELLA.

Selections by magnitude use `kthvalue` thresholds on the CPU, not a full sort (a GPU sorts: see
rank_window_by_sort), and rank equal magnitudes by position, as a stable ascending sort would (so
top-k keeps the later of two equal elements at the threshold); the result never depends on a
sort's internal order. Real checkpoints have many equal magnitudes (bf16 holds 256 values per
octave), and mergekit 0.1.5's unstable `argsort` picks among equal values arbitrarily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import Tensor


def magnitude(tensor: Tensor, density: float, *, rescale: bool) -> Tensor:
    """Keep the `density` share of elements with the largest magnitude (at least one)."""
    import torch

    if density >= 1:
        return tensor
    if density <= 0 or tensor.numel() == 0:
        return torch.zeros_like(tensor)
    count = tensor.numel()
    keep = max(1, int(density * count))
    magnitudes = _magnitudes(tensor)  # (numel,)
    # Keeping the `keep` largest = dropping the `count - keep` smallest, by ascending rank.
    mask = rank_window(magnitudes, count - keep, count).to(tensor.dtype)
    return _masked(tensor, mask.reshape(tensor.shape), rescale)


def magnitude_outliers(tensor: Tensor, density: float, gamma: float, *, rescale: bool) -> Tensor:
    """Model Breadcrumbs: drop the `gamma` share of largest magnitudes, then the smallest, keeping `density`."""
    if density >= 1:
        return tensor
    count = tensor.numel()
    target, top = int(density * count), int(gamma * count)
    bottom = max(0, count - target - top)  # fewer outliers go when density demands it
    mask = rank_window(_magnitudes(tensor), bottom, bottom + target).to(tensor.dtype)
    return _masked(tensor, mask.reshape(tensor.shape), rescale)


def random_drop(tensor: Tensor, density: float, *, rescale: bool, generator: torch.Generator) -> Tensor:
    """DARE: keep each element with probability `density`."""
    import torch

    if density >= 1:
        return tensor
    work = _work_dtype(tensor)
    mask = torch.bernoulli(torch.full_like(tensor, density, dtype=work), generator=generator)
    return _masked(tensor.to(work), mask, rescale).to(tensor.dtype)


def della_magprune(
    tensor: Tensor, density: float, epsilon: float, *, rescale: bool, generator: torch.Generator
) -> Tensor:
    """DELLA: keep each element with a probability that grows with its magnitude's rank in its row."""
    import torch

    if density >= 1:
        return tensor
    if density <= 0:
        return torch.zeros_like(tensor)
    shape, work = tensor.shape, _work_dtype(tensor)
    rows = tensor if tensor.dim() >= 2 else tensor.unsqueeze(0)  # (R, C)
    # 1-based rank of each magnitude within its row; equal magnitudes ranked by position.
    order = torch.sort(rows.abs(), dim=1, stable=True).indices
    ranks = order.argsort(dim=1, stable=True).to(work) + 1
    low, high = ranks.min(dim=1, keepdim=True).values, ranks.max(dim=1, keepdim=True).values
    rank_share = ((ranks - low) / (high - low)).clamp(0, 1)
    probabilities = (density - epsilon) + rank_share * 2 * epsilon
    mask = torch.bernoulli(probabilities, generator=generator).to(work)
    return _masked(rows.to(work), mask, rescale).to(tensor.dtype).reshape(shape)


def rank_window(values: Tensor, start: int, stop: int) -> Tensor:
    """Boolean mask of the elements whose ascending rank r satisfies start <= r < stop.

    Ranks order by value, then by position, as a stable sort would. Each bound costs one
    `kthvalue` (the value at that rank) and a pass over the elements equal to it. `values` is 1-D.
    """
    import torch

    count = values.numel()
    start, stop = max(0, start), min(count, stop)
    if stop <= start:
        return torch.zeros(count, dtype=torch.bool, device=values.device)
    if values.is_cuda:
        return rank_window_by_sort(values, start, stop)
    mask = torch.ones(count, dtype=torch.bool, device=values.device)
    if start > 0:
        below, equal, first = _split_at_rank(values, start)
        mask = ~below
        mask[equal[: start - first]] = False  # equal values ranked before `start`
    if stop < count:
        below, equal, first = _split_at_rank(values, stop - 1)
        mask &= below
        mask[equal[: stop - first]] = True  # equal values ranked before `stop`...
        mask[equal[: max(0, start - first)]] = False  # ...but not before `start`
    return mask


def rank_window_by_sort(values: Tensor, start: int, stop: int) -> Tensor:
    """rank_window through a stable sort: the same mask. On a GPU a radix sort of the whole tensor
    is far faster than `kthvalue`, which there works through one slice with one thread block."""
    import torch

    order = torch.sort(values, stable=True).indices
    mask = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
    mask[order[max(0, start) : stop]] = True
    return mask


def _split_at_rank(values: Tensor, rank: int) -> tuple[Tensor, Tensor, int]:
    """(values < v, positions of values == v, rank of the first of them), v being the value at `rank`."""
    threshold = values.kthvalue(rank + 1).values
    below = values < threshold
    equal = (values == threshold).nonzero().squeeze(1)
    return below, equal, int(below.sum())


def _magnitudes(tensor: Tensor) -> Tensor:
    import torch

    return tensor.abs().reshape(-1).to(torch.float32 if tensor.dtype != torch.float64 else torch.float64)


def _work_dtype(tensor: Tensor) -> torch.dtype:
    import torch

    # torch.bernoulli has no CPU float16 kernel; bfloat16 stays as it is (as in mergekit 0.1.5).
    return tensor.dtype if tensor.dtype in (torch.bfloat16, torch.float64, torch.float32) else torch.float32


def _masked(tensor: Tensor, mask: Tensor, rescale: bool, eps: float = 1e-7) -> Tensor:
    """tensor * mask, rescaled to the tensor's L1 norm when `rescale` (DARE's 1/p, exactly)."""
    masked = tensor * mask
    if not rescale:
        return masked
    before, after = tensor.abs().sum(), masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked * (before / after)
