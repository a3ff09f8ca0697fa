"""A lock with two kinds of holders: requests (FIFO among themselves) and the steps of long jobs, which wait
until no request holds or wants the lock. A long analysis done in short steps then never delays a request by
more than one step."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class PriorityLock:
    """`with lock:` takes it for a request; `with lock.low():` for one step of a long job."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held = False
        self._tickets = itertools.count()
        self._queue: list[int] = []  # requests waiting, in arrival order

    def acquire(self) -> bool:
        """Take the lock for a request: after the requests that came before, ahead of any long-job step."""
        with self._cond:
            ticket = next(self._tickets)
            self._queue.append(ticket)
            try:
                self._cond.wait_for(lambda: not self._held and self._queue[0] == ticket)
            finally:
                self._queue.remove(ticket)
            self._held = True
            self._cond.notify_all()  # the next ticket re-checks (it still waits for release)
            return True

    def acquire_low(self) -> bool:
        """Take the lock for a long job's step: only when it is free and no request is waiting."""
        with self._cond:
            self._cond.wait_for(lambda: not self._held and not self._queue)
            self._held = True
            return True

    def release(self) -> None:
        with self._cond:
            if not self._held:
                raise RuntimeError("release of an unheld PriorityLock")
            self._held = False
            self._cond.notify_all()

    def locked(self) -> bool:
        return self._held

    @property
    def waiting(self) -> int:
        """Requests waiting for the lock now."""
        return len(self._queue)

    def __enter__(self) -> PriorityLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @contextmanager
    def low(self) -> Iterator[None]:
        """One step of a long job."""
        self.acquire_low()
        try:
            yield
        finally:
            self.release()
