"""Hostile or broken model folders, table-driven, through `mergesmith merge` and `mergesmith plan`:
each attack exits 1 with one message naming the file and the field or tensor, no traceback, every
file under the test's folder (the model, the files it points at) byte-for-byte as before, no OUT.

The cases of tests/e2e/test_bad_inputs.py are not repeated here; these are the ones a red-team pass
found crashing (exit 3), escaping the model folder, or accepted when they must not be.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from damage import edit_json, first_tensor, rewrite_header
from factory import build_model, fill_cache, write_tokenizer
from mergesmith.cli import main

SLICE = "slices:\n  - sources: [{model: a, layer_range: [0, 4]}]\nmerge_method: passthrough\n"
AUTO_TEMPLATE = SLICE + "chat_template: auto\n"  # reads tokenizer_config.json / chat_template.*
TOKENIZER = SLICE + "tokenizer_source: base\n"  # reads tokenizer.json and generation_config.json
DEEP = b"[" * 100_000 + b"]" * 100_000  # 200 KB; json.loads raises RecursionError on it
SINGLE, INDEX = "model.safetensors", "model.safetensors.index.json"


@dataclass
class Case:
    id: str
    attack: Callable[[Path], None]  # damages the copied model folder (its parent is the test's folder)
    expected: tuple[str, ...]  # substrings of stderr, in order
    model: str = "plain"  # the fixture copied: plain (one file), sharded (index), tokenized
    recipe: str = SLICE


def write_raw(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes(data)


def edit(name: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    return lambda folder: edit_json(folder / name, change)


def header(change: Callable[[dict], None], raw: bytes | None = None) -> Callable[[Path], None]:
    return lambda folder: rewrite_header(folder / SINGLE, change, raw=raw)


def first(field: str, value: object) -> Callable[[Path], None]:
    return header(lambda h: h[first_tensor(h)].update({field: value}))


def on_norm(field: str, value: object) -> Callable[[Path], None]:
    """Change the final norm's entry (shape [32], data_offsets of 32 bf16 values)."""
    return header(lambda h: h["model.norm.weight"].update({field: value}))


def first_shard(folder: Path) -> str:
    return json.loads((folder / INDEX).read_text())["weight_map"]["model.embed_tokens.weight"]


def index_points_to(target: Callable[[Path], str]) -> Callable[[Path], None]:
    """The embeddings' index entry names `target(folder)`, and a valid shard (a copy of the real one)
    lies there: only the path check stands between the merge and the outside file."""

    def attack(folder: Path) -> None:
        name = target(folder)
        outside = (folder / name) if not name.startswith("/") else Path(name)
        outside.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / first_shard(folder), outside)
        edit_json(folder / INDEX, lambda i: i["weight_map"].update({"model.embed_tokens.weight": name}))

    return attack


def link_outside(name: str) -> Callable[[Path], None]:
    """Replace the model's `name` by a symlink to a copy of it outside the model folder."""

    def attack(folder: Path) -> None:
        outside = folder.parent / "elsewhere" / name
        outside.parent.mkdir(exist_ok=True)
        shutil.move(folder / name, outside)
        (folder / name).symlink_to(outside)

    return attack


def duplicate_key(name: str, text: bytes) -> Callable[[Path], None]:
    """Insert `text` (a key already present, with a value) right after the file's opening brace."""
    return lambda folder: (folder / name).write_bytes(b"{" + text + b"," + (folder / name).read_bytes()[1:])


def duplicate_tensor(folder: Path) -> None:
    data = (folder / SINGLE).read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    entries = json.loads(data[8 : 8 + length])
    norm = json.dumps({"model.norm.weight": entries["model.norm.weight"]}, separators=(",", ":")).encode()
    body = b"{" + norm[1:-1] + b"," + data[9 : 8 + length]  # the same name twice: JSON keeps the last
    (folder / SINGLE).write_bytes(struct.pack("<Q", len(body)) + body + data[8 + length :])


def rename_tensor(old: str, new: str) -> Callable[[Path], None]:
    return header(lambda h: h.update({new: h.pop(old)}))


def pickled(state: Callable[[], object]) -> Callable[[Path], None]:
    """Replace the weights by a pytorch_model.bin holding `state()` (only plain data, so loadable)."""

    def attack(folder: Path) -> None:
        import torch

        (folder / SINGLE).unlink()
        torch.save(state(), folder / "pytorch_model.bin")

    return attack


def _tensors(**named):
    import torch

    return {name: torch.zeros(2, dtype=getattr(torch, dtype)) for name, dtype in named.items()}


CASES: list[Case] = [
    # --- escape: every path from an index stays inside the model folder
    Case(
        "index-dotdot",
        index_points_to(lambda f: "../outside.safetensors"),
        (
            "model 'a'",
            INDEX,
            "weight_map['model.embed_tokens.weight'] is '../outside.safetensors'",
            "outside the model folder",
        ),
        model="sharded",
    ),
    Case(
        "index-absolute",
        index_points_to(lambda f: str(f.parent / "abs" / "outside.safetensors")),
        ("weight_map['model.embed_tokens.weight'] is '/", "points outside the model folder", "hint:"),
        model="sharded",
    ),
    Case(
        "index-nested-dotdot",  # a subfolder is allowed, climbing out of it is not
        index_points_to(lambda f: "sub/../../outside.safetensors"),
        ("'sub/../../outside.safetensors', which points outside the model folder",),
        model="sharded",
    ),
    Case(
        "index-shard-symlink-out",  # the name is plain, the file is a link to elsewhere
        lambda f: link_outside(first_shard(f))(f),
        ("model 'a'", "model-00001-of-", "resolves to", "elsewhere", "outside the model folder", "copy the file"),
        model="sharded",
    ),
    Case(
        "index-nul-byte",  # open() would raise ValueError: embedded null byte
        edit(INDEX, lambda i: i["weight_map"].update({"model.norm.weight": "model\0.safetensors"})),
        ("weight_map['model.norm.weight'] is 'model\\x00.safetensors'", "outside the model folder"),
        model="sharded",
    ),
    Case(
        "index-file-number",  # was str()-ed into the file name "5"
        edit(INDEX, lambda i: i["weight_map"].update({"model.norm.weight": 5})),
        (INDEX, "weight_map['model.norm.weight'] is an integer, expected a file name"),
        model="sharded",
    ),
    Case(
        "index-list",
        write_raw(INDEX, b"[1, 2]"),
        (INDEX, "expected an object with a weight_map", "found a list"),
        model="sharded",
    ),
    Case(
        "index-no-weight-map",
        write_raw(INDEX, b'{"metadata": {}}'),
        (INDEX, "found a weight_map that is null"),
        model="sharded",
    ),
    Case(
        "index-deep", write_raw(INDEX, DEEP), (INDEX, "JSON nested more than 100 levels deep", "hint:"), model="sharded"
    ),
    Case(
        "index-duplicate-tensor",  # two shards for one tensor: which one is read depends on the reader
        duplicate_key(INDEX, b'"weight_map": {}'),
        (INDEX, "key 'weight_map' appears twice in one JSON object"),
        model="sharded",
    ),
    Case(
        "config-symlink-out",  # a link to any file on the machine is read as the config
        link_outside("config.json"),
        ("model 'a'", "config.json resolves to", "outside the model folder"),
    ),
    Case(
        "tokenizer-file-symlink-out",  # copied into OUT (and uploaded with it) if followed
        link_outside("tokenizer_config.json"),
        ("model 'a'", "tokenizer_config.json resolves to", "outside the model folder"),
        model="tokenized",
    ),
    Case(
        "single-file-symlink-out",
        link_outside(SINGLE),
        ("model 'a'", "model.safetensors resolves to", "outside the model folder"),
    ),
    # --- crashes (exit 3) before: nesting, types, encodings
    Case(
        "header-deep",
        header(lambda h: None, raw=b'{"__metadata__":' + DEEP + b"}"),
        ("model.safetensors: corrupt safetensors header: JSON nested more than 100 levels deep",),
    ),
    Case(
        "config-deep",
        write_raw("config.json", DEEP),
        (
            "model 'a'",
            "config.json: JSON nested more than 100 levels",
        ),
    ),
    Case(
        "tokenizer-json-deep",
        write_raw("tokenizer.json", b'{"model": ' + DEEP + b"}"),
        ("model 'a'", "tokenizer.json: JSON nested more than 100 levels"),
        model="tokenized",
        recipe=TOKENIZER,
    ),
    Case(
        "tokenizer-config-deep",
        write_raw("tokenizer_config.json", DEEP),
        ("model 'a'", "tokenizer_config.json: JSON nested more than 100 levels"),
        model="tokenized",
        recipe=AUTO_TEMPLATE,
    ),
    Case(
        "generation-config-deep",
        write_raw("generation_config.json", DEEP),
        ("model 'a'", "generation_config.json: JSON nested more than 100 levels"),
        model="tokenized",
        recipe=TOKENIZER,
    ),
    Case(
        "chat-template-json-deep",
        # read only without a chat_template.jinja, which comes first
        lambda f: (
            (f / "chat_template.jinja").unlink(),
            write_raw("chat_template.json", b'{"chat_template": ' + DEEP + b"}")(f),
        ),
        ("model 'a'", "chat_template.json: JSON nested more than 100 levels"),
        model="tokenized",
        recipe=AUTO_TEMPLATE,
    ),
    Case("dtype-list", first("dtype", ["BF16"]), ("model.safetensors: tensor", "unsupported dtype ['BF16']", "hint:")),
    Case("dtype-number", first("dtype", 16), ("unsupported dtype 16",)),
    Case(
        "config-list", write_raw("config.json", b"[1, 2]"), ("model 'a'", "config.json holds a list, not a JSON object")
    ),
    Case(
        "architectures-number",
        edit("config.json", lambda c: c.update(architectures=5)),
        ("config.json: architectures is an integer (5), expected a list of class names",),
    ),
    Case(
        "architectures-list-of-numbers",
        edit("config.json", lambda c: c.update(architectures=[1])),
        ("config.json: architectures is a list ([1]), expected a list of class names",),
    ),
    Case(
        "added-token-no-content",
        edit("tokenizer.json", lambda t: t["added_tokens"][0].pop("content")),
        ("model 'a'", "tokenizer.json: added_tokens[0].content is null, expected the token's text"),
        model="tokenized",
        recipe=TOKENIZER,
    ),
    Case(
        "added-token-id-string",
        edit("tokenizer.json", lambda t: t["added_tokens"][0].update(id="0")),
        ('tokenizer.json: added_tokens[0].id is "0", expected a token id',),
        model="tokenized",
        recipe=TOKENIZER,
    ),
    Case(
        "vocab-id-negative",  # tokens[-1] = token would silently overwrite the last token
        edit("tokenizer.json", lambda t: t["model"]["vocab"].update({"a": -1})),
        ("tokenizer.json: model.vocab['a'] is -1, expected a token id from 0",),
        model="tokenized",
        recipe=TOKENIZER,
    ),
    Case(
        "vocab-id-boolean",
        edit("tokenizer.json", lambda t: t["model"]["vocab"].update({"a": True})),
        ("tokenizer.json: model.vocab['a'] is true, expected a token id",),
        model="tokenized",
        recipe=TOKENIZER,
    ),
    Case(
        "tokenizer-model-list",
        edit("tokenizer.json", lambda t: t.update(model=[])),
        ("tokenizer.json: expected an object with a model object, found a model that is a list",),
        model="tokenized",
        recipe=TOKENIZER,
    ),
    Case(
        "generation-config-list",
        write_raw("generation_config.json", b"[1]"),
        ("model 'a'", "generation_config.json holds a list, not a JSON object"),
        model="tokenized",
        recipe=TOKENIZER,
    ),
    Case(
        "generation-eos-string",
        edit("generation_config.json", lambda g: g.update(eos_token_id="2")),
        ('generation_config.json: eos_token_id is a string ("2"), expected a token id or a list of token ids',),
        model="tokenized",
        recipe=TOKENIZER,
    ),
    Case(
        "chat-template-not-utf8",
        write_raw("chat_template.jinja", b"{{ messages }}\xff\xfe"),
        ("model 'a'", "chat_template.jinja: not UTF-8 text (byte 14)"),
        model="tokenized",
        recipe=AUTO_TEMPLATE,
    ),
    Case(
        "chat-template-entries-numbers",
        edit("tokenizer_config.json", lambda t: t.update(chat_template=[1, 2])),
        ("tokenizer_config.json: chat_template is a list of other things", '{"name": ..., "template": ...}'),
        model="tokenized",
        recipe=AUTO_TEMPLATE,
    ),
    Case(
        "added-tokens-decoder-key",  # int(key) when a merged vocabulary rewrites it
        edit("tokenizer_config.json", lambda t: t.update(added_tokens_decoder={"x": {}})),
        ("tokenizer_config.json: added_tokens_decoder['x'] is an object, expected a token id",),
        model="tokenized",
    ),
    Case(
        "merges-unhashable",  # set(merge) when a merged vocabulary drops tokens
        edit("tokenizer.json", lambda t: t["model"].update(merges=[[["a"], "b"]])),
        ('tokenizer.json: model.merges[0] is a list, expected "a b" or ["a", "b"]',),
        model="tokenized",
        recipe=TOKENIZER,
    ),
    Case(
        "tokenizer-config-list",
        write_raw("tokenizer_config.json", b"[]"),
        ("tokenizer_config.json: holds a list, expected an object",),
        model="tokenized",
        recipe=AUTO_TEMPLATE,
    ),
    # --- accepted before, refused now
    Case(
        "shape-overflows-int64",
        first("shape", [2**62, 4]),
        (
            "tensor",
            "shape [4611686018427387904, 4] of BF16 is too large: its size in bytes overflows int64",
        ),
    ),
    Case(
        "shape-overflow-behind-zero",  # 0 elements, but torch multiplies the rest for strides
        first("shape", [0, 2**62, 2**62]),
        ("shape [0, 4611686018427387904, 4611686018427387904] of BF16 is too large",),
    ),
    Case(
        "shape-dimension-beyond-int64",
        first("shape", [2**64]),
        ("corrupt shape [18446744073709551616] (expected a list of integers from 0 to 2**63-1)",),
    ),
    Case(
        "shape-boolean",  # [32, true] has 32 elements, so sizes matched
        on_norm("shape", [32, True]),
        ("tensor model.norm.weight: corrupt shape [32, true] (expected a list of integers",),
    ),
    Case(
        "num-hidden-layers-string",
        edit("config.json", lambda c: c.update(num_hidden_layers="4")),
        (
            "model 'a'",
            'config.json: num_hidden_layers is a string ("4"), expected a whole number of layers',
            "hint: fix",
        ),
    ),
    Case(
        "num-hidden-layers-boolean",
        edit("config.json", lambda c: c.update(num_hidden_layers=True)),
        ("config.json: num_hidden_layers is true, expected a whole number of layers",),
    ),
    Case(
        "vocab-size-disagrees",  # transformers: size mismatch for model.embed_tokens.weight
        edit("config.json", lambda c: c.update(vocab_size=100)),
        (
            "model 'a': config.json says vocab_size 100, but model.embed_tokens.weight has 128 rows",
            'set "vocab_size": 128 in',
        ),
    ),
    Case(
        "vocab-size-string",
        edit("config.json", lambda c: c.update(vocab_size="128")),
        ('config.json: vocab_size is a string ("128"), expected a whole number of tokens',),
    ),
    # --- every field we read is type-checked
    Case(
        "offsets-negative",
        on_norm("data_offsets", [-64, 0]),
        (
            "tensor model.norm.weight: corrupt data_offsets [-64, 0] (expected two integers [begin, end], both 0 or more)",
        ),
    ),
    Case("offsets-boolean", on_norm("data_offsets", [False, 64]), ("corrupt data_offsets [false, 64]",)),
    Case("offsets-three", on_norm("data_offsets", [0, 32, 64]), ("corrupt data_offsets [0, 32, 64]",)),
    Case(
        "duplicate-tensor-name",
        duplicate_tensor,
        ("model.safetensors: corrupt safetensors header: key 'model.norm.weight' appears twice in one JSON object",),
    ),
    Case(
        "metadata-not-object",
        header(lambda h: h.update(__metadata__=["pt"])),
        ("corrupt safetensors header (__metadata__ is a list, not an object of strings)",),
    ),
    Case(
        "metadata-value-number",
        header(lambda h: h.update(__metadata__={"format": 5})),
        ("corrupt safetensors header (__metadata__.format is an integer, not a string)",),
    ),
    Case(
        "header-list",
        header(lambda h: None, raw=b"[]"),
        ("corrupt safetensors header (it is a list, not a JSON object)",),
    ),
    Case("dtype-null", first("dtype", None), ("unsupported dtype None",)),
    Case(
        "header-entry-not-object",
        header(lambda h: h.update({first_tensor(h): "BF16"})),
        ("corrupt header entry (a string, not an object)",),
    ),
    Case(
        "header-huge-integer",  # int() refuses more than 4300 digits with ValueError
        header(
            lambda h: None, raw=b'{"x": {"dtype": "BF16", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 0]}}'
        ),
        ("corrupt safetensors header: not valid JSON (Exceeds the limit (4300 digits)",),
    ),
    Case(
        "config-unpaired-surrogate",  # parses, but no UTF-8 writer can write it into OUT/config.json
        write_raw("config.json", b'{"model_type": "mistral\\ud800"}'),
        ("config.json: holds an unpaired UTF-16 surrogate escape ('\\ud800'), which is not text",),
    ),
    Case(
        "config-too-large",
        write_raw("config.json", b"{}" + b" " * (64 * 2**20)),
        (
            "model 'a'",
            "config.json: larger than 64 MiB",
        ),
    ),
    Case(
        "config-not-utf8",
        write_raw("config.json", b'{"model_type": "\xff"}'),
        ("config.json: not UTF-8 text",),
    ),
    Case(
        "tie-word-embeddings-string",
        edit("config.json", lambda c: c.update(tie_word_embeddings="no")),
        ('config.json: tie_word_embeddings is a string ("no"), expected true or false',),
    ),
    Case(
        "text-config-list",
        edit("config.json", lambda c: c.update(text_config=[])),
        ("config.json: text_config is a list ([]), expected an object of settings",),
    ),
    Case(
        "nested-layer-count-string",
        edit("config.json", lambda c: c.update(text_config={"num_hidden_layers": "4"})),
        ('config.json: text_config.num_hidden_layers is a string ("4")',),
    ),
    Case(
        "config-eos-string",
        edit("config.json", lambda c: c.update(eos_token_id="</s>")),
        ('config.json: eos_token_id is a string ("</s>"), expected a token id or a list of token ids',),
    ),
    Case(
        "bin-not-a-dict",  # state.items() raised AttributeError
        pickled(lambda: [1, 2]),
        ("model 'a': pytorch_model.bin: holds a list, not a dict of tensors", "hint:"),
    ),
    Case(
        "bin-integer-key",  # names are matched with regular expressions
        pickled(lambda: {5: _tensors(w="float32")["w"]}),
        ("model 'a': pytorch_model.bin: entry 5 (Tensor) is not a tensor under a string name",),
    ),
    Case(
        "bin-complex-dtype",  # code_from_torch raised ValueError
        pickled(lambda: _tensors(**{"model.norm.weight": "complex64"})),
        ("model 'a': pytorch_model.bin: tensor model.norm.weight has dtype torch.complex64, which cannot be merged",),
    ),
    Case(
        "wild-layer-index",  # layers 4 .. 99999999 would be built empty (10**8 tuples)
        rename_tensor("model.layers.3.input_layernorm.weight", "model.layers.99999999.input_layernorm.weight"),
        ("model 'a': layer 4 has no tensors, but the tensor names go up to layer 99999999",),
    ),
    Case(
        "layer-gap",  # a missing layer was silently merged as no tensors at all
        lambda f: [rename_tensor(n, n.replace(".2.", ".7."))(f) for n in _layer_names(f, 2)],
        ("model 'a': layer 2 has no tensors, but the tensor names go up to layer 7 (4 of 8 layers have none)",),
    ),
]


def _layer_names(folder: Path, layer: int) -> list[str]:
    data = (folder / SINGLE).read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return [n for n in json.loads(data[8 : 8 + length]) if n.startswith(f"model.layers.{layer}.")]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("hostile-models")
    return {
        "plain": build_model(tmp / "plain", layers=4, seed=1),
        "sharded": build_model(tmp / "sharded", layers=4, max_shard_bytes=20_000, seed=2),
        "tokenized": write_tokenizer(
            build_model(tmp / "tokenized", layers=4, vocab=64, seed=3), chat_template="{{ x }}"
        ),
    }


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root`: a file's sha256, a link's target, or 'folder'."""
    state = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            state[key] = "link to " + os.readlink(path)
        elif path.is_dir():
            state[key] = "folder"
        else:
            state[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def run(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("command", ["merge", "plan"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_model_folder(case: Case, command: str, fixtures, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "models" / "a"
    shutil.copytree(fixtures[case.model], folder)
    case.attack(folder)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(case.recipe)
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    args = [command, str(recipe), *([str(out)] if command == "merge" else []), "--model-path", f"a={folder}"]
    code, err = run(args, capsys)
    assert code == 1, err
    assert "Traceback" not in err
    assert err.count("error:") == 1 and err.count("hint:") == 1, err
    position = 0
    for part in case.expected:
        found = err.find(part, position)
        assert found >= 0, f"{part!r} not in:\n{err}"
        position = found
    assert snapshot(tmp_path) == before  # nothing written, nothing removed, nothing changed
    assert not out.exists()


def test_the_table_covers_every_attack() -> None:
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


# --- hub caches: snapshot files are symlinks into ../../blobs, and that must keep working


def hub_cache(cache: Path, repo_id: str, model: Path) -> Path:
    """Lay out `model` as huggingface_hub does: each file a blob, the snapshot's files relative links."""
    snapshot_folder = fill_cache(cache, repo_id, model)
    blobs = snapshot_folder.parent.parent / "blobs"
    blobs.mkdir()
    for path in sorted(snapshot_folder.iterdir()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        path.rename(blobs / digest)
        path.symlink_to(Path("..", "..", "blobs", digest))
    return snapshot_folder


def hub_env(monkeypatch, cache: Path) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_hub_cache_snapshot_links_into_its_blobs_merge(fixtures, tmp_path: Path, capsys, monkeypatch) -> None:
    from safetensors.torch import load_file

    snapshot_folder = hub_cache(tmp_path / "hub", "org/tiny", fixtures["sharded"])
    assert (snapshot_folder / INDEX).is_symlink()
    hub_env(monkeypatch, tmp_path / "hub")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(SLICE.replace("model: a", "model: org/tiny"))
    code, err = run(["merge", str(recipe), str(tmp_path / "by-id")], capsys)
    assert code == 0, err
    # the same snapshot folder named with --model-path gets the same rule
    code, err = run(
        ["merge", str(recipe), str(tmp_path / "by-path"), "--model-path", f"org/tiny={snapshot_folder}"], capsys
    )
    assert code == 0, err
    expected = {}
    for shard in fixtures["sharded"].glob("*.safetensors"):
        expected.update(load_file(shard))
    for out in (tmp_path / "by-id", tmp_path / "by-path"):
        merged = {}
        for shard in out.glob("*.safetensors"):
            merged.update(load_file(shard))
        assert merged.keys() == expected.keys()
        assert all(merged[n].equal(expected[n]) for n in expected)


def test_hub_snapshot_link_into_another_repository_is_refused(fixtures, tmp_path: Path, capsys, monkeypatch) -> None:
    hub_cache(tmp_path / "hub", "org/other", fixtures["plain"])
    snapshot_folder = hub_cache(tmp_path / "hub", "org/tiny", fixtures["plain"])
    other_blob = (tmp_path / "hub" / "models--org--other" / "snapshots").glob(f"*/{SINGLE}")
    (snapshot_folder / SINGLE).unlink()
    (snapshot_folder / SINGLE).symlink_to(next(other_blob).resolve())
    hub_env(monkeypatch, tmp_path / "hub")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(SLICE.replace("model: a", "model: org/tiny"))
    before = snapshot(tmp_path)
    code, err = run(["plan", str(recipe)], capsys)
    assert code == 1, err
    assert "model 'org/tiny': model.safetensors resolves to" in err
    assert "models--org--other/blobs/" in err and "outside the model folder" in err
    assert snapshot(tmp_path) == before


def test_hub_index_naming_the_blob_store_by_path_is_refused(fixtures, tmp_path: Path, capsys, monkeypatch) -> None:
    """Blobs are reached through the snapshot's links, never by a `..` path in an index."""
    snapshot_folder = hub_cache(tmp_path / "hub", "org/tiny", fixtures["sharded"])
    index = json.loads((snapshot_folder / INDEX).read_text())
    blob = os.readlink(snapshot_folder / index["weight_map"]["model.norm.weight"])  # ../../blobs/<sha>
    index["weight_map"]["model.norm.weight"] = blob
    (snapshot_folder / INDEX).unlink()
    (snapshot_folder / INDEX).write_text(json.dumps(index))
    hub_env(monkeypatch, tmp_path / "hub")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(SLICE.replace("model: a", "model: org/tiny"))
    code, err = run(["plan", str(recipe)], capsys)
    assert code == 1, err
    assert f"weight_map['model.norm.weight'] is '{blob}', which points outside the model folder" in err


def test_links_that_stay_inside_the_folder_are_followed(fixtures, tmp_path: Path, capsys) -> None:
    """A shard kept in a subfolder and linked, and a model folder that is itself a link, still merge."""
    real = tmp_path / "real"
    shutil.copytree(fixtures["sharded"], real)
    shard = first_shard(real)
    (real / "store").mkdir()
    shutil.move(real / shard, real / "store" / shard)
    (real / shard).symlink_to(Path("store", shard))
    (tmp_path / "linked").symlink_to(real)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(SLICE)
    code, err = run(["plan", str(recipe), "--model-path", f"a={tmp_path / 'linked'}"], capsys)
    assert code == 0, err
