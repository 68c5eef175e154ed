"""The cross-request batcher on the fake scorer: shared forward passes, order, drops and the queue bound."""

from __future__ import annotations

import threading
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

    def submitted(self, pairs: int) -> None:
        pass

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


class SlowScorer(FakeScorer):
    """The fake scorer taking ``delay`` seconds per forward pass, and waiting at ``gate`` when one is shut."""

    def __init__(self, delay: float, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()

    def logits(self, batch):  # type: ignore[no-untyped-def]
        self.gate.wait(10)
        time.sleep(self.delay)
        return super().logits(batch)


def test_admission_holds_its_pairs_before_tokenising_until_submitted_or_released():
    scorer = FakeScorer(batch_size=4, batch_tokens=10_000)
    batcher = Batcher(scorer, gather_seconds=1.0, max_pending=5)
    try:
        held = batcher.admit(3)  # the service admits a request's pairs before it tokenises them
        assert batcher.pending == 3
        with pytest.raises(QueueFull):
            batcher.admit(3)
        batcher.release(held)
        batcher.release(held)  # twice is harmless
        assert batcher.pending == 0
        admitted = batcher.admit(3)
        ticket = batcher.submit(encode(scorer, ["a", "b", "c"]), admitted)
        assert batcher.pending == 3 and ticket.pairs == 3
        batcher.release(admitted)  # a no-op once submitted: the ticket holds the pairs now
        assert batcher.pending == 3
        assert ticket.future.result(timeout=10) == [FakeScorer.logit_of(Pair("q", t)) for t in "abc"]
        assert batcher.pending == 0
    finally:
        batcher.close()


def test_retry_after_is_the_time_until_there_is_room_at_the_measured_rate():
    scorer = SlowScorer(1.0, batch_size=4, batch_tokens=10_000)  # 1 s per pass of up to a round (8)
    batcher = Batcher(scorer, gather_seconds=0.0, max_pending=100)
    try:
        batcher.submit(encode(scorer, ["x"]))
        with pytest.raises(QueueFull) as fresh:
            batcher.admit(100)
        assert fresh.value.retry_after == 1  # nothing measured yet (the old guess said 0.05 s per pair)
        assert batcher.seconds_per_pair is None
        time.sleep(1.2)
        batcher.forget_timing()  # a warm-up pass is forgotten
        batcher.submit(encode(scorer, list("abcdefgh"))).future.result(timeout=10)  # one pass: 1 s, 8 pairs
        assert 0.12 <= (batcher.seconds_per_pair or 0) < 0.2
        scorer.gate.clear()  # the next round blocks: the queue behind it holds still
        running = batcher.submit(encode(scorer, [f"r{i}" for i in range(8)]))  # ~1 s at the measured rate
        time.sleep(0.2)
        queued = [batcher.submit(encode(scorer, [f"{n}-{i}" for i in range(40)])) for n in range(2)]
        with pytest.raises(QueueFull) as full:
            batcher.admit(80)  # room for 80 once the first queued ticket (40 pairs) is taken: ~1 s + 5 s
        assert 5 <= full.value.retry_after <= 8, full.value.retry_after
        with pytest.raises(QueueFull) as larger:
            batcher.admit(10_000)
        assert larger.value.retry_after == 30  # clamped
        scorer.gate.set()
        for ticket in [running, *queued]:
            ticket.future.result(timeout=60)
    finally:
        scorer.gate.set()
        batcher.close()


def test_a_round_whose_callers_all_gave_up_stops_before_its_next_forward_pass():
    scorer, recorder = SlowScorer(0.2, batch_size=4, batch_tokens=24), Recorder()  # 4 pairs a pass
    batcher = Batcher(scorer, gather_seconds=0.0, observer=recorder)
    try:
        ticket = batcher.submit(encode(scorer, [f"p{i}" for i in range(40)]))  # 10 passes, 2 s
        time.sleep(0.3)
        ticket.abandon()
        time.sleep(0.6)
        assert len(scorer.batches) <= 3  # the pass in flight ends; no other starts
        assert ticket.future.cancelled() or ticket.future.exception(timeout=5) is not None
        assert recorder.drops == 1
        kept = batcher.submit(encode(scorer, ["after"]))  # the worker goes on
        assert kept.future.result(timeout=10) == [FakeScorer.logit_of(Pair("q", "after"))]
    finally:
        batcher.close()


def test_closing_with_abandon_drops_what_is_queued():
    scorer = SlowScorer(0.0, batch_size=4, batch_tokens=10_000)
    batcher = Batcher(scorer, gather_seconds=0.0)
    scorer.gate.clear()
    running = batcher.submit(encode(scorer, ["a"]))
    time.sleep(0.2)
    queued = batcher.submit(encode(scorer, ["b", "c"]))
    scorer.gate.set()
    batcher.close(timeout=5, abandon=True)
    assert queued.future.cancelled() and running.future.done()
    assert batcher.pending == 0
