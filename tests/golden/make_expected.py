"""Make the golden expected values by running mergekit 0.1.5 in its own venv.

    python -m venv /tmp/mk && /tmp/mk/bin/pip install torch==2.13.0 mergekit==0.1.5
    python tests/golden/make_expected.py /tmp/mk/bin/mergekit-yaml [CASE ...]

For each case folder, writes expected.json: mergekit's output tensors (dtype, shape, sha256), its
config's layer count and tie flag, and a digest of the inputs it was made from.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from models import CASES, GOLDEN_THREADS, build_inputs, folder_digest, output_vocabulary, rendered_chat, tensor_digests  # noqa: E402


def main(mergekit_yaml: str, only: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        inputs = build_inputs(Path(tmp) / "inputs")
        for case in [c for c in CASES if not only or c in only]:
            text = (HERE / case / "recipe.yaml").read_text()
            used = sorted(name for name in inputs if name in text)
            for name in sorted(used, key=len, reverse=True):  # golden/ft1 before golden/f...
                text = text.replace(name, str(inputs[name]))  # mergekit has no --model-path
            recipe = Path(tmp) / f"{case}.yaml"
            recipe.write_text(text)
            out = Path(tmp) / f"{case}-out"
            _run_mergekit(mergekit_yaml, recipe, out)
            config = json.loads((out / "config.json").read_text())
            expected = {
                "made_by": "mergekit 0.1.5 (tests/golden/make_expected.py)",
                "inputs": {name: folder_digest(inputs[name]) for name in used},
                "config": {k: config.get(k) for k in ("num_hidden_layers", "tie_word_embeddings")},
                "tensors": tensor_digests(out),
            }
            # mergekit's own bytes can depend on the CPU's kernels: keep what its scalar kernels give
            scalar = Path(tmp) / f"{case}-scalar"
            _run_mergekit(mergekit_yaml, recipe, scalar, ATEN_CPU_CAPABILITY="default")
            if tensor_digests(scalar) != expected["tensors"]:
                expected["tensors_scalar_kernels"] = tensor_digests(scalar)
            if "arcee_fusion" in text:
                expected["fusion_mask"] = fusion_mask(out, inputs[_base_model(text, inputs)])
            if "tokenizer" in text:  # cases that merge vocabularies: the tokens and the chat template
                expected["config"]["vocab_size"] = config.get("vocab_size")
                expected["vocabulary"] = output_vocabulary(out)
                expected["chat"] = rendered_chat(out)
            (HERE / case / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
            print(f"{case}: {len(expected['tensors'])} tensors")


def _run_mergekit(mergekit_yaml: str, recipe: Path, out: Path, **env: str) -> None:
    threads = {"OMP_NUM_THREADS": str(GOLDEN_THREADS), "MKL_NUM_THREADS": str(GOLDEN_THREADS)}
    command = [mergekit_yaml, str(recipe), str(out), "--quiet", "--no-copy-tokenizer"]
    subprocess.run(command, check=True, env={**os.environ, **threads, **env})


def _base_model(text: str, inputs: dict[str, Path]) -> str:
    line = next(line for line in text.splitlines() if line.startswith("base_model:"))
    path = line.split(":", 1)[1].strip()
    return next(name for name, folder in inputs.items() if str(folder) == path)


def fusion_mask(out: Path, base: Path) -> dict[str, list[int]]:
    """arcee_fusion: per tensor, the flat indices where mergekit's output is not the base's value
    (where it took the other model's). With the inputs, they give mergekit's output back exactly."""
    from safetensors.torch import load_file

    merged, original = load_file(out / "model.safetensors"), load_file(base / "model.safetensors")
    return {
        name: (merged[name] != original[name]).reshape(-1).nonzero().reshape(-1).tolist() for name in sorted(merged)
    }


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
