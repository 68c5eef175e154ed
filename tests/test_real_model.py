"""The real path: CLI -> loader -> tiny on-disk cross-encoders, checked against CrossEncoder.predict."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from bge_rerank_cli.backends import load_scorer
from bge_rerank_cli.cli import app
from bge_rerank_cli.config import LoaderConfig
from bge_rerank_cli.records import Pair
from tests.conftest import SAMPLES, run_cli

runner = CliRunner()
LONG = " ".join(["deep learning trains neural network models on data"] * 120)  # ~1000 tokens


def jsonl(data: bytes | str) -> list[dict]:
    text = data.decode() if isinstance(data, bytes) else data
    return [orjson.loads(line) for line in text.splitlines()]


def sample_pairs() -> list[tuple[str, str]]:
    rows = jsonl((SAMPLES / "pairs.jsonl").read_bytes())
    return [(r["query"], r["passage"]) for r in rows] + [
        ("what is deep learning?", LONG),  # short query, passage far past --max-length
        ("json", "read a json file"),
    ]


def test_score_matches_cross_encoder_predict(tiny_model: Path, cross_encoder_predict):
    pairs = sample_pairs()
    data = b"".join(orjson.dumps({"query": q, "passage": p}) + b"\n" for q, p in pairs)
    result = runner.invoke(app, ["score", "-m", str(tiny_model), "-f", "jsonl", "--quiet"], input=data)
    assert result.exit_code == 0, result.output
    rows = jsonl(result.stdout)
    expected_scores = cross_encoder_predict(tiny_model, pairs)
    expected_logits = cross_encoder_predict(tiny_model, pairs, logits=True)
    assert [r["score"] for r in rows] == pytest.approx(expected_scores, abs=1e-5)
    assert [r["logit"] for r in rows] == pytest.approx(expected_logits, abs=1e-5)
    assert len({round(s, 3) for s in expected_scores}) > 3, "random model should give spread-out scores"


@pytest.mark.parametrize("max_length", [32, 64])
def test_passage_is_cut_first_and_scores_still_match(tiny_xlmr: Path, cross_encoder_predict, max_length: int):
    from sentence_transformers import CrossEncoder

    pairs = [("how to read a json file", LONG), ("deep learning", LONG[:300])]
    scorer = load_scorer(LoaderConfig(model=str(tiny_xlmr), device="cpu", max_length=max_length))
    ours = [s.logit for s in _score(scorer, pairs)]
    reference = CrossEncoder(str(tiny_xlmr), device="cpu", max_length=max_length)
    import torch

    theirs = [float(x) for x in reference.predict(pairs, activation_fn=torch.nn.Identity())]
    assert ours == pytest.approx(theirs, abs=1e-5)


def _score(scorer, pairs):
    from bge_rerank_cli.engine import score_pairs

    return score_pairs(scorer, [Pair(q, p) for q, p in pairs])


def test_long_query_keeps_its_cap_and_leaves_room_for_the_passage(tiny_xlmr: Path):
    scorer = load_scorer(LoaderConfig(model=str(tiny_xlmr), device="cpu", max_length=64))
    long_query = " ".join(["json"] * 200)
    (encoded,) = scorer.encode([Pair(long_query, LONG)])
    assert len(encoded.ids) == 64
    query_tokens = encoded.ids[1 : encoded.ids.index(2)]  # between <s> and the first </s>
    assert len(query_tokens) == scorer.query_cap == 48  # 3/4 of max length
    passage_tokens = len(encoded.ids) - len(query_tokens) - 4
    assert passage_tokens == 12 and encoded.dropped_tokens > 0


def test_rerank_sorted_by_score_with_fields_kept(tiny_model: Path):
    result = run_cli(["rerank", "-m", str(tiny_model), str(SAMPLES / "rerank.jsonl")])
    assert result.returncode == 0, result.stderr.decode()
    rows = jsonl(result.stdout)  # piped: auto format is JSONL, every line parses
    source = jsonl((SAMPLES / "rerank.jsonl").read_bytes())
    assert len(rows) == len(source)
    for row, original in zip(rows, source, strict=True):
        assert row["qid"] == original["qid"]
        scores = [r["score"] for r in row["results"]]
        assert scores == sorted(scores, reverse=True)
        assert [r["rank"] for r in row["results"]] == list(range(1, len(scores) + 1))
        for r in row["results"]:
            doc = original["documents"][r["index"]]
            assert (r["id"], r["text"]) == (doc["id"], doc["text"])
            assert r["logit"] == pytest.approx(_logit_of(r["score"]), abs=1e-4)


def _logit_of(score: float) -> float:
    import math

    return math.log(score / (1 - score))


def test_rerank_scores_equal_score_command(tiny_xlmr: Path, cross_encoder_predict):
    source = jsonl((SAMPLES / "rerank.jsonl").read_bytes())[2]
    texts = [d["text"] for d in source["documents"]]
    expected = cross_encoder_predict(tiny_xlmr, [(source["query"], t) for t in texts])
    args = ["rerank", "-m", str(tiny_xlmr), "-q", source["query"], "-f", "jsonl", "--quiet"]
    for t in texts:
        args += ["-d", t]
    row = jsonl(runner.invoke(app, args).stdout)[0]
    assert {r["index"]: r["score"] for r in row["results"]} == pytest.approx(
        dict(enumerate(expected)), abs=1e-5
    )


def test_top_k_and_min_score(tiny_xlmr: Path):
    args = ["rerank", "-m", str(tiny_xlmr), str(SAMPLES / "rerank.jsonl"), "-f", "jsonl", "--quiet"]
    full = jsonl(runner.invoke(app, args).stdout)
    top2 = jsonl(runner.invoke(app, [*args, "--top-k", "2"]).stdout)
    for a, b in zip(full, top2, strict=True):
        assert b["results"] == a["results"][:2]
    threshold = sorted(r["score"] for row in full for r in row["results"])[len(full) * 2]
    kept = jsonl(runner.invoke(app, [*args, "--min-score", str(threshold)]).stdout)
    for a, b in zip(full, kept, strict=True):
        assert b["results"] == [r for r in a["results"] if r["score"] >= threshold]


def test_pipe_stdin_to_stdout_is_pure_jsonl(tiny_xlmr: Path):
    data = (SAMPLES / "mixed_pairs.jsonl").read_bytes()
    result = run_cli(["score", "-m", str(tiny_xlmr), "--batch-size", "16"], stdin=data)
    assert result.returncode == 0, result.stderr.decode()
    rows = jsonl(result.stdout)
    source = jsonl(data)
    assert [r["id"] for r in rows] == [s["id"] for s in source]
    ours = {"score", "logit", "truncated", "dropped_tokens"}
    assert all(set(r) == set(s) | ours for r, s in zip(rows, source, strict=True))


def test_malformed_line_through_a_real_pipe(tiny_xlmr: Path):
    data = b'{"query": "q", "passage": "p"}\n{"query": "q", "passage": 3}\n'
    result = run_cli(["score", "-m", str(tiny_xlmr)], stdin=data)
    assert result.returncode == 3
    assert b'line 2: "passage" must be a string' in result.stderr
    assert b"Traceback" not in result.stderr


def test_fp16_on_cpu_warns_once_and_runs_fp32(tiny_xlmr: Path, cross_encoder_predict):
    result = run_cli(
        ["score", "-m", str(tiny_xlmr), "--fp16", "--device", "cpu", "-q", "deep", "-p", "learning"]
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr.decode().count("fp16 is not supported on the CPU") == 1
    (row,) = jsonl(result.stdout)
    assert row["score"] == pytest.approx(
        cross_encoder_predict(tiny_xlmr, [("deep", "learning")])[0], abs=1e-5
    )


def test_missing_model_offline_says_what_to_do(tmp_path: Path):
    result = run_cli(
        ["score", "-q", "a", "-p", "b", "--offline", "--cache-dir", str(tmp_path)],
        env={"BGE_RERANK_MODEL": "BAAI/bge-reranker-v2-m3"},
    )
    err = result.stderr.decode()
    assert result.returncode == 4
    assert "BAAI/bge-reranker-v2-m3" in err and str(tmp_path) in err
    assert "hf download BAAI/bge-reranker-v2-m3" in err and "bge-rerank doctor" in err
    assert "Traceback" not in err


def test_model_directory_that_does_not_exist(tmp_path: Path):
    result = run_cli(["score", "-q", "a", "-p", "b", "-m", str(tmp_path / "nope")])
    assert result.returncode == 4
    assert b"does not exist" in result.stderr


def test_not_a_cross_encoder_is_refused(tmp_path: Path):
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from tools.random_model import build_xlmr

    build_xlmr(tmp_path / "m")
    config = XLMRobertaConfig.from_pretrained(tmp_path / "m")
    config.architectures = ["XLMRobertaModel"]
    XLMRobertaModel(config).save_pretrained(tmp_path / "m")
    result = runner.invoke(app, ["score", "-q", "a", "-p", "b", "-m", str(tmp_path / "m")])
    assert result.exit_code == 4
    assert "is not a cross-encoder" in result.stderr


def test_python_api(tiny_xlmr: Path, cross_encoder_predict):
    from bge_rerank_cli import Reranker

    reranker = Reranker(str(tiny_xlmr), device="cpu")
    docs = ["deep learning uses neural networks", {"text": "apple banana", "id": "fruit"}]
    result = reranker.rerank("what is deep learning", docs)
    expected = cross_encoder_predict(
        tiny_xlmr, [("what is deep learning", d if isinstance(d, str) else d["text"]) for d in docs]
    )
    assert {d.index: d.score for d in result.results} == pytest.approx(dict(enumerate(expected)), abs=1e-5)
    assert [d.rank for d in result.results] == [1, 2]
    fruit = next(d for d in result.results if d.index == 1)
    assert fruit.fields == {"id": "fruit"}
    assert [s.score for s in reranker.score("what is deep learning", [docs[0]])] == pytest.approx(
        expected[:1], abs=1e-5
    )


def fake_hub_cache(root: Path, model_dir: Path, repo: str = "test-org/tiny-reranker") -> Path:
    """Lay a model out exactly as huggingface_hub caches a download (blobs, snapshot, refs/main)."""
    import shutil

    folder = root / ("models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in model_dir.iterdir():
        shutil.copy(file, snapshot / file.name)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    return folder


def test_a_cached_hub_model_loads_without_network(tiny_xlmr: Path, tmp_path: Path, cross_encoder_predict):
    fake_hub_cache(tmp_path, tiny_xlmr)
    env = {
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_ENDPOINT": "http://127.0.0.1:9",
    }  # nothing listens on port 9
    args = [
        "score",
        "-m",
        "test-org/tiny-reranker",
        "--cache-dir",
        str(tmp_path),
        "-q",
        "deep",
        "-p",
        "learning",
    ]
    result = run_cli(args, env=env)
    assert result.returncode == 0, result.stderr.decode()
    (row,) = jsonl(result.stdout)
    assert row["score"] == pytest.approx(
        cross_encoder_predict(tiny_xlmr, [("deep", "learning")])[0], abs=1e-5
    )


def test_an_uncached_model_with_an_unreachable_hub_fails_fast(tmp_path: Path):
    env = {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}
    result = run_cli(["score", "-q", "a", "-p", "b", "--cache-dir", str(tmp_path)], env=env, timeout=60)
    err = result.stderr.decode()
    assert result.returncode == 4
    assert "not in the cache" in err and "unreachable" in err and "bge-rerank doctor" in err
    assert "Retrying" not in err


def test_half_precision_overflow_is_recomputed_in_fp32(tmp_path: Path):
    """A model whose logits pass fp16's range (65504): the half-precision batch comes back from fp32."""
    import torch
    from transformers import XLMRobertaForSequenceClassification

    from bge_rerank_cli.backends.hf import load_cross_encoder
    from bge_rerank_cli.backends.torch_scorer import TorchScorer
    from tools.random_model import build_xlmr

    path = build_xlmr(tmp_path / "loud")
    model = XLMRobertaForSequenceClassification.from_pretrained(path)
    with torch.no_grad():  # weights stay small enough for fp16; activations do not
        model.classifier.dense.weight.mul_(60)
        model.classifier.out_proj.weight.mul_(20000)
    model.save_pretrained(path)
    pairs = [Pair("deep learning", "neural network json"), Pair("json", "file")]
    reference = load_scorer(LoaderConfig(model=str(path), device="cpu"))
    expected = reference.logits(reference.encode(pairs))
    assert max(abs(v) for v in expected) > 65504
    config = LoaderConfig(model=str(path), device="cpu", dtype="fp16")
    half = TorchScorer(config, load_cross_encoder(config, "cpu", "fp16"), "cpu", "fp16")
    with torch.inference_mode():
        assert not torch.isfinite(half._forward(half._model, half._features(half.encode(pairs)))).all()
    got = half.logits(half.encode(pairs))
    assert half.fp32_fallbacks == 1
    assert got == pytest.approx(expected, rel=1e-5)


def test_out_of_memory_on_the_real_model_splits_batches_and_keeps_every_score(tiny_xlmr: Path):
    """torch's OutOfMemoryError injected into the real forward pass for batches of more than 2 rows."""
    import torch

    from bge_rerank_cli.backends.hf import load_cross_encoder
    from bge_rerank_cli.backends.torch_scorer import TorchScorer
    from bge_rerank_cli.engine import JobControl, score_pairs

    pairs = [Pair(q, p) for q, p in sample_pairs()] * 2 + [Pair("extra", f"passage {i}") for i in range(9)]
    reference = load_scorer(LoaderConfig(model=str(tiny_xlmr), device="cpu"))
    expected = [s.logit for s in score_pairs(reference, pairs)]
    config = LoaderConfig(model=str(tiny_xlmr), device="cpu", batch_size=64)
    scorer = TorchScorer(config, load_cross_encoder(config, "cpu", "fp32"), "cpu", "fp32")
    model, rows_run = scorer._model, []

    class SmallMemory(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, **features):
            rows = features["input_ids"].shape[0]
            if rows > 2:
                raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {rows} rows")
            rows_run.append(rows)
            return self.inner(**features)

    scorer._model = SmallMemory()
    control = JobControl()
    got = [s.logit for s in score_pairs(scorer, pairs, control=control)]
    assert got == pytest.approx(expected, abs=1e-5)
    assert control.stats.oom_splits > 0
    assert sum(rows_run) == len(set(pairs))  # every distinct pair scored once, none redone
