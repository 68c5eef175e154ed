"""Several models in one `bge-rerank serve` (#22), as a real process on a loopback port, called through
real clients: routing by the request's ``model`` field in every dialect (each model's scores equal
`bge-rerank score` with that model), the default model for TEI and /score, aliases and per-model options
from a TOML config file, 404 for a model not served, one model's backlog not delaying another's
requests, the ``model`` label on the metrics, /ready, /info and /v1/models per model, and the memory
check that refuses before loading. Every request targets 127.0.0.1 and every loop is bounded."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from tests.test_serve import DOCS, KEY, QUERY, Server, batch_scores, launch, stop

httpx = pytest.importorskip("httpx")

CONFIG = """
default = "bert"

[models.xlmr]
model = "{xlmr}"
max-length = 256

[models.bert]
model = "{bert}"
long_docs = "chunk"
chunk-overlap = 8

[aliases]
"rerank-v3.5" = "xlmr"
"""


@pytest.fixture(scope="module")
def pair(tiny_xlmr: Path, tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Two models named on the command line, XLM-R first (the default)."""
    running = launch(tmp_path_factory.mktemp("pair"), "-m", f"xlmr={tiny_xlmr}", "-m", f"bert={tiny_bert}",
                     "--gather-ms", "20")  # fmt: skip
    yield running
    stop(running)


def by_index(results: list[dict], key: str) -> list[float]:
    return [r[key] for r in sorted(results, key=lambda r: r["index"])]


def test_each_dialect_routes_by_model_and_scores_as_the_batch_tool(
    pair: Server, tiny_xlmr: Path, tiny_bert: Path
):
    import cohere

    for name, path in (("xlmr", tiny_xlmr), ("bert", tiny_bert)):
        reference = [r["score"] for r in batch_scores(path, DOCS)]
        client = cohere.ClientV2(api_key=KEY, base_url=pair.url)
        answer = client.rerank(model=name, query=QUERY, documents=DOCS)
        assert [r.relevance_score for r in sorted(answer.results, key=lambda r: r.index)] == pytest.approx(
            reference, abs=1e-6
        )
        jina = pair.post("/v1/rerank", {"model": name, "query": QUERY, "documents": DOCS})
        assert jina.status_code == 200 and jina.json()["model"] == name
        assert by_index(jina.json()["results"], "relevance_score") == pytest.approx(reference, abs=1e-6)
        tei = pair.post("/rerank", {"model": name, "query": QUERY, "texts": DOCS})
        assert by_index(tei.json(), "score") == pytest.approx(reference, abs=1e-6)
        pairs = [{"query": QUERY, "passage": d} for d in DOCS]
        scored = pair.post("/score", {"model": name, "pairs": pairs}).json()
        assert scored["model"] == name
        assert [r["score"] for r in scored["results"]] == pytest.approx(reference, abs=1e-6)
    xlmr = [r["score"] for r in batch_scores(tiny_xlmr, DOCS)]
    assert xlmr != pytest.approx([r["score"] for r in batch_scores(tiny_bert, DOCS)], abs=1e-3)  # two models
    # TEI and /score without a model: the default (the first named)
    assert by_index(pair.post("/rerank", {"query": QUERY, "texts": DOCS}).json(), "score") == pytest.approx(
        xlmr, abs=1e-6
    )
    default = pair.post("/score", {"pairs": [{"query": QUERY, "passage": d} for d in DOCS]}).json()
    assert default["model"] == "xlmr" and [r["score"] for r in default["results"]] == pytest.approx(
        xlmr, abs=1e-6
    )
    # a served model's id is its name too
    by_id = pair.post("/v1/rerank", {"model": str(tiny_bert), "query": QUERY, "documents": DOCS})
    assert by_id.status_code == 200


def test_a_model_not_served_is_a_404_naming_the_served_ones(pair: Server):
    answer = pair.post("/v2/rerank", {"model": "rerank-v3.5", "query": "q", "documents": ["a"]})
    assert answer.status_code == 404
    assert answer.json()["message"] == "model 'rerank-v3.5' is not served here; served: xlmr, bert."
    assert pair.post("/rerank", {"model": "nope", "query": "q", "texts": ["a"]}).status_code == 404
    assert pair.metrics()["bge_rerank_rejected_requests_total{reason=unknown_model}"] >= 2


def test_ready_info_models_and_metrics_name_each_model(pair: Server, tiny_xlmr: Path, tiny_bert: Path):
    ready = pair.get("/ready").json()
    assert ready["status"] == "ready" and ready["models"] == {"xlmr": "ready", "bert": "ready"}
    assert [m["id"] for m in pair.get("/v1/models").json()["data"]] == ["xlmr", "bert"]
    info = pair.get("/info").json()
    assert info["default_model"] == "xlmr"
    models = {m["id"]: m for m in info["models"]}
    assert models["bert"]["model"] == str(tiny_bert) and models["xlmr"]["model"] == str(tiny_xlmr)
    for entry in models.values():
        assert entry["backend"] == "torch" and entry["random_weights"] is True and entry["status"] == "ready"
        assert entry["max_client_batch_size"] == 1000 and entry["max_input_length"] == 512
        assert entry["max_batch_tokens"] > 0 and entry["quantize"] == "none"
    assert info["version"]
    pair.post("/v1/rerank", {"model": "bert", "query": QUERY, "documents": DOCS[:2]})
    metrics = pair.metrics()
    assert metrics["bge_rerank_pairs_scored_total{model=bert}"] >= 2
    assert "bge_rerank_forward_passes_total{model=xlmr}" in metrics  # each model's series, from the start
    assert metrics["bge_rerank_queue_pairs{model=bert}"] == 0


def test_one_models_backlog_does_not_delay_anothers_requests(pair: Server):
    """A backlog on XLM-R many times a BERT request's own time; a request to BERT meanwhile answers in
    about its own time, long before that backlog clears (each model has its own worker and queue)."""
    long_docs = [f"{i} " + "deep learning trains neural networks with many layers " * 40 for i in range(200)]

    def flood(n: int) -> float:
        pair.post("/v1/rerank", {"model": "xlmr", "query": f"q{n}", "documents": long_docs})
        return time.monotonic()

    pair.post("/v1/rerank", {"model": "bert", "query": "warm", "documents": ["a"]})
    started = time.monotonic()
    pair.post("/v1/rerank", {"model": "bert", "query": "alone", "documents": DOCS})
    alone = time.monotonic() - started
    with ThreadPoolExecutor(12) as pool:
        started = time.monotonic()
        backlog = [pool.submit(flood, n) for n in range(12)]
        time.sleep(0.5)  # the backlog is queued
        asked = time.monotonic()
        answer = pair.post("/v1/rerank", {"model": "bert", "query": "meanwhile", "documents": DOCS})
        answered = time.monotonic()
        cleared = max(f.result() for f in backlog)
    assert answer.status_code == 200
    backlog_seconds, waited = cleared - started, answered - asked
    assert backlog_seconds > 10 * alone  # a real backlog, in units of BERT's own service time
    assert answered < cleared and waited < backlog_seconds / 4, (alone, waited, backlog_seconds)


def test_a_config_file_sets_options_per_model_a_default_and_aliases(
    tiny_xlmr: Path, tiny_bert: Path, tmp_path: Path
):
    config = tmp_path / "serve.toml"
    config.write_text(CONFIG.format(xlmr=tiny_xlmr, bert=tiny_bert))
    server = launch(tmp_path, "--config", str(config))
    try:
        info = {m["id"]: m for m in server.get("/info").json()["models"]}
        assert info["xlmr"]["max_input_length"] == 256 and info["bert"]["max_input_length"] == 512
        assert info["bert"]["long_docs"] == "chunk" and info["xlmr"]["long_docs"] == "truncate"
        assert server.get("/info").json()["default_model"] == "bert"
        expected = [r["score"] for r in batch_scores(tiny_xlmr, DOCS, "--max-length", "256")]
        aliased = server.post("/v2/rerank", {"model": "rerank-v3.5", "query": QUERY, "documents": DOCS})
        assert by_index(aliased.json()["results"], "relevance_score") == pytest.approx(expected, abs=1e-6)
        bert = [
            r["score"] for r in batch_scores(tiny_bert, DOCS, "--long-docs", "chunk", "--chunk-overlap", "8")
        ]
        default = server.post("/rerank", {"query": QUERY, "texts": DOCS}).json()
        assert by_index(default, "score") == pytest.approx(bert, abs=1e-6)
    finally:
        assert stop(server) in (0, -15, 143)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("[models.a]\nmodel = '{m}'\nmax_lenght = 3\n", "[models.a]: unknown key(s) max_lenght"),
        ("[models.a]\nmodel = '{m}'\nmax-length = 4\n", "max_length must be at least"),
        ("[models.a]\nmodel = '{m}'\n[aliases]\nx = 'b'\n", "alias 'x' points to 'b', which is not served"),
        ("default = 'z'\n[models.a]\nmodel = '{m}'\n", "default = 'z' is not a served model"),
        ("[models.a]\nmodel = \n", "not valid TOML"),
        ("[models.a]\nbackend = 'onnx'\n", "[models.a] needs model"),
        ("[model.a]\nmodel = '{m}'\n", "unknown top-level key(s) model"),
    ],
)
def test_a_bad_config_file_is_refused_before_anything_loads(
    tiny_xlmr: Path, tmp_path: Path, text: str, said: str
):
    config = tmp_path / "serve.toml"
    config.write_text(text.replace("{m}", str(tiny_xlmr)))
    result = run_cli(["serve", "--config", str(config), "--port", "0"], timeout=60)
    assert result.returncode == 2, result.stderr.decode()
    assert said in result.stderr.decode() and result.stdout == b""


def test_the_same_name_twice_and_a_missing_config_are_refused(tiny_xlmr: Path, tmp_path: Path):
    twice = run_cli(["serve", "-m", f"a={tiny_xlmr}", "-m", f"a={tiny_xlmr}", "--port", "0"], timeout=60)
    assert twice.returncode == 2 and b"'a' is given twice" in twice.stderr
    missing = run_cli(["serve", "--config", str(tmp_path / "none.toml"), "--port", "0"], timeout=60)
    assert missing.returncode == 2 and b"no such file" in missing.stderr


def test_models_that_do_not_fit_in_memory_are_refused_with_the_figures(tiny_xlmr: Path, tmp_path: Path):
    """A model folder whose weights (a sparse file: no disk used) are larger than this machine's memory:
    refused before any model loads, saying what each needs and what is available."""
    huge = tmp_path / "huge"
    huge.mkdir()
    (huge / "config.json").write_text('{"architectures": ["XLMRobertaForSequenceClassification"]}')
    with (huge / "model.safetensors").open("wb") as f:
        f.truncate(2**40)  # 1 TiB
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "bge_rerank_cli", "serve", "-m", f"small={tiny_xlmr}", "-m", f"huge={huge}",
         "--port", "0"], capture_output=True, timeout=60, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    err = proc.stderr.decode()
    assert proc.returncode == 4, err
    assert re.search(
        r"need about [0-9.]+ GiB of memory together \(small [0-9.]+ [KM]iB, huge [0-9.]+ GiB\)", err
    )
    assert "available; stopped before loading any of them" in err
    assert "BGE_RERANK_SKIP_MEMORY_CHECK=1" in err and "ready" not in err
    assert time.monotonic() - started < 30


def test_two_models_share_one_score_cache_without_mixing_their_scores(
    tiny_xlmr: Path, tiny_bert: Path, tmp_path: Path
):
    """One --score-cache file for both models: each model's repeated request is answered from the cache
    (nothing more reaches its model), each from its own entries (the two models' scores stay apart)."""
    store = tmp_path / "scores.sqlite"
    server = launch(
        tmp_path, "-m", f"xlmr={tiny_xlmr}", "-m", f"bert={tiny_bert}", "--score-cache", str(store)
    )
    try:
        distinct = len(set(DOCS))

        def ask(model: str) -> list[float]:
            answer = server.post("/v1/rerank", {"model": model, "query": QUERY, "documents": DOCS})
            assert answer.status_code == 200, answer.text
            return by_index(answer.json()["results"], "relevance_score")

        first = {model: ask(model) for model in ("xlmr", "bert")}
        before = server.metrics()
        again = {model: ask(model) for model in ("xlmr", "bert")}
        after = server.metrics()
        assert again == first and first["xlmr"] != pytest.approx(first["bert"], abs=1e-3)
        for model in ("xlmr", "bert"):
            key = f"bge_rerank_submitted_pairs_total{{model={model}}}"
            assert after[key] == before[key] == distinct + 1  # the load's warm-up pair, then the first round
            assert after[f"bge_rerank_cache_hits_total{{model={model}}}"] == distinct
        assert {m["id"]: m["score_cache"]["where"] for m in server.get("/info").json()["models"]} == {
            "xlmr": str(store),
            "bert": str(store),
        }
    finally:
        stop(server)


def test_the_model_variable_may_hold_a_path_with_spaces(tiny_xlmr: Path, tmp_path: Path):
    """BGE_RERANK_MODEL is one model, whatever it holds (Click would split a repeatable option's variable at
    its spaces)."""
    import shutil

    spaced = tmp_path / "my models" / "tiny xlmr"
    shutil.copytree(tiny_xlmr, spaced)
    os.environ["BGE_RERANK_MODEL"] = str(spaced)
    try:
        server = launch(tmp_path)
    finally:
        del os.environ["BGE_RERANK_MODEL"]
    try:
        assert [m["id"] for m in server.get("/v1/models").json()["data"]] == [str(spaced)]
    finally:
        stop(server)
