"""Clocks: the real one, and a manual one for tests of time-based behaviour.

Everything in eventbus that waits (delayed redelivery, backoff, leases) reads time from a
:class:`~eventbus.types.Clock`, so a test can move time forward instead of sleeping through it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Any

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
        self._sleeping: dict[asyncio.Task[Any], int] = {}

    def now(self) -> float:
        return self._now

    @property
    def sleepers(self) -> int:
        """How many tasks are waiting on this clock (to wait until a delay has been scheduled)."""
        return sum(1 for _, _, fut in self._sleepers if not fut.done())

    def is_sleeping(self, task: asyncio.Task[Any]) -> bool:
        """Whether ``task`` is waiting on this clock right now."""
        return task in self._sleeping

    def next_wakeup(self) -> float | None:
        """When the earliest waiting sleeper is due (``None``: nobody waits)."""
        live = [deadline for deadline, _, fut in self._sleepers if not fut.done()]
        return min(live) if live else None

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), future))
        task = asyncio.current_task()
        if task is not None:
            self._sleeping[task] = self._sleeping.get(task, 0) + 1
        try:
            await future
        finally:
            if task is not None:
                left = self._sleeping.pop(task) - 1
                if left:
                    self._sleeping[task] = left

    async def advance_to_next(self) -> None:
        """Move time to the earliest wake-up (if anyone waits) and let the woken tasks run."""
        wake = self.next_wakeup()
        if wake is not None:
            await self.advance(max(0.0, wake - self._now))

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
