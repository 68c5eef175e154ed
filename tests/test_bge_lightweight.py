"""BGE's lightweight reranker (BAAI/bge-reranker-v2.5-gemma2-lightweight): a tiny Gemma 2 of the same layout
(per-layer one-output heads from layer 2, sliding window 16, soft-capping), built by FlagEmbedding's own
model class. Our scorer (:mod:`bge_rerank_cli.backends.lightweight`: transformers 5's Gemma 2 layers and a
loop of our own) equals FlagEmbedding 1.4.2's ``LightWeightFlagLLMReranker.compute_score(normalize=False)``
(on transformers 4.46, in its own venv) within 1e-5 and in the same order: the last layer uncompressed, a
cutoff layer with compression, ratios 4 and 8, and a batch of short and long passages cut where it cuts
them. A pair's score does not depend on the other pairs in its batch (compression included), and a cutoff
layer without a head is refused.

The reference venv and the tiny model come from ``tests/flagref.py``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from bge_rerank_cli.backends import lightweight
from bge_rerank_cli.config import LoaderConfig
from bge_rerank_cli.errors import ModelError
from bge_rerank_cli.records import Pair
from tests import flagref
from tests.test_decoders import WORDS, mixed_pairs

# name -> our LoaderConfig fields (FlagEmbedding's compute_score gets the same, as lists)
CASES: dict[str, dict[str, Any]] = {
    "last-layer-uncompressed": {},
    "cutoff-4-ratio-2": {"cutoff_layers": 4, "compress_ratio": 2, "compress_layers": (2, 4)},
    "ratio-4": {"compress_ratio": 4, "compress_layers": (2, 4)},
    "ratio-8-three-layers": {"cutoff_layers": 6, "compress_ratio": 8, "compress_layers": (1, 3, 5)},
}


def flag_scores(python: Path, model: Path, pairs: list[tuple[str, str]], **case: Any) -> list[float]:
    return flagref.scores(python, "lightweight", model, pairs, **case)


def flag_ids(python: Path, model: Path, pairs: list[tuple[str, str]], *, max_length: int) -> list[list[int]]:
    return flagref.ids(python, "lightweight", model, pairs, max_length=max_length)


def scorer(model: Path, *, max_length: int = 1024, **fields: Any) -> lightweight.LightweightScorer:
    config = LoaderConfig(model=str(model), device="cpu", dtype="fp32", max_length=max_length, **fields)
    return lightweight.LightweightScorer(config, model, "cpu", "fp32")


def our_scores(found: lightweight.LightweightScorer, pairs: list[tuple[str, str]]) -> list[float]:
    return [float(v) for v in found.logits(found.encode([Pair(q, p) for q, p in pairs]))]


def order(values: list[float]) -> list[int]:
    return sorted(range(len(values)), key=lambda i: -values[i])


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_scores_equal_flagembeddings_lightweight_reranker(
    flag_python: Path, tiny_lightweight: Path, case: str
):
    pairs = mixed_pairs()
    expected = flag_scores(flag_python, tiny_lightweight, pairs, **CASES[case])
    found = scorer(tiny_lightweight, **CASES[case])
    assert not any(e.dropped_tokens or e.query_dropped for e in found.encode([Pair(*p) for p in pairs]))
    got = our_scores(found, pairs)
    assert got == pytest.approx(expected, abs=1e-5)
    assert max(expected) - min(expected) > 0.1  # an order to compare
    assert order(got) == order(expected)


def test_short_and_long_passages_cut_where_flagembedding_cuts_them(flag_python: Path, tiny_lightweight: Path):
    """FlagEmbedding's ``max_length`` M caps the query part (``A: {query}``) at 3M/4 tokens, the passage
    (``B: {passage}``) at M, and ``<bos>A: {query}\\nB: {passage}`` at M + S (S: the suffix, ``\\n`` and
    the prompt), then adds the suffix. Ours counts every token in ``max_length``: for a query part of at
    least S - 2 tokens (so that the M + S cap is the one that cuts) the same cut is ours at M + 2S, with
    the query capped at 3M/4 less what ``A: `` adds to the query's own tokens."""
    rng = random.Random(3)
    short = "what is deep learning and how do neural networks learn from data " * 2
    long = "what is deep learning " * 30  # cut: more than 3M/4 tokens
    passages = ["deep learning trains neural networks on data " * 40, "hi",
                " ".join(rng.choice(WORDS) for _ in range(8)), " ".join(rng.choice(WORDS) for _ in range(300))]  # fmt: skip
    pairs = [(q, p) for q in (short, long) for p in passages]
    m = 96
    case = CASES["cutoff-4-ratio-2"]
    probe = scorer(tiny_lightweight)
    suffix = probe.suffix_tokens
    (head,) = probe.encode([Pair(long, "x")])
    query_tokens = len(probe.pairs._tok.encode(long, add_special_tokens=False).ids)
    head_extra = head.prefix - 2 - query_tokens  # "A: " (bos and "\n" are the 2)
    found = scorer(
        tiny_lightweight, max_length=m + 2 * suffix, query_max_length=3 * m // 4 - head_extra, **case
    )
    encoded = found.encode([Pair(q, p) for q, p in pairs])
    assert sorted(e.ids for e in encoded) == sorted(
        flag_ids(flag_python, tiny_lightweight, pairs, max_length=m)
    )
    assert {e.dropped_tokens > 0 for e in encoded} == {True, False}
    assert {e.query_dropped > 0 for e in encoded} == {True, False}
    expected = flag_scores(flag_python, tiny_lightweight, pairs, max_length=m, **case)
    got = [float(v) for v in found.logits(encoded)]
    assert got == pytest.approx(expected, abs=1e-5)
    assert order(got) == order(expected)


def test_a_pairs_score_does_not_depend_on_its_batch(flag_python: Path, tiny_lightweight: Path):
    """Compression re-pads the batch to its longest compressed row, but each row's tokens attend only to
    its own: alone or among others, a pair scores the same (in FlagEmbedding too)."""
    pairs = [
        *mixed_pairs(per_query=2),
        ("what is deep learning", "deep learning trains neural networks " * 20),
    ]
    case = CASES["cutoff-4-ratio-2"]
    found = scorer(tiny_lightweight, **case)
    encoded = found.encode([Pair(q, p) for q, p in pairs])
    together = [float(v) for v in found.logits(encoded)]
    alone = [float(found.logits([e])[0]) for e in encoded]
    assert alone == pytest.approx(together, abs=1e-5)
    assert [float(v) for v in found.logits(encoded[::-1])][::-1] == pytest.approx(together, abs=1e-5)
    in_batch = flag_scores(flag_python, tiny_lightweight, pairs, **case)
    by_itself = flag_scores(flag_python, tiny_lightweight, pairs[-1:], **case)
    assert by_itself[0] == pytest.approx(in_batch[-1], abs=1e-5)
    assert alone[-1] == pytest.approx(by_itself[0], abs=1e-5)


@pytest.mark.parametrize("layer", [1, 7])
def test_a_cutoff_layer_without_a_head_is_refused(tiny_lightweight: Path, layer: int):
    with pytest.raises(ModelError, match=f"no scoring head for layer {layer}") as refused:
        scorer(tiny_lightweight, cutoff_layers=layer)
    assert "2, 3, 4, 5, 6" in refused.value.message


def test_describe_says_the_cutoff_and_the_compression(tiny_lightweight: Path):
    described = scorer(tiny_lightweight, compress_ratio=2, compress_layers=(2, 4)).describe()
    assert described["template"] == "bge-lightweight"
    shown = [described[key] for key in ("cutoff_layers", "compress_ratio", "compress_layers")]
    assert shown == [6, 2, [2, 4]]
