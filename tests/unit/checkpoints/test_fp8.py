"""checkpoints/fp8.py: block-scaled FP8 arithmetic and config, against hand-worked values,
transformers' own dequantization (transformers 5.24, on the CPU) and DeepSeek-V3's formulas."""

from __future__ import annotations

import pytest
import torch

from mergesmith.checkpoints.fp8 import (
    BlockScheme,
    dequantize_blocks,
    quantize_blocks,
    read_scheme,
    scale_shape,
    tensor_role,
)
from mergesmith.errors import CheckpointError

E4M3 = torch.float8_e4m3fn


def random_fp8(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Every finite float8_e4m3fn value is as likely (random bytes, NaN's two patterns left out)."""
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    raw[(raw & 0x7F) == 0x7F] = 0x00
    return raw.view(E4M3)


def random_scales(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator) * 0.01 + 1e-4


def test_dequantize_hand_worked_with_edge_blocks():
    # 3 x 5 in 2 x 2 blocks: scales 2 x 3; the last row and column are blocks cut short
    values = torch.tensor([[1, 2, -0.5, 4, 1.5], [0, -1, 3, 0.25, -2], [6, 0.5, -4, 1, 8]]).to(E4M3)
    scales = torch.tensor([[0.5, 2.0, 8.0], [3.0, 0.25, 1.0]])
    expected = torch.tensor(
        [
            [0.5, 1.0, -1.0, 8.0, 12.0],  # 1*0.5, 2*0.5, -0.5*2, 4*2, 1.5*8
            [0.0, -0.5, 6.0, 0.5, -16.0],  # 0*0.5, -1*0.5, 3*2, 0.25*2, -2*8
            [18.0, 1.5, -1.0, 0.25, 8.0],  # 6*3, 0.5*3, -4*0.25, 1*0.25, 8*1
        ]
    )
    result = dequantize_blocks(values, scales, (2, 2))
    assert result.dtype == torch.float32 and torch.equal(result, expected)


def test_dequantize_stacked_experts_block_by_block():
    values, scales = random_fp8((3, 37, 50), seed=1), random_scales((3, 3, 4), seed=2)
    stacked = dequantize_blocks(values, scales, (16, 16))
    for expert in range(3):
        assert torch.equal(stacked[expert], dequantize_blocks(values[expert], scales[expert], (16, 16)))


def test_dequantize_matches_transformers_with_edge_blocks():
    """transformers' _dequantize_fp8_weight (its FP8 backward pass; it crops edge blocks)."""
    from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight

    values, scales = random_fp8((37, 50), seed=3), random_scales((3, 4), seed=4)
    expected = _dequantize_fp8_weight(values, scales, [16, 16], torch.float32)
    assert torch.equal(dequantize_blocks(values, scales, (16, 16)), expected)


def test_dequantize_matches_transformers_loader():
    """transformers' Fp8Dequantize, what from_pretrained runs on a CPU (whole blocks only: it
    derives the block from the scale grid and refuses weights it does not divide)."""
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize

    values, scales = random_fp8((48, 64), seed=5), random_scales((3, 2), seed=6)
    expected = Fp8Dequantize(None)._dequantize_one(values, scales, output_dtype=torch.float32)
    assert torch.equal(dequantize_blocks(values, scales, (16, 32)), expected)


def block_weight(shape: tuple[int, int], seed: int) -> torch.Tensor:
    """Values whose size differs by orders of magnitude between rows, one block all zeros."""
    generator = torch.Generator().manual_seed(seed)
    magnitude = 10.0 ** torch.randint(-6, 4, (shape[0], 1), generator=generator)
    weight = torch.randn(shape, generator=generator) * magnitude
    weight[:16, 16:32] = 0.0
    return weight


def test_quantize_is_deepseeks_formula_block_by_block():
    weight = block_weight((37, 50), seed=7)
    values, scales = quantize_blocks(weight, (16, 16))
    assert values.dtype == E4M3 and values.shape == (37, 50)
    assert scales.dtype == torch.float32 and scales.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            rows, cols = slice(16 * i, 16 * (i + 1)), slice(16 * j, 16 * (j + 1))
            tile = weight[rows, cols]
            scale = tile.abs().max() / 448 if tile.abs().max() > 0 else torch.tensor(1.0)
            assert scales[i, j] == scale, (i, j)  # exactly amax / 448
            expected = (tile / scale).clamp(-448, 448).to(E4M3)
            assert torch.equal(values[rows, cols].view(torch.uint8), expected.view(torch.uint8)), (i, j)
    assert scales[0, 1] == 1.0 and torch.equal(values[:16, 16:32].float(), torch.zeros(16, 16))


def test_round_trip_is_within_e4m3_precision():
    """e4m3 keeps 3 mantissa bits: rounding to nearest moves a normal value by at most 2^-4 of
    itself, a subnormal one (below 2^-6 * scale) by at most 2^-10 * scale (half of 2^-9)."""
    weight = block_weight((37, 50), seed=8)
    values, scales = quantize_blocks(weight, (16, 16))
    back = dequantize_blocks(values, scales, (16, 16))
    scale = scales.repeat_interleave(16, 0)[:37].repeat_interleave(16, 1)[:, :50]
    error = (back - weight).abs()
    bound = 2**-4 * weight.abs() + 2**-10 * scale
    assert bool((error <= bound * (1 + 2**-20)).all()), f"worst: {(error / bound).max()}"
    normal = weight.abs() >= 2**-6 * scale
    relative = (error / weight.abs())[normal]
    assert 2**-5 < relative.max() <= 2**-4 * (1 + 2**-20)  # the bound is reached in practice, not loose


def test_values_already_in_fp8_come_back_unchanged():
    """Each block holding a +-448 value, scales powers of two: quantizing the dequantized weight
    gives the same values and scales."""
    values = random_fp8((37, 50), seed=9)
    values.view(torch.uint8)[::16, ::16] = 0x7E  # 448 in every block
    scales = 2.0 ** torch.randint(-20, 3, (3, 4)).float()
    again, again_scales = quantize_blocks(dequantize_blocks(values, scales, (16, 16)), (16, 16))
    assert torch.equal(again_scales, scales)
    assert torch.equal(again.view(torch.uint8), values.view(torch.uint8))


def test_power_of_two_scales():
    """scale_fmt ue8m0: the smallest power of two at or above amax / 448, so no value is clamped."""
    weight = block_weight((37, 50), seed=10)
    values, scales = quantize_blocks(weight, (16, 16), power_of_two=True)
    plain = quantize_blocks(weight, (16, 16))[1]
    assert torch.equal(torch.exp2(torch.log2(scales).round()), scales)
    zero = plain == 1.0
    assert bool((scales[~zero] >= plain[~zero]).all() and (scales[~zero] < 2 * plain[~zero]).all())
    assert bool((values.float().abs() <= 448).all())


def test_a_block_larger_than_the_weight_is_the_whole_weight():
    weight = torch.tensor([[1.0, -3.0, 2.0], [0.5, 4.0, -1.0]])
    values, scales = quantize_blocks(weight, (128, 128))
    assert torch.equal(scales, torch.tensor([[4.0 / 448]]))
    assert torch.equal(
        dequantize_blocks(values, scales, (128, 128)), (weight / (4.0 / 448)).to(E4M3).float() * (4.0 / 448)
    )


@pytest.mark.parametrize(
    "shape, block, expected",
    [
        ((576, 7168), (128, 128), (5, 56)),  # DeepSeek-V3's kv_a_proj_with_mqa: 576 rows, a cut last block
        ((7168, 18432), (128, 128), (56, 144)),
        ((2, 37, 50), (16, 16), (2, 3, 4)),  # stacked experts
        ((5, 3), (128, 128), (1, 1)),
    ],
)
def test_scale_shape(shape, block, expected):
    assert scale_shape(shape, block) == expected


def test_tensor_role():
    stacks = frozenset({"model.layers", "model.visual.blocks"})
    assert tensor_role("model.layers.7.mlp.down_proj.weight", stacks) == "model.layers.*.mlp.down_proj.weight"
    assert tensor_role("model.visual.blocks.3.mlp.fc1.weight", stacks) == "model.visual.blocks.*.mlp.fc1.weight"
    assert tensor_role("model.embed_tokens.weight", stacks) == "model.embed_tokens.weight"
    assert tensor_role("model.mtp.0.proj.weight", stacks) == "model.mtp.0.proj.weight"


DEEPSEEK = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}
SUPPORTED = (
    "mergesmith reads block-scaled FP8 (quant_method fp8, fmt e4m3, activation_scheme dynamic, "
    "weight_block_size [b0, b1], as DeepSeek-V3/R1 and Qwen3-FP8 ship); merge the model's bf16 release instead"
)
UNREADABLE = "model 'm': its weights are quantized (fp8), but its quantization_config cannot be read: "


@pytest.mark.parametrize(
    "quantization, expected",
    [
        (None, None),
        ({}, None),  # empty: as good as none
        (DEEPSEEK, BlockScheme((128, 128), False, DEEPSEEK)),  # DeepSeek-V3/R1's config.json
        (
            {**DEEPSEEK, "modules_to_not_convert": ["lm_head"]},  # Qwen3-FP8-style: kept in the copy
            BlockScheme((128, 128), False, {**DEEPSEEK, "modules_to_not_convert": ["lm_head"]}),
        ),
        ({**DEEPSEEK, "scale_fmt": "ue8m0"}, BlockScheme((128, 128), True, {**DEEPSEEK, "scale_fmt": "ue8m0"})),
        (
            {"quant_method": "fp8", "weight_block_size": [64, 32]},
            BlockScheme((64, 32), False, {"quant_method": "fp8", "weight_block_size": [64, 32]}),
        ),
    ],
)
def test_read_scheme(quantization, expected):
    assert read_scheme({"quantization_config": quantization}, "m") == expected


@pytest.mark.parametrize(
    "quantization, message",
    [
        ({**DEEPSEEK, "weight_block_size": None}, "it has no weight_block_size: FP8 with per-tensor scales"),
        ({**DEEPSEEK, "weight_block_size": [0, 128]}, "weight_block_size is [0, 128], not two positive integers"),
        ({**DEEPSEEK, "weight_block_size": [128]}, "weight_block_size is [128], not two positive integers"),
        ({**DEEPSEEK, "weight_block_size": [True, 128]}, "weight_block_size is [True, 128], not two positive integers"),
        (
            {**DEEPSEEK, "weight_block_size": [2**40, 1]},
            f"weight_block_size is [{2**40}, 1], not two positive integers",
        ),
        ({**DEEPSEEK, "fmt": "e5m2"}, "fmt is 'e5m2': FP8 weights in another format than e4m3"),
        (
            {**DEEPSEEK, "activation_scheme": "static"},
            "activation_scheme is 'static': static activation scales (input_scale tensors)",
        ),
        ({**DEEPSEEK, "scale_fmt": "e8m0"}, "scale_fmt is 'e8m0': scales in another format than float or ue8m0"),
        ({**DEEPSEEK, "expert_dtype": "fp4"}, "expert_dtype is 'fp4': experts in another format than FP8"),
        ({**DEEPSEEK, "modules_to_convert": ["embed_tokens"]}, "modules_to_convert is set: FP8 embeddings"),
    ],
)
def test_unreadable_fp8_configs_are_refused(quantization, message):
    with pytest.raises(CheckpointError) as err:
        read_scheme({"quantization_config": quantization}, "m")
    assert str(err.value) == f"{UNREADABLE}{message}\n  hint: {SUPPORTED}"


@pytest.mark.parametrize(
    "quantization, method",
    [
        ({"quant_method": "fbgemm_fp8"}, "fbgemm_fp8"),  # per-channel FP8: another method
        ({"quant_method": "compressed-tensors"}, "compressed-tensors"),
        ({"bits": 4}, "unknown"),
        (["fp8"], "unknown"),
    ],
)
def test_other_quantizations_are_refused(quantization, method):
    with pytest.raises(CheckpointError) as err:
        read_scheme({"quantization_config": quantization}, "m")
    assert str(err.value) == (
        f"model 'm': its weights are quantized ({method}), and quantized weights cannot be merged\n"
        "  hint: merge the original (unquantized) model, then quantize the result"
    )
