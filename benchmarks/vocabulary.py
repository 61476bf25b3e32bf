"""Time of merging vocabularies: a 150k-token union across 3 models (no I/O: tokenizers and
embeddings built in memory).

    python benchmarks/vocabulary.py [--tokens 150000] [--hidden 1024]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from mergesmith.checkpoints.tokenizer import Tokenizer
from mergesmith.plan_vocabulary import build_vocabulary
from mergesmith.vocabulary import align_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=150_000)
    parser.add_argument("--hidden", type=int, default=1024)
    args = parser.parse_args()
    n = args.tokens
    base = [f"t{i}" for i in range(n)]
    # two fine-tunes, each with 500 tokens of their own (100 shared), in a shuffled order
    generator = torch.Generator().manual_seed(0)
    models = {"base": base}
    for k in (1, 2):
        own = [f"t{i}" for i in range(n - 400)] + [f"shared{i}" for i in range(100)]
        own += [f"ft{k}-{i}" for i in range(400)]
        order = torch.randperm(len(own), generator=generator).tolist()
        models[f"ft{k}"] = [own[i] for i in order]
    tokenizers = {m: Tokenizer(m, Path("-"), {t: i for i, t in enumerate(v)}, {}, len(v)) for m, v in models.items()}
    started = time.perf_counter()
    vocabulary = build_vocabulary("union", tokenizers, "base")
    planned = time.perf_counter() - started
    tensors = [torch.randn((len(v), args.hidden), generator=generator).to(torch.bfloat16) for v in models.values()]
    started = time.perf_counter()
    aligned = align_rows(tensors, list(models), vocabulary, "base")
    rows = time.perf_counter() - started
    print(
        f"{len(vocabulary.tokens)} output tokens, 3 models, hidden {args.hidden}, bf16: "
        f"vocabulary and row maps {planned:.2f} s, row alignment {rows:.2f} s ({aligned[0].shape[0]} rows each)"
    )


if __name__ == "__main__":
    main()
