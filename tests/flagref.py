"""FlagEmbedding 1.4.2 as the reference for BGE's layerwise and lightweight rerankers: its venv (made once
under .cache/ref-venvs, transformers 4.46 as the lightweight model's code asks), the tiny models it builds
from the modeling code its package ships, and its scores (``tools/flag_reference.py`` runs in that venv).
Where the venv cannot be made (no package index), the tests that need it skip and say so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

VENV = REPO / ".cache" / "ref-venvs" / "flagembedding"
PACKAGES = ["torch==2.13.0", "transformers==4.46.0", "FlagEmbedding==1.4.2"]
SCRIPT = REPO / "tools" / "flag_reference.py"


def reference_python() -> Path:
    """The venv's Python, made on first use (a few minutes); skips the calling test when it cannot be."""
    python = VENV / "bin" / "python"
    marker = VENV / ".complete"
    if marker.exists() and marker.read_text() == " ".join(PACKAGES):
        return python
    works = python.exists() and subprocess.run(
        [str(python), "-c", "import FlagEmbedding, transformers; assert transformers.__version__ == '4.46.0'"],
        capture_output=True,
    ).returncode == 0  # fmt: skip
    if not works:
        made = subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], capture_output=True)
        installed = made.returncode == 0 and subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *PACKAGES], capture_output=True, timeout=1500
        )
        if not installed or installed.returncode != 0:
            why = (installed.stderr if installed else made.stderr).decode(errors="replace")[-300:]
            pytest.skip(
                f"the FlagEmbedding reference venv could not be made (needs the package index): {why}"
            )
    marker.write_text(" ".join(PACKAGES))
    return python


def run(python: Path, job: dict) -> dict:
    result = subprocess.run(
        [str(python), str(SCRIPT)], input=json.dumps(job).encode(), capture_output=True, timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
    return json.loads(result.stdout)


def build(python: Path, family: str, path: Path, seed: int = 0) -> Path:
    run(python, {"job": "build", "family": family, "path": str(path), "seed": seed})
    return path


def job(family: str, model: Path, pairs, *, max_length: int = 512, cutoff_layers: int | None = None,
        compress_ratio: int = 1, compress_layers=(8,)) -> dict:  # fmt: skip
    """A score job with our option names and types (FlagEmbedding takes the layers as lists)."""
    return {"family": family, "model": str(model), "pairs": [list(p) for p in pairs], "max_length": max_length,
            "cutoff_layers": None if cutoff_layers is None else [cutoff_layers],
            "compress_ratio": compress_ratio, "compress_layers": list(compress_layers)}  # fmt: skip


def scores(python: Path, family: str, model: Path, pairs, **options) -> list[float]:
    """``compute_score(pairs, normalize=False)``: the raw logits, in the pairs' order."""
    return run(python, {"job": "score", **job(family, model, pairs, **options)})["scores"]


def ids(python: Path, family: str, model: Path, pairs, **options) -> list[list[int]]:
    """The token ids each pair became in its scoring passes (longest first, as FlagEmbedding sorts)."""
    return run(python, {"job": "ids", **job(family, model, pairs, **options)})["ids"]
