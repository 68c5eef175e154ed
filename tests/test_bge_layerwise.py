"""BGE's layerwise reranker (BAAI/bge-reranker-v2-minicpm-layerwise): a tiny MiniCPM of the same layout,
its code the modeling file FlagEmbedding's package ships, saved as remote code in the model folder. Our
scores (torch, the model's own code on transformers 5) equal FlagEmbedding 1.4.2's
``LayerWiseFlagLLMReranker`` (on transformers 4.46, in its own venv) within 1e-5, in the same order, for
the last layer and a cutoff layer, in one batch and in several, with passages cut where it cuts them.
The model loads only with --trust-remote-code, and a layer without a head is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from bge_rerank_cli.api import Reranker
from bge_rerank_cli.errors import ModelError
from bge_rerank_cli.records import Pair
from tests import flagref
from tests.conftest import run_cli
from tests.test_decoders import mixed_pairs


def order(values: list[float]) -> list[int]:
    return sorted(range(len(values)), key=lambda i: -values[i])


@pytest.mark.parametrize("layer", [None, 4], ids=["last-layer", "cutoff-4"])
@pytest.mark.parametrize("batch_tokens", [None, 200], ids=["one-batch", "small-batches"])
def test_scores_equal_flagembeddings_layerwise_reranker(
    flag_python: Path, tiny_layerwise: Path, layer: int | None, batch_tokens: int | None
):
    pairs = mixed_pairs()
    expected = flagref.scores(flag_python, "layerwise", tiny_layerwise, pairs, cutoff_layers=layer)
    reranker = Reranker(str(tiny_layerwise), device="cpu", trust_remote_code=True, cutoff_layers=layer,
                        batch_tokens=batch_tokens)  # fmt: skip
    got = [s.logit for s in reranker.score_pairs(pairs)]
    assert got == pytest.approx(expected, abs=1e-5)
    assert max(expected) - min(expected) > 0.05  # an order to compare
    assert order(got) == order(expected)
    assert reranker.kind["template"] == "bge-layerwise"
    assert reranker.scorer.describe()["cutoff_layers"] == (6 if layer is None else layer)


def test_passages_are_cut_where_flagembedding_cuts_them(flag_python: Path, tiny_layerwise: Path):
    """FlagEmbedding cuts a passage (``B: ...``) to ``max_length`` M tokens by itself, then adds the query
    part and the prompt; ours counts every token of the prompt in ``--max-length``: the same cut is ours
    at M plus the query part and the prompt."""
    query = "what is deep learning"
    pairs = [(query, "deep learning trains neural networks on data " * 60),
             (query, "plants need light water and soil " * 50)]  # fmt: skip
    expected = flagref.scores(flag_python, "layerwise", tiny_layerwise, pairs, max_length=120)
    probe = Reranker(str(tiny_layerwise), device="cpu", trust_remote_code=True).scorer
    (encoded,) = probe.encode([Pair(query, "x")])
    fixed = encoded.prefix + len(probe.pairs._suffix)  # <s>A: {query}\n and \n{prompt}
    reranker = Reranker(str(tiny_layerwise), device="cpu", trust_remote_code=True, max_length=120 + fixed)
    got = reranker.score_pairs(pairs)
    assert all(s.truncated for s in got)
    assert [s.logit for s in got] == pytest.approx(expected, abs=1e-5)


def test_the_model_loads_only_with_trust_remote_code(tiny_layerwise: Path, tmp_path: Path):
    with pytest.raises(ModelError, match="trust_remote_code=True") as refused:
        Reranker(str(tiny_layerwise), device="cpu").scorer  # noqa: B018
    assert (
        "code in its repository" in refused.value.message
        and "modeling_minicpm_reranker" in refused.value.message
    )
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"query": "what is a panda", "passage": "a bear"}\n')
    result = run_cli(["score", str(pairs), "-m", str(tiny_layerwise), "--device", "cpu"])
    assert result.returncode != 0 and b"--trust-remote-code" in result.stderr and result.stdout == b""
    result = run_cli(["score", str(pairs), "-m", str(tiny_layerwise), "--device", "cpu", "--cutoff-layers", "4"],
                     env={"BGE_RERANK_TRUST_REMOTE_CODE": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert b'"logit"' in result.stdout and b"Warning" not in result.stderr


def test_a_layer_without_a_head_and_onnx_are_refused(tiny_layerwise: Path):
    with pytest.raises(ModelError, match="no scoring head for layer 7: its heads are on layers 2 to 6"):
        Reranker(str(tiny_layerwise), device="cpu", trust_remote_code=True, cutoff_layers=7).scorer  # noqa: B018
    with pytest.raises(ModelError, match="no scoring head for layer 1"):
        Reranker(str(tiny_layerwise), device="cpu", trust_remote_code=True, cutoff_layers=1).scorer  # noqa: B018
    with pytest.raises(ModelError, match="torch only"):
        Reranker(str(tiny_layerwise), device="cpu", trust_remote_code=True, backend="onnx").scorer  # noqa: B018


def test_doctor_names_the_family_and_the_flag(tiny_layerwise: Path):
    out = run_cli(["doctor", "--check-model", "-m", str(tiny_layerwise), "-f", "json"]).stdout.decode()
    assert "bge-layerwise" in out and "cutoff layer's head" in out and "--trust-remote-code" in out


def test_the_cutoff_layer_is_bound_to_a_resumed_job(tiny_layerwise: Path, tmp_path: Path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(f'{{"query": "q{i}", "passage": "passage {i}"}}\n' for i in range(3)))
    out = tmp_path / "out.jsonl"
    base = [
        "score",
        str(pairs),
        "-m",
        str(tiny_layerwise),
        "--device",
        "cpu",
        "--trust-remote-code",
        "-o",
        str(out),
    ]
    first = run_cli([*base, "--cutoff-layers", "4"])
    assert first.returncode == 0, first.stderr.decode()
    again = run_cli([*base, "--cutoff-layers", "5", "--resume"])
    assert again.returncode != 0 and b"cutoff" in again.stderr.lower(), again.stderr.decode()
