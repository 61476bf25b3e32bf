"""Passthrough: copy one model's tensor, optionally scaled (frankenmerges, depth up-scaling)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mergesmith.methods.spec import UNSET, Inputs, MethodSpec, Param, RawKernel, Unset

if TYPE_CHECKING:
    from torch import Tensor

# Stored dtypes that `scale_raw` handles with numpy alone (no torch import: seconds saved).
RAW_SCALABLE = ("BF16", "F16", "F32")


def _scale_bytes(data: bytes | bytearray | memoryview, dtype: str, params: Mapping[str, Any]) -> bytes:
    (factor,) = params["scale"]
    return scale_raw(data, dtype, factor)


def _is_unscaled(params: Mapping[str, Any]) -> bool:
    return params["scale"] is UNSET


SPEC = MethodSpec(
    name="passthrough",
    pretty_name="Passthrough",
    params=(Param("scale", float, scope="input", doc="multiply the tensor by this factor"),),
    inputs=Inputs(base="ignored", min_count=1, max_count=1),
    summary="copy tensors from one model per slice, optionally scaled",
    elementwise=True,
    raw_kernel=RawKernel(RAW_SCALABLE, _scale_bytes, _is_unscaled),
)


def scale_raw(data: bytes | bytearray | memoryview, dtype: str, factor: float) -> bytes:
    """`tensor * factor` on raw little-endian bytes, with numpy: the same bits as torch gives
    (float32 arithmetic with the factor rounded to float32, then round-to-nearest-even back to the
    dtype). A NaN stays NaN, with torch's scalar-path bits (0x7FC0 in bfloat16)."""
    import numpy as np

    with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN come out as torch's do
        return _scale_raw(np, data, dtype, factor)


def _scale_raw(np, data: bytes | bytearray | memoryview, dtype: str, factor: float) -> bytes:
    if dtype == "F32":
        return (np.frombuffer(data, dtype="<f4") * np.float32(factor)).astype("<f4").tobytes()
    if dtype == "F16":
        values = np.frombuffer(data, dtype="<f2").astype(np.float32)
        return (values * np.float32(factor)).astype("<f2").tobytes()
    raw = np.frombuffer(data, dtype="<u2")
    bits, low, nan = _scratch(np, raw.size)  # reused: fresh arrays cost page faults every piece
    np.left_shift(raw, 16, out=bits, dtype=np.uint32)  # bf16 -> float32 bits
    values = bits.view(np.float32)
    np.multiply(values, np.float32(factor), out=values)
    np.isnan(values, out=nan)
    np.right_shift(bits, 16, out=low)
    np.bitwise_and(low, 1, out=low)
    bits += low  # round to nearest, ties to even: + 0x7FFF + the kept part's lowest bit
    bits += 0x7FFF
    np.right_shift(bits, 16, out=bits)
    result = bits.astype("<u2")
    if nan.any():
        result[nan] = 0x7FC0
    return result.tobytes()


_scratch_arrays = threading.local()


def _scratch(np, count: int):
    have = getattr(_scratch_arrays, "arrays", None)
    if have is None or have[0].size < count:
        have = (np.empty(count, np.uint32), np.empty(count, np.uint32), np.empty(count, np.bool_))
        _scratch_arrays.arrays = have
    return tuple(a[:count] for a in have)


def passthrough(tensors: list[Tensor], *, scale: tuple[float] | Unset) -> Tensor:
    # (same shape as the input) `tensor * scale` in the input's dtype: mergekit 0.1.5's arithmetic,
    # so results are bit-identical. The executor has already cast to the recipe's `dtype`.
    (tensor,) = tensors
    if isinstance(scale, Unset):
        return tensor
    (factor,) = scale
    return tensor * factor
