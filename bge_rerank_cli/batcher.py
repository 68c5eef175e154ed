"""Dynamic batching across concurrent requests: one model worker, shared forward passes.

A long-running front end (the HTTP service) first *admits* a request's pairs (:meth:`Batcher.admit`):
the queue bound is checked before any tokenising, so a refusal costs nothing and overload does not spend
the CPU on work it throws away. It then tokenises them with the engine's
:func:`~bge_rerank_cli.engine.encode_pairs`, submits the sequences under that admission, and waits for
their logits. The one worker thread waits a short gather window after the first submission, takes what
has queued in arrival order (up to two batches' worth of sequences), and scores it through the same
token-budget batching as a batch job (:func:`~bge_rerank_cli.engine.score_encoded`: sorted by length,
padding-aware, OOM splitting), so pairs of several requests share forward passes and every score equals
the batch tool's. A submission whose caller gave up (:meth:`Ticket.abandon`) leaves the queue at once;
a round whose callers all gave up stops before its next forward pass. The worker measures its service
rate (pairs per second) as it runs; a refusal's ``Retry-After`` is the time until the queue has room,
from that rate and the work ahead. No web framework here: the service turns :class:`QueueFull` into 429
and abandoned tickets into dropped requests.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from .backends.base import BatchScorer, Encoded
from .engine import Interrupted, JobControl, score_encoded
from .errors import BgeRerankError, ExitCode

# Retry-After bounds, in seconds: at least 1 (HTTP's unit), at most 30 (clients such as the Cohere SDK
# obey up to 60 s; past 30 s a client is better served by another replica than by waiting).
RETRY_MIN, RETRY_MAX = 1, 30


class QueueFull(BgeRerankError):
    """More pairs are waiting than the queue bound allows; try again after ``retry_after`` seconds."""

    exit_code = ExitCode.USAGE

    def __init__(self, pending: int, limit: int, retry_after: int) -> None:
        super().__init__(f"{pending} pairs are waiting (limit {limit}); try again in {retry_after}s.")
        self.retry_after = retry_after


class Observer(Protocol):
    """What the batcher reports, for metrics: each submission (tokenised pairs), each forward pass, and the
    queue after each change."""

    def submitted(self, pairs: int) -> None: ...

    def forward_pass(self, pairs: int, requests: int, tokens: int) -> None: ...

    def queue_depth(self, pairs: int) -> None: ...

    def dropped(self) -> None: ...


class PassTracer(Protocol):
    """What the batcher tells a tracer (the service's OpenTelemetry spans): a submission's wait in the
    queue, and each forward pass with the submissions (their ``Ticket.trace``) that took part in it."""

    def waited(self, request: Any, submitted_ns: int, taken_ns: int, pairs: int) -> None: ...

    def forward_pass(
        self, requests: Sequence[Any], start_ns: int, end_ns: int, pairs: int, tokens: int
    ) -> None: ...


class _Silent:
    def submitted(self, pairs: int) -> None:
        pass

    def forward_pass(self, pairs: int, requests: int, tokens: int) -> None:
        pass

    def queue_depth(self, pairs: int) -> None:
        pass

    def dropped(self) -> None:
        pass


@dataclass
class Admission:
    """A place in the queue for ``pairs`` pairs, held while they are tokenised (see :meth:`Batcher.admit`)."""

    pairs: int
    open: bool = True


@dataclass
class Ticket:
    """One submission: its sequences, the pairs they count for in the queue bound, and the future that
    receives their logits in the same order."""

    sequences: Sequence[Encoded]
    pairs: int = 0
    future: Future[list[float]] = field(default_factory=Future)
    abandoned: bool = False
    trace: Any = None  # the submitter's span context, for a tracer
    submitted_ns: int = 0

    def abandon(self) -> None:
        """The caller no longer waits: a queued ticket leaves the queue; one being scored lets its round
        stop before the next forward pass once every caller in it has given up."""
        self.abandoned = True
        self.future.cancel()


class Batcher:
    """Score sequences from many callers on one worker thread, batching across callers.

    ``gather_seconds``: how long the worker waits after the first submission for others to join.
    ``max_pending``: the most pairs that may be admitted and waiting; :meth:`admit` raises
    :class:`QueueFull` past it (a request into an empty queue is always taken, however large).
    """

    def __init__(
        self,
        scorer: BatchScorer,
        *,
        gather_seconds: float = 0.005,
        max_pending: int = 10_000,
        observer: Observer | None = None,
        tracer: PassTracer | None = None,
    ) -> None:
        self.scorer = scorer
        self.tracer = tracer
        self.gather_seconds = gather_seconds
        self.max_pending = max_pending
        self.observer: Observer = observer or _Silent()
        # A round is two batches' worth of sequences, taken in arrival order: enough for pairs of several
        # requests to share sorted, padding-aware batches, few enough that the first requests in the
        # queue are answered after their own round, not after everything queued with them.
        self.round_size = 2 * scorer.batch_size
        self._queue: deque[Ticket] = deque()
        self._pending = 0  # pairs admitted and not yet taken by the worker (tokenising or queued)
        self._cond = threading.Condition()
        self._closing = False
        self._rounds: deque[tuple[int, float]] = deque(maxlen=16)  # (pairs, seconds) of recent rounds
        self._round: tuple[int, float] | None = None  # (pairs, start) of the round in flight
        self._thread = threading.Thread(target=self._work, name="bge-rerank-batcher", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Pairs admitted and waiting for the worker (not counting the round in flight)."""
        return self._pending

    @property
    def seconds_per_pair(self) -> float | None:
        """The measured service time of one pair over the recent rounds (``None`` before any round)."""
        pairs = sum(p for p, _ in self._rounds)
        return sum(s for _, s in self._rounds) / pairs if pairs else None

    def forget_timing(self) -> None:
        """Drop the measured rate (after a warm-up pass, which says little about real batches)."""
        with self._cond:
            self._rounds.clear()

    def admit(self, pairs: int) -> Admission:
        """Hold a place for ``pairs`` pairs, or raise :class:`QueueFull` with the time until there is room.

        Called before tokenising; pass the admission to :meth:`submit`, or :meth:`release` it."""
        with self._cond:
            if self._closing:
                raise RuntimeError("the batcher is closed")
            if self._pending and self._pending + pairs > self.max_pending:
                raise QueueFull(self._pending, self.max_pending, self._retry_after(pairs))
            self._pending += pairs
            self.observer.queue_depth(self._pending)
        return Admission(pairs)

    def release(self, admission: Admission) -> None:
        """Give back an admission that will not be submitted (the caller gave up or its input failed)."""
        with self._cond:
            self._give_back(admission)

    def _give_back(self, admission: Admission) -> None:
        """The admission's pairs leave the bound (called locked; a no-op once used or released)."""
        if admission.open:
            admission.open = False
            self._pending -= admission.pairs
            self.observer.queue_depth(self._pending)

    def submit(
        self, sequences: Sequence[Encoded], admission: Admission | None = None, *, trace: Any = None
    ) -> Ticket:
        """Queue ``sequences`` under ``admission`` (without one, they are admitted here as one pair each);
        their logits arrive in ``ticket.future`` (:meth:`Ticket.abandon` drops them). ``trace``: the
        submitter's span context, handed to the tracer with the spans of its wait and its passes."""
        admission = admission or self.admit(len(sequences))
        ticket = Ticket(sequences, admission.pairs, trace=trace, submitted_ns=time.time_ns())
        if not sequences:
            self.release(admission)
            ticket.future.set_result([])
            return ticket
        with self._cond:
            if not admission.open:
                raise RuntimeError("this admission was already used or released")
            if self._closing:
                self._give_back(admission)
                raise RuntimeError("the batcher is closed")
            admission.open = False  # its pairs now count through the ticket
            self._queue.append(ticket)
            self._cond.notify()
        self.observer.submitted(ticket.pairs)
        ticket.future.add_done_callback(lambda future: self._forget(ticket) if future.cancelled() else None)
        return ticket

    def _retry_after(self, pairs: int) -> int:
        """Seconds until ``pairs`` more would fit: the round in flight finishes, then the worker takes
        queued tickets (each leaves the queue when its round starts) until there is room. Called locked."""
        per_pair = self.seconds_per_pair
        if per_pair is None:
            return RETRY_MIN  # nothing measured yet: a round will have been by then
        wait = 0.0
        if self._round is not None:
            round_pairs, started = self._round
            wait = max(0.0, round_pairs * per_pair - (time.monotonic() - started))
        need = self._pending + pairs - self.max_pending
        for ticket in self._queue:
            need -= ticket.pairs  # taken when the worker gets to it
            if need <= 0:
                break
            wait += ticket.pairs * per_pair
        else:
            wait += max(0, need) * per_pair  # admitted pairs still being tokenised, queued behind
        return min(RETRY_MAX, max(RETRY_MIN, math.ceil(wait)))

    def _forget(self, ticket: Ticket) -> None:
        """A cancelled submission still waiting leaves the queue now, so it no longer counts against it."""
        with self._cond:
            try:
                self._queue.remove(ticket)
            except ValueError:
                return  # the worker took it already and will skip it
            self._pending -= ticket.pairs
            self.observer.queue_depth(self._pending)
        self.observer.dropped()

    def close(self, timeout: float | None = None, *, abandon: bool = False) -> None:
        """Finish what is queued, then stop the worker; with ``abandon``, drop what is queued and stop the
        round in flight before its next forward pass."""
        with self._cond:
            self._closing = True
            waiting = list(self._queue) if abandon else []
            self._cond.notify()
        for ticket in waiting:
            ticket.abandon()
        self._thread.join(timeout)

    def _take(self) -> list[Ticket] | None:
        """Wait for work, then the gather window; take up to one round of sequences."""
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            deadline = time.monotonic() + self.gather_seconds
            while self._queued() < self.round_size and not self._closing:
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
                self._pending -= ticket.pairs
            self._round = (sum(t.pairs for t in taken), time.monotonic())
            self.observer.queue_depth(self._pending)
        if self.tracer is not None:
            now = time.time_ns()
            for ticket in taken:
                if ticket.trace is not None:
                    self.tracer.waited(ticket.trace, ticket.submitted_ns, now, ticket.pairs)
        return taken

    def _queued(self) -> int:
        return sum(len(t.sequences) for t in self._queue)

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
            with self._cond:
                self._round = None

    def _score(self, tickets: list[Ticket]) -> None:
        flat = [seq for ticket in tickets for seq in ticket.sequences]
        owner = [n for n, ticket in enumerate(tickets) for _ in ticket.sequences]

        last = time.time_ns()  # when the pass now ending began: the round's start, then each pass's end

        def on_batch(indices: Sequence[int]) -> None:
            nonlocal last
            tokens = sum(len(flat[i].ids) for i in indices)
            owners = sorted({owner[i] for i in indices})
            self.observer.forward_pass(len(indices), len(owners), tokens)
            now = time.time_ns()
            traced = [tickets[n].trace for n in owners if tickets[n].trace is not None]
            if self.tracer is not None and traced:
                self.tracer.forward_pass(traced, last, now, len(indices), tokens)
            last = now

        def abandoned() -> bool:
            return all(ticket.abandoned for ticket in tickets)

        started = time.perf_counter()
        try:
            logits = score_encoded(
                self.scorer, flat, control=JobControl(on_batch=on_batch, should_stop=abandoned)
            )
        except Interrupted:  # every caller of this round gave up: nobody waits for the rest of it
            for ticket in tickets:
                ticket.future.set_exception(Interrupted())
                self.observer.dropped()
            return
        except BaseException as exc:  # delivered to every caller of this round; the worker goes on
            for ticket in tickets:
                ticket.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        with self._cond:
            self._rounds.append((sum(t.pairs for t in tickets), time.perf_counter() - started))
        start = 0
        for ticket in tickets:
            end = start + len(ticket.sequences)
            ticket.future.set_result(logits[start:end])
            start = end
