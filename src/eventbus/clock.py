"""Clocks: the real one, and a manual one for tests of time-based behaviour.

Everything in eventbus that waits (delayed redelivery, backoff, leases) reads time from a
:class:`~eventbus.types.Clock`, so a test can move time forward instead of sleeping through it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time

__all__ = ["FakeClock", "SystemClock"]


class SystemClock:
    """Monotonic wall time and ``asyncio.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that only moves when told to: ``clock.advance(10)`` wakes every sleeper due by then.

    Sleepers wake in deadline order; ``advance`` yields to the event loop so that code woken
    by the jump has run by the time it returns.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    @property
    def sleepers(self) -> int:
        """How many tasks are waiting on this clock (to wait until a delay has been scheduled)."""
        return sum(1 for _, _, fut in self._sleepers if not fut.done())

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), future))
        await future

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and let the woken tasks run."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        target = self._now + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            if not future.done():
                future.set_result(None)
            for _ in range(5):  # let the woken task and what it schedules run
                await asyncio.sleep(0)
        self._now = target
        await asyncio.sleep(0)
