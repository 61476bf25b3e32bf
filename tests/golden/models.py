"""The golden cases' input models, built from the one fixture factory (same bytes every run)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))

from factory import build_model, derive_model, resize_vocabulary, write_tokenizer  # noqa: E402
from mergesmith.demo import SEED_MODEL, build_demo_model  # noqa: E402

HERE = Path(__file__).resolve().parent
CASES = tuple(sorted(p.name for p in HERE.iterdir() if (p / "recipe.yaml").is_file()))


def build_inputs(folder: Path) -> dict[str, Path]:
    """Model name as the golden recipes write it -> folder."""
    return {
        SEED_MODEL: build_demo_model(folder / "fimbulvetr-demo"),
        "golden/mistral-8": build_model(folder / "mistral-8", "mistral", layers=8, seed=8),
        "golden/llama-tied-4": build_model(folder / "llama-tied-4", "llama", layers=4, tied=True, seed=4),
        **_method_models(folder),
        **_wide_models(folder),
        **_tokenizer_models(folder),
    }


def _method_models(folder: Path) -> dict[str, Path]:
    """A float32 base and three "fine-tunes" of it (float32: no ties among random magnitudes)."""
    base = build_model(folder / "base", "mistral", layers=2, dtype="F32", seed=100)
    models = {"golden/base": base}
    for i in (1, 2, 3):
        models[f"golden/ft{i}"] = derive_model(base, folder / f"ft{i}", seed=i, scale=0.01)
    return models


def _wide_models(folder: Path) -> dict[str, Path]:
    """Three unrelated float32 models whose embeddings (4096 x 32) are large enough for torch and
    MKL to split whole-tensor reductions among threads (karcher's dot)."""
    return {
        f"golden/wide{i}": build_model(folder / f"wide{i}", "mistral", layers=1, vocab=4096, dtype="F32", seed=500 + i)
        for i in (1, 2, 3)
    }


# The intra-op thread count mergekit runs with in make_expected.py and mergesmith in the golden
# test: a whole-tensor dot's bits depend on it (as they do on the machine's MKL code path).
GOLDEN_THREADS = 2


CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
CHATML = (HERE.parent.parent / "src/mergesmith/data/chat_templates/chatml.jinja").read_text()


def _tokenizer_models(folder: Path) -> dict[str, Path]:
    """A 64-token base, two chat variants with 2 added tokens (66 rows), one padded to 72 rows."""
    base = write_tokenizer(build_model(folder / "tok-base", "mistral", layers=2, vocab=64, seed=200))
    models = {"golden/tok-base": base}
    for name, seed in (("tok-chat", 201), ("tok-chat2", 202)):
        chat = resize_vocabulary(base, folder / name, 66, seed=seed)
        models[f"golden/{name}"] = write_tokenizer(
            chat, added=CHAT_TOKENS, chat_template=CHATML, eos=("</s>", "<|im_end|>")
        )
    padded = resize_vocabulary(base, folder / "tok-padded", 72, seed=203)
    models["golden/tok-padded"] = write_tokenizer(padded, chat_template="{{ messages[0]['content'] }}")
    return models


def output_vocabulary(folder: Path) -> list[str] | None:
    """The merged model's tokens by id, as transformers loads its tokenizer (None: no tokenizer)."""
    if not (folder / "tokenizer.json").exists():
        return None
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(folder).get_vocab()
    return [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Name a colour."},
]


def rendered_chat(folder: Path) -> str | None:
    """A short conversation through the merged model's chat template (None: it has none)."""
    from transformers import AutoTokenizer

    if not (folder / "tokenizer.json").exists():
        return None
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not tokenizer.chat_template:
        return None
    return tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)


def folder_digest(folder: Path) -> str:
    """sha256 over the weight files of a model folder, to tell whether inputs changed."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def tensor_digests(folder: Path) -> dict[str, list]:
    """name -> [dtype, shape, sha256 of the raw bytes] for every tensor of a model folder."""
    from safetensors import safe_open

    from mergesmith.dtypes import tensor_bytes

    result = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                raw = bytes(tensor_bytes(t))
                result[name] = [str(t.dtype).removeprefix("torch."), list(t.shape), hashlib.sha256(raw).hexdigest()]
    return dict(sorted(result.items()))
