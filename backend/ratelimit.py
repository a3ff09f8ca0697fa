"""Per-key request rate limits (a token bucket per browser session or annotator, and one per client address,
so opening a new session per request does not get around them), checked before any work.

A key may make `per_minute` requests in a burst and then one every 60/per_minute seconds. A refusal is a
RateLimitError whose message tells the person to wait; nothing is half done. Memory stays bounded: idle
keys (their bucket full again) are dropped when the table grows past `max_keys`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_KEYS = 10_000  # buckets kept before idle ones are evicted
MSG_BUSY = "Too many requests from this session; the server is busy. Wait {seconds:.0f} s and try again."
MSG_BUSY_NETWORK = "Too many requests from your network; the server is busy. Wait {seconds:.0f} s and try again."


class RateLimitError(RuntimeError):
    """Too many requests from one session or annotator; the message says how long to wait."""


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """Token buckets keyed by a session or annotator id; thread-safe (Gradio runs handlers in threads).

    per_minute <= 0 turns the limit off.
    """

    def __init__(
        self,
        per_minute: int,
        *,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
        message: str = MSG_BUSY,
    ) -> None:
        self.per_minute = int(per_minute)
        self.message = message
        self.capacity = float(max(self.per_minute, 1))
        self.rate = self.per_minute / 60.0  # tokens per second
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def _refill(self, bucket: _Bucket, now: float) -> None:
        bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now

    def _evict_idle(self, now: float) -> None:
        for key in list(self._buckets):
            bucket = self._buckets[key]
            self._refill(bucket, now)
            if bucket.tokens >= self.capacity:
                del self._buckets[key]
        while len(self._buckets) >= self.max_keys:  # all busy: drop the oldest (insertion order)
            del self._buckets[next(iter(self._buckets))]

    def try_acquire(self, key: str) -> float:
        """0.0 when the request may go ahead (one token taken), else the seconds until it could."""
        if self.per_minute <= 0:
            return 0.0
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= self.max_keys:
                    self._evict_idle(now)
                bucket = self._buckets[key] = _Bucket(self.capacity, now)
            self._refill(bucket, now)
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate

    def check(self, key: str) -> None:
        """Take one token for `key` or raise RateLimitError (before any work is done)."""
        wait = self.try_acquire(key)
        if wait > 0.0:
            raise RateLimitError(self.message.format(seconds=max(1.0, wait)))

    def __len__(self) -> int:
        return len(self._buckets)
