"""Decoder (LLM) rerankers: scores equal each model's published reference code, on tiny random models.

The references below are the model cards' / FlagEmbedding's code written out on transformers (full
vocabulary logits, left padding); ours folds the LM head, batches by tokens and reuses prompt prefixes.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
from typer.testing import CliRunner

from bge_rerank_cli.api import Reranker
from bge_rerank_cli.backends.prompts import model_template
from bge_rerank_cli.cli import app
from bge_rerank_cli.errors import ModelError
from bge_rerank_cli.records import Pair
from tests.conftest import SAMPLES, run_cli
from tools.reference_rerankers import Qwen3ModelCard, flag_llm_reranker

runner = CliRunner()
WORDS = (
    "the of and to in is for on read write file json python data deep learning model apple banana "
    '如何 申请 软件 著作权 neural network (a) "quoted" 123 query: <Document>'
).split()
QUERIES = ["how to read a json file in python", "what is deep learning?", "如何申请软件著作权"]


def mixed_pairs(per_query: int = 6, seed: int = 1) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [
        (q, " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 50))))
        for q in QUERIES
        for _ in range(per_query)
    ]


def qwen3_reference(model_dir: Path, pairs, instruction=None):
    """The Qwen3-Reranker model card's transformers code, as published: scores and input ids."""
    card = Qwen3ModelCard(model_dir, instruction=instruction)
    return card.score(pairs), card.ids(pairs)


def gemma_reference(model_dir: Path, pairs, prompt=None):
    """FlagEmbedding 1.4.2's ``FlagLLMReranker.compute_score`` (normalize=True): scores and input ids."""
    return flag_llm_reranker(model_dir, pairs, prompt=prompt)


@pytest.mark.parametrize("reuse", [True, False], ids=["prefix-reuse", "no-reuse"])
@pytest.mark.parametrize("batch_tokens", [None, 256], ids=["one-batch", "small-batches"])
def test_qwen3_scores_equal_the_model_cards_code(tiny_qwen3: Path, reuse: bool, batch_tokens):
    pairs = mixed_pairs()
    expected, ids = qwen3_reference(tiny_qwen3, pairs)
    reranker = Reranker(model=str(tiny_qwen3), device="cpu", prefix_reuse=reuse, batch_tokens=batch_tokens)
    assert [e.ids for e in reranker.scorer.encode([Pair(*p) for p in pairs])] == ids
    reranker.scorer._forget_prefixes()  # the scorer is shared per config within the process
    runs = reranker.scorer.prefix_runs
    got = reranker.score_pairs(pairs)
    assert max(abs(a - b.score) for a, b in zip(expected, got, strict=True)) < 1e-5
    assert min(expected) > 0.05 and max(expected) < 0.95 and max(expected) - min(expected) > 0.1  # spread
    for s in got:  # logit is the log-odds: score = sigmoid(logit) = P(yes) of the softmax over no/yes
        assert s.score == pytest.approx(1 / (1 + math.exp(-s.logit)), abs=1e-12)
    if reuse and batch_tokens is None:
        assert reranker.scorer.prefix_runs - runs == len(QUERIES)  # one prefix pass per query


def test_a_batch_holding_several_queries_reuses_each_prefix(tiny_qwen3: Path):
    # The engine never mixes queries in one batch (token_batches groups by prefix), but the scorer takes
    # any batch: rows of different prefixes, each left-padded to the longest, equal the full prompts.
    pairs = mixed_pairs(per_query=3)
    reuse = Reranker(model=str(tiny_qwen3), device="cpu", prefix_reuse=True).scorer
    full = Reranker(model=str(tiny_qwen3), device="cpu", prefix_reuse=False).scorer
    encoded = reuse.encode([Pair(*p) for p in pairs])
    assert len({e.prefix_key for e in encoded}) == len(QUERIES) > 1
    assert len({len(e.prefix_key) for e in encoded}) > 1  # prefixes of different lengths
    reuse._forget_prefixes()
    runs = reuse.prefix_runs
    got = reuse.logits(encoded)
    assert reuse.prefix_runs - runs == len(QUERIES)
    assert got == pytest.approx(full.logits(encoded), abs=1e-5)


def test_qwen3_instruction_and_the_template_is_never_cut(tiny_qwen3: Path):
    pairs = mixed_pairs(per_query=2)
    instruction = "Given a question, retrieve passages that answer it"
    expected, _ = qwen3_reference(tiny_qwen3, pairs, instruction=instruction)
    reranker = Reranker(model=str(tiny_qwen3), device="cpu", instruction=instruction)
    got = reranker.score_pairs(pairs)
    assert max(abs(a - b.score) for a, b in zip(expected, got, strict=True)) < 1e-5
    assert got != Reranker(model=str(tiny_qwen3), device="cpu").score_pairs(pairs)

    short = Reranker(model=str(tiny_qwen3), device="cpu", max_length=160)
    long_query, long_passage = "how to read json " * 40, "apple banana " * 200
    (enc,) = short.scorer.encode([Pair(long_query, long_passage)])
    suffix = short.scorer.pairs._suffix
    assert len(enc.ids) == 160 and enc.ids[-len(suffix) :] == suffix and enc.ids[: enc.prefix][-3:]
    assert enc.query_dropped > 0 and enc.dropped_tokens > 0
    (scored,) = short.score_pairs([(long_query, long_passage)])
    assert scored.truncated and scored.dropped_tokens == enc.dropped_tokens
    with pytest.raises(ValueError, match="max_length must leave room"):
        Reranker(model=str(tiny_qwen3), device="cpu", max_length=40).scorer  # noqa: B018


@pytest.mark.parametrize("reuse", [True, False], ids=["prefix-reuse", "no-reuse"])
def test_bge_gemma_scores_equal_flagembeddings_code(tiny_gemma: Path, reuse: bool):
    pairs = mixed_pairs()
    expected, ids = gemma_reference(tiny_gemma, pairs)
    reranker = Reranker(model=str(tiny_gemma), device="cpu", prefix_reuse=reuse)
    assert [e.ids for e in reranker.scorer.encode([Pair(*p) for p in pairs])] == ids
    got = reranker.score_pairs(pairs)
    assert max(abs(a - b.score) for a, b in zip(expected, got, strict=True)) < 1e-5
    assert max(expected) - min(expected) > 0.05
    prompt = "Is passage B an answer to query A? Say 'Yes' or 'No'."
    expected, _ = gemma_reference(tiny_gemma, pairs, prompt=prompt)
    got = Reranker(model=str(tiny_gemma), device="cpu", instruction=prompt).score_pairs(pairs)
    assert max(abs(a - b.score) for a, b in zip(expected, got, strict=True)) < 1e-5


def test_the_folded_head_equals_the_full_vocabulary_head(tiny_qwen3: Path, tiny_gemma: Path):
    import torch
    from transformers import AutoModelForCausalLM

    from bge_rerank_cli.backends.decoder import FoldedModel

    for model_dir, two_rows in ((tiny_qwen3, True), (tiny_gemma, False)):
        scorer = Reranker(model=str(model_dir), device="cpu").scorer
        lm = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        folded = FoldedModel(lm, scorer.true_id, scorer.false_id)
        assert folded.weight.shape[0] == 1  # one row: a sequence classifier's head
        ids = torch.tensor([e.ids for e in scorer.encode([Pair("what is deep learning", "neural network")])])
        with torch.no_grad():
            full = lm(input_ids=ids).logits[:, -1]
            hidden = lm.get_decoder()(input_ids=ids).last_hidden_state[:, -1]
        unfolded = full[:, scorer.true_id] - (full[:, scorer.false_id] if two_rows else 0)
        assert torch.allclose(folded.logits(hidden), unfolded, atol=1e-5)


def test_left_padded_batches_equal_pairs_scored_alone(tiny_qwen3: Path):
    pairs = mixed_pairs(per_query=4)
    together = Reranker(model=str(tiny_qwen3), device="cpu").score_pairs(pairs)
    alone = [
        Reranker(model=str(tiny_qwen3), device="cpu", prefix_reuse=False).score_pairs([p])[0] for p in pairs
    ]
    assert max(abs(a.logit - b.logit) for a, b in zip(together, alone, strict=True)) < 1e-5


def test_long_passages_in_windows(tiny_qwen3: Path, tiny_gemma: Path):
    for model_dir in (tiny_qwen3, tiny_gemma):
        reranker = Reranker(
            model=str(model_dir), device="cpu", max_length=200, long_docs="chunk", chunk_overlap=16
        )
        scorer = reranker.scorer
        passage = "apple banana fruit " * 60 + "read a json file with json.load " + "deep learning " * 30
        (windows,) = scorer.encode_windows([Pair("how to read json", passage)], overlap=16, max_chunks=64)
        assert len(windows) > 2 and all(len(w.ids) <= 200 for w in windows)
        assert (
            windows[0].span[0] == 0 and windows[-1].span[1] == len(passage) and windows[0].dropped_tokens == 0
        )
        assert all(w.prefix == windows[0].prefix for w in windows)
        (scored,) = reranker.score("how to read json", [passage])
        assert scored.best_chunk is not None and scored.best_chunk.count == len(windows)
        assert scored.logit == pytest.approx(max(scorer.logits(windows)), abs=1e-5)


def test_the_kind_is_read_from_the_config_or_forced():
    qwen = SimpleNamespace(architectures=["Qwen3ForCausalLM"], model_type="qwen3")
    gemma = SimpleNamespace(architectures=["GemmaForCausalLM"], model_type="gemma")
    xlmr = SimpleNamespace(architectures=["XLMRobertaForSequenceClassification"], model_type="xlm-roberta")
    llama = SimpleNamespace(architectures=["LlamaForCausalLM"], model_type="llama")
    assert model_template("auto", "Qwen/Qwen3-Reranker-0.6B", qwen) == "qwen3-reranker"
    assert model_template("auto", "BAAI/bge-reranker-v2-gemma", gemma) == "bge-gemma"
    assert model_template("auto", "BAAI/bge-reranker-v2-m3", xlmr) == "cross-encoder"
    assert model_template("bge-gemma", "my/llama-reranker", llama) == "bge-gemma"
    qwen_named = SimpleNamespace(architectures=["Qwen3ForCausalLM"], model_type="qwen3_custom")
    assert model_template("auto", "me/qwen3-reranker-finetune", qwen_named) == "qwen3-reranker"  # by name
    with pytest.raises(ModelError, match="by its name, but it is LlamaForCausalLM"):  # a name is no proof
        model_template("auto", "me/qwen3-reranker-finetune", llama)
    with pytest.raises(ModelError, match="does not know"):
        model_template("auto", "me/llama", llama)
    with pytest.raises(ModelError, match="needs a causal language model"):
        model_template("qwen3-reranker", "BAAI/bge-reranker-v2-m3", xlmr)
    with pytest.raises(ModelError, match="not a cross-encoder"):
        model_template("cross-encoder", "Qwen/Qwen3-Reranker-0.6B", qwen)


def test_cli_score_rerank_and_template_errors(tiny_qwen3: Path, tiny_xlmr: Path):
    pairs = mixed_pairs(per_query=3)
    expected = Reranker(model=str(tiny_qwen3), device="cpu").score_pairs(pairs)
    lines = b"".join(orjson.dumps({"query": q, "passage": p}) + b"\n" for q, p in pairs)
    scored = run_cli(
        ["score", "-m", str(tiny_qwen3), "-f", "jsonl", "--quiet", "--no-prefix-reuse"], stdin=lines
    )
    assert scored.returncode == 0, scored.stderr.decode()
    got = [json.loads(line) for line in scored.stdout.splitlines()]
    assert max(abs(g["score"] - e.score) for g, e in zip(got, expected, strict=True)) < 1e-5

    rerank = run_cli(["rerank", str(SAMPLES / "rerank.jsonl"), "-m", str(tiny_qwen3), "-f", "jsonl"])
    assert rerank.returncode == 0, rerank.stderr.decode()
    assert "stand-in model" in rerank.stderr.decode()
    first = json.loads(rerank.stdout.splitlines()[0])
    scores = [r["score"] for r in first["results"]]
    assert scores == sorted(scores, reverse=True)

    wrong = run_cli(["score", "-m", str(tiny_xlmr), "--template", "qwen3-reranker", "-q", "a", "-p", "b"])
    assert (
        wrong.returncode == 4 and b"--template qwen3-reranker needs a causal language model" in wrong.stderr
    )
    mixed = run_cli(["score", "-m", str(tiny_xlmr), "--template", "cross-encoder", "--instruction", "x", "-q", "a",
                     "-p", "b"])  # fmt: skip
    assert mixed.returncode == 2 and b"--instruction is for decoder rerankers" in mixed.stderr


def test_eval_bench_demo_and_doctor_run_decoder_rerankers(tiny_gemma: Path, tmp_path: Path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    monkeypatch.setenv("BGE_RERANK_CACHE", str(tmp_path / "cache"))
    from tests.test_eval import beir_args

    evaluated = runner.invoke(app, ["eval", *beir_args(tiny_gemma), "-f", "json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert orjson.loads(evaluated.stdout)["queries"] == 8

    bench = runner.invoke(app, ["bench", str(SAMPLES / "rerank.jsonl"), "-m", str(tiny_gemma),
                                "--setups", "torch-fp32,onnx-fp32,onnx-int8", "-f", "json"])  # fmt: skip
    assert bench.exit_code == 0, bench.stderr
    rows = {r["setup"]: r for r in orjson.loads(bench.stdout)["results"]}
    assert all(r["error"] is None for r in rows.values())
    assert rows["onnx-fp32"]["max_abs_delta"] < 1e-5  # the exported folded model agrees with torch
    assert rows["onnx-int8"]["max_abs_delta"] < 0.1

    demo = runner.invoke(app, ["demo", "--model", str(tiny_gemma), "--format", "jsonl"])
    assert demo.exit_code == 0, demo.output
    assert orjson.loads(demo.stdout.splitlines()[-1])["random_weights"] is True

    doctor = runner.invoke(app, ["doctor", "--model", str(tiny_gemma), "--check-model", "-f", "json"])
    checks = {c["name"]: c for c in orjson.loads(doctor.stdout)["checks"]}
    assert (
        "bge-gemma prompt" in checks["model-kind"]["finding"]
        and "needs about" in checks["model-kind"]["finding"]
    )
    assert "as a bge-gemma reranker" in checks["model-load"]["finding"]


def test_onnx_export_of_the_folded_model(tiny_qwen3: Path, tmp_path: Path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    monkeypatch.setenv("BGE_RERANK_CACHE", str(tmp_path / "cache"))
    pairs = mixed_pairs()
    torch_scores = Reranker(model=str(tiny_qwen3), device="cpu").score_pairs(pairs)
    onnx = Reranker(model=str(tiny_qwen3), backend="onnx")
    assert onnx.scorer.describe()["template"] == "qwen3-reranker"
    onnx_scores = onnx.score_pairs(pairs)
    assert max(abs(a.score - b.score) for a, b in zip(torch_scores, onnx_scores, strict=True)) < 1e-5
    int8 = Reranker(model=str(tiny_qwen3), backend="onnx", quantize="int8").score_pairs(pairs)
    assert max(abs(a.score - b.score) for a, b in zip(torch_scores, int8, strict=True)) < 0.1


def test_serve_answers_with_the_batch_tools_scores(tiny_qwen3: Path, tmp_path: Path):
    pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
    cohere = pytest.importorskip("cohere")
    from tests.test_serve import KEY, start, stop

    query, docs = QUERIES[0], [p for q, p in mixed_pairs(per_query=8) if q == QUERIES[0]]
    expected = Reranker(model=str(tiny_qwen3), device="cpu").score(query, docs)
    server = start(tiny_qwen3, tmp_path)
    try:
        ready = server.get("/ready").json()
        assert ready["template"] == "qwen3-reranker"
        client = cohere.ClientV2(base_url=server.url, api_key=KEY)
        answer = client.rerank(model="m", query=query, documents=docs, top_n=5)
        assert [r.index for r in answer.results] == sorted(
            range(len(docs)), key=lambda i: -expected[i].logit
        )[:5]
        for r in answer.results:
            assert r.relevance_score == pytest.approx(expected[r.index].score, abs=1e-5)
        jina = server.post("/v1/rerank", {"model": "m", "query": query, "documents": docs}).json()
        assert {r["index"]: r["relevance_score"] for r in jina["results"]} == pytest.approx(
            {i: s.score for i, s in enumerate(expected)}, abs=1e-5
        )
    finally:
        assert stop(server) in (0, -15, 143)
