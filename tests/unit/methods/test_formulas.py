"""Each method against its formula, written out here in plain torch (float64 where it matters)."""

from __future__ import annotations

import math

import pytest
import torch

from mergesmith.methods import METHODS
from mergesmith.methods.spec import UNSET

torch.manual_seed(0)
BASE = torch.randn(16, 24, dtype=torch.float64)
MODELS = [BASE + 0.1 * torch.randn(16, 24, dtype=torch.float64) for _ in range(3)]
DELTAS = [m - BASE for m in MODELS]


def run(name: str, *args, **params):
    return METHODS[name][1](*args, **params)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ta_params(**overrides):
    params = dict(weight=[0.5, 0.3, 0.2], density=[1.0] * 3, normalize=False, rescale=False, int8_mask=False)
    params["lambda"] = 1.0
    params.update(overrides)
    return params


def test_passthrough():
    assert torch.equal(run("passthrough", [BASE], scale=[2.5]), BASE * 2.5)
    assert run("passthrough", [BASE], scale=UNSET) is BASE


def test_linear():
    expected = (0.2 * MODELS[0] + 0.5 * MODELS[1] + 0.3 * MODELS[2]) / 1.0
    torch.testing.assert_close(run("linear", MODELS, weight=[0.2, 0.5, 0.3], normalize=True), expected)
    torch.testing.assert_close(
        run("linear", MODELS, weight=[2.0, 1.0, 1.0], normalize=False), 2 * MODELS[0] + MODELS[1] + MODELS[2]
    )


def test_task_arithmetic():
    expected = BASE + 0.8 * (0.5 * DELTAS[0] + 0.3 * DELTAS[1] + 0.2 * DELTAS[2])
    torch.testing.assert_close(run("task_arithmetic", BASE, MODELS, **ta_params(**{"lambda": 0.8})), expected)


def _ties_reference(density: float, weights: list[float]) -> torch.Tensor:
    trimmed = []
    for d in DELTAS:  # keep the top `density` share by magnitude (random doubles: no ties)
        k = int(density * d.numel())
        threshold = d.abs().flatten().sort(descending=True).values[k - 1]
        trimmed.append(torch.where(d.abs() >= threshold, d, 0) * weights[len(trimmed)])
    stacked = torch.stack(trimmed)
    elected = torch.where(stacked.sum(0) >= 0, 1.0, -1.0)
    agree = torch.sign(stacked) == elected
    weight_sum = (torch.tensor(weights, dtype=torch.float64).reshape(3, 1, 1) * agree).sum(0)
    return BASE + (stacked * agree).sum(0) / torch.where(weight_sum == 0, 1, weight_sum)


def test_ties():
    result = run("ties", BASE, MODELS, **ta_params(density=[0.4] * 3, normalize=True, weight=[1.0, 0.6, 0.3]))
    torch.testing.assert_close(result, _ties_reference(0.4, [1.0, 0.6, 0.3]))


def _sign_consensus_reference(deltas: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    stacked = torch.stack([d * w for d, w in zip(deltas, weights)])
    agree = torch.sign(stacked) == torch.where(stacked.sum(0) >= 0, 1.0, -1.0)
    weight_sum = (torch.tensor(weights, dtype=torch.float64).reshape(-1, 1, 1) * agree).sum(0)
    return BASE + (stacked * agree).sum(0) / torch.where(weight_sum == 0, 1, weight_sum)


def test_dare_ties_at_full_density_is_sign_consensus():
    params = ta_params(weight=[1.0, 0.6, 0.3], normalize=True, rescale=True)
    result = run("dare_ties", BASE, MODELS, **params, generator=generator())
    torch.testing.assert_close(result, _sign_consensus_reference(DELTAS, [1.0, 0.6, 0.3]))


def test_della_at_full_density_is_sign_consensus_scaled():
    params = ta_params(weight=[1.0, 0.6, 0.3], normalize=True, rescale=True, epsilon=[0.1] * 3, **{"lambda": 0.5})
    result = run("della", BASE, MODELS, **params, generator=generator())
    torch.testing.assert_close(result, BASE + 0.5 * (_sign_consensus_reference(DELTAS, [1.0, 0.6, 0.3]) - BASE))


def test_breadcrumbs_ties_is_breadcrumbs_then_sign_consensus():
    n = BASE.numel()
    trimmed = []
    window = slice(n - int(0.6 * n) - int(0.1 * n), n - int(0.1 * n))  # keep 60 % below the top 10 %
    for d in DELTAS:
        order = d.abs().flatten().argsort()
        kept = torch.zeros(n, dtype=torch.float64)
        kept[order[window]] = d.flatten()[order[window]]
        trimmed.append(kept.reshape(BASE.shape))
    params = ta_params(weight=[1.0, 1.0, 1.0], density=[0.6] * 3, gamma=[0.1] * 3, normalize=True)
    result = run("breadcrumbs_ties", BASE, MODELS, **params)
    torch.testing.assert_close(result, _sign_consensus_reference(trimmed, [1.0, 1.0, 1.0]))


def test_consensus_ties():
    trimmed = _ties_reference(0.5, [1.0, 1.0, 1.0])  # TIES-merged model, from the reference above
    merged = trimmed - BASE
    agree = sum((d.abs() > 1.0 * (merged - d).abs()).int() for d in DELTAS)
    params = ta_params(weight=[1.0] * 3, density=[0.5] * 3, normalize=True, **{"lambda": [1.0] * 3}, k=2)
    torch.testing.assert_close(run("consensus_ties", BASE, MODELS, **params), BASE + merged * (agree >= 2))


def test_dare_keeps_about_density_and_rescales_l1():
    params = ta_params(weight=[1.0], density=[0.3], rescale=True)
    delta = run("dare_linear", BASE, MODELS[:1], **params, generator=generator()) - BASE
    kept = delta != 0
    assert 0.22 < kept.double().mean() < 0.38
    torch.testing.assert_close(delta[kept], DELTAS[0][kept] * (delta.abs().sum() / (DELTAS[0][kept].abs().sum())))
    torch.testing.assert_close(delta.abs().sum(), DELTAS[0].abs().sum())


def test_dare_is_seeded():
    params = ta_params(weight=[1.0, 1.0], density=[0.5, 0.5], rescale=True)
    a = run("dare_ties", BASE, MODELS[:2], **params, generator=generator(7))
    b = run("dare_ties", BASE, MODELS[:2], **params, generator=generator(7))
    c = run("dare_ties", BASE, MODELS[:2], **params, generator=generator(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_breadcrumbs_drops_outliers_and_the_smallest():
    params = ta_params(weight=[1.0], density=[0.5], gamma=[0.1])
    delta = run("breadcrumbs", BASE, MODELS[:1], **params) - BASE
    order = DELTAS[0].abs().flatten().argsort()
    n = DELTAS[0].numel()
    keep = order[n - int(0.5 * n) - int(0.1 * n) : n - int(0.1 * n)]  # between the bottom and the top 10 %
    expected = torch.zeros(n, dtype=torch.float64)
    expected[keep] = DELTAS[0].flatten()[keep]
    torch.testing.assert_close(delta.flatten(), expected)


def test_della_prefers_large_magnitudes():
    params = ta_params(weight=[1.0], density=[0.5], epsilon=[0.4], rescale=True)
    big = BASE + torch.linspace(-1, 1, BASE.numel(), dtype=torch.float64).reshape(BASE.shape)
    delta = run("della_linear", BASE, [big], **params, generator=generator()) - BASE
    magnitude = (big - BASE).abs()
    kept = delta != 0
    assert magnitude[kept].mean() > magnitude[~kept].mean()
    torch.testing.assert_close(delta.abs().sum(), magnitude.sum())  # rescaled to the L1 norm


def test_consensus_ta():
    merged = 0.5 * DELTAS[0] + 0.3 * DELTAS[1] + 0.2 * DELTAS[2]
    agree = sum((d.abs() > 0.7 * (merged - d).abs()).int() for d in DELTAS)
    expected = BASE + merged * (agree >= 2)
    params = ta_params(**{"lambda": [0.7] * 3}, k=2)
    torch.testing.assert_close(run("consensus_ta", BASE, MODELS, **params), expected)


def test_slerp():
    a, b = BASE.flatten(), MODELS[0].flatten()
    theta = torch.acos(torch.dot(a / a.norm(), b / b.norm()))
    expected = (math.sin(0.3 * theta) * b + math.sin(0.7 * theta) * a) / math.sin(theta)
    result = run("slerp", BASE.float(), [MODELS[0].float()], t=0.3)
    torch.testing.assert_close(result.double(), expected.reshape(BASE.shape), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        run("slerp", BASE.float(), [BASE.float() * 2], t=0.25), BASE.float() * 1.25
    )  # collinear: lerp


def test_nuslerp_is_slerp_by_weight_share():
    a, b = DELTAS[0].flatten(), DELTAS[1].flatten()
    t = 0.75
    theta = torch.acos(torch.dot(a / a.norm(), b / b.norm()))
    expected = BASE + ((math.sin((1 - t) * theta) * a + math.sin(t * theta) * b) / math.sin(theta)).reshape(BASE.shape)
    result = run("nuslerp", BASE, MODELS[:2], weight=[1.0, 3.0], nuslerp_row_wise=False, nuslerp_flatten=True)
    torch.testing.assert_close(result, expected)


def test_multislerp_of_equal_directions_scales_the_norm():
    unit = BASE / BASE.norm()
    result = run("multislerp", None, [unit * 2, unit * 4], weight=[0.5, 0.5], normalize_weights=True, eps=1e-8)
    torch.testing.assert_close(result, unit * 3)


def test_karcher_of_two_is_the_midpoint_on_the_sphere():
    a, b = MODELS[0].float(), MODELS[1].float()
    ua, ub = a / a.norm(), b / b.norm()
    midpoint = (ua + ub) / (ua + ub).norm()
    result = run("karcher", [a, b], max_iter=50, tol=1e-7)
    torch.testing.assert_close(result, midpoint * (a.norm() + b.norm()) / 2, rtol=1e-4, atol=1e-5)


def test_model_stock():
    offsets = [d.flatten() for d in DELTAS]
    cosines = [torch.dot(x, y) / (x.norm() * y.norm()) for i, x in enumerate(offsets) for y in offsets[i + 1 :]]
    cos = torch.stack(cosines).mean()
    t = 3 * cos / (1 + 2 * cos)
    expected = t * sum(MODELS) / 3 + (1 - t) * BASE
    torch.testing.assert_close(run("model_stock", BASE, MODELS, filter_wise=False), expected)


def test_sce_without_selection():
    tvs = torch.stack(DELTAS)
    energy = tvs.square().mean(dim=(1, 2))
    weights = (energy / energy.sum()).reshape(3, 1, 1)
    agree = torch.sign(tvs) == torch.where(tvs.sum(0) >= 0, 1.0, -1.0)
    expected = BASE + (tvs * weights * agree).sum(0) / (weights * agree).sum(0).clamp(min=1e-6)
    torch.testing.assert_close(run("sce", BASE, MODELS, select_topk=1.0, int8_mask=False), expected)


def test_ram_keeps_unique_changes_and_averages_shared_ones():
    a = BASE.clone().flatten()
    x, y = a.clone(), a.clone()
    x[0], y[0] = a[0] + 1.0, a[0] + 3.0  # shared change: averaged
    x[1] = a[1] + 2.0  # unique change: kept whole
    result = run("ram", a, [x, y], epsilon=1e-5)
    assert result[0] == a[0] + 2.0 and result[1] == a[1] + 2.0 and torch.equal(result[2:], a[2:])


def test_ramplus_boosts_unique_changes_by_overlap():
    a = torch.zeros(4, dtype=torch.float64)
    x = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)  # 1 shared, 1 unique: rho = 1, clamped to 0.8
    y = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)  # 1 shared, 2 unique: rho = 0.5
    result = run("ramplus_tl", a, [x, y], r=0.5, alpha=0.8, epsilon=1e-5)  # boosts 1.4 and 1.25
    expected = torch.tensor([1.0, 1.4, 1.25, 1.25], dtype=torch.float64)
    torch.testing.assert_close(result, expected, check_dtype=False, rtol=1e-6, atol=1e-6)


def test_nearswap():
    a = torch.tensor([0.0, 0.0, 0.0])
    b = torch.tensor([0.001, 0.5, 2.0])
    weight = (0.01 / (a - b).abs()).clamp(0, 1)  # [1, 0.02, 0.005]
    torch.testing.assert_close(run("nearswap", a, [b], t=0.01), weight * b + (1 - weight) * a)


def test_arcee_fusion_takes_the_outliers():
    base = torch.zeros(4, 64)
    other = base.clone()
    other[1, 5] = 5.0  # one large, important change among tiny ones
    other[2] += 1e-4
    result = run("arcee_fusion", base, [other], generator=generator())
    assert result[1, 5] == 5.0 and result.dtype == torch.float32


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_has_a_spec_that_names_itself(name):
    spec = METHODS[name][0]
    assert spec.name == name and spec.summary
