"""A stop switch that SIGINT/SIGTERM flip, so a job stops between batches instead of mid-write."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class StopSwitch:
    """SIGINT/SIGTERM ask the job to stop after the batch in flight; a second SIGINT stops at once.

    Call it to ask whether to stop (it is the runner's ``stop`` callable); :meth:`installed` hooks the
    signals for the duration of a job (main thread only). :meth:`request` flips it by hand.
    """

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self) -> bool:
        return self.signal is not None

    def request(self, signum: int = signal.SIGINT) -> None:
        self.signal = signum

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    @contextmanager
    def installed(self) -> Iterator[StopSwitch]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @property
    def exit_code(self) -> int:
        return 128 + (self.signal or signal.SIGINT)
