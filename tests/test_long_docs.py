"""Long passages: truncation is reported exactly; window scoring takes the best window, with offsets."""

from __future__ import annotations

import itertools
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from bge_rerank_cli import Reranker
from bge_rerank_cli.backends import load_scorer
from bge_rerank_cli.cli import app
from bge_rerank_cli.config import LoaderConfig
from bge_rerank_cli.records import Pair

runner = CliRunner()
WORDS = "deep learning json file python data model search query answer vector keyword".split()


def words(n: int, offset: int = 0) -> str:
    """``n`` whole-word tokens (every word is one token of the tiny vocabulary)."""
    return " ".join(WORDS[(i * 7 + offset) % len(WORDS)] for i in range(n))


def jsonl(text: str) -> list[dict]:
    return [orjson.loads(line) for line in text.splitlines()]


@pytest.fixture(scope="module")
def scorer512(tiny_xlmr: Path):
    return load_scorer(LoaderConfig(model=str(tiny_xlmr), device="cpu", max_length=512))


def test_whole_word_text_is_one_token_per_word(scorer512):
    (enc,) = scorer512.encode([Pair("deep", words(50))])
    assert len(enc.ids) == 1 + 4 + 50


def test_chunk_score_is_the_best_window_scored_directly(tiny_xlmr: Path, scorer512, cross_encoder_predict):
    query, passage = "how to read a json file", words(3000)
    args = ["score", "-m", str(tiny_xlmr), "--long-docs", "chunk", "--max-length", "512", "-f", "jsonl"]
    result = runner.invoke(app, [*args, "-q", query, "-p", passage])
    assert result.exit_code == 0, result.output
    (row,) = jsonl(result.stdout)

    (windows,) = scorer512.encode_windows([Pair(query, passage)], overlap=64, max_chunks=64)
    assert len(windows) == row["best_chunk"]["chunks"] > 5
    texts = [passage[w.span[0] : w.span[1]] for w in windows]
    direct = cross_encoder_predict(tiny_xlmr, [(query, t) for t in texts], logits=True)
    assert row["logit"] == pytest.approx(max(direct), abs=1e-5)
    best = row["best_chunk"]
    assert direct[best["index"]] == pytest.approx(max(direct), abs=1e-5)
    assert passage[best["start"] : best["end"]] == texts[best["index"]]
    assert (row["truncated"], row["dropped_tokens"]) == (False, 0)


def test_windows_cover_the_passage_in_order_with_overlap(scorer512):
    passage = words(1500)
    (windows,) = scorer512.encode_windows([Pair("deep", passage)], overlap=64, max_chunks=64)
    spans = [w.span for w in windows]
    assert spans[0][0] == 0 and spans[-1][1] == len(passage)
    for (s1, e1), (s2, e2) in itertools.pairwise(spans):
        assert s1 < s2 < e1 < e2  # each window starts inside the previous one: they overlap
    room = 512 - 1 - 4
    assert all(len(w.ids) == 512 for w in windows[:-1])
    assert len(windows) == -(-(1500 - 64) // (room - 64))


def test_offsets_are_characters_with_cjk_and_emoji(scorer512):
    filler = (
        "软件著作权😀数据🚀文件" * 120
    )  # every character is one token; emoji are 2 UTF-16 / 4 UTF-8 units
    marker = "深度学习"
    passage = filler + marker + filler
    (windows,) = scorer512.encode_windows([Pair("深度学习", passage)], overlap=16, max_chunks=64)
    where = passage.index(marker)
    holders = [w for w in windows if w.span[0] <= where and where + len(marker) <= w.span[1]]
    assert holders, "some window must cover the marker"
    for w in windows:
        text = passage[w.span[0] : w.span[1]]
        assert text and text[0] in filler + marker and text[-1] in filler + marker
    assert windows[-1].span[1] == len(passage)


@pytest.mark.parametrize(("extra", "dropped"), [(0, 0), (1, 1), (10, 10)])
def test_truncation_counts_at_the_boundary(tiny_xlmr: Path, extra: int, dropped: int):
    room = 64 - 1 - 4  # max length - one query token - <s> </s></s> </s>
    args = ["score", "-m", str(tiny_xlmr), "--max-length", "64", "-f", "jsonl", "-q", "deep"]
    (row,) = jsonl(runner.invoke(app, [*args, "-p", words(room + extra)]).stdout)
    assert row["truncated"] is (dropped > 0)
    assert row["dropped_tokens"] == dropped
    assert "query_dropped_tokens" not in row


def test_a_query_longer_than_its_cap_is_flagged(tiny_xlmr: Path):
    args = [
        "score",
        "-m",
        str(tiny_xlmr),
        "--max-length",
        "64",
        "-f",
        "jsonl",
        "-q",
        words(100),
        "-p",
        "json",
    ]
    (row,) = jsonl(runner.invoke(app, args).stdout)
    assert row["truncated"] is True
    assert row["query_dropped_tokens"] == 100 - 48  # the cap is 3/4 of 64
    assert row["dropped_tokens"] == 0


def test_default_truncation_of_a_3000_token_passage(tiny_xlmr: Path):
    args = ["score", "-m", str(tiny_xlmr), "-f", "jsonl", "-q", "deep", "-p", words(3000)]
    result = runner.invoke(app, args)
    (row,) = jsonl(result.stdout)
    assert row["truncated"] is True and row["dropped_tokens"] == 3000 - (512 - 1 - 4)
    assert "best_chunk" not in row
    assert "1 of 1 pairs (100%) did not fit --max-length 512" in result.stderr
    assert "--long-docs chunk" in result.stderr


def test_max_chunks_bounds_the_work_and_flags_the_rest(scorer512):
    (windows,) = scorer512.encode_windows([Pair("deep", words(3000))], overlap=64, max_chunks=2)
    assert len(windows) == 2
    room = 512 - 1 - 4
    assert windows[0].dropped_tokens == 3000 - (room + (room - 64))


def test_rerank_and_api_in_chunk_mode(tiny_xlmr: Path):
    docs = [words(2000), "json file", words(30, offset=3)]
    line = orjson.dumps({"query": "read json file", "documents": docs})
    args = ["rerank", "-m", str(tiny_xlmr), "--long-docs", "chunk", "-f", "jsonl"]
    (row,) = jsonl(runner.invoke(app, args, input=line).stdout)
    by_index = {r["index"]: r for r in row["results"]}
    assert by_index[0]["best_chunk"]["chunks"] > 1
    assert by_index[1]["best_chunk"] == {"index": 0, "start": 0, "end": len("json file"), "chunks": 1}

    api = Reranker(str(tiny_xlmr), device="cpu", long_docs="chunk").rerank("read json file", docs)
    assert {d.index: d.logit for d in api.results} == pytest.approx(
        {k: v["logit"] for k, v in by_index.items()}
    )
    assert next(d for d in api.results if d.index == 0).scored.best_chunk is not None


def test_limits_in_messages_are_the_effective_ones(tiny_xlmr: Path):
    """--max-length above the model's limit: every message speaks of the limit in use and this model."""
    from tests.conftest import run_cli

    line = b'{"query": "q", "passage": "' + b"word " * 3000 + b'"}\n'
    result = run_cli(["score", "-m", str(tiny_xlmr), "--max-length", "8192", "-f", "jsonl"], stdin=line)
    assert result.returncode == 0, result.stderr.decode()
    err = result.stderr.decode()
    assert "max length 512 (the model's limit)" in err and "did not fit --max-length 512" in err
    assert "8192 and lost" not in err and "bge-reranker-v2-m3" not in err
    assert "read 1 line, wrote 1 record " in err and "1 pair scored" in err
    assert "stand-in model:" in err and "RANDOM weights" in err  # the test model is labelled wherever it runs
