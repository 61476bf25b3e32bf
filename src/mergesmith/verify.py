"""Check a model folder: the index against the shards, every header, every tensor's bytes (read
and checked for NaN/Inf), the config against the tensors, and, given a plan, the folder against it.

Problems are collected, not raised one at a time: a report lists all of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mergesmith.checkpoints.names import (
    CONFIG,
    SAFETENSORS_INDEX,
    SAFETENSORS_SINGLE,
    config_parts,
    is_vocabulary_tensor,
)
from mergesmith.checkpoints.safe_json import json_type, read_json
from mergesmith.checkpoints.safetensors_file import TensorInfo, piece_spans, read_header, read_range
from mergesmith.checkpoints.structure import LayerGapError, count_mismatches, find_structure
from mergesmith.checkpoints.ties import writes_tied_target
from mergesmith.dtypes import FLOATING, element_size, tensor_from_bytes
from mergesmith.errors import CheckpointError
from mergesmith.plan import Plan

_PIECE_BYTES = 64 * 2**20  # tensors are read and checked in pieces of this size


@dataclass
class VerifyReport:
    folder: Path
    tensors: int = 0
    bytes_read: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_folder(folder: Path, plan: Plan | None = None) -> VerifyReport:
    report = VerifyReport(folder)
    infos = _tensor_infos(folder, report)
    for info in infos.values():
        _check_values(info, report)
    report.tensors = len(infos)
    if (folder / CONFIG).is_file():
        _check_config(folder, infos, report)
    else:
        report.problems.append(f"{CONFIG}: missing")
    if plan is not None:
        _check_against_plan(plan, infos, report)
    return report


def _tensor_infos(folder: Path, report: VerifyReport) -> dict[str, TensorInfo]:
    """Every tensor of the folder's safetensors weights, with the index checked against the shards."""
    index_path = folder / SAFETENSORS_INDEX
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    expected: dict[str, str] | None = None
    if index_path.is_file():
        expected = _weight_map(index_path, report)
        if expected is not None:
            for shard in sorted(set(expected.values()) - set(shards)):
                report.problems.append(f"{SAFETENSORS_INDEX}: names shard {shard}, which is missing")
            for shard in sorted(set(shards) - set(expected.values())):
                report.problems.append(f"{shard}: not in {SAFETENSORS_INDEX}")
    elif len(shards) > 1 or (shards and shards != [SAFETENSORS_SINGLE]):
        report.problems.append(f"{SAFETENSORS_INDEX}: missing, but the weights are split into {', '.join(shards)}")
    if not shards:
        report.problems.append("no safetensors weights in the folder")
    infos: dict[str, TensorInfo] = {}
    for shard in shards:
        try:
            header = read_header(folder / shard)
        except CheckpointError as err:
            report.problems.append(f"{shard}: {err.message}")
            continue
        for name, info in header.items():
            if name in infos:
                report.problems.append(f"{name}: in both {infos[name].path.name} and {shard}")
            infos[name] = info
            if expected is not None and expected.get(name) != shard:
                where = expected.get(name)
                report.problems.append(
                    f"{name}: in {shard}, but {SAFETENSORS_INDEX} " + (f"says {where}" if where else "lacks it")
                )
    for name, shard in sorted((expected or {}).items()):
        if name not in infos and (folder / shard).is_file():
            report.problems.append(f"{name}: {SAFETENSORS_INDEX} puts it in {shard}, which lacks it")
    return infos


def _weight_map(path: Path, report: VerifyReport) -> dict[str, str] | None:
    """The index's tensor name -> shard name, or None (and a problem) when it is not one."""
    try:
        index = read_json(path, SAFETENSORS_INDEX)
    except CheckpointError as err:
        report.problems.append(err.message)
        return None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        report.problems.append(f"{SAFETENSORS_INDEX}: no weight_map object of tensor name -> shard file name")
        return None
    return weight_map


def _check_values(info: TensorInfo, report: VerifyReport) -> None:
    """Read every byte; count NaN and Inf in floating tensors."""
    import torch

    nan = inf = 0
    try:
        for piece in _pieces(info):
            report.bytes_read += len(piece)
            if info.dtype in FLOATING and len(piece):
                values = tensor_from_bytes(piece, info.dtype)
                if values.element_size() == 1:  # torch has no isinf for float8 (nor e4m3fn an inf)
                    values = values.float()
                nan += int(torch.isnan(values).sum())
                inf += int(torch.isinf(values).sum())
    except CheckpointError as err:
        report.problems.append(f"{info.name}: unreadable ({err.message})")
        return
    if nan or inf:
        report.problems.append(f"{info.name}: {nan} NaN and {inf} Inf values of {_count(info)}")


def _pieces(info: TensorInfo) -> Iterator[bytearray]:
    for offset, nbytes in piece_spans(info, _PIECE_BYTES):
        yield read_range(info, offset, nbytes)


def _count(info: TensorInfo) -> int:
    return info.nbytes // element_size(info.dtype)


def _check_config(folder: Path, infos: dict[str, TensorInfo], report: VerifyReport) -> None:
    try:
        config = read_json(folder / CONFIG, CONFIG)
    except CheckpointError as err:
        report.problems.append(err.message)
        return
    if not isinstance(config, dict):
        report.problems.append(f"{CONFIG}: holds {json_type(config)}, not an object of settings")
        return
    parts = config_parts(config)
    try:
        structure = find_structure(infos, config)
    except LayerGapError as err:
        report.problems.append(
            f"layer {err.first_missing}: no tensors (layers are numbered 0-{err.count - 1}; {err.missing} have none)"
        )
        return
    for key, value, count in count_mismatches(structure, config):
        report.problems.append(f"{CONFIG}: {key} is {value}, the weights have {count} layers")
    embeddings = [n for n in structure.main.pre_layer if is_vocabulary_tensor(n)]
    rows = infos[embeddings[0]].shape[0] if embeddings and infos[embeddings[0]].shape else None
    vocab = next((p["vocab_size"] for p in reversed(parts) if isinstance(p.get("vocab_size"), int)), None)
    if rows is not None and vocab is not None and rows != vocab:
        report.problems.append(f"{CONFIG}: vocab_size is {vocab}, {embeddings[0]} has {rows} rows")
    tied_written = writes_tied_target(config, infos)  # the same rule as the plan's (metadata.output_config)
    tied = config.get("tie_word_embeddings")
    if tied is True and tied_written is not None:
        report.problems.append(
            f"{CONFIG}: tie_word_embeddings is true, but the weights hold {tied_written}, which the tie replaces"
        )
    if tied is False and tied_written is None and embeddings:
        report.problems.append(f"{CONFIG}: tie_word_embeddings is false, but the weights hold no output embedding")


def _check_against_plan(plan: Plan, infos: dict[str, TensorInfo], report: VerifyReport) -> None:
    planned = {e.output: e for e in plan.entries}
    for name in sorted(set(planned) - set(infos)):
        report.problems.append(f"{name}: the recipe's plan has it, the folder does not")
    for name in sorted(set(infos) - set(planned)):
        report.problems.append(f"{name}: in the folder, not in the recipe's plan")
    for name in sorted(set(planned) & set(infos)):
        entry, info = planned[name], infos[name]
        if (entry.written_dtype, tuple(entry.shape)) != (info.dtype, info.shape):
            planned_as, found = f"{entry.written_dtype} {list(entry.shape)}", f"{info.dtype} {list(info.shape)}"
            report.problems.append(f"{name}: the plan says {planned_as}, the folder has {found}")
