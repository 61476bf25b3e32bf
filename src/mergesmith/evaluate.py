"""Measuring a merged model on real text. Needs transformers (`pip install mergesmith[test]`)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from mergesmith.errors import MergesmithError


@dataclass(frozen=True)
class Perplexity:
    tokens: int
    mean_nll: float  # nats per predicted token

    @property
    def value(self) -> float:
        return math.exp(self.mean_nll)


def perplexity(
    model_dir: str | os.PathLike[str], text: str, *, max_tokens: int = 2048, dtype: str = "bfloat16"
) -> Perplexity:
    """Perplexity of a causal LM folder on the first `max_tokens` tokens of `text` (no BOS added).

    Example:
        >>> perplexity("merged", Path("gpl-3.txt").read_text()).value
    """
    torch, transformers = _imports()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    model.eval()
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[:, :max_tokens]
    if ids.shape[1] < 2:
        raise MergesmithError("perplexity needs a text of at least two tokens")
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].float()  # (T-1, vocab)
    nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="mean").item()
    return Perplexity(tokens=ids.shape[1] - 1, mean_nll=nll)


def _imports():
    try:
        import torch
        import transformers
    except ImportError as err:
        raise MergesmithError(
            "measuring a model needs transformers", hint="pip install 'mergesmith[test]' or pip install transformers"
        ) from err
    return torch, transformers


def read_text(path: Path) -> str:
    return Path(path).read_text(encoding="utf-8")
