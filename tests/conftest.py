"""Shared fixtures. Everything runs offline on random-weight models built here, once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.pop("BGE_RERANK_MODEL", None)

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_data"


@pytest.fixture(scope="session")
def tiny_xlmr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tools.random_model import build_xlmr

    return build_xlmr(tmp_path_factory.mktemp("models") / "tiny-xlmr")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tools.random_model import build_bert

    return build_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tools.random_model import build_qwen3_reranker

    return build_qwen3_reranker(tmp_path_factory.mktemp("models") / "tiny-qwen3-reranker")


@pytest.fixture(scope="session")
def flag_python() -> Path:
    """FlagEmbedding 1.4.2's venv (tests/flagref.py): skips the test where it cannot be made."""
    from tests import flagref

    return flagref.reference_python()


@pytest.fixture(scope="session")
def tiny_layerwise(flag_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BAAI/bge-reranker-v2-minicpm-layerwise, built from FlagEmbedding's shipped code."""
    from tests import flagref

    return flagref.build(flag_python, "layerwise", tmp_path_factory.mktemp("models") / "layerwise")


@pytest.fixture(scope="session")
def tiny_lightweight(flag_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BAAI/bge-reranker-v2.5-gemma2-lightweight, built from FlagEmbedding's shipped code."""
    from tests import flagref

    return flagref.build(flag_python, "lightweight", tmp_path_factory.mktemp("models") / "lightweight")


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tools.random_model import build_bge_gemma

    return build_bge_gemma(tmp_path_factory.mktemp("models") / "tiny-bge-gemma")


@pytest.fixture(scope="session")
def tiny_mxbai(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tools.random_model import build_mxbai_v2

    return build_mxbai_v2(tmp_path_factory.mktemp("models") / "tiny-mxbai-rerank-v2")


@pytest.fixture(scope="session", params=["xlmr", "bert"])
def tiny_model(request: pytest.FixtureRequest) -> Path:
    """Both model families: XLM-RoBERTa (bge-reranker) and BERT (ms-marco MiniLM rerankers)."""
    return request.getfixturevalue(f"tiny_{request.param}")


@pytest.fixture(scope="session")
def cross_encoder_predict():
    """Direct sentence-transformers predictions, the reference every score is checked against."""
    cache: dict[str, object] = {}

    def predict(model_dir: Path, pairs: Sequence[tuple[str, str]], *, logits: bool = False) -> list[float]:
        import torch
        from sentence_transformers import CrossEncoder

        key = str(model_dir)
        if key not in cache:
            cache[key] = CrossEncoder(key, device="cpu")
        ce = cache[key]
        activation = torch.nn.Identity() if logits else torch.nn.Sigmoid()
        return [float(x) for x in ce.predict(list(pairs), activation_fn=activation, batch_size=8)]  # type: ignore[attr-defined]

    return predict


def run_cli(
    args: Sequence[str], stdin: bytes | None = None, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[bytes]:
    """Run the real installed entry point in a subprocess, as a shell pipeline would."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "bge_rerank_cli", *args],
        input=stdin,
        capture_output=True,
        env=full_env,
        timeout=timeout,
        cwd=REPO,
    )
