"""Record what mergekit 0.1.5 does with each scenario (its own tests' recipes, real published recipes).

    python -m venv /tmp/mk && /tmp/mk/bin/pip install torch==2.13.0 mergekit==0.1.5
    python tests/compat/make_compat_expected.py /tmp/mk/bin/python [suite|real]
    python tests/compat/make_compat_expected.py /tmp/mk/bin/python real --kernel-variants

--kernel-variants runs mergekit on this machine's CPU kernels (torch's AVX2 or AVX-512 code) and,
where a tensor's bytes differ from the recorded ones (a method whose result depends on the
kernels, such as arcee_fusion's softmax near its threshold), adds mergekit's digest on these
kernels to the scenario's `kernel_variants`; the recorded expectations are left as they are.

Builds the stand-in models (suite_models.py, real_recipes/models.py), writes each recipe with the
model names replaced by their folders (mergekit has no --model-path), runs them all in one mergekit
process (mergekit_driver.py) and writes expected_suite.json / expected_real.json: per scenario,
accepted or refused (with mergekit's error), and when accepted its output tensors (dtype, shape,
sha256), config (layer count, vocabulary size, tie flag) and, where the scenario asks, the output
vocabulary and rendered chat. The inputs' digests are stored too, to tell when they change.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import yaml  # noqa: E402
from suite_models import folder_digest, tensor_digests  # noqa: E402

FLAGS = {
    "unsafe_truncate_embeddings": "--unsafe-truncate-embeddings",
    "no_copy_tokenizer": "--no-copy-tokenizer",
    "allow_crimes": "--allow-crimes",
}


def substitute(value: Any, folders: dict[str, Path]) -> Any:
    """The recipe with every model name replaced by its folder (also inside "name@rev" texts)."""
    if isinstance(value, str):
        return str(folders[value]) if value in folders else value
    if isinstance(value, dict):
        return {k: substitute(v, folders) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, folders) for v in value]
    return value


def layer_count(config: dict) -> int | None:
    for part in (config, config.get("text_config") or {}):
        for key in ("num_hidden_layers", "n_layer"):
            if key in part:
                return part[key]
    return None


def vocab_size(config: dict) -> int | None:
    return config.get("vocab_size", (config.get("text_config") or {}).get("vocab_size"))


def masked_digests(out: Path, tie_check: dict) -> dict[str, str]:
    from compare import masked_digests as digests

    return digests(out, tie_check)


def describe_output(out: Path, *, vocabulary: bool, chat: bool) -> dict[str, Any]:
    """What a scenario's output is compared on: tensors, config, and optionally tokens and chat."""
    sys.path.insert(0, str(HERE.parent / "golden"))
    from models import output_vocabulary, rendered_chat

    config = json.loads((out / "config.json").read_text())
    result: dict[str, Any] = {
        "config": {
            "layers": layer_count(config),
            "vocab_size": vocab_size(config),
            "tie_word_embeddings": config.get("tie_word_embeddings"),
        },
        "tensors": tensor_digests(out),
    }
    if vocabulary:
        result["vocabulary"] = output_vocabulary(out)
    if chat:
        result["chat"] = rendered_chat(out)
    return result


def resolve_tie_check(tie_check: dict, inputs: dict[str, Path]) -> dict:
    """A scenario's tie_check with model names replaced by their folders."""
    return {**tie_check, "base": inputs[tie_check["base"]], "models": [inputs[m] for m in tie_check["models"]]}


def run_mergekit(python: str, jobs: list[dict], tmp: Path) -> dict[str, dict]:
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    driver = HERE / "mergekit_driver.py"
    subprocess.run([python, str(driver), str(tmp / "jobs.json"), str(tmp / "results.json")], check=True)
    return json.loads((tmp / "results.json").read_text())


def record(python: str, cases: list[dict], inputs: dict[str, Path], tmp: Path) -> dict[str, Any]:
    """cases: {"name", "recipe" (dict), "flags", "vocabulary", "chat"} -> the expected document."""
    jobs = []
    for i, case in enumerate(cases):
        recipe = tmp / f"recipe-{i}.yaml"
        recipe.write_text(yaml.safe_dump(substitute(case["recipe"], inputs), sort_keys=False))
        out = tmp / f"out-{i}"
        flags = [FLAGS[f] for f in case["flags"]]
        jobs.append({"name": case["name"], "args": [str(recipe), str(out), "--quiet", *flags], "out": str(out)})
    results = run_mergekit(python, jobs, tmp)
    expected: dict[str, Any] = {}
    for case, job in zip(cases, jobs, strict=True):
        entry = dict(results[case["name"]])
        if "error" in entry:  # the input folders (temporary) as the model names the recipe wrote
            for name, folder in sorted(inputs.items(), key=lambda item: -len(str(item[1]))):
                entry["error"] = entry["error"].replace(str(folder), name)
        if entry["accepted"]:
            entry.update(describe_output(Path(job["out"]), vocabulary=case["vocabulary"], chat=case["chat"]))
            if case.get("tie_check"):
                entry["masked_tensors"] = masked_digests(Path(job["out"]), resolve_tie_check(case["tie_check"], inputs))
        expected[case["name"]] = entry
    return expected


def capability(python: str) -> str:
    """The CPU kernels torch picks in `python` (AVX2, AVX512, ...), as the tests' torch reports it."""
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def add_kernel_variants(path: Path, recorded: dict[str, Any], kernels: str, exact: set[str]) -> None:
    """Only scenarios compared exactly: a random method's tensors differ from run to run anyway."""
    document = json.loads(path.read_text())
    added = 0
    for name, entry in document["scenarios"].items():
        now = recorded.get(name, {}) if name in exact else {}
        if not entry.get("accepted") or not now.get("accepted"):
            continue
        differing = {t: d for t, d in now["tensors"].items() if entry["tensors"].get(t) != d}
        if differing:
            entry.setdefault("kernel_variants", {})[kernels] = differing
            added += len(differing)
    path.write_text(json.dumps(document, indent=1) + "\n")
    print(f"{path.name}: {added} tensors differ on {kernels} kernels, recorded as variants")


def make_suite(python: str) -> None:
    from scenarios import SCENARIOS
    from suite_models import build_inputs

    with tempfile.TemporaryDirectory() as tmp:
        inputs = build_inputs(Path(tmp) / "inputs")
        cases = [
            {
                "name": s.name,
                "recipe": s.recipe,
                "flags": s.flags,
                "vocabulary": s.vocabulary,
                "chat": s.chat,
                "tie_check": s.tie_check,
            }
            for s in SCENARIOS
        ]
        scenarios = record(python, cases, inputs, Path(tmp))
        if "--kernel-variants" in sys.argv:
            exact = {s.name for s in SCENARIOS if s.compare == "exact"}
            add_kernel_variants(HERE / "expected_suite.json", scenarios, capability(python), exact)
        else:
            write(HERE / "expected_suite.json", inputs, scenarios)


def make_real(python: str) -> None:
    sys.path.insert(0, str(HERE / "real_recipes"))
    from real_models import RECIPES, TIE_CHECKS, build_inputs, load_real_recipe
    from scenarios import RANDOM_METHODS, TIES_METHODS

    with tempfile.TemporaryDirectory() as tmp:
        inputs = build_inputs(Path(tmp) / "inputs")
        cases = []
        for path in RECIPES:
            recipe = load_real_recipe(path)
            has_tokenizer = any(k in recipe for k in ("tokenizer_source", "tokenizer", "chat_template"))
            case = {"name": path.stem, "recipe": recipe, "flags": (), "vocabulary": has_tokenizer, "chat": False}
            cases.append({**case, "tie_check": TIE_CHECKS.get(path.stem)})
        scenarios = record(python, cases, inputs, Path(tmp))
        if "--kernel-variants" in sys.argv:
            exact = {c["name"] for c in cases if c["recipe"].get("merge_method") not in RANDOM_METHODS + TIES_METHODS}
            add_kernel_variants(HERE / "expected_real.json", scenarios, capability(python), exact)
        else:
            write(HERE / "expected_real.json", inputs, scenarios)


def write(path: Path, inputs: dict[str, Path], scenarios: dict[str, Any]) -> None:
    document = {
        "made_by": "mergekit 0.1.5 (tests/compat/make_compat_expected.py)",
        "inputs": {name: folder_digest(folder) for name, folder in sorted(inputs.items())},
        "scenarios": scenarios,
    }
    path.write_text(json.dumps(document, indent=1) + "\n")
    accepted = sum(s["accepted"] for s in scenarios.values())
    print(f"{path.name}: {len(scenarios)} scenarios, {accepted} accepted by mergekit")


if __name__ == "__main__":
    which = [arg for arg in sys.argv[2:] if not arg.startswith("--")] or ["suite", "real"]
    if "suite" in which:
        make_suite(sys.argv[1])
    if "real" in which:
        make_real(sys.argv[1])
