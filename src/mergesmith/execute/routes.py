"""One function per route (plan.Route): how an entry's bytes are produced and written.

Each takes a unit of work (one entry; several entries that copy or scale the same input; or an
FP8 output weight's entry and its scales'), the locations of the inputs, the writer of the shard
files and the run's settings. COPY and SCALE never import torch.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from mergesmith.checkpoints.fp8 import dequantize_blocks, quantize_blocks
from mergesmith.checkpoints.pickled import read_tensor_bytes
from mergesmith.checkpoints.safetensors_file import TensorInfo, piece_spans, read_into
from mergesmith.dtypes import element_size, tensor_bytes, tensor_from_bytes, torch_dtype
from mergesmith.errors import CheckpointError, MergeError, MergesmithError
from mergesmith.execute.tasks import InputKey, TaskSettings
from mergesmith.methods import get_method
from mergesmith.methods.spec import MethodSpec
from mergesmith.output.shards import ShardWriter
from mergesmith.plan import PlanEntry, Route, Source
from mergesmith.vocabulary import align_rows

Work = tuple[PlanEntry, ...]  # what one worker runs: one entry, or entries that share their input
Inputs = Mapping[InputKey, TensorInfo]


class Fp8Input(NamedTuple):
    """A block-scaled FP8 weight as a route reads it: its values, its scales and their blocks."""

    model: str
    values: TensorInfo
    scales: TensorInfo
    block: tuple[int, int]


class LoraInput(NamedTuple):
    """A weight a LoRA adapter changes, as a route reads it: W + scale * B A ((B A)^T where transposed)."""

    values: TensorInfo | Fp8Input
    a: TensorInfo
    b: TensorInfo
    scale: float
    transposed: bool


Input = TensorInfo | Fp8Input | LoraInput  # one source of an entry, as a route reads it


def run_work(work: Work, inputs: Inputs, writer: ShardWriter, settings: TaskSettings) -> None:
    if is_raw(work[0]):
        _move_raw_bytes(work, inputs, writer, settings.chunk_bytes)
        return
    entry = work[0]  # the unit's only entry, or an FP8 weight's followed by its scales'
    ROUTES[entry.route](work, [_input(inputs, s) for s in entry.sources], writer, settings)


def _input(inputs: Inputs, source: Source) -> Input:
    info = inputs[source.model, source.tensor]
    values = (
        info
        if source.fp8 is None
        else Fp8Input(source.model, info, inputs[source.model, source.fp8.tensor], source.fp8.block)
    )
    lora = source.lora
    if lora is None:
        return values
    return LoraInput(values, inputs[source.model, lora.a], inputs[source.model, lora.b], lora.scale, lora.transposed)


def is_raw(entry: PlanEntry) -> bool:
    """One input's bytes, copied unchanged or through the method's raw-byte kernel."""
    return entry.route in (Route.COPY, Route.SCALE) and len(entry.sources) == 1


def needs_torch(entry: PlanEntry) -> bool:
    return entry.route not in (Route.COPY, Route.SCALE)


def group_work(entries: tuple[PlanEntry, ...] | list[PlanEntry]) -> list[Work]:
    """Entries that move or scale one tensor's raw bytes are grouped by that tensor, so that a
    layer a recipe repeats (depth up-scaling, frankenmerges) is read once for all its copies; an
    FP8 output weight's entry and its scales' are one unit, computed once (when both are among
    `entries`: a shard boundary between them computes it twice); every other entry is a unit of its
    own. Units keep the order of their first entry."""
    units: list[list[PlanEntry]] = []
    by_source: dict[object, list[PlanEntry]] = {}
    for entry in entries:
        if not is_raw(entry) and entry.fp8 is None:
            units.append([entry])
            continue
        key = entry.fp8 if not is_raw(entry) else (entry.sources[0].model, entry.sources[0].tensor)
        if key in by_source:
            by_source[key].append(entry)
        else:
            by_source[key] = [entry]
            units.append(by_source[key])
    return [tuple(unit) for unit in units]


def _move_raw_bytes(work: Work, inputs: Inputs, writer: ShardWriter, chunk_bytes: int) -> None:
    """Copy (or scale) one input tensor into each of the unit's outputs, reading it once: the input
    streams through in pieces, each written to every output (scaled where the output says so).

    Not copy_file_range: from one file offset to another that is not aligned with it (nearly every
    copy: headers differ, layers move), the kernel fills the output's page cache one 4 KiB page at
    a time, and writeback then sends disk requests of half the size that large folios give.
    Reading into a buffer and writing it costs one more memory copy and nothing on the disk.
    """
    source = work[0].sources[0]
    info = inputs[source.model, source.tensor]
    kernels = [_raw_kernel(entry) for entry in work]
    buffer = _piece_buffer(max(chunk_bytes, element_size(info.dtype))) if info.start >= 0 else None
    for offset, count in piece_spans(info, chunk_bytes):
        data: bytes | bytearray | memoryview
        if buffer is not None:
            data = buffer[:count]
            read_into(info, data, offset)
        else:  # a .bin checkpoint: no byte offsets to read from
            data = read_tensor_bytes(info, offset, count)
        for entry, kernel in zip(work, kernels):
            # not journaled: a resume that redoes them reads as many bytes as checking them would,
            # and a CRC-32 of every scaled byte costs each merge CPU
            result = data if kernel is None else kernel(data, entry.written_dtype, entry.params)
            writer.write(entry.output, offset, result, checksum=False)


def _raw_kernel(entry: PlanEntry) -> Callable[..., bytes] | None:
    if entry.route is Route.COPY:
        return None
    kernel = get_method(entry.method)[0].raw_kernel
    assert kernel is not None  # the plan routes only such methods to SCALE
    return kernel.apply


_piece_buffers = threading.local()


def _piece_buffer(size: int) -> memoryview:
    """This thread's reusable buffer of at least `size` bytes (fresh ones would cost page faults)."""
    buffer = getattr(_piece_buffers, "buffer", None)
    if buffer is None or len(buffer) < size:
        buffer = _piece_buffers.buffer = memoryview(bytearray(size))
    return buffer


def _copy_equal(work: Work, infos: list[Input], writer: ShardWriter, settings: TaskSettings) -> None:
    """Integer buffers (position ids, ...) of several inputs are copied; all must hold the same values."""
    (entry,) = work
    assert all(isinstance(info, TensorInfo) for info in infos)  # FP8 weights are floating: never copied so
    first = read_tensor_bytes(infos[0])
    for info, source in zip(infos[1:], entry.sources[1:]):
        if read_tensor_bytes(info) != first:
            raise MergesmithError(
                f"{entry.output}: integer tensor differs between {entry.sources[0].model} and {source.model}",
                hint="non-floating tensors cannot be merged; the models must agree on them",
            )
    writer.write(entry.output, 0, first)


def _stream(work: Work, infos: list[Input], writer: ShardWriter, settings: TaskSettings) -> None:
    """An elementwise method over pieces of its inputs, as many elements at a time as fit in a chunk."""
    (entry,) = work
    assert all(isinstance(info, TensorInfo) for info in infos)  # the plan routes FP8 inputs to whole tensors
    spec, function = get_method(entry.method)
    count = entry.nbytes // element_size(entry.written_dtype)
    widest = max(element_size(entry.written_dtype), *(element_size(i.dtype) for i in infos))
    step = max(1, settings.chunk_bytes // widest)
    params = _call_params(entry, spec, settings, "cpu")
    for first in range(0, count, step):
        n = min(step, count - first)
        tensors = [_read_elements(info, first, n, entry.compute_dtype) for info in infos]
        result = apply_method(entry, spec, function, tensors, params)
        data = tensor_bytes(result.to(torch_dtype(entry.written_dtype)))
        writer.write(entry.output, first * element_size(entry.written_dtype), data)


def _whole(work: Work, infos: list[Input], writer: ShardWriter, settings: TaskSettings) -> None:
    entry = work[0]
    spec, function = get_method(entry.method)
    shape = _values_shape(entry)
    count = math.prod(shape)  # fewer than an input's when truncated
    tensors = [_read_values(info, count, entry.compute_dtype).reshape(shape) for info in infos]
    result = apply_method(entry, spec, function, tensors, _call_params(entry, spec, settings, "cpu"))
    for name, tensor in _results(work, result):
        writer.write(name, 0, tensor_bytes(tensor))


def _vocabulary(work: Work, infos: list[Input], writer: ShardWriter, settings: TaskSettings) -> None:
    """Embeddings and lm_head under a merged vocabulary: whole tensors, rows aligned by token first."""
    (entry,) = work
    assert settings.vocabulary is not None
    spec, function = get_method(entry.method)
    tensors = [_read_values(info, None, entry.compute_dtype).reshape(_input_shape(info)) for info in infos]
    base = entry.sources[0].model if entry.has_base else settings.vocabulary_base
    aligned = align_rows(tensors, [s.model for s in entry.sources], settings.vocabulary, base)
    result = apply_method(entry, spec, function, aligned, _call_params(entry, spec, settings, "cpu"))
    writer.write(entry.output, 0, tensor_bytes(result.to(torch_dtype(entry.written_dtype))))


def _device(work: Work, infos: list[Input], writer: ShardWriter, settings: TaskSettings) -> None:
    """A whole tensor on the GPU: inputs read into pinned memory and copied without blocking, on
    this worker thread's own stream, so one entry's transfers overlap another's compute."""
    import torch

    entry = work[0]
    spec, function = get_method(entry.method)
    device = settings.device
    stream = _thread_stream(device)
    with torch.cuda.stream(stream):
        tensors = [_read_to_device(info, device).to(torch_dtype(entry.compute_dtype)) for info in infos]
        shape = _values_shape(entry)
        count = math.prod(shape)  # fewer than an input's when truncated
        shaped = [t.reshape(-1)[:count].reshape(shape) for t in tensors]
        result = apply_method(entry, spec, function, shaped, _call_params(entry, spec, settings, device))
        hosts = []
        for name, tensor in _results(work, result):
            # Back into pinned memory too: a copy to pageable memory goes through a staging buffer.
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            host.copy_(tensor, non_blocking=True)
            hosts.append((name, host))
    stream.synchronize()  # this worker's stream only
    for name, host in hosts:
        writer.write(name, 0, tensor_bytes(host))


def _results(work: Work, result) -> list[tuple[str, Any]]:
    """The tensors a unit writes from its merged `result` (on its device): the entry's output in
    its written dtype; for an FP8 output weight, those of the weight and its scales that the unit holds."""
    import torch

    entry, names = work[0], {e.output for e in work}
    fp8 = entry.fp8
    if fp8 is None:
        return [(entry.output, result.to(torch_dtype(entry.written_dtype)))]
    if not bool(torch.isfinite(result).all()):
        raise MergeError(
            f"tensor {fp8.weight}: {entry.method} gave NaN or inf values, which FP8 with block scales cannot hold",
            hint="write the merge in bfloat16 (out_dtype: bfloat16) to look at them; mergesmith verify finds "
            "NaN and inf in the inputs",
        )
    values, scales = quantize_blocks(result, fp8.block, power_of_two=fp8.power_of_two)
    return [(name, tensor) for name, tensor in ((fp8.weight, values), (fp8.scales, scales)) if name in names]


def _values_shape(entry: PlanEntry) -> tuple[int, ...]:
    """The shape of the merged values: the entry's own, or for an FP8 output's scales their weight's."""
    return entry.fp8.shape if entry.fp8 is not None else entry.shape


ROUTES: dict[Route, Callable[[Work, list[Input], ShardWriter, TaskSettings], None]] = {
    Route.COPY: _copy_equal,  # several inputs; one input is a raw move (run_work)
    Route.STREAM: _stream,
    Route.WHOLE: _whole,
    Route.VOCABULARY: _vocabulary,
    Route.DEVICE: _device,
}


def _call_params(entry: PlanEntry, spec: MethodSpec, settings: TaskSettings, device: str) -> dict[str, Any]:
    params = dict(entry.params)
    if spec.is_random:
        params["generator"] = tensor_generator(settings.seed, entry.output, device)
    return params


def apply_method(entry: PlanEntry, spec: MethodSpec, function: Callable[..., Any], tensors: list, params: dict):
    try:
        if entry.has_base:
            return function(tensors[0], tensors[1:], **params)
        if spec.inputs.uses_base:
            return function(None, tensors, **params)
        return function(tensors, **params)
    except MergeError as err:  # a method knows the values, not which tensor they are
        raise MergeError(f"tensor {entry.output}: {entry.method}: {err.message}", hint=err.hint) from err


def tensor_generator(seed: int, name: str, device: str = "cpu"):
    """A generator seeded by the merge's seed and the tensor's name: the same bytes whatever the
    order in which tensors are computed, the number of workers or the node (on a given device: a
    GPU draws other numbers from the same seed than the CPU does)."""
    import torch

    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _read_elements(info: TensorInfo, first: int, count: int, compute: str | None):
    """`count` elements of a tensor from element `first` on, flat, cast to `compute`."""
    size = element_size(info.dtype)
    tensor = tensor_from_bytes(read_tensor_bytes(info, first * size, count * size), info.dtype)
    return tensor.to(torch_dtype(compute)) if compute is not None else tensor


def _read_values(source: Input, count: int | None, compute: str | None):
    """The first `count` values of a source (None: all), flat, cast to `compute`."""
    if isinstance(source, Fp8Input | LoraInput):
        values = (_dequantized(source, "cpu") if isinstance(source, Fp8Input) else _adapted(source, "cpu")).reshape(-1)
        return (values if count is None else values[:count]).to(torch_dtype(compute))
    count = source.nbytes // element_size(source.dtype) if count is None else count
    return _read_elements(source, 0, count, compute)


def _input_shape(source: Input) -> tuple[int, ...]:
    if isinstance(source, LoraInput):
        return _input_shape(source.values)
    return source.values.shape if isinstance(source, Fp8Input) else source.shape


def _adapted(source: LoraInput, device: str):
    """W + scale * B A in float32, on `device`: the weight a model+adapter reference stands for
    (PEFT's merge_and_unload, computed once in float32 rather than rounded twice)."""
    import torch

    if isinstance(source.values, Fp8Input):
        weight = _dequantized(source.values, device)
    else:
        weight = _read_elements(source.values, 0, math.prod(source.values.shape), "F32")
        weight = weight.reshape(source.values.shape).to(device)
    a = _read_elements(source.a, 0, math.prod(source.a.shape), "F32").reshape(source.a.shape).to(device)  # (r, in)
    b = _read_elements(source.b, 0, math.prod(source.b.shape), "F32").reshape(source.b.shape).to(device)  # (out, r)
    delta = b @ a  # (out, in)
    return torch.add(weight, delta.T if source.transposed else delta, alpha=source.scale)


def _dequantized(source: Fp8Input, device: str):
    """An FP8 weight's values (float32, its shape, on `device`): its FP8 values times their block's scale."""
    import torch

    values = _read_elements(source.values, 0, math.prod(source.values.shape), None).reshape(source.values.shape)
    scales = _read_elements(source.scales, 0, math.prod(source.scales.shape), None).reshape(source.scales.shape)
    if not bool(torch.isfinite(scales).all()):
        bad = int((~torch.isfinite(scales)).sum())
        raise CheckpointError(
            f"model {source.model!r}: {source.scales.name} holds {bad} NaN or inf scales of {scales.numel()}, "
            f"so {source.values.name} has no values there",
            hint="the checkpoint is damaged; download it again",
        )
    return dequantize_blocks(values.to(device), scales.to(device), source.block)


def _read_to_device(source: Input, device: str):
    import torch

    if isinstance(source, Fp8Input):
        return _dequantized(source, device)
    if isinstance(source, LoraInput):
        return _adapted(source, device)
    info = source
    if info.start >= 0:
        pinned = torch.empty(info.nbytes, dtype=torch.uint8, pin_memory=True)  # cached by torch
        read_into(info, memoryview(pinned.numpy()))  # type: ignore[arg-type]
        host = pinned.view(torch_dtype(info.dtype))
    else:
        host = _read_elements(info, 0, info.nbytes // element_size(info.dtype), None)
    return host.to(device, non_blocking=True)


_streams = threading.local()


def _thread_stream(device: str):
    import torch

    if getattr(_streams, "stream", None) is None:
        _streams.stream = torch.cuda.Stream(device=device)
    return _streams.stream
