"""Admission control for model calls: an adaptive window of calls in flight and request/token rate limits.

The window grows by about one call per round trip while calls succeed (additive increase) and shrinks
to `decrease_factor` of itself when the endpoint says it is overloaded (multiplicative decrease), at most
once per `decrease_interval`, never above the configured maximum nor below one. A call waits only for a
free slot, never for other calls to finish: there are no batch barriers. Waiting calls hold futures of
the running event loop only while they wait, so an idle limiter can serve the next stage's loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from agentinstruct_dagster.config.profiles import LLMSettings


class AdaptiveLimiter:
    def __init__(
        self, maximum: int, *, decrease_factor: float = 0.9, decrease_interval: float = 0.2, minimum: int = 1
    ) -> None:
        self.maximum, self.minimum = maximum, minimum
        self.decrease_factor, self.decrease_interval = decrease_factor, decrease_interval
        self.limit = float(maximum)
        self.in_flight = 0
        self.decreases = 0
        self._last_decrease = 0.0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def window(self) -> int:
        return max(self.minimum, int(self.limit))

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self._acquire()
        try:
            yield
        finally:
            self.in_flight -= 1
            self._wake()

    async def _acquire(self) -> None:
        if self.in_flight < self.window and not self._waiters:
            self.in_flight += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.in_flight -= 1
                self._wake()
            raise

    def _wake(self) -> None:
        """Hand free slots to the longest-waiting calls, one slot each (no thundering herd)."""
        while self._waiters and self.in_flight < self.window:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)

    def succeeded(self) -> None:
        if self.limit < self.maximum:
            self.limit = min(self.maximum, self.limit + 1 / self.limit)
            self._wake()

    def overloaded(self) -> None:
        now = time.monotonic()
        if now - self._last_decrease >= self.decrease_interval:
            self.limit = max(float(self.minimum), self.limit * self.decrease_factor)
            self._last_decrease = now
            self.decreases += 1


class RateLimiter:
    """Requests and tokens per minute as token buckets; `None` means no limit."""

    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None) -> None:
        self._buckets = [_Bucket(limit) if limit else None for limit in (requests_per_minute, tokens_per_minute)]

    async def admit(self, tokens: int) -> None:
        for bucket, amount in zip(self._buckets, (1, tokens), strict=True):
            if bucket is not None:
                await bucket.take(amount)


class _Bucket:
    """A token bucket for callers on one event-loop thread: check-and-take never spans an await, so it needs
    no lock and can serve the engines of several stages (and event loops) in turn."""

    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.level = float(per_minute)
        self.rate = per_minute / 60
        self.updated = time.monotonic()

    async def take(self, amount: float) -> None:
        amount = min(amount, self.capacity)
        while True:
            now = time.monotonic()
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now
            if self.level >= amount:
                self.level -= amount
                return
            await asyncio.sleep((amount - self.level) / self.rate)


@dataclass(frozen=True)
class Admission:
    """The admission state of a run, shared by the engines of all its stages: the learned window and the
    rate budgets carry over from one stage to the next."""

    limiter: AdaptiveLimiter
    rates: RateLimiter

    @classmethod
    def for_settings(cls, settings: LLMSettings) -> Admission:
        """One run's share of the provider budget: the budget divided by the runs that may call it at once."""
        share = settings.parallel_runs
        per_minute = [
            None if limit is None else max(1, limit // share)
            for limit in (settings.requests_per_minute, settings.tokens_per_minute)
        ]
        return cls(AdaptiveLimiter(max(1, settings.max_concurrency // share)), RateLimiter(*per_minute))
