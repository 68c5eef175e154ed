"""`bge-rerank demo`: real BM25 first stage, real tiny model, and the failure path without a model."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from bge_rerank_cli.demo import bm25_scores, bm25_tokens
from bge_rerank_cli.demo_data import DEMO_QUERIES
from tests.conftest import run_cli


def test_bm25_tokens_split_latin_words_and_cjk_characters():
    assert bm25_tokens("Read JSON 文件!") == ["read", "json", "文", "件", "文件"]


@pytest.mark.parametrize("query", DEMO_QUERIES, ids=lambda q: q.query)
def test_every_demo_query_is_a_keyword_trap_for_bm25(query):
    """The data must show the problem: BM25's first pick is never the answer."""
    scores = bm25_scores(query.query, [p.text for p in query.passages])
    top = max(range(len(scores)), key=lambda i: scores[i])
    assert not query.passages[top].answer
    assert sum(p.answer for p in query.passages) == 1


def test_demo_jsonl_has_bm25_and_reranked_orders_and_timings(tiny_xlmr: Path):
    result = run_cli(["demo", "--model", str(tiny_xlmr), "--format", "jsonl"])
    assert result.returncode == 0, result.stderr.decode()
    records = [orjson.loads(line) for line in result.stdout.splitlines()]
    queries = [r for r in records if r["type"] == "query"]
    assert [q["query"] for q in queries] == [q.query for q in DEMO_QUERIES]
    for record, source in zip(queries, DEMO_QUERIES, strict=True):
        ids = {p.id for p in source.passages}
        assert {r["id"] for r in record["bm25"]} == ids == {r["id"] for r in record["reranked"]}
        bm25 = [r["bm25_score"] for r in record["bm25"]]
        assert bm25 == sorted(bm25, reverse=True)
        scores = [r["score"] for r in record["reranked"]]
        assert scores == sorted(scores, reverse=True)
        for row in record["reranked"]:
            assert row["change"] == row["bm25_rank"] - row["rank"]
        assert record["latency_ms"] > 0
    (timings,) = [r for r in records if r["type"] == "timings"]
    assert timings["pairs"] == sum(len(q.passages) for q in DEMO_QUERIES)
    assert timings["pairs_per_s"] > 0 and timings["load_s"] > 0
    assert (timings["device"], timings["dtype"]) == ("cpu", "fp32")
    assert timings["random_weights"] is True  # the stand-in is labelled in the output itself


def test_demo_language_filter(tiny_xlmr: Path):
    result = run_cli(["demo", "--model", str(tiny_xlmr), "--format", "jsonl", "--lang", "zh"])
    langs = {orjson.loads(line).get("lang") for line in result.stdout.splitlines()}
    assert langs == {"zh", None}  # None: the timings record


def test_demo_table_on_a_terminal_format(tiny_xlmr: Path):
    result = run_cli(["demo", "--model", str(tiny_xlmr), "--format", "table", "--lang", "en"])
    out = result.stdout.decode()
    assert result.returncode == 0
    assert "BM25 order" in out and "reranked order" in out
    assert "pairs/s" in out and "precision fp32" in out


def test_demo_without_the_model_offline_fails_clearly(tmp_path: Path):
    result = run_cli(
        ["demo"], env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path), "HF_HOME": str(tmp_path)}
    )
    err = result.stderr.decode()
    assert result.returncode == 4
    assert "BAAI/bge-reranker-v2-m3" in err and str(tmp_path) in err
    assert "hf download BAAI/bge-reranker-v2-m3" in err and "bge-rerank doctor" in err
    assert "bash scripts/main.sh" in err and "python -m tools.random_model DIR" in err  # the stand-in way
    assert "Traceback" not in err
    assert result.stdout == b""


@pytest.mark.parametrize("mode", ["truncate", "chunk"])
def test_demo_long_manual_is_flagged_or_chunked(tiny_xlmr: Path, mode: str):
    result = run_cli(["demo", "--model", str(tiny_xlmr), "-f", "jsonl", "--lang", "en", "--long-docs", mode])
    records = [orjson.loads(line) for line in result.stdout.splitlines()]
    (long_query,) = [r for r in records if r.get("query", "").startswith("How do I rotate")]
    manual = next(r for r in long_query["reranked"] if r["id"] == "en-l1")
    if mode == "truncate":
        assert manual["truncated"] is True and manual["dropped_tokens"] > 0
    else:
        assert manual["best_chunk"]["chunks"] > 1


@pytest.mark.parametrize("columns", [80, 200])
def test_demo_view_shows_the_keyword_trap_at_any_width(tiny_xlmr: Path, columns: int):
    from rich.cells import cell_len

    result = run_cli(["demo", "--model", str(tiny_xlmr), "--lang", "zh", "--format", "table"],
                     env={"COLUMNS": str(columns)})  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode()
    assert all(cell_len(line) <= columns for line in out.splitlines())
    # the distractor made of the query's words is readable, not ~9 characters of it
    assert "Python中的JSON文件和Python文件有什么区别" in out
    assert "✔ the answer" in out and "stand-in model:" in out  # the legend, and the model's label
