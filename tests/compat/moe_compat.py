"""What mergekit-moe 0.1.5 writes for MoE configs on the suite's stand-in models, and the tensors of
mergesmith's output in mergekit's terms: mergekit-moe writes transformers 5's fused expert tensors
(`mlp.experts.gate_up_proj` (E, 2I, H), `mlp.experts.down_proj` (E, H, I), router `mlp.gate`),
mergesmith the released checkpoints' per-expert ones (`block_sparse_moe.experts.{e}.w1/w2/w3`); both
are split here into per-expert matrices, named the per-expert way, and digested.

    python tests/compat/moe_compat.py /tmp/mk/bin/mergekit-moe     # rewrites expected_moe.json
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from suite_models import build_inputs, folder_digest  # noqa: E402

EXPECTED = HERE / "expected_moe.json"
MODELS = ["suite/tok_base", "suite/small"]
PROMPTS = {"suite/small": ["the cat sat", "on the mat"], "suite/tok_base": ["in the beginning"]}
SCENARIOS = {
    # cheap_embed: no model run, so exact; two experts, a negative prompt, bf16 and float32 outputs
    "moe/cheap_embed-bf16": {"gate_mode": "cheap_embed", "dtype": "bfloat16", "negative": False},
    "moe/cheap_embed-negative-f32": {"gate_mode": "cheap_embed", "dtype": "float32", "negative": True},
}


def config(name: str, folders: dict[str, Path] | None = None) -> str:
    """The MoE config of a scenario, with model names (or, for mergekit, their folders)."""
    spec = SCENARIOS[name]

    def ref(model: str) -> str:
        return str(folders[model]) if folders else model

    lines = [f"base_model: {ref('suite/tok_base')}", f"gate_mode: {spec['gate_mode']}", f"dtype: {spec['dtype']}",
             "experts_per_token: 2", "experts:"]  # fmt: skip
    for model, prompts in PROMPTS.items():
        lines += [f"  - source_model: {ref(model)}", f"    positive_prompts: {json.dumps(prompts)}"]
        if spec["negative"]:
            lines.append(f"    negative_prompts: {json.dumps(['a dog ran'])}")
    return "\n".join(lines) + "\n"


def per_expert_digests(folder: Path) -> dict[str, str]:
    """sha256 of each router, expert matrix and other tensor's bytes, in per-expert names."""
    from safetensors import safe_open

    from mergesmith.dtypes import tensor_bytes

    found: dict[str, str] = {}

    def put(name: str, tensor) -> None:
        found[name] = hashlib.sha256(bytes(tensor_bytes(tensor.contiguous()))).hexdigest()

    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                prefix, _, rest = name.partition(".mlp.")
                if rest == "experts.gate_up_proj":  # (E, 2I, H): gate rows, then up rows
                    half = t.shape[1] // 2
                    for e in range(t.shape[0]):
                        put(f"{prefix}.block_sparse_moe.experts.{e}.w1.weight", t[e, :half])
                        put(f"{prefix}.block_sparse_moe.experts.{e}.w3.weight", t[e, half:])
                elif rest == "experts.down_proj":
                    for e in range(t.shape[0]):
                        put(f"{prefix}.block_sparse_moe.experts.{e}.w2.weight", t[e])
                elif rest == "gate.weight":
                    put(f"{prefix}.block_sparse_moe.gate.weight", t)
                else:
                    put(name, t)
    return dict(sorted(found.items()))


def main() -> None:
    mergekit_moe = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        folders = build_inputs(Path(tmp) / "models", MODELS)
        recorded = {"inputs": {m: folder_digest(f) for m, f in folders.items()}, "scenarios": {}}
        for name in SCENARIOS:
            (Path(tmp) / "moe.yaml").write_text(config(name, folders))
            out = Path(tmp) / name.replace("/", "--")
            subprocess.run([mergekit_moe, str(Path(tmp) / "moe.yaml"), str(out), "--quiet"], check=True)
            written = json.loads((out / "config.json").read_text())
            recorded["scenarios"][name] = {
                "tensors": per_expert_digests(out),
                "config": {k: written.get(k) for k in ("model_type", "num_local_experts", "num_experts_per_tok")},
            }
    EXPECTED.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
