"""Dynamic batching across concurrent requests: one model worker, shared forward passes.

A long-running front end (the HTTP service) tokenises each request's pairs with the engine's
:func:`~bge_rerank_cli.engine.encode_pairs`, submits the sequences, and waits for their logits. The one
worker thread waits a short gather window after the first submission, takes what has queued in arrival
order (up to two batches' worth of sequences), and scores it through the same token-budget batching as a
batch job (:func:`~bge_rerank_cli.engine.score_encoded`: sorted by length, padding-aware, OOM splitting), so pairs
of several requests share forward passes and every score equals the batch tool's. A submission whose
caller gave up (its future cancelled) before the worker started on it is dropped from the queue at once.
No web framework here: the service turns :class:`QueueFull` into 429 and cancellations into dropped
requests.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

from .backends.base import BatchScorer, Encoded
from .engine import JobControl, score_encoded
from .errors import BgeRerankError, ExitCode


class QueueFull(BgeRerankError):
    """More pairs are waiting than the queue bound allows; try again after ``retry_after`` seconds."""

    exit_code = ExitCode.USAGE

    def __init__(self, pending: int, limit: int, retry_after: int) -> None:
        super().__init__(f"{pending} pairs are waiting (limit {limit}); try again in {retry_after}s.")
        self.retry_after = retry_after


class Observer(Protocol):
    """What the batcher reports, for metrics: each forward pass, and the queue after each change."""

    def forward_pass(self, pairs: int, requests: int, tokens: int) -> None: ...

    def queue_depth(self, pairs: int) -> None: ...

    def dropped(self) -> None: ...


class _Silent:
    def forward_pass(self, pairs: int, requests: int, tokens: int) -> None:
        pass

    def queue_depth(self, pairs: int) -> None:
        pass

    def dropped(self) -> None:
        pass


@dataclass
class Ticket:
    """One submission: its sequences, and the future that receives their logits in the same order."""

    sequences: Sequence[Encoded]
    future: Future[list[float]] = field(default_factory=Future)


class Batcher:
    """Score sequences from many callers on one worker thread, batching across callers.

    ``gather_seconds``: how long the worker waits after the first submission for others to join.
    ``max_pending``: the most sequences that may wait; :meth:`submit` raises :class:`QueueFull` past it
    (a submission into an empty queue is always taken, however large).
    """

    def __init__(
        self,
        scorer: BatchScorer,
        *,
        gather_seconds: float = 0.005,
        max_pending: int = 10_000,
        observer: Observer | None = None,
    ) -> None:
        self.scorer = scorer
        self.gather_seconds = gather_seconds
        self.max_pending = max_pending
        self.observer: Observer = observer or _Silent()
        # A round is two batches' worth of sequences, taken in arrival order: enough for pairs of several
        # requests to share sorted, padding-aware batches, few enough that the first requests in the
        # queue are answered after their own round, not after everything queued with them.
        self.round_size = 2 * scorer.batch_size
        self._queue: deque[Ticket] = deque()
        self._pending = 0
        self._cond = threading.Condition()
        self._closing = False
        self._seconds_per_sequence = 0.05  # learnt as it runs; sizes Retry-After
        self._thread = threading.Thread(target=self._work, name="bge-rerank-batcher", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Sequences waiting for the worker (not counting the round in flight)."""
        return self._pending

    def submit(self, sequences: Sequence[Encoded]) -> Ticket:
        """Queue ``sequences``; their logits arrive in ``ticket.future`` (cancel it to drop them)."""
        ticket = Ticket(sequences)
        if not sequences:
            ticket.future.set_result([])
            return ticket
        with self._cond:
            if self._closing:
                raise RuntimeError("the batcher is closed")
            if self._pending and self._pending + len(sequences) > self.max_pending:
                wait = max(1, round((self._pending + len(sequences)) * self._seconds_per_sequence))
                raise QueueFull(self._pending, self.max_pending, wait)
            self._queue.append(ticket)
            self._pending += len(sequences)
            self.observer.queue_depth(self._pending)
            self._cond.notify()
        ticket.future.add_done_callback(lambda future: self._forget(ticket) if future.cancelled() else None)
        return ticket

    def _forget(self, ticket: Ticket) -> None:
        """A cancelled submission still waiting leaves the queue now, so it no longer counts against it."""
        with self._cond:
            try:
                self._queue.remove(ticket)
            except ValueError:
                return  # the worker took it already and will skip it
            self._pending -= len(ticket.sequences)
            self.observer.queue_depth(self._pending)
        self.observer.dropped()

    def close(self, timeout: float | None = None) -> None:
        """Finish what is queued, then stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)

    def _take(self) -> list[Ticket] | None:
        """Wait for work, then the gather window; take up to one round of sequences."""
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            deadline = time.monotonic() + self.gather_seconds
            while self._pending < self.round_size and not self._closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            taken: list[Ticket] = []
            size = 0
            while self._queue and (not taken or size + len(self._queue[0].sequences) <= self.round_size):
                ticket = self._queue.popleft()
                taken.append(ticket)
                size += len(ticket.sequences)
                self._pending -= len(ticket.sequences)
            self.observer.queue_depth(self._pending)
            return taken

    def _work(self) -> None:
        while (taken := self._take()) is not None:
            live = []
            for ticket in taken:
                if ticket.future.set_running_or_notify_cancel():
                    live.append(ticket)
                else:
                    self.observer.dropped()
            if live:
                self._score(live)

    def _score(self, tickets: list[Ticket]) -> None:
        flat = [seq for ticket in tickets for seq in ticket.sequences]
        owner = [n for n, ticket in enumerate(tickets) for _ in ticket.sequences]

        def on_batch(indices: Sequence[int]) -> None:
            tokens = sum(len(flat[i].ids) for i in indices)
            self.observer.forward_pass(len(indices), len({owner[i] for i in indices}), tokens)

        started = time.perf_counter()
        try:
            logits = score_encoded(self.scorer, flat, control=JobControl(on_batch=on_batch))
        except BaseException as exc:  # delivered to every caller of this round; the worker goes on
            for ticket in tickets:
                ticket.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        self._seconds_per_sequence = 0.8 * self._seconds_per_sequence + 0.2 * (
            (time.perf_counter() - started) / len(flat)
        )
        start = 0
        for ticket in tickets:
            end = start + len(ticket.sequences)
            ticket.future.set_result(logits[start:end])
            start = end
