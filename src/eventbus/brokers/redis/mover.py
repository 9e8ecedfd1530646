"""The delayed-retry mover: due copies go back from ``{prefix}~delayed`` to their retry streams.

``retry_later`` puts a copy into the sorted set scored by the Redis clock + delay (the
``delay`` script). Each adapter with subscriptions runs one mover task that, in one script,
takes the due items, ``XADD``s them to their retry stream and removes them, so movers of
several processes never move one item twice. It sleeps until the next item is due and is
woken by this process's own ``retry_later``; items scheduled elsewhere are picked up within
``delay_poll``. A delayed copy blocks nothing: other entries flow meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from eventbus.brokers.redis.link import Link
from eventbus.errors import EventBusError

__all__ = ["DelayedMover"]

log = logging.getLogger("eventbus.redis")


class DelayedMover:
    """One adapter's mover task (started by its first subscription, stopped on close)."""

    def __init__(self, link: Link, delayed: str, batch_size: int, delay_poll: float) -> None:
        self._link = link
        self._delayed = delayed
        self._batch_size = batch_size
        self._delay_poll = delay_poll
        self._task: asyncio.Task[None] | None = None
        self._woken = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="eventbus:redis-delayed"
            )

    def wake(self) -> None:
        """Look again now: this process has just delayed a copy (it may be due first)."""
        self._woken.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            self._woken.clear()
            wait = await self._move_due()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._woken.wait(), wait)

    async def _move_due(self) -> float:
        """Move what is due; returns how long to wait before looking again."""
        try:
            async with self._link.call("move delayed retries"):
                moved, next_ms = await self._link.scripts["move"](
                    keys=[self._delayed], args=[self._batch_size]
                )
        except EventBusError as exc:
            log.warning("%s; trying again", exc)
            return self._delay_poll
        if moved >= self._batch_size:
            return 0.0  # more are due
        if next_ms >= 0:
            return min(self._delay_poll, float(next_ms) / 1000)
        return self._delay_poll
