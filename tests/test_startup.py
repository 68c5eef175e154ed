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


# Imported by sentence-transformers / transformers at start-up, yet never by a scoring process (see
# bge_rerank_cli/backends/deferred.py); torch._dynamo brings torch._inductor and torch.onnx with it.
NOT_FOR_SCORING = ("sklearn", "scipy", "torch._dynamo", "torch._inductor", "torch.onnx")

SCORE_PROBE = """
import runpy, sys
sys.argv = ["bge-rerank", "score", "-q", "a", "-p", "b", "-p", "c", "-m", {model!r}, "-f", "jsonl", "--quiet"]
try:
    runpy.run_module("bge_rerank_cli", run_name="__main__")
except SystemExit as exc:
    assert not exc.code, exc.code
# torch._dynamo's own submodule _trace_wrapped_higher_order_op is imported (the real file), not the package
loaded = sorted(m for m in sys.modules if m in {names!r} or m.startswith(tuple(n + "." for n in {names!r})))
print("LOADED=" + ",".join(m for m in loaded if m != "torch._dynamo._trace_wrapped_higher_order_op"), file=sys.stderr)
"""


def _run(code: str) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO, timeout=180,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    return result


def test_a_scoring_process_imports_none_of_what_scoring_does_not_need(tiny_xlmr):
    result = _run(SCORE_PROBE.format(model=str(tiny_xlmr), names=NOT_FOR_SCORING))
    assert b"LOADED=\n" in result.stderr, result.stderr.decode()[-1000:]
    assert len(result.stdout.splitlines()) == 2


def test_scores_are_the_same_with_everything_imported_first(tiny_xlmr):
    """With the deferred modules already imported there is nothing to stand in for: the libraries' own path."""
    code = "from bge_rerank_cli import Reranker\n" + (
        f"print([s.logit for s in Reranker({str(tiny_xlmr)!r}, device='cpu').score('a', ['b', 'c'])])\n"
    )
    first = "import sklearn.metrics, scipy.sparse, scipy.optimize, torch._dynamo\n"
    assert _run(first + code).stdout == _run(code).stdout


def test_what_the_libraries_bound_from_the_stand_ins_works_later(tiny_xlmr):
    """scikit-learn and scipy functions import the real module on their first call; later imports get the
    real modules; torch._dynamo's decorators are applied once it is imported, and torch.compile works."""
    code = (
        "import sys\n"
        "from bge_rerank_cli import Reranker\n"
        f"reranker = Reranker({str(tiny_xlmr)!r}, device='cpu')\n"
        "print([s.logit for s in reranker.score('a', ['b', 'c'])])\n"
        "print([m in sys.modules for m in ('sklearn', 'scipy.sparse', 'scipy.optimize', 'torch._dynamo')])\n"
        "import torch\n"
        "from sentence_transformers.util import similarity, to_scipy_coo\n"
        "print(similarity.manhattan_sim(torch.ones(2, 3).to_sparse(), torch.zeros(2, 3).to_sparse()).tolist())\n"
        "print(to_scipy_coo(torch.eye(2).to_sparse()).toarray().tolist())\n"
        "from transformers.loss.loss_for_object_detection import linear_sum_assignment\n"
        "print([a.tolist() for a in linear_sum_assignment([[4, 1], [2, 3]])])\n"
        "import scipy.sparse, sklearn.metrics\n"
        "print(type(sklearn.metrics.pairwise_distances).__name__, isinstance(scipy.sparse.coo_matrix, type))\n"
        # torch._dynamo: the real package, with what transformers marked at import time applied to it
        "import torch._dynamo\n"
        "from torch._dynamo import trace_rules\n"
        "from transformers.integrations import deepgemm\n"
        "from transformers.modeling_utils import PreTrainedModel\n"
        "print(type(torch._dynamo.__loader__).__name__, deepgemm.is_sm100._dynamo_marked_constant,\n"
        "      trace_rules.is_callable_allowed(PreTrainedModel.can_record_outputs.fget))\n"
        "model = reranker.scorer._ce[0].model\n"
        "ids = torch.tensor([[0, 5, 6, 2, 2, 7, 2]])\n"
        "with torch.inference_mode():\n"
        "    print(torch.equal(model(input_ids=ids).logits, torch.compile(model, backend='eager')(input_ids=ids).logits))\n"
    )
    lines = _run(code).stdout.decode().splitlines()
    assert lines[1] == "[False, False, False, False]"
    assert lines[2] == "[[-3.0, -3.0], [-3.0, -3.0]]"  # the deferred function imports and runs the real one
    assert lines[3] == "[[1.0, 0.0], [0.0, 1.0]]"
    assert lines[4] == "[[0, 1], [1, 0]]"
    assert lines[5] == "function True"  # later imports get the real modules
    assert lines[6] == "SourceFileLoader True True"
    assert lines[7] == "True"


DECORATED = """
import sys, torch
from bge_rerank_cli.backends.deferred import DYNAMO, deferred_imports
with deferred_imports((DYNAMO,) if {defer} else ()):
    @torch.compiler.disable
    def off(x):
        return x.sin()

    @torch.compiler.allow_in_graph
    def opaque(x):
        return x.cos()

    print(DYNAMO in sys.modules, type(sys.modules.get(DYNAMO)).__name__)


def f(x):
    return off(x + 1) * 2 + opaque(x)


import torch._dynamo

e = torch._dynamo.explain(f)(torch.ones(3))
nodes = [n.target for g in e.graphs for n in g.graph.nodes if n.op == "call_function"]
print(e.graph_count, e.graph_break_count, [r.reason.splitlines()[0] for r in e.break_reasons], opaque in nodes)
print(torch.equal(torch.compile(f, backend="eager")(torch.ones(3)), f(torch.ones(3))))
"""


def test_dynamo_decorators_taken_from_the_stand_in_act_as_the_real_ones_once_it_is_imported():
    """torch.compile sees a `disable`d function as disabled (one graph break) and an `allow_in_graph`
    function as one node of the graph, whether they were decorated under the stand-in or not."""
    deferred = _run(DECORATED.format(defer=True)).stdout.decode().splitlines()
    real = _run(DECORATED.format(defer=False)).stdout.decode().splitlines()
    assert deferred[0] == "True _DeferredDynamo" and real[0] == "True module"  # the decorators import it
    expected = ["2 1 ['Skip calling `torch.compiler.disable()`d function'] True", "True"]
    assert deferred[1:] == real[1:] == expected
