"""Bad inputs, table-driven, through the command line: each gets its exit code, a message that
names the key path / model / tensor / layer at fault, no traceback, and OUT is left untouched."""

from __future__ import annotations

import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from damage import edit_json, first_tensor, rewrite_header
from factory import build_model
from mergesmith.cli import main
from mergesmith.output.shards import ShardWriter

TIES = (
    "models: [{model: a, parameters: {weight: 1, density: 0.5}}, {model: b, parameters: {weight: 1, density: 0.5}}]\n"
)
SLICE = "slices:\n  - sources: [{model: a, layer_range: [0, 4]}]\nmerge_method: passthrough\n"


@dataclass
class Case:
    id: str
    recipe: str | None  # recipe text (None: the args name everything)
    expected: tuple[str, ...]  # substrings of stderr, in order
    code: int = 1
    models: dict[str, str] = field(default_factory=lambda: {"a": "a", "b": "b"})  # recipe name -> fixture model
    args: tuple[str, ...] = ()  # extra command-line arguments
    prepare: Callable[[Path, Path], None] | None = None  # (tmp_path, out) -> None, before the run
    patch: Callable[[pytest.MonkeyPatch], None] | None = None  # the machine's state: disk, keyboard


def damage_copy(models: dict[str, Path], tmp: Path, name: str, target: str, change: Callable[[Path], None]) -> Path:
    folder = tmp / target
    shutil.copytree(models[name], folder)
    change(folder)
    return folder


CASES: list[Case] = [
    # --- the YAML itself
    Case(
        "yaml-syntax", "slices:\n  - sources: [{model: a, layer_range: [0, 4]\nmerge_method: passthrough\n", ("line 3",)
    ),
    Case("yaml-tab", "slices:\n\t- sources: []\nmerge_method: passthrough\n", ("line 2",)),
    Case("yaml-not-mapping", "- a\n- b\n", ("mapping",)),
    Case("yaml-empty", "", ("empty",)),
    Case("unknown-top-key", SLICE + "merge_methd: passthrough\n", ("merge_methd", "merge_method")),
    Case("unknown-method", SLICE.replace("passthrough", "tie") + "", ("tie", "ties")),
    Case(
        "unknown-source-key",
        SLICE.replace("layer_range", "layer_rnage"),
        ("slices[0].sources[0].layer_rnage", "layer_range"),
    ),
    Case("layer-range-string", SLICE.replace("[0, 4]", '"0-4"'), ("slices[0].sources[0].layer_range",)),
    Case("layer-range-three", SLICE.replace("[0, 4]", "[0, 2, 4]"), ("slices[0].sources[0].layer_range",)),
    Case("models-mapping", "models: {a: 1}\nmerge_method: linear\n", ("models",)),
    Case("slices-and-models", SLICE + "models: [{model: a}]\n", ("exactly one of 'models', 'slices' or 'modules'",)),
    Case("no-outputs", "merge_method: linear\n", ("exactly one of 'models', 'slices' or 'modules'",)),
    Case("no-method", "models: [{model: a}]\n", ("merge_method",)),
    Case("bad-dtype", SLICE + "dtype: float17\n", ("dtype", "float17")),
    Case("bad-out-dtype", SLICE + "out_dtype: bf61\n", ("out_dtype", "bf61")),
    Case("bad-chat-template", SLICE + "chat_template: chatm\n", ("chat_template", "chatml")),
    Case("tokenizer-twice", SLICE + "tokenizer_source: base\ntokenizer: {source: union}\n", ("tokenizer",)),
    Case(  # mergekit reads and ignores it: a warning, an error only under --strict
        "residual-weight",
        SLICE.replace("passthrough", "passthrough\n").replace("  - sources", "  - residual_weight: 0.5\n    sources"),
        ("passthrough ignores 'residual_weight' (slices[0])", "--strict"),
        args=("--strict",),
    ),
    # --- layer ranges
    Case(
        "layer-out-of-bounds", SLICE.replace("[0, 4]", "[0, 5]"), ("slices[0].sources[0].layer_range", "has 4 layers")
    ),
    Case(
        "layer-reversed", SLICE.replace("[0, 4]", "[3, 1]"), ("slices[0].sources[0].layer_range", "empty or negative")
    ),
    Case("layer-negative", SLICE.replace("[0, 4]", "[-1, 2]"), ("slices[0].sources[0].layer_range",)),
    Case("layer-empty", SLICE.replace("[0, 4]", "[2, 2]"), ("slices[0].sources[0].layer_range", "empty")),
    Case(
        "layer-unequal",
        "slices:\n  - sources: [{model: a, layer_range: [0, 4]}, {model: b, layer_range: [0, 2]}]\nmerge_method: linear\n"
        "parameters: {weight: 1}\n",
        ("slices[0]", "same number of layers"),
    ),
    # --- base models and method contracts
    Case("ties-no-base", TIES + "merge_method: ties\n", ("ties needs a base model",)),
    Case(
        "slerp-no-base",
        "models: [{model: a}, {model: b}]\nmerge_method: slerp\nparameters: {t: 0.5}\n",
        ("slerp needs a base model",),
    ),
    Case(
        "base-not-in-slice",
        "slices:\n  - sources: [{model: a, layer_range: [0, 4], parameters: {weight: 1}}, {model: b, layer_range: [0, 4], "
        "parameters: {weight: 1}}]\nbase_model: c\nmerge_method: ties\n",
        ("slices[0]", "the base model 'c' is not among this slice's sources"),
        models={"a": "a", "b": "b", "c": "c"},
    ),
    Case("model-twice", "models: [{model: a}, {model: a}]\nmerge_method: karcher\n", ("model 'a' is named twice",)),
    Case(
        "passthrough-two",
        "slices:\n  - sources: [{model: a, layer_range: [0, 4]}, {model: b, layer_range: [0, 4]}]\nmerge_method: passthrough\n",
        ("slices[0]", "passthrough takes exactly 1 model"),
    ),
    # --- parameters
    Case("unknown-parameter", SLICE + "parameters: {scael: 2}\n", ("parameters.scael", "scale")),
    Case(
        "method-wide-under-model",  # mergekit ignores it there: a warning, an error only under --strict
        "models: [{model: a, parameters: {t: 0.5}}]\nbase_model: b\nmerge_method: slerp\n",
        ("slerp ignores 't' (models[0].parameters)", "method-wide"),
        args=("--strict",),
    ),
    Case(
        "parameter-type",
        "models: [{model: a, parameters: {weight: heavy}}, {model: b, parameters: {weight: 1}}]\nmerge_method: linear\n",
        ("models[0].parameters.weight",),
    ),
    Case("missing-weight", "models: [{model: a}, {model: b}]\nmerge_method: linear\n", ("weight",)),
    Case("filter-without-value", SLICE + "parameters: {scale: [{filter: down_proj}]}\n", ("parameters.scale",)),
    Case("gradient-not-numbers", SLICE + "parameters: {scale: [1, a]}\n", ("parameters.scale",)),
    Case("setting-mapping", SLICE + "parameters: {scale: {valu: 2}}\n", ("parameters.scale",)),
    Case("filter-unknown-key", SLICE + "parameters: {scale: [{filtr: down_proj, value: 2}]}\n", ("parameters.scale",)),
    Case(
        "zero-weights",
        "models: [{model: a, parameters: {weight: 1}}, {model: b, parameters: {weight: -1}}]\nmerge_method: linear\n",
        ("weights sum to 0",),
    ),
    # --- models and files
    Case(
        "model-not-found",
        SLICE.replace("model: a", "model: nowhere/model"),
        ("model 'nowhere/model'", "--model-path"),
        models={},
    ),
    Case("model-path-missing-dir", SLICE, ("a",), models={}, args=("--model-path", "a=/nonexistent/folder")),
    Case("no-config", SLICE, ("model 'a'", "no config.json"), models={"a": "no-config"}),
    Case("config-not-json", SLICE, ("model 'a'", "config.json"), models={"a": "config-not-json"}),
    Case("no-weights", SLICE, ("model 'a'", "no weights found"), models={"a": "no-weights"}),
    Case("missing-shard", SLICE, ("model 'a'", "is missing"), models={"a": "missing-shard"}),
    Case("index-stale", SLICE, ("model 'a'", "but that file lacks it"), models={"a": "index-stale"}),
    Case("truncated", SLICE, ("data lies outside the file",), models={"a": "truncated"}),
    Case(
        "header-length",
        SLICE,
        ("model.safetensors: corrupt safetensors file (header length",),
        models={"a": "header-length"},
    ),
    Case("header-not-json", SLICE, ("corrupt safetensors header",), models={"a": "header-not-json"}),
    Case("offsets-outside", SLICE, ("data lies outside the file",), models={"a": "offsets-outside"}),
    Case("offsets-overlap", SLICE, ("overlap",), models={"a": "offsets-overlap"}),
    Case("unknown-dtype", SLICE, ("unsupported dtype 'F9'",), models={"a": "unknown-dtype"}),
    Case("size-vs-shape", SLICE, ("do not match shape",), models={"a": "size-vs-shape"}),
    Case(
        "shape-mismatch",
        "models: [{model: a, parameters: {weight: 1}}, {model: wide, parameters: {weight: 1}}]\nmerge_method: linear\n",
        ("models", "different"),
        models={"a": "a", "wide": "wide"},
    ),
    Case(
        "other-architecture",
        "models: [{model: a, parameters: {weight: 1}}, {model: q, parameters: {weight: 1}}]\nmerge_method: linear\n",
        ("different architectures (a: MistralForCausalLM, q: Qwen3ForCausalLM)", "--allow-crimes"),
        models={"a": "a", "q": "qwen3"},
    ),
    Case("bnb-4bit", SLICE, ("model 'a'", "quantized (bitsandbytes)"), models={"a": "bnb"}),
    Case("gptq", SLICE, ("model 'a'", "quantized (gptq)"), models={"a": "gptq"}),
    Case("awq", SLICE, ("model 'a'", "quantized (awq)"), models={"a": "awq"}),
    Case("gguf-only", SLICE, ("model 'a'", "GGUF"), models={"a": "gguf"}),
    Case(
        "pickle-code",
        SLICE,
        ("model 'a'", "pytorch_model.bin holds more than tensors (Unsupported global: GLOBAL print)", "refused"),
        models={"a": "pickle"},
    ),
    # --- the output folder
    Case(
        "out-exists",
        SLICE,
        ("folder exists and is not empty", "--overwrite"),
        prepare=lambda tmp, out: (out.mkdir(), (out / "mine.txt").write_text("keep")),
    ),
    Case("out-is-file", SLICE, ("exists and is not a folder",), prepare=lambda tmp, out: out.write_text("keep")),
    Case("out-parent-missing", SLICE, ("parent folder does not exist",), args=("--out-parent", "missing")),
    Case("out-not-writable", SLICE, ("cannot create the output there",), args=("--out-parent", "/proc")),
    Case(
        "disk-full",
        SLICE,
        ("GB needed for the merged model, 0.00 GB free", "free some space"),
        patch=lambda m: m.setattr(
            shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000)
        ),
    ),
    Case(
        "ctrl-c",
        SLICE.replace("layer_range: [0, 4]}", "layer_range: [0, 4], parameters: {scale: 2.0}}"),
        ("interrupted", "left as it was"),
        code=130,
        # mid-merge, in a worker: every path that produces tensor bytes writes them with ShardWriter.write
        patch=lambda m: m.setattr(ShardWriter, "write", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt())),
    ),
    # --- the command line (usage errors: exit 2)
    Case("bad-shard-size", SLICE, ("is not a size",), code=2, args=("--out-shard-size", "lots")),
    Case("bad-model-path", SLICE, ("NAME=DIR",), code=2, args=("--model-path", "just-a-path")),
    Case("unknown-option", SLICE, ("No such option",), code=2, args=("--frobnicate",)),
    Case("bad-device", SLICE, ("--device tpu",), args=("--device", "tpu")),
]


@pytest.fixture(scope="module")
def fixture_models(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("bad-input-models")
    models = {name: build_model(tmp / name, layers=4, seed=i) for i, name in enumerate("abc")}
    models["wide"] = build_model(tmp / "wide", layers=4, vocab=256, seed=9)
    models["qwen3"] = build_model(tmp / "qwen3", "qwen3", layers=4, seed=10)
    models["sharded"] = build_model(tmp / "sharded", layers=4, max_shard_bytes=20_000, seed=11)
    single = models["a"] / "model.safetensors"

    def shard_damage(name: str, change) -> None:
        models[name] = damage_copy(models, tmp, "a", name, lambda f: change(f / "model.safetensors"))

    models["no-config"] = damage_copy(models, tmp, "a", "no-config", lambda f: (f / "config.json").unlink())
    models["config-not-json"] = damage_copy(
        models, tmp, "a", "config-not-json", lambda f: (f / "config.json").write_text("{oops")
    )
    models["no-weights"] = damage_copy(models, tmp, "a", "no-weights", lambda f: (f / "model.safetensors").unlink())
    models["missing-shard"] = damage_copy(
        models, tmp, "sharded", "missing-shard", lambda f: sorted(f.glob("model-*.safetensors"))[-1].unlink()
    )
    models["index-stale"] = damage_copy(
        models,
        tmp,
        "sharded",
        "index-stale",
        lambda f: edit_json(
            f / "model.safetensors.index.json",
            lambda i: i["weight_map"].update({"model.layers.3.mlp.up_proj.weight": "model-00001-of-" + "x"}),
        ),
    )
    # the stale index must name an existing file that lacks the tensor
    index = models["index-stale"] / "model.safetensors.index.json"
    edit_json(
        index,
        lambda i: i["weight_map"].update({"model.layers.3.mlp.up_proj.weight": sorted(i["weight_map"].values())[0]}),
    )
    size = single.stat().st_size
    shard_damage("truncated", lambda p: p.write_bytes(p.read_bytes()[: size - 64]))
    shard_damage("header-length", lambda p: p.write_bytes(struct.pack("<Q", 2**40) + p.read_bytes()[8:]))
    shard_damage("header-not-json", lambda p: rewrite_header(p, lambda h: None, raw=b"{not json"))
    shard_damage(
        "offsets-outside",
        lambda p: rewrite_header(
            p,
            lambda h: h[first_tensor(h)].update(
                data_offsets=[
                    size,
                    size + h[first_tensor(h)]["data_offsets"][1] - h[first_tensor(h)]["data_offsets"][0],
                ]
            ),
        ),
    )

    def overlap(header: dict) -> None:
        names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
        a, b = header[names[0]], header[names[1]]
        if a["dtype"] == b["dtype"] and a["shape"] == b["shape"]:
            b["data_offsets"] = list(a["data_offsets"])
        else:  # same byte count is not needed: point b's start into a
            length = b["data_offsets"][1] - b["data_offsets"][0]
            b["data_offsets"] = [a["data_offsets"][0], a["data_offsets"][0] + length]

    shard_damage("offsets-overlap", lambda p: rewrite_header(p, overlap))
    shard_damage("unknown-dtype", lambda p: rewrite_header(p, lambda h: h[first_tensor(h)].update(dtype="F9")))
    shard_damage("size-vs-shape", lambda p: rewrite_header(p, lambda h: h[first_tensor(h)].update(shape=[3, 3])))
    for name, quantization in {
        "bnb": {"quant_method": "bitsandbytes", "load_in_4bit": True},
        "gptq": {"quant_method": "gptq", "bits": 4},
        "awq": {"quant_method": "awq", "bits": 4},
    }.items():
        models[name] = damage_copy(
            models,
            tmp,
            "a",
            name,
            lambda f, q=quantization: edit_json(f / "config.json", lambda c: c.update(quantization_config=q)),
        )

    def gguf_only(folder: Path) -> None:
        (folder / "model.safetensors").unlink()
        (folder / "model-Q4_K_M.gguf").write_bytes(b"GGUF" + b"\0" * 64)

    models["gguf"] = damage_copy(models, tmp, "a", "gguf", gguf_only)

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    def evil_pickle(folder: Path) -> None:
        import torch

        (folder / "model.safetensors").unlink()
        torch.save({"model.embed_tokens.weight": Evil()}, folder / "pytorch_model.bin")

    models["pickle"] = damage_copy(models, tmp, "a", "pickle", evil_pickle)
    return models


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, fixture_models: dict[str, Path], tmp_path: Path, capsys, monkeypatch) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(case.recipe or "")
    args = list(case.args)
    parent = tmp_path
    if "--out-parent" in args:
        where = args.pop(args.index("--out-parent") + 1)
        args.remove("--out-parent")
        parent = tmp_path / where if not where.startswith("/") else Path(where)
    out = parent / "out"
    if case.prepare:
        case.prepare(tmp_path, out)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    if case.patch:
        case.patch(monkeypatch)
    paths = [arg for name, model in case.models.items() for arg in ("--model-path", f"{name}={fixture_models[model]}")]
    with pytest.raises(SystemExit) as exit_info:
        main(["merge", str(recipe), str(out), *paths, *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == case.code, err
    assert "Traceback" not in err
    position = 0
    for part in case.expected:
        found = err.find(part, position)
        assert found >= 0, f"{part!r} not in:\n{err}"
        position = found
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, nothing removed
    if case.prepare is None and parent.exists():
        assert not out.exists()


def test_the_table_has_at_least_fifty_cases() -> None:
    assert len(CASES) >= 50 and len({c.id for c in CASES}) == len(CASES)
