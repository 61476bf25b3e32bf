"""Random models with real architectures' tensor names and shapes: the demo's, the tests' and the
benchmarks' inputs. Values are seeded per tensor name, so a model is the same bytes on every run,
and written shard by shard through the streaming writer, so a 5 GB model needs little memory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergesmith.checkpoints.names import CONFIG, SAFETENSORS_INDEX
from mergesmith.dtypes import tensor_bytes, tensor_nbytes, torch_dtype
from mergesmith.output.shards import ShardWriter, layout_shards


@dataclass(frozen=True)
class SyntheticTensor:
    output: str
    shape: tuple[int, ...]
    written_dtype: str = "BF16"

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.shape, self.written_dtype)


def mistral_config(
    *, layers: int, hidden: int, intermediate: int, heads: int, kv_heads: int, vocab: int
) -> dict[str, Any]:
    """A MistralForCausalLM config (Fimbulvetr-11B-v2 is one: 48 layers, 4096 wide, 32/8 heads)."""
    return {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads,
        "vocab_size": vocab,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "sliding_window": None,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
        "use_cache": True,
        "torch_dtype": "bfloat16",
    }


def llama_style_tensors(config: dict[str, Any], dtype: str = "BF16") -> list[SyntheticTensor]:
    """Tensor names and shapes of a Llama/Mistral checkpoint with this config."""
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = config["num_key_value_heads"] * config.get("head_dim", h // config["num_attention_heads"])
    layer = [
        ("input_layernorm.weight", (h,)),
        ("mlp.down_proj.weight", (h, i)),
        ("mlp.gate_proj.weight", (i, h)),
        ("mlp.up_proj.weight", (i, h)),
        ("post_attention_layernorm.weight", (h,)),
        ("self_attn.k_proj.weight", (kv, h)),
        ("self_attn.o_proj.weight", (h, h)),
        ("self_attn.q_proj.weight", (h, h)),
        ("self_attn.v_proj.weight", (kv, h)),
    ]
    tensors = [SyntheticTensor("model.embed_tokens.weight", (v, h), dtype)]
    for n in range(config["num_hidden_layers"]):
        tensors += [SyntheticTensor(f"model.layers.{n}.{rest}", shape, dtype) for rest, shape in layer]
    tensors.append(SyntheticTensor("model.norm.weight", (h,), dtype))
    if not config.get("tie_word_embeddings", False):
        tensors.append(SyntheticTensor("lm_head.weight", (v, h), dtype))
    return tensors


def write_synthetic_model(
    folder: str | Path,
    config: dict[str, Any],
    tensors: Sequence[SyntheticTensor],
    *,
    seed: int = 0,
    max_shard_bytes: int = 5 * 10**9,
    device: str = "cpu",
) -> Path:
    """Write config.json and seeded random safetensors shards (with an index when sharded).
    `device="cuda"` draws the values on the GPU: far faster for large models (other values than
    the CPU's for the same seed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    layout = layout_shards(tensors, max_shard_bytes)
    writer = ShardWriter([(folder / shard.filename, shard) for shard in layout.shards()])
    try:
        for tensor in tensors:
            values = random_values(tensor.output, tensor.shape, seed=seed, device=device)
            values = values.to(torch_dtype(tensor.written_dtype)).cpu()
            writer.write(tensor.output, 0, tensor_bytes(values))
    finally:
        writer.close(sync=False)
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    if len(layout.filenames) > 1:
        weight_map = {name: layout.filenames[slot.shard] for name, slot in layout.slots.items()}
        index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)}, "weight_map": weight_map}
        (folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return folder


def random_values(name: str, shape: tuple[int, ...], *, seed: int = 0, device: str = "cpu"):
    """float32 values for tensor `name`: norms near 1, everything else N(0, 0.02²)."""
    import torch

    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    generator = torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    values = standard_normal(shape, generator) * 0.02
    if len(shape) == 1 and ("norm" in name or "ln" in name) and name.endswith("weight"):
        values += 1.0
    return values


def standard_normal(shape: tuple[int, ...], generator):
    """float32 N(0, 1) samples that are the same bytes on every x86-64 CPU (for a CPU generator).

    torch draws float32 normals with a vectorised log/cos on AVX2 CPUs and with scalar libm
    elsewhere (AVX-512 and `ATEN_CPU_CAPABILITY=default` included), so float32 `randn` gives other
    values on other CPUs; float64 `randn` always takes the scalar path, and rounding to float32 is
    correctly rounded on every CPU.
    """
    import torch

    return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float64).float()
