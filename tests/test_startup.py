"""Fast start and terminal behaviour, checked in real subprocesses."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

import pytest

from tests.conftest import REPO

HEAVY = ("torch", "transformers", "sentence_transformers", "tensorflow")

PROBE = """
import runpy, sys
sys.argv = ["bge-rerank", *{args!r}]
try:
    runpy.run_module("bge_rerank_cli", run_name="__main__")
except SystemExit:
    pass
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "args", [["--help"], ["score", "--help"], ["rerank", "--help"], ["serve", "--help"], ["--version"]]
)
def test_help_imports_no_torch(args: list[str]):
    code = PROBE.format(args=args, heavy=HEAVY)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO, timeout=60)
    assert result.returncode == 0
    assert b"HEAVY=\n" in result.stderr, result.stderr.decode()[-500:]
    assert b"Usage" in result.stdout or b"bge-rerank" in result.stdout


def test_package_import_is_light():
    code = "import sys, bge_rerank_cli; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO, timeout=60)
    assert result.stdout.strip() == b"[]"


@pytest.mark.parametrize("command", ["score", "rerank"])
def test_interactive_stdin_without_input_prints_usage_instead_of_hanging(command: str):
    leader, follower = pty.openpty()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "bge_rerank_cli", command],
            stdin=follower,
            capture_output=True,
            cwd=REPO,
            timeout=60,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    finally:
        os.close(leader)
        os.close(follower)
    assert result.returncode == 2
    assert f"bge-rerank {command} input.jsonl".encode() in result.stderr


@pytest.mark.parametrize("fmt", ["table", "chart", "jsonl", "tsv"])
def test_a_closed_pipe_ends_with_sigpipe_status_in_every_format(tiny_xlmr, tmp_path, fmt: str):
    """`bge-rerank rerank ... | head -1`: exit 141 (as SIGPIPE ends shell tools), never 1, no traceback."""
    import orjson

    source = tmp_path / "many.jsonl"
    line = {
        "query": "how do I read json",
        "documents": [f"json.load reads file number {i}" for i in range(8)],
    }
    source.write_bytes(b"".join(orjson.dumps({**line, "qid": str(q)}) + b"\n" for q in range(400)))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bge_rerank_cli",
            "rerank",
            str(source),
            "-m",
            str(tiny_xlmr),
            "-f",
            fmt,
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "80"},
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, stderr.decode()
    assert b"Traceback" not in stderr


def test_scoring_does_not_import_scikit_learn_yet_sentence_transformers_still_can(tiny_xlmr):
    """sklearn (~3.7 s of sentence-transformers' import here) is deferred until something calls it."""
    code = (
        "import sys\n"
        "from bge_rerank_cli import Reranker\n"
        f"print(Reranker({str(tiny_xlmr)!r}, device='cpu').score('a', ['b'])[0].logit)\n"
        "print('sklearn' in sys.modules, 'sklearn.metrics' in sys.modules)\n"
        "import torch\n"
        "from sentence_transformers.util import similarity\n"
        "print(similarity.manhattan_sim(torch.ones(2, 3).to_sparse(), torch.zeros(2, 3).to_sparse()).tolist())\n"
        "import sklearn.metrics\n"
        "print(type(sklearn.metrics.pairwise_distances).__name__, hasattr(sklearn, '__version__'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO, timeout=120,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    lines = result.stdout.decode().splitlines()
    assert lines[1] == "False False"
    assert lines[2] == "[[-3.0, -3.0], [-3.0, -3.0]]"  # the deferred function imports and runs the real one
    assert lines[3] == "function True"  # later imports get the real modules
