"""Block-scaled FP8 checkpoints (DeepSeek-V3/R1, Qwen3-FP8): the config, the checks, the arithmetic.

Such a checkpoint stores each converted Linear weight W (..., rows, cols) as float8_e4m3fn values Q,
with one scale per b0 x b1 block of it in a tensor of its own, `<W>_scale_inv` (..., ceil(rows / b0),
ceil(cols / b1)), float32. The blocks at the bottom and right edges are cut short; W = Q * scale
over each block. Norms, embeddings, lm_head and `modules_to_not_convert` stay unquantized. Its
config.json says so:

    "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                            "weight_block_size": [128, 128]}

References: DeepSeek-V3's inference/kernel.py (weight_dequant, act_quant) and fp8_cast_bf16.py;
transformers' integrations/finegrained_fp8.py (Fp8Dequantize, Fp8Quantize).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mergesmith.checkpoints.names import LAYER_NAME, fp8_scale_name
from mergesmith.checkpoints.safetensors_file import TensorInfo
from mergesmith.errors import CheckpointError

if TYPE_CHECKING:
    from torch import Tensor

    from mergesmith.checkpoints.checkpoint import Checkpoint

FP8 = "F8_E4M3"  # the safetensors code of float8_e4m3fn, the only FP8 format read with block scales
FP8_MAX = 448.0  # float8_e4m3fn's largest finite value (S.1111.110)
SCALE_DTYPES = ("F32", "BF16", "F16")  # scales as stored: DeepSeek writes float32; any float is read as one
_MAX_BLOCK = 2**31 - 1  # a block size beyond any tensor's: bounded so that index arithmetic stays in int64

_SUPPORTED = (
    "mergesmith reads block-scaled FP8 (quant_method fp8, fmt e4m3, activation_scheme dynamic, "
    "weight_block_size [b0, b1], as DeepSeek-V3/R1 and Qwen3-FP8 ship); merge the model's bf16 release instead"
)
_DAMAGED = "the checkpoint is damaged or was not written by an FP8 quantizer; download it again"


@dataclass(frozen=True)
class BlockScheme:
    """A checkpoint's block-scaled FP8 settings, from its quantization_config."""

    block: tuple[int, int]  # weight_block_size: rows x columns of one block
    power_of_two: bool  # scale_fmt "ue8m0" (DeepSeek-V3.1): every scale is a power of two
    config: Mapping[str, Any]  # the quantization_config as found, for an FP8 output's config.json


@dataclass(frozen=True)
class BlockScales:
    """Where an FP8 weight's scales are: the scale tensor in the same checkpoint, and the block size."""

    tensor: str  # "<weight>_scale_inv"
    block: tuple[int, int]


def read_scheme(config: Mapping[str, Any], model: str) -> BlockScheme | None:
    """A checkpoint's FP8 block scheme; None when it is not quantized. Every other quantization
    (bitsandbytes, GPTQ, AWQ, compressed-tensors, FP8 with per-tensor or static scales, ...) is
    refused with a CheckpointError: its weights are not values mergesmith can read."""
    quantization = config.get("quantization_config")
    if not quantization:
        return None
    method = quantization.get("quant_method", "unknown") if isinstance(quantization, dict) else "unknown"
    if method != "fp8":
        raise CheckpointError(
            f"model {model!r}: its weights are quantized ({method}), and quantized weights cannot be merged",
            hint="merge the original (unquantized) model, then quantize the result",
        )
    assert isinstance(quantization, dict)
    get = quantization.get
    for key, allowed, what in (
        ("fmt", ("e4m3",), "FP8 weights in another format than e4m3"),
        ("activation_scheme", ("dynamic",), "static activation scales (input_scale tensors)"),
        ("scale_fmt", ("float", "ue8m0"), "scales in another format than float or ue8m0"),
        ("expert_dtype", ("fp8",), "experts in another format than FP8"),
    ):
        if get(key) is not None and get(key) not in allowed:
            _refuse(model, f"{key} is {get(key)!r}: {what}")
    if get("modules_to_convert"):
        _refuse(model, "modules_to_convert is set: FP8 embeddings")
    block = get("weight_block_size")
    if block is None:
        _refuse(model, "it has no weight_block_size: FP8 with per-tensor scales")
    if not (isinstance(block, list) and len(block) == 2 and all(_is_block_size(b) for b in block)):
        _refuse(model, f"weight_block_size is {block!r}, not two positive integers")
    return BlockScheme((block[0], block[1]), get("scale_fmt") == "ue8m0", copy.deepcopy(quantization))


def _is_block_size(value: object) -> bool:
    return type(value) is int and 1 <= value <= _MAX_BLOCK


def _refuse(model: str, what: str) -> None:
    raise CheckpointError(
        f"model {model!r}: its weights are quantized (fp8), but its quantization_config cannot be read: {what}",
        hint=_SUPPORTED,
    )


def scale_shape(shape: tuple[int, ...], block: tuple[int, int]) -> tuple[int, ...]:
    """The scales of a weight (..., rows, cols) in blocks of b0 x b1: (..., ceil(rows / b0), ceil(cols / b1))."""
    *leading, rows, cols = shape
    return (*leading, -(-rows // block[0]), -(-cols // block[1]))


def input_scales(checkpoint: Checkpoint, info: TensorInfo) -> BlockScales | None:
    """The block scales of one tensor of a block-scaled FP8 checkpoint, checked against it; None for
    a tensor stored unquantized (norms, embeddings) and for every tensor of another checkpoint."""
    scheme = checkpoint.fp8
    if scheme is None:
        return None
    model, name = checkpoint.ref.text, fp8_scale_name(info.name)
    if info.dtype != FP8:
        if name in checkpoint.weight_map:
            raise CheckpointError(
                f"model {model!r}: {name} holds block scales for {info.name}, but that tensor is {info.dtype}, "
                f"not {FP8}",
                hint=_DAMAGED,
            )
        return None
    if name not in checkpoint.weight_map:
        raise CheckpointError(
            f"model {model!r}: {info.name} is FP8 ({FP8}), but the checkpoint has no {name} to dequantize it with",
            hint=_DAMAGED,
        )
    if len(info.shape) < 2:
        raise CheckpointError(
            f"model {model!r}: {info.name} is FP8 ({FP8}) of shape {list(info.shape)}; block scales need "
            "a weight of at least 2 dimensions",
            hint=_DAMAGED,
        )
    scales = checkpoint.tensor_info(name)
    expected = scale_shape(info.shape, scheme.block)
    if scales.dtype not in SCALE_DTYPES or scales.shape != expected:
        b0, b1 = scheme.block
        raise CheckpointError(
            f"model {model!r}: {name} is {scales.dtype} {list(scales.shape)}, but {info.name} "
            f"{list(info.shape)} in blocks of {b0}x{b1} (weight_block_size) needs float scales of shape "
            f"{list(expected)}",
            hint=_DAMAGED,
        )
    return BlockScales(name, scheme.block)


def quantized_roles(checkpoint: Checkpoint) -> frozenset[str]:
    """What a block-scaled FP8 checkpoint stores as FP8: the tensors that have a scale tensor, by
    layer-relative name for layer tensors (`mlp.down_proj.weight`), else by full name. Read from
    the tensor names alone."""
    prefixes = stack_prefixes(checkpoint)
    suffix = fp8_scale_name("")
    return frozenset(
        tensor_role(name.removesuffix(suffix), prefixes) for name in checkpoint.weight_map if name.endswith(suffix)
    )


def stack_prefixes(checkpoint: Checkpoint) -> frozenset[str]:
    return frozenset(m.stack.prefix for m in checkpoint.structure.modules if m.stack is not None)


def tensor_role(name: str, prefixes: frozenset[str]) -> str:
    """`model.layers.7.mlp.down_proj.weight` -> `model.layers.*.mlp.down_proj.weight` for layers of
    a stack (its prefix one of `prefixes`); other names as they are."""
    match = LAYER_NAME.match(name)
    return f"{match['prefix']}.*.{match['rest']}" if match and match["prefix"] in prefixes else name


def dequantize_blocks(values: Tensor, scales: Tensor, block: tuple[int, int]) -> Tensor:
    """Block-scaled FP8 -> float32: each element of `values` (..., rows, cols) times the scale of
    its block, from `scales` (..., ceil(rows / b0), ceil(cols / b1)). Float32 times float32, as
    DeepSeek-V3's weight_dequant and transformers' Fp8Dequantize compute it.

    >>> dequantize_blocks(torch.ones(3, 3, dtype=torch.float8_e4m3fn), torch.tensor([[2.0, 3.0], [4.0, 5.0]]), (2, 2))
    tensor([[2., 2., 3.],
            [2., 2., 3.],
            [4., 4., 5.]])
    """
    return values.float() * _expand(scales.float(), values.shape, block)


def quantize_blocks(weight: Tensor, block: tuple[int, int], *, power_of_two: bool = False) -> tuple[Tensor, Tensor]:
    """A finite float weight (..., rows, cols) -> block-scaled FP8: values (..., rows, cols)
    float8_e4m3fn and scales (..., ceil(rows / b0), ceil(cols / b1)) float32.

    Per block: scale = amax / 448 (DeepSeek-V3's act_quant), values = weight / scale, clamped to
    +-448 and rounded to nearest, ties to even. Dequantized again, each value is within 2^-4 of
    itself, relatively (e4m3 keeps 3 mantissa bits), or within 2^-10 * scale where it falls among
    e4m3's subnormals (below 2^-6 * scale). A block of zeros, or one whose amax / 448 underflows
    float32, gets scale 1 (its values round to zero or to e4m3's smallest, and come back as such).
    `power_of_two` (scale_fmt "ue8m0") rounds each scale up to a power of two.
    """
    import torch
    import torch.nn.functional as F

    weight = weight.float()
    rows, cols = weight.shape[-2:]
    b0, b1 = max(1, min(block[0], rows)), max(1, min(block[1], cols))  # a block past the edge: the whole dimension
    count_rows, count_cols = -(-rows // b0), -(-cols // b1)
    magnitude = F.pad(weight.abs(), (0, count_cols * b1 - cols, 0, count_rows * b0 - rows))  # zeros: no new max
    blocks = magnitude.unflatten(-1, (count_cols, b1)).unflatten(-3, (count_rows, b0))  # (..., R, b0, C, b1)
    scales = blocks.amax(dim=(-3, -1)) / FP8_MAX  # (..., R, C)
    if power_of_two:
        scales = torch.exp2(torch.ceil(torch.log2(scales)))
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    values = (weight / _expand(scales, weight.shape, block)).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return values, scales


def _expand(scales: Tensor, shape: tuple[int, ...], block: tuple[int, int]) -> Tensor:
    """Per-block values (..., R, C) -> per-element (..., rows, cols), cut at the edges. Indexed, not
    repeated: a block far larger than the weight costs nothing."""
    import torch

    rows, cols = shape[-2:]
    row_blocks = torch.arange(rows, device=scales.device) // block[0]  # (rows,)
    col_blocks = torch.arange(cols, device=scales.device) // block[1]  # (cols,)
    return scales.index_select(-2, row_blocks).index_select(-1, col_blocks)
