"""TREC/BEIR formats and `bge-rerank eval`, checked against hand-computed values and ir-measures itself."""

from __future__ import annotations

import math
from pathlib import Path

import ir_measures
import orjson
import pytest
from typer.testing import CliRunner

from bge_rerank_cli.cli import app
from bge_rerank_cli.errors import InputError
from bge_rerank_cli.ir import RunEntry, compare, measure, rank_changes, read_corpus, read_qrels, read_run
from tests.conftest import SAMPLES

runner = CliRunner()
BEIR = SAMPLES / "beir-sample"
RUN = BEIR / "bm25.run"


def entries(*docids: str) -> list[RunEntry]:
    return [RunEntry(d, i, float(-i)) for i, d in enumerate(docids, start=1)]


def test_metrics_match_hand_computed_values():
    qrels = {"q1": {"a": 2, "b": 1}, "q2": {"x": 1, "y": 1, "z": 1}}
    run = {"q1": entries("c", "b", "a"), "q2": entries("x", "n", "y")}
    aggregate, per_query = measure(qrels, run)
    log2 = math.log2
    ndcg_q1 = (1 / log2(3) + 2 / log2(4)) / (2 / log2(2) + 1 / log2(3))
    ndcg_q2 = (1 / log2(2) + 1 / log2(4)) / (1 / log2(2) + 1 / log2(3) + 1 / log2(4))
    assert per_query["q1"]["nDCG@10"] == pytest.approx(ndcg_q1)
    assert per_query["q2"]["nDCG@10"] == pytest.approx(ndcg_q2)
    assert per_query["q1"]["RR@10"] == pytest.approx(1 / 2)
    assert per_query["q2"]["RR@10"] == pytest.approx(1.0)
    assert per_query["q1"]["AP"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert per_query["q2"]["AP"] == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert per_query["q2"]["R@10"] == pytest.approx(2 / 3)
    assert aggregate["nDCG@10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 2)


def test_rank_changes():
    before = {"q1": entries("a", "b", "c"), "q2": entries("x", "y")}
    after = {"q1": entries("c", "a", "b"), "q2": entries("x", "y")}
    changes = rank_changes(before, after)
    assert (changes.queries, changes.top1_replaced, changes.top1_replacement_rate) == (2, 1, 0.5)
    assert changes.mean_abs_shift == pytest.approx((2 + 1 + 1 + 0 + 0) / 5)
    assert changes.replaced == {"q1"}
    qrels = {"q1": {"c": 1}, "q2": {"x": 1}}
    per_query = compare(qrels, before, after, per_query=True)["per_query"]
    assert {qid: values["top1_replaced"] for qid, values in per_query.items()} == {"q1": True, "q2": False}


def test_formats(tmp_path: Path):
    run = read_run(RUN, depth=5)
    assert len(run) == 8 and all(len(e) == 5 for e in run.values())
    assert [e.rank for e in run["q-zh-1"]] == [1, 2, 3, 4, 5]
    qrels = read_qrels(BEIR / "qrels" / "test.tsv")
    assert qrels["q-zh-1"] == {"zh-01": 2, "zh-04": 1}
    trec_qrels = tmp_path / "qrels.txt"
    trec_qrels.write_text("q1 0 d1 2\nq1 0 d2 0\n")
    assert read_qrels(trec_qrels) == {"q1": {"d1": 2, "d2": 0}}
    corpus = read_corpus(BEIR / "corpus.jsonl", {"en-05"})
    assert list(corpus) == ["en-05"]
    assert corpus["en-05"].text.startswith("Deep learning Deep learning is a branch")  # title + " " + text
    bad = tmp_path / "bad.run"
    bad.write_text("q1 Q0 d1 1 2.0 tag\nq1 Q0 d2 two 1.0 tag\n")
    with pytest.raises(InputError, match="line 2"):
        read_run(bad)


def beir_args(tiny: Path) -> list[str]:
    return ["--beir", str(BEIR), "--run", str(RUN), "-m", str(tiny)]


def test_eval_on_the_sample_collection_matches_ir_measures(tiny_xlmr: Path, tmp_path: Path):
    result = runner.invoke(app, ["eval", *beir_args(tiny_xlmr), "--format", "json", "--per-query", "--quiet"])
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.stdout)
    made = report["model"]  # what made these figures, and that a stand-in's mean nothing, even with --quiet
    assert made["name"] == str(tiny_xlmr) and made["random_weights"] is True and made["backend"] == "torch"
    assert set(made) >= {"revision", "dtype", "device", "max_length"}
    assert "stand-in model" in result.stderr and "RANDOM weights" in result.stderr
    assert report["queries"] == 8
    assert set(report["measures"]) == {"nDCG@10", "MRR@10", "Recall@10", "Recall@100", "MAP"}
    assert 0 <= report["top1_replacement_rate"] <= 1 and report["latency_ms_per_query"] > 0
    assert set(report["per_query"]) == {f"q-{lang}-{i}" for lang in ("zh", "en") for i in range(1, 5)}

    qrels = list(ir_measures.read_trec_qrels(str(_trec_qrels(tmp_path))))
    before = ir_measures.calc_aggregate(
        [ir_measures.nDCG @ 10, ir_measures.RR @ 10, ir_measures.AP],
        qrels,
        list(ir_measures.read_trec_run(str(RUN))),
    )
    assert report["measures"]["nDCG@10"]["before"] == pytest.approx(before[ir_measures.nDCG @ 10])
    assert report["measures"]["MRR@10"]["before"] == pytest.approx(before[ir_measures.RR @ 10])
    assert report["measures"]["MAP"]["before"] == pytest.approx(before[ir_measures.AP])

    # the same reranking, written by `rerank --format trec`, read back by ir-measures
    trec = tmp_path / "reranked.run"
    rerank_args = ["rerank", "--run", str(RUN), "--corpus", str(BEIR / "corpus.jsonl")]
    rerank_args += [
        "--queries",
        str(BEIR / "queries.jsonl"),
        "-m",
        str(tiny_xlmr),
        "-f",
        "trec",
        "-o",
        str(trec),
    ]
    assert runner.invoke(app, rerank_args).exit_code == 0
    after = ir_measures.calc_aggregate(
        [ir_measures.nDCG @ 10], qrels, list(ir_measures.read_trec_run(str(trec)))
    )
    assert report["measures"]["nDCG@10"]["after"] == pytest.approx(after[ir_measures.nDCG @ 10], abs=1e-9)

    from_file = runner.invoke(app, ["eval", *beir_args(tiny_xlmr), "--reranked", str(trec), "-f", "json"])
    assert orjson.loads(from_file.stdout)["measures"] == report["measures"]


def _trec_qrels(tmp_path: Path) -> Path:
    out = tmp_path / "qrels.trec"
    lines = (BEIR / "qrels" / "test.tsv").read_text().splitlines()[1:]
    out.write_text("".join(f"{q} 0 {d} {r}\n" for q, d, r in (line.split("\t") for line in lines)))
    return out


def test_eval_from_rerank_jsonl_candidates_and_reranked_jsonl(tiny_xlmr: Path, tmp_path: Path):
    candidates = tmp_path / "candidates.jsonl"
    reranked = tmp_path / "reranked.jsonl"
    args = ["rerank", "--run", str(RUN), "--corpus", str(BEIR / "corpus.jsonl"), "--queries"]
    args += [str(BEIR / "queries.jsonl"), "-m", str(tiny_xlmr), "-f", "jsonl", "-o", str(reranked)]
    assert runner.invoke(app, args).exit_code == 0
    run = read_run(RUN)
    queries = {
        q["_id"]: q["text"] for q in map(orjson.loads, (BEIR / "queries.jsonl").read_bytes().splitlines())
    }
    with candidates.open("wb") as out:
        for qid, items in run.items():
            docs = [{"id": e.docid, "text": e.docid} for e in items]
            out.write(orjson.dumps({"qid": qid, "query": queries[qid], "documents": docs}) + b"\n")
    common = ["eval", "--qrels", str(BEIR / "qrels" / "test.tsv"), "-f", "json"]
    via_candidates = orjson.loads(
        runner.invoke(app, [*common, "--candidates", str(candidates), "--reranked", str(reranked)]).stdout
    )
    via_run = orjson.loads(
        runner.invoke(
            app, [*common, "--beir", str(BEIR), "--run", str(RUN), "--reranked", str(reranked)]
        ).stdout
    )
    assert via_candidates["measures"] == via_run["measures"]
    assert via_candidates["top1_replacement_rate"] == via_run["top1_replacement_rate"]


def test_rerank_summary_reports_top1_replacement_and_latency(tiny_xlmr: Path):
    args = ["rerank", str(SAMPLES / "rerank.jsonl"), "-m", str(tiny_xlmr), "-f", "jsonl"]
    result = runner.invoke(app, args)
    rows = [orjson.loads(line) for line in result.stdout.splitlines()]
    replaced = sum(row["results"][0]["index"] != 0 for row in rows)
    assert f"top-1 replaced in {replaced} of {len(rows)} queries" in result.stderr
    assert "ms/query" in result.stderr
    assert "top-1" not in runner.invoke(app, [*args, "--quiet"]).stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "--run", str(RUN)], "give --qrels"),
        (["eval", "--qrels", str(BEIR / "qrels" / "test.tsv")], "give the first stage"),
        (["eval", "--beir", str(SAMPLES)], "missing corpus.jsonl"),
        (["rerank", "--run", str(RUN)], "--run needs --corpus and --queries"),
        (["score", "-q", "a", "-p", "b", "-f", "trec"], "--format: 'trec' is not one of"),
    ],
)
def test_eval_usage_errors(args: list[str], message: str):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
