"""The command line: output formats, exit codes, messages without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mergesmith.cli import main


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mergesmith.cli", *args], capture_output=True, text=True)


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(
        "slices:\n- sources: [{model: org/m, layer_range: [0, 2]}]\n"
        "  parameters: {scale: [{filter: o_proj, value: [1.5, 2.5]}]}\nmerge_method: passthrough\ndtype: float32\n"
    )
    return path


def test_plan_prints_one_line_per_tensor(capsys, recipe, make_model):
    model = make_model(layers=2)
    code, out, err = run_main(capsys, "plan", str(recipe), "--model-path", f"org/m={model}")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 3 + 2 * 9
    assert (
        "model.layers.1.self_attn.o_proj.weight F32 [32, 32] stream <- passthrough(scale=2.5) org/m:model.layers.1.self_attn.o_proj.weight"
        in lines
    )
    assert (
        "model.layers.0.mlp.up_proj.weight F32 [64, 32] stream <- passthrough() org/m:model.layers.0.mlp.up_proj.weight"
        in lines
    )


def test_plan_json(capsys, recipe, make_model):
    model = make_model(layers=2)
    code, out, _ = run_main(capsys, "plan", str(recipe), "--model-path", f"org/m={model}", "--json")
    plan = json.loads(out)
    assert code == 0 and plan["method"] == "passthrough" and plan["models"] == ["org/m"]
    entry = next(e for e in plan["entries"] if e["output"] == "model.layers.0.self_attn.o_proj.weight")
    assert entry == {
        "output": "model.layers.0.self_attn.o_proj.weight",
        "method": "passthrough",
        "sources": [{"model": "org/m", "tensor": "model.layers.0.self_attn.o_proj.weight"}],
        "has_base": False,
        "params": {"scale": [1.5]},
        "shape": [32, 32],
        "written_dtype": "F32",
        "compute_dtype": "F32",
        "stored_dtype": "BF16",
        "route": "stream",
    }
    unscaled = next(e for e in plan["entries"] if e["output"] == "model.layers.0.mlp.up_proj.weight")
    assert unscaled["params"] == {"scale": None}
    assert plan["config"]["num_hidden_layers"] == 2


def test_merge_with_shard_size_and_json_summary(capsys, recipe, make_model, tmp_path):
    model = make_model(layers=2, vocab=1000)
    code, out, err = run_main(
        capsys,
        "merge",
        str(recipe),
        str(tmp_path / "o"),
        "--model-path",
        f"org/m={model}",
        "--out-shard-size",
        "0.05M",
        "--json",
    )
    report = json.loads(out)
    assert code == 0 and len(report["shards"]) > 1 and report["tensors"] == 21
    assert "model.safetensors.index.json" in report["files"]


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["plan", "missing.yaml"], 1, "error: missing.yaml: recipe file not found"),
        (["merge"], 2, "Error: give RECIPE and OUT"),
        (["merge", "r.yaml", "o", "--out-shard-size", "lots"], 2, "'lots' is not a size"),
        (["merge", "r.yaml", "o", "--model-path", "nofolder"], 2, "'nofolder': write NAME=DIR"),
        (["frobnicate"], 2, "No such command 'frobnicate'"),
    ],
)
def test_exit_codes_and_messages(capsys, args, code, message):
    got_code, _, err = run_main(capsys, *args)
    assert got_code == code and message in err and "Traceback" not in err


@pytest.mark.parametrize(
    "method, message",
    [
        ("passthru", "error: merge_method: unknown method 'passthru'\n  hint: did you mean 'passthrough'?"),
        ("tie", "error: merge_method: unknown method 'tie'\n  hint: did you mean 'ties'?"),
    ],
)
def test_method_errors(capsys, tmp_path, make_model, method, message):
    (tmp_path / "r.yaml").write_text(f"models: [{{model: m}}]\nmerge_method: {method}\n")
    code, _, err = run_main(capsys, "plan", str(tmp_path / "r.yaml"), "--model-path", f"m={make_model()}")
    assert code == 1 and err.startswith(message)


def test_help_shows_examples():
    result = cli("merge", "--help")
    assert result.returncode == 0 and "mergesmith merge recipe.yaml ./merged --model-path" in result.stdout


def test_demo_runs_offline(tmp_path):
    result = cli("demo", "--keep", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "check: 47 layers, 426 tensors: 86 scaled" in result.stdout
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["num_hidden_layers"] == 47


@pytest.mark.parametrize("args", [["--help"], ["methods", "--json"], ["plan", "RECIPE", "--model-path", "MODEL"]])
def test_fast_commands_do_not_import_torch(tmp_path, make_model, recipe, args):
    model = make_model(layers=2)
    args = [a.replace("RECIPE", str(recipe)).replace("MODEL", f"org/m={model}") for a in args]
    probe = (
        "import sys\nfrom mergesmith.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
        "print('torch imported' if 'torch' in sys.modules else 'no torch', code, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True)
    assert result.stderr.strip().endswith("no torch 0"), result.stderr


def test_device_cuda_without_a_gpu_is_a_clear_error(capsys, recipe, make_model, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    model = make_model(layers=2)
    out = tmp_path / "out"
    code, _, err = run_main(
        capsys, "merge", str(recipe), str(out), "--model-path", f"org/m={model}", "--device", "cuda"
    )
    assert code == 1 and "--device cuda: no CUDA device is available to torch" in err and "Traceback" not in err
    assert not out.exists()
    code, _, err = run_main(capsys, "merge", str(recipe), str(out), "--model-path", f"org/m={model}", "--device", "tpu")
    assert code == 1 and "--device tpu: expected cpu, cuda, cuda:N or auto" in err
    code, _, _ = run_main(capsys, "merge", str(recipe), str(out), "--model-path", f"org/m={model}", "--device", "auto")
    assert code == 0 and (out / "config.json").exists()


@pytest.mark.parametrize("device", [[], ["--device", "auto"]])
def test_a_scaling_passthrough_merge_never_imports_torch(tmp_path, make_model, device):
    """Copies and scaled bf16 tensors need only numpy: the seed recipe's kind of merge skips
    torch's seconds-long import, and writes the same bytes (tests/golden/seed_passthrough).
    `--device auto` does not import torch to look for a GPU that nothing would run on."""
    model = make_model(layers=2)
    recipe = tmp_path / "scale.yaml"
    recipe.write_text(
        "slices:\n- sources: [{model: org/m, layer_range: [0, 2]}]\nmerge_method: passthrough\n"
        "parameters:\n  scale:\n    - filter: o_proj\n      value: [1.5, 4.0]\n    - value: 1.0\n"
    )
    probe = (
        "import sys\nfrom mergesmith.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
        "print('torch imported' if 'torch' in sys.modules else 'no torch', code, file=sys.stderr)\n"
    )
    args = ["-q", "merge", str(recipe), str(tmp_path / "out"), "--model-path", f"org/m={model}", *device]
    result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True)
    assert result.stderr.strip().endswith("no torch 0"), result.stderr

    import torch
    from safetensors.torch import load_file

    merged, source = load_file(tmp_path / "out" / "model.safetensors"), load_file(model / "model.safetensors")
    name = "model.layers.1.self_attn.o_proj.weight"  # t = 1: scale 4.0
    assert torch.equal(merged[name], source[name] * 4.0)
    assert torch.equal(
        merged["model.layers.1.mlp.down_proj.weight"], source["model.layers.1.mlp.down_proj.weight"] * 1.0
    )


def test_raw_scaling_matches_torch_bit_for_bit():
    import torch

    from mergesmith.methods.passthrough import scale_raw

    generator = torch.Generator().manual_seed(0)
    values = torch.randn(200_000, generator=generator) * torch.exp(torch.randn(200_000, generator=generator) * 15)
    values[:6] = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-40])
    for dtype, code in ((torch.bfloat16, "BF16"), (torch.float16, "F16"), (torch.float32, "F32")):
        x = values.to(dtype)
        for factor in (1.5, 1.8333333333333333, 4.0, 0.1, 3e38):
            expected = x * factor
            actual = torch.frombuffer(
                bytearray(scale_raw(x.view(torch.uint8).numpy().tobytes(), code, factor)), dtype=dtype
            )
            # every number bit for bit; a NaN stays NaN (torch itself writes NaN's bits two ways,
            # 0x7FC0 or 0xFFFF in bfloat16, depending on which of its loops met it)
            number = ~expected.isnan()
            bits = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}[dtype]
            assert torch.equal(actual.view(bits)[number], expected.view(bits)[number]), (code, factor)
            assert actual[~number].isnan().all(), (code, factor)
