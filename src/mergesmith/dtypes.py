"""Data types by name: recipe spellings, safetensors codes, torch dtypes. Imports torch lazily."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergesmith.errors import RecipeError

if TYPE_CHECKING:
    import torch

# safetensors code -> (torch attribute, bytes per element)
SAFETENSORS_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}
FLOATING = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}

# The names a recipe may give for `dtype` / `out_dtype`, as mergekit 0.1.5 accepts them.
_RECIPE_NAMES = {
    "float32": "F32",
    "fp32": "F32",
    "float": "F32",
    "float16": "F16",
    "fp16": "F16",
    "half": "F16",
    "bfloat16": "BF16",
    "bf16": "BF16",
    "float64": "F64",
    "double": "F64",
    # out_dtype only (a storage format, not a compute dtype): FP8 with block scales, as the donor
    # checkpoint has it (checkpoints/fp8.py). "fp8" as quant_method "fp8" means it: e4m3.
    "float8_e4m3fn": "F8_E4M3",
    "fp8": "F8_E4M3",
}


# Floating codes from narrowest to widest, for promotion (bf16 and f16 promote to f32, as torch does).
_FLOAT_RANK = {"F8_E4M3": 0, "F8_E5M2": 0, "BF16": 1, "F16": 1, "F32": 2, "F64": 3}


def promote(codes: list[str]) -> str:
    """torch.promote_types over floating safetensors codes: ['BF16', 'F32'] -> 'F32', ['BF16', 'F16'] -> 'F32'."""
    result = codes[0]
    for code in codes[1:]:
        if code != result:
            if _FLOAT_RANK[code] == _FLOAT_RANK[result]:
                result = "F32"  # two different types of one width meet in float32
            elif _FLOAT_RANK[code] > _FLOAT_RANK[result]:
                result = code
    return result


def dtype_code_from_recipe(name: str, *, key: str) -> str:
    """'bfloat16' -> 'BF16'. `key` is the recipe key path, for the error message."""
    code = _RECIPE_NAMES.get(name.removeprefix("torch.").lower())
    if code is None:
        choices = ", ".join(n for n in _RECIPE_NAMES if n in ("float32", "float16", "bfloat16", "float64"))
        raise RecipeError(f"{key}: unknown dtype {name!r}", hint=f"use one of: {choices}")
    return code


def element_size(code: str) -> int:
    return SAFETENSORS_DTYPES[code][1]


def tensor_nbytes(shape: tuple[int, ...], code: str) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count * element_size(code)


def torch_dtype(code: str) -> torch.dtype:
    import torch

    return getattr(torch, SAFETENSORS_DTYPES[code][0])


def code_from_torch(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    for code, (attr, _size) in SAFETENSORS_DTYPES.items():
        if attr == name:
            return code
    raise ValueError(f"no safetensors code for {dtype}")


def config_name(code: str) -> str:
    """'BF16' -> 'bfloat16', the spelling config.json uses."""
    return SAFETENSORS_DTYPES[code][0]


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor (no copy when it is already contiguous)."""
    import torch

    return memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]


def tensor_from_bytes(data: bytes | bytearray, code: str) -> torch.Tensor:
    """A flat tensor over `data` (copied once when `data` is immutable bytes)."""
    import torch

    if not data:
        return torch.empty(0, dtype=torch_dtype(code))
    return torch.frombuffer(bytearray(data) if isinstance(data, bytes) else data, dtype=torch_dtype(code))
