"""Stand-in models for the real published recipes in this folder.

Each model a recipe names is mapped onto a tiny model of its family: the same architecture and
layer count as the real one (so every layer_range keeps its meaning), 32 wide, 64 tokens. The
models of one family are "fine-tunes" of one seeded family base (factory.derive_model), so task
vectors are small and realistic; weights are bfloat16, as the published models are.
"""

from __future__ import annotations

import shutil
import sys
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

import yaml  # noqa: E402

from factory import build_model, derive_model, write_tokenizer  # noqa: E402

RECIPES = tuple(sorted(HERE.glob("*.yaml")))

# family -> (architecture, layers): the real models' shapes, narrowed
FAMILIES = {
    "mistral-32": ("mistral", 32),  # Mistral 7B and its fine-tunes
    "mistral-40": ("mistral", 40),  # Mistral Nemo 12B
    "llama-28": ("llama", 28),  # Llama 3.2 3B
    "llama-32": ("llama", 32),  # Llama 3 / 3.1 8B, Llama-3.1-Minitron 4B
    "llama-40": ("llama", 40),  # Llama 2 13B
    "llama-80": ("llama", 80),  # Llama 3 / 3.3 70B
    "gemma2-42": ("gemma2", 42),  # Gemma 2 9B
}

MODELS = {
    "OpenPipe/mistral-ft-optimized-1218": "mistral-32",
    "mlabonne/NeuralHermes-2.5-Mistral-7B": "mistral-32",
    "mistralai/Mistral-7B-v0.1": "mistral-32",
    "samir-fama/SamirGPT-v1": "mistral-32",
    "abacusai/Slerp-CM-mist-dpo": "mistral-32",
    "EmbeddedLLM/Mistral-7B-Merge-14-v0.2": "mistral-32",
    "teknium/OpenHermes-2.5-Mistral-7B": "mistral-32",
    "BioMistral/BioMistral-7B": "mistral-32",
    "/root/top": "mistral-32",
    "/root/top1": "mistral-32",
    "/root/top2": "mistral-32",
    "/root/top3": "mistral-32",
    "alpindale/Llama-3.2-3B": "llama-28",
    "unsloth/Llama-3.2-3B-Instruct": "llama-28",
    "belyakoff/llama-3.2-3b-instruct-fine-tuned": "llama-28",
    "Medragondot/llama-3.2-3b-thinking": "llama-28",
    "spacematt/Gemma-Bloom-2-9B-it": "gemma2-42",
    "spacematt/Gemma-Lingua-2-9B-it": "gemma2-42",
    "spacematt/Gemma-Loom-2-9B-it": "gemma2-42",
    "google/gemma-2-9b": "gemma2-42",
    "testmoto/gemma-2-9b-lora-0": "gemma2-42",
    "testmoto/gemma-2-9b-platypus-02": "gemma2-42",
    "testmoto/gemma-2-9b-lora-aozora": "gemma2-42",
    "meta-llama/Meta-Llama-3-70B-Instruct": "llama-80",
    "meta-llama/Meta-Llama-3-8B-Instruct": "llama-32",
    "Delta-Vector/Holland-4B-V1": "llama-32",
    "NewEden/Holland-V2": "llama-32",
    "anthracite-org/magnum-v2-4b": "llama-32",
    "mistralai/Mistral-Nemo-Base-2407": "mistral-40",
    "Sao10K/MN-12B-Lyra-v4": "mistral-40",
    "nothingiisreal/MN-12B-Starcannon-v2": "mistral-40",
    "Gryphe/Pantheon-RP-1.5-12b-Nemo": "mistral-40",
    "yamatazen/EsotericSage-12B": "mistral-40",
    "DreadPoor/Famino-12B-Model_Stock": "mistral-40",
    "meta-llama/Llama-3.1-8B": "llama-32",
    "Alelcv27/Llama3.1-8B-Base-Code": "llama-32",
    "Alelcv27/Llama3.1-8B-Base-Math": "llama-32",
    "meta-llama/Llama-3.3-70B-Instruct": "llama-80",
    "Doctor-Shotgun/L3.3-70B-Magnum-v4-SE": "llama-80",
    "Sao10K/70B-L3.3-mhnnn-x1": "llama-80",
    "Sao10K/70B-L3.3-Cirrus-x1": "llama-80",
    "EVA-UNIT-01/EVA-LLaMA-3.33-70B-v0.1": "llama-80",
    "Sao10K/L3.3-70B-Euryale-v2.3": "llama-80",
    "psmathur/orca_mini_v3_13b": "llama-40",
    "WizardLM/WizardLM-13B-V1.2": "llama-40",
    "garage-bAInd/Platypus2-13B": "llama-40",
    "mergekit-example/model_a": "mistral-32",
    "mergekit-example/model_b": "mistral-32",
    "mistralai/Mistral-7B-Instruct-v0.2": "mistral-32",
    "WizardLM/WizardMath-13B-V1.0": "llama-40",
    "TheBloke/Llama-2-13B-fp16": "llama-40",
    "arcee-ai/Llama-3.1-SuperNova-Lite": "llama-32",
    "DreadPoor/Heart_Stolen-8B-Model_Stock": "llama-32",
    "Dampfinchen/Llama-3.1-8B-Ultra-Instruct": "llama-32",
    "mergekit-community/L3.1-Athena-l3-8B": "llama-32",
    "rootxhacker/Apollo-exp-8B": "llama-32",
    "mergekit-community/L3.1-Athena-k-8B": "llama-32",
    "mergekit-community/L3.1-Athena-l2-8B": "llama-32",
    "mergekit-community/L3.1-Athena-l-8B": "llama-32",
    "MiniMoog/Mergerix-7b-v0.3": "mistral-32",
    "automerger/Ognoexperiment27Multi_verse_model-7B": "mistral-32",
    "AurelPx/Percival_01-7b-slerp": "mistral-32",
    "automerger/YamshadowExperiment28-7B": "mistral-32",
    "flammenai/Mahou-1.3-llama3-8B": "llama-32",
    "Danielbrdz/Barcenas-Llama3-8b-ORPO": "llama-32",
    "Weyaxi/Einstein-v6.1-Llama3-8B": "llama-32",
}


# TIES recipes whose densities are plain numbers: compare.tied_positions can find their ties, so
# every element away from a tied magnitude is compared with mergekit's bytes
TIE_CHECKS = {
    "mergekit-example-bio-merge": {
        "base": "mistralai/Mistral-7B-v0.1",
        "models": ["mistralai/Mistral-7B-Instruct-v0.2", "BioMistral/BioMistral-7B"],
        "density": 0.5,
        "dtype": "float16",
    },
}


def load_real_recipe(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _seed(name: str) -> int:
    return zlib.crc32(name.encode()) % 10_000


def _family_base(folder: Path, family: str) -> Path:
    arch, layers = FAMILIES[family]
    base = folder / f"family--{family}"
    if not base.exists():
        write_tokenizer(build_model(base, arch, layers=layers, vocab=64, dtype="BF16", seed=_seed(family)))
    return base


def _stand_in(folder: Path, name: str) -> Path:
    base = _family_base(folder, MODELS[name])
    model = derive_model(base, folder / name.strip("/").replace("/", "--"), seed=_seed(name), scale=0.01)
    for path in base.iterdir():  # the family's tokenizer and generation settings
        if path.name not in ("model.safetensors", "config.json"):
            shutil.copy(path, model / path.name)
    return model


def build_inputs(folder: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Build the stand-ins of the named models (all when None); name -> folder."""
    return {name: _stand_in(folder, name) for name in names or MODELS}
