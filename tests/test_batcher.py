"""The cross-request batcher on the fake scorer: shared forward passes, order, drops and the queue bound."""

from __future__ import annotations

import time

import pytest

from bge_rerank_cli.backends import Encoded
from bge_rerank_cli.batcher import Batcher, QueueFull
from bge_rerank_cli.records import Pair
from tests.fakes import FakeScorer


class Recorder:
    def __init__(self) -> None:
        self.passes: list[tuple[int, int]] = []
        self.depths: list[int] = []
        self.drops = 0

    def forward_pass(self, pairs: int, requests: int, tokens: int) -> None:
        self.passes.append((pairs, requests))

    def queue_depth(self, pairs: int) -> None:
        self.depths.append(pairs)

    def dropped(self) -> None:
        self.drops += 1


def encode(scorer: FakeScorer, texts: list[str]) -> list[Encoded]:
    return scorer.encode([Pair("q", t) for t in texts])


def test_submissions_in_one_gather_window_share_forward_passes_and_keep_their_order():
    scorer, recorder = FakeScorer(batch_size=64, batch_tokens=10_000), Recorder()
    batcher = Batcher(scorer, gather_seconds=0.3, observer=recorder)
    try:
        first, second = ["a", "bb", "ccc"], ["dddd", "e"]
        tickets = [batcher.submit(encode(scorer, first)), batcher.submit(encode(scorer, second))]
        got = [t.future.result(timeout=10) for t in tickets]
        assert got == [[FakeScorer.logit_of(Pair("q", t)) for t in texts] for texts in (first, second)]
        assert recorder.passes == [(5, 2)]  # one forward pass carried both submissions
    finally:
        batcher.close()


def test_rounds_of_two_batches_answer_the_first_submissions_first():
    # 6 submissions of 3 sequences, batch size 4: rounds of at most 8 sequences, in arrival order, so the
    # first two submissions are scored (and answered) in the first round, before the later ones are run.
    scorer, recorder = FakeScorer(batch_size=4, batch_tokens=10_000), Recorder()
    batcher = Batcher(scorer, gather_seconds=0.3, observer=recorder)
    try:
        texts = [[f"{n}{c}" for c in "xyz"] for n in range(6)]
        tickets = [batcher.submit(encode(scorer, t)) for t in texts]
        assert [t.future.result(timeout=10) for t in tickets] == [
            [FakeScorer.logit_of(Pair("q", x)) for x in t] for t in texts
        ]
        assert sorted(p.passage for p in scorer.scored[:6]) == sorted(x for t in texts[:2] for x in t)
        assert sum(pairs for pairs, _ in recorder.passes) == 18 and max(r for _, r in recorder.passes) == 2
    finally:
        batcher.close()


def test_a_cancelled_submission_leaves_the_queue_and_the_bound_holds():
    scorer, recorder = FakeScorer(batch_size=64, batch_tokens=10_000), Recorder()
    batcher = Batcher(scorer, gather_seconds=1.0, max_pending=5, observer=recorder)
    try:
        dropped = batcher.submit(encode(scorer, ["a", "b", "c"]))
        with pytest.raises(QueueFull) as full:
            batcher.submit(encode(scorer, ["d", "e", "f"]))
        assert full.value.retry_after >= 1
        assert dropped.future.cancel()
        assert batcher.pending == 0 and recorder.drops == 1
        kept = batcher.submit(encode(scorer, ["d", "e", "f"]))
        assert kept.future.result(timeout=10) == [FakeScorer.logit_of(Pair("q", t)) for t in "def"]
        assert recorder.passes == [(3, 1)] and scorer.scored == [Pair("q", t) for t in "def"]
        started = time.monotonic()
        assert batcher.submit([]).future.result(timeout=1) == [] and time.monotonic() - started < 0.5
    finally:
        batcher.close()
