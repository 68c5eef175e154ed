"""Batching, de-duplication, ordering and top-k, on a fake scorer (no model involved)."""

from __future__ import annotations

import pytest

from bge_rerank_cli.engine import (
    BatchTooLarge,
    Encoded,
    JobControl,
    groups,
    rank_documents,
    rerank_stream,
    score_encoded,
    score_pairs,
    score_stream,
    token_batches,
)
from bge_rerank_cli.records import Document, Pair, RerankItem, Scored, ScoreItem, sigmoid
from tests.fakes import FakeScorer


def test_scores_come_back_in_input_order_whatever_the_batching():
    pairs = [Pair("q", "x" * n) for n in (5, 50, 1, 20, 7, 33, 2)]
    expected = [FakeScorer.logit_of(p) for p in pairs]
    for budget in (1, 40, 100, 160, 10_000):
        scorer = FakeScorer(batch_tokens=budget)
        assert [s.logit for s in score_pairs(scorer, pairs)] == expected
        for count, width in zip(scorer.batches, scorer.widths, strict=True):
            assert count == 1 or count * width <= budget
    one_by_one = FakeScorer(batch_tokens=1)
    score_pairs(one_by_one, pairs)
    assert one_by_one.batches == [1] * len(pairs)


def test_token_budget_batches_are_sorted_and_filled():
    lengths = [10, 100, 12, 50, 11, 300, 9]
    batches = token_batches(range(len(lengths)), lengths, budget=120)
    assert batches == [[5], [1], [3, 2], [4, 0, 6]]  # 300 alone (over budget), then fill up to 120
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))


def test_a_filled_batch_closes_before_a_much_shorter_sequence():
    lengths = [100, 98, 95, 60, 59, 58, 10]
    # No fill limit: one batch of 7 x 100 padded tokens (450 of them padding).
    assert token_batches(range(7), lengths, budget=10_000) == [[0, 1, 2, 3, 4, 5, 6]]
    # Past 150 real tokens a batch stops before a sequence under 7/8 of its longest.
    assert token_batches(range(7), lengths, budget=10_000, fill=150) == [[0, 1, 2], [3, 4, 5], [6]]
    # Under the fill mark, shorter sequences still join (a nearly empty batch wastes more).
    assert token_batches(range(7), lengths, budget=10_000, fill=1_000) == [[0, 1, 2, 3, 4, 5, 6]]


def test_fill_batching_keeps_scores_and_order():
    pairs = [Pair("q", "x" * n) for n in (300, 5, 290, 40, 41, 7, 120, 300)]
    expected = [FakeScorer.logit_of(p) for p in pairs]
    scorer = FakeScorer(batch_tokens=5000, fill_tokens=200)
    assert [s.logit for s in score_pairs(scorer, pairs)] == expected
    assert len(scorer.batches) > 1
    padding = sum(c * w for c, w in zip(scorer.batches, scorer.widths, strict=True))
    unfilled = FakeScorer(batch_tokens=5000)
    score_pairs(unfilled, pairs)
    assert padding < sum(c * w for c, w in zip(unfilled.batches, unfilled.widths, strict=True))


def test_short_pairs_share_big_batches_long_pairs_small_ones():
    scorer = FakeScorer(batch_tokens=400)
    pairs = [Pair("q", "x" * 200) for _ in range(1)] + [Pair("q", "y" * n) for n in range(1, 41)]
    score_pairs(scorer, pairs)
    assert scorer.batches[0] == 1 and max(scorer.batches) > 4


def test_out_of_memory_batches_are_split_and_nothing_is_lost_or_redone():
    pairs = [Pair("q", "x" * n) for n in range(1, 60)]
    expected = [FakeScorer.logit_of(p) for p in pairs]
    scorer = FakeScorer(batch_tokens=2000, fail_above=300)
    control = JobControl()
    assert [s.logit for s in score_pairs(scorer, pairs, control=control)] == expected
    assert control.stats.oom_splits > 0
    assert sorted(scorer.scored, key=lambda p: p.passage) == sorted(
        pairs, key=lambda p: p.passage
    )  # once each
    assert all(c == 1 or c * w <= 300 for c, w in zip(scorer.batches, scorer.widths, strict=True))


def test_a_single_pair_that_does_not_fit_is_an_error():
    scorer = FakeScorer(batch_tokens=10, fail_above=0)
    assert score_pairs(scorer, [Pair("q", "a")])  # a lone pair is never refused by the fake
    with pytest.raises(BatchTooLarge):
        score_encoded(_Refusing(), [Encoded([1, 2, 3])])


class _Refusing(FakeScorer):
    def logits(self, batch):
        raise BatchTooLarge("never fits")


def test_identical_pairs_are_scored_once():
    scorer = FakeScorer()
    pairs = [Pair("q", "a"), Pair("q", "b"), Pair("q", "a"), Pair("q", "a")]
    scores = score_pairs(scorer, pairs)
    assert scorer.encoded == [Pair("q", "a"), Pair("q", "b")]
    assert scores[0] == scores[2] == scores[3] != scores[1]


def test_score_is_sigmoid_of_logit():
    assert sigmoid(0.0) == 0.5
    assert sigmoid(-800.0) == 0.0 and sigmoid(800.0) == 1.0
    assert Scored(2.0).score == pytest.approx(0.8807970779778823)


def docs(n: int) -> list[Document]:
    return [Document(i, f"doc {i}") for i in range(n)]


def test_rank_documents_orders_by_logit_then_input_position():
    scores = [Scored(v) for v in (0.5, 2.0, 0.5, -1.0)]
    ranked = rank_documents(docs(4), scores)
    assert [(d.index, d.rank) for d in ranked] == [(1, 1), (0, 2), (2, 3), (3, 4)]


def test_top_k_and_min_score():
    scores = [Scored(v) for v in (0.0, 3.0, -3.0, 1.0)]
    assert [d.index for d in rank_documents(docs(4), scores, top_k=2)] == [1, 3]
    kept = rank_documents(docs(4), scores, min_score=0.5)  # sigmoid(0) == 0.5 is kept
    assert [d.index for d in kept] == [1, 3, 0]
    assert rank_documents(docs(4), scores, top_k=1, min_score=0.99) == ()


def test_chunked_respects_budget():
    assert list(groups(range(7), lambda _: 1, 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(groups(["aaaa", "b", "cc"], len, 3)) == [["aaaa"], ["b", "cc"]]


def test_streams_keep_input_order_across_chunks():
    scorer = FakeScorer(batch_size=1, batch_tokens=100)  # chunk budget = 256 pairs
    items = [ScoreItem(i, "q", f"passage {i}") for i in range(600)]
    chunks = list(score_stream(scorer, items))
    assert len(chunks) == 3
    flat = [row for chunk in chunks for row in chunk]
    assert [item.line for item, _ in flat] == list(range(600))

    rerank_items = [RerankItem(i, f"q{i}", tuple(docs(i % 5 + 1))) for i in range(100)]
    results = [r for chunk in rerank_stream(scorer, rerank_items, top_k=2) for r in chunk]
    assert [r.line for r in results] == list(range(100))
    assert all(len(r.results) == min(2, r.candidates) for r in results)
