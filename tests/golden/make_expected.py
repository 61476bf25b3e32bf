"""Make the golden expected values by running mergekit 0.1.5 in its own venv.

    python -m venv /tmp/mk && /tmp/mk/bin/pip install torch==2.13.0 mergekit==0.1.5
    python tests/golden/make_expected.py /tmp/mk/bin/mergekit-yaml [CASE ...]

For each case folder, writes expected.json: mergekit's output tensors (dtype, shape, sha256), its
config's layer count and tie flag, and a digest of the inputs it was made from.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from models import CASES, build_inputs, folder_digest, output_vocabulary, rendered_chat, tensor_digests  # noqa: E402


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
            subprocess.run([mergekit_yaml, str(recipe), str(out), "--quiet", "--no-copy-tokenizer"], check=True)
            config = json.loads((out / "config.json").read_text())
            expected = {
                "made_by": "mergekit 0.1.5 (tests/golden/make_expected.py)",
                "inputs": {name: folder_digest(inputs[name]) for name in used},
                "config": {k: config.get(k) for k in ("num_hidden_layers", "tie_word_embeddings")},
                "tensors": tensor_digests(out),
            }
            if "tokenizer" in text:  # cases that merge vocabularies: the tokens and the chat template
                expected["config"]["vocab_size"] = config.get("vocab_size")
                expected["vocabulary"] = output_vocabulary(out)
                expected["chat"] = rendered_chat(out)
            (HERE / case / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
            print(f"{case}: {len(expected['tensors'])} tensors")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
