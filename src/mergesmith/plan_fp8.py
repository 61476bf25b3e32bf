"""Planning with block-scaled FP8 checkpoints (checkpoints/fp8.py): the dtype FP8 weights merge in,
and which output weights are written as FP8 again, with what blocks.

FP8 is a storage format, not one to compute in: an FP8 input is dequantized (float32) and cast to
the merge's dtype: the recipe's `dtype`, else bfloat16, the dtype DeepSeek-V3's own converter
(fp8_cast_bf16.py) and transformers dequantize to. Its scale tensors are never output tensors of
their own. With `out_dtype: float8_e4m3fn` the output keeps the donor's layout: the tensors the
donor stores as FP8 (by layer-relative name) are quantized again with fresh scales in the donor's
blocks, each followed by its `<name>_scale_inv`, and config.json keeps the donor's
quantization_config; every other tensor is written as if out_dtype were not set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mergesmith.checkpoints import Checkpoint
from mergesmith.checkpoints.fp8 import FP8, BlockScales, quantized_roles, stack_prefixes, tensor_role
from mergesmith.checkpoints.names import FP8_SCALE_SUFFIX, fp8_scale_name
from mergesmith.dtypes import config_name
from mergesmith.errors import PlanError, RecipeError

log = logging.getLogger(__name__)

DEQUANTIZED_DTYPE = "BF16"  # what FP8 values merge in when the recipe sets no dtype


@dataclass(frozen=True)
class Fp8Output:
    """An output weight written as block-scaled FP8: two entries share this, the weight's and then
    its scales'; the executor computes their merge once and writes both from it."""

    weight: str  # output tensor names
    scales: str
    shape: tuple[int, ...]  # the weight's
    block: tuple[int, int]  # the donor's weight_block_size
    power_of_two: bool  # the donor's scale_fmt is "ue8m0"


class Fp8Rules:
    """The FP8 decisions of one plan, from the recipe's `dtype` and `out_dtype` and the donor model
    (whose config.json the output gets)."""

    def __init__(self, load: str | None, out: str | None, donor: Checkpoint) -> None:
        if load == FP8:
            raise RecipeError(
                f"dtype: {config_name(FP8)} is a storage format; merges compute in bfloat16, float16 or float32",
                hint="set dtype: bfloat16 (or leave it out) and out_dtype: float8_e4m3fn to write FP8",
            )
        if out == FP8 and donor.fp8 is None:
            raise PlanError(
                f"out_dtype: {config_name(FP8)} writes the FP8 layout of the donor model, "
                f"but {donor.ref.text!r} is not a block-scaled FP8 checkpoint (no quantization_config)",
                hint="make a block-scaled FP8 model (DeepSeek-V3/R1, Qwen3-FP8) the base_model, "
                "or set out_dtype: bfloat16",
            )
        self.load, self.donor = load, donor
        self.is_fp8_output = out == FP8
        self.roles = quantized_roles(donor) if self.is_fp8_output else frozenset()
        self._told: set[str] = set()  # models whose FP8 weights a warning named

    def is_scales(self, checkpoint: Checkpoint, name: str) -> bool:
        """An FP8 weight's scale tensor: read with its weight, never an output tensor of its own."""
        weight = name.removesuffix(FP8_SCALE_SUFFIX)
        return checkpoint.fp8 is not None and weight != name and weight in checkpoint.weight_map

    def value_dtype(self, stored: str, scales: BlockScales | None, model: str) -> str:
        """The dtype a stored tensor's values count as when the merge's dtype is chosen."""
        if scales is None:
            return stored
        if self.load is None and model not in self._told:
            self._told.add(model)
            log.warning(
                "FP8 weights of %s are dequantized and merged in bfloat16, as the recipe sets no dtype; "
                "set dtype: float32 to merge them in float32%s",
                model,
                "" if self.is_fp8_output else ", and out_dtype: float8_e4m3fn to write FP8 again",
            )
        return DEQUANTIZED_DTYPE

    def output(self, name: str, shape: tuple[int, ...], is_vocabulary: bool) -> Fp8Output | None:
        """How output tensor `name` is written as FP8; None when it is not (no FP8 output, or the
        donor stores it unquantized: norms, embeddings, lm_head, modules_to_not_convert)."""
        scheme = self.donor.fp8
        if not self.is_fp8_output or scheme is None or is_vocabulary:
            return None
        if tensor_role(name, stack_prefixes(self.donor)) not in self.roles:
            return None
        if len(shape) < 2:
            raise PlanError(
                f"{name}: the donor {self.donor.ref.text!r} stores it as FP8 with block scales, "
                f"but its shape {list(shape)} has fewer than 2 dimensions",
                hint="the donor checkpoint is damaged; download it again",
            )
        return Fp8Output(name, fp8_scale_name(name), shape, scheme.block, scheme.power_of_two)

    def config_dtype(self, out: str | None) -> str | None:
        """The dtype config.json names: out_dtype, else dtype; for an FP8 output, dtype (that of
        the unquantized tensors). A donor read from FP8 without either: bfloat16."""
        if self.is_fp8_output:
            return self.load or DEQUANTIZED_DTYPE
        return out or self.load or (DEQUANTIZED_DTYPE if self.donor.fp8 is not None else None)
