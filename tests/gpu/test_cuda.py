"""--device cuda: the heavy methods on the GPU give the CPU's results within floating-point
tolerance, and seeded random methods repeat themselves. Skipped without a CUDA GPU (CI has none);
benchmarks/gpu.py runs these on a GPU machine."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
sys.path.insert(0, str(GOLDEN))

from models import build_inputs  # noqa: E402

from mergesmith.api import merge  # noqa: E402
from mergesmith.execute import MergeOptions  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DETERMINISTIC = [
    "task_arithmetic",
    "ties",
    "breadcrumbs",
    "breadcrumbs_ties",
    "slerp",
    "nuslerp",
    "multislerp",
    "karcher",
    "model_stock",
    "sce",
    "ram",
    "ramplus_tl",
    "nearswap",
]
RANDOM = ["dare_ties", "dare_linear", "della", "della_linear"]
RANDOM_RECIPE = """models:
  - {model: golden/ft1, parameters: {weight: 0.5}}
  - {model: golden/ft2, parameters: {weight: 0.3}}
base_model: golden/base
merge_method: METHOD
parameters: {density: 0.5, epsilon: 0.1}
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    return build_inputs(tmp_path_factory.mktemp("gpu-inputs"))


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    result: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        result.update(load_file(path))
    return result


def run(case: str, inputs, out: Path, device: str, seed: int | None = None) -> dict[str, torch.Tensor]:
    options = MergeOptions(device=device, random_seed=seed)
    recipe = GOLDEN / f"method_{case}" / "recipe.yaml"
    if case in RANDOM:  # the golden recipes keep every element (density 1): draw for real here
        recipe = out.parent / f"{case}.yaml"
        text = RANDOM_RECIPE.replace("METHOD", case)
        recipe.write_text(text if case.startswith("della") else text.replace(", epsilon: 0.1", ""))
    merge(recipe, out, model_paths=inputs, options=options)
    return tensors(out)


@pytest.mark.parametrize("method", DETERMINISTIC)
def test_gpu_matches_cpu(method: str, inputs, tmp_path: Path) -> None:
    cpu = run(method, inputs, tmp_path / "cpu", "cpu")
    gpu = run(method, inputs, tmp_path / "gpu", "cuda")
    assert sorted(cpu) == sorted(gpu)
    for name in cpu:
        a, b = cpu[name].float(), gpu[name].float()
        close = torch.isclose(a, b, rtol=1e-4, atol=1e-6)
        # sums run in another order on the GPU: an element whose TIES sign vote is near zero may
        # be elected the other way; allow one in ten thousand such elements, no more
        assert close.float().mean() > 0.9999, (name, (a - b).abs().max().item())


@pytest.mark.parametrize("method", RANDOM)
def test_seeded_random_methods_repeat_on_the_gpu(method: str, inputs, tmp_path: Path) -> None:
    first = run(method, inputs, tmp_path / "a", "cuda", seed=7)
    again = run(method, inputs, tmp_path / "b", "cuda", seed=7)
    other = run(method, inputs, tmp_path / "c", "cuda", seed=8)
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert any(not torch.equal(first[n], other[n]) for n in first)


def test_elementwise_methods_on_the_gpu_agree_with_the_cpu(inputs) -> None:
    """--device cuda keeps elementwise methods on the CPU (they are I/O-bound); their functions must
    still give the CPU's values when handed GPU tensors (benchmarks/gpu.py does)."""
    from mergesmith.methods.fusion import nearswap
    from mergesmith.methods.linear import linear

    base, ft1, ft2 = (tensors(inputs[name]) for name in ("golden/base", "golden/ft1", "golden/ft2"))
    for name in base:
        models = [base[name], ft1[name], ft2[name]]
        cpu = linear(models, weight=[0.5, 0.3, 0.2], normalize=True)
        gpu = linear([t.cuda() for t in models], weight=[0.5, 0.3, 0.2], normalize=True)
        assert gpu.device.type == "cuda"
        # the GPU may fuse multiply and add where the CPU does not: a rounding apart, no more
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=2e-7, atol=1e-9, msg=name)
        cpu = nearswap(base[name], [ft1[name]], t=0.005)
        gpu = nearswap(base[name].cuda(), [ft1[name].cuda()], t=0.005)
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=2e-7, atol=1e-9, msg=name)
        assert not torch.equal(cpu, base[name]), "t too small: nearswap took nothing from ft1"


def test_fp8_merge_on_the_gpu_gives_the_cpus_bytes(make_model, tmp_path: Path) -> None:
    """FP8 inputs dequantized on the GPU and the output quantized there again (--device cuda routes
    FP8 entries there, even linear's): with weights 0.5 every product is exact, and each remaining
    step (the sum, amax / 448, weight / scale, the cast to float8_e4m3fn) is one IEEE rounding to
    nearest on either device, so the bytes are the CPU's."""
    from factory import fp8_model

    models = {
        name: fp8_model(make_model(name, "qwen3", layers=2, seed=seed), tmp_path / f"{name}-fp8", (24, 24))
        for name, seed in [("a", 1), ("b", 2)]
    }
    recipe = tmp_path / "fp8.yaml"
    recipe.write_text(
        "models: [{model: a, parameters: {weight: 0.5}}, {model: b, parameters: {weight: 0.5}}]\n"
        "merge_method: linear\ndtype: float32\nout_dtype: float8_e4m3fn\n"
    )
    merge(recipe, tmp_path / "cpu", model_paths=models, options=MergeOptions(device="cpu"))
    merge(recipe, tmp_path / "gpu", model_paths=models, options=MergeOptions(device="cuda"))
    cpu, gpu = tensors(tmp_path / "cpu"), tensors(tmp_path / "gpu")
    assert sorted(cpu) == sorted(gpu) and any(t.dtype == torch.float8_e4m3fn for t in gpu.values())
    for name in cpu:
        assert torch.equal(cpu[name].view(torch.uint8), gpu[name].view(torch.uint8)), name
