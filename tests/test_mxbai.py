"""mxbai-rerank v2 (a Qwen2 decoder and its prompt): scores and prompt ids equal the ``mxbai-rerank``
package's own ``MxbaiRerankV2`` (0.1.6), run unmodified in a venv of its own (it needs transformers 4), on
a tiny random Qwen2 of the same layout: torch within 1e-5, ONNX fp32 within 1e-4, with and without an
instruction, and with queries and passages cut at the same tokens.

The venv is made once under .cache/ref-venvs (torch 2.13.0, transformers < 5, mxbai-rerank, accelerate);
where it cannot be made (no package index), the tests skip and say so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bge_rerank_cli.api import Reranker
from bge_rerank_cli.records import Pair
from tests.conftest import REPO, run_cli
from tests.test_decoders import mixed_pairs

VENV = REPO / ".cache" / "ref-venvs" / "mxbai-rerank"
PACKAGES = ["torch==2.13.0", "transformers>=4.49,<5", "mxbai-rerank==0.1.6", "accelerate"]
LONG = [("what is deep learning " * 12, "deep learning trains neural networks on data " * 40)]


@pytest.fixture(scope="module")
def reference_python() -> Path:
    python = VENV / "bin" / "python"
    marker = VENV / ".complete"
    if not marker.exists():
        made = subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], capture_output=True)
        installed = made.returncode == 0 and subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *PACKAGES], capture_output=True, timeout=900
        )
        if not installed or installed.returncode != 0:
            why = (installed.stderr if installed else made.stderr).decode(errors="replace")[-300:]
            pytest.skip(f"the mxbai-rerank reference venv could not be made (needs the package index): {why}")
        marker.write_text(" ".join(PACKAGES))
    return python


def reference(python: Path, model: Path, pairs, *, max_length: int = 8192, instruction: str | None = None):
    job = {"model": str(model), "max_length": max_length, "pairs": pairs, "instruction": instruction}
    result = subprocess.run(
        [str(python), str(REPO / "tools" / "mxbai_reference.py")],
        input=json.dumps(job).encode(), capture_output=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    out = json.loads(result.stdout)
    return out["scores"], out["ids"]


@pytest.mark.parametrize("instruction", [None, "Find passages that answer the question"])
def test_scores_and_prompts_equal_the_mxbai_rerank_package(
    reference_python: Path, tiny_mxbai: Path, instruction: str | None
):
    pairs = mixed_pairs()
    expected, ids = reference(reference_python, tiny_mxbai, pairs, instruction=instruction)
    reranker = Reranker(str(tiny_mxbai), device="cpu", instruction=instruction, batch_tokens=512)
    assert reranker.kind == {"template": "mxbai-v2", "formula": 'logit = z("1") - z("0") at the last token; '
                             "score = sigmoid(logit)"}  # fmt: skip
    assert [e.ids for e in reranker.scorer.encode([Pair(q, p) for q, p in pairs])] == ids
    ours = [s.logit for s in reranker.score_pairs(pairs)]
    assert ours == pytest.approx(expected, abs=1e-5)
    assert max(expected) - min(expected) > 0.1  # an order to compare
    assert sorted(range(len(ours)), key=lambda i: -ours[i]) == sorted(
        range(len(ours)), key=lambda i: -expected[i]
    )


def test_queries_and_passages_are_cut_where_the_package_cuts_them(reference_python: Path, tiny_mxbai: Path):
    """The package's max_length leaves the fixed prompt out; ours counts it: the same cut is ours at the
    package's length plus the fixed tokens, with the query capped at three quarters of the package's."""
    reranker = Reranker(str(tiny_mxbai), device="cpu", max_length=320)
    fixed = reranker.scorer.pairs.template_tokens - 1  # the "\n" between query and passage is the package's
    expected, ids = reference(reference_python, tiny_mxbai, LONG, max_length=320 - fixed)
    encoded = reranker.scorer.encode([Pair(q, p) for q, p in LONG])
    assert [e.ids for e in encoded] == ids and len(ids[0]) == 320
    assert encoded[0].query_dropped > 0 and encoded[0].dropped_tokens > 0
    assert [s.logit for s in reranker.score_pairs(LONG)] == pytest.approx(expected, abs=1e-5)


def test_onnx_and_the_cli_agree_with_the_package(reference_python: Path, tiny_mxbai: Path, tmp_path: Path):
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    pairs = mixed_pairs(per_query=3)
    expected, _ = reference(reference_python, tiny_mxbai, pairs)
    lines = "".join(json.dumps({"query": q, "passage": p}) + "\n" for q, p in pairs).encode()
    renamed = tmp_path / "my-reranker"  # a name that says nothing: the template is given
    renamed.symlink_to(tiny_mxbai, target_is_directory=True)
    env = {"BGE_RERANK_CACHE": str(tmp_path / "own")}
    for args, tolerance in (
        (["-m", str(tiny_mxbai)], 1e-5),
        (["-m", str(tiny_mxbai), "--backend", "onnx"], 1e-4),
        (["-m", str(renamed), "--template", "mxbai-v2"], 1e-5),
    ):
        result = run_cli(["score", "-", "-f", "jsonl", "--quiet", *args], stdin=lines, env=env)
        assert result.returncode == 0, result.stderr.decode()
        ours = [json.loads(line)["logit"] for line in result.stdout.splitlines()]
        assert ours == pytest.approx(expected, abs=tolerance), args
    unnamed = run_cli(["score", "-q", "q", "-p", "p", "-m", str(renamed)])
    assert unnamed.returncode == 4 and b"--template" in unnamed.stderr and b"mxbai-v2" in unnamed.stderr
