"""Key-ordered concurrency: parallel across partition keys, one at a time within a key.

The consume loop hands each delivery to :class:`KeyedDispatcher`. Deliveries that share a
``partitionkey`` are handled strictly in arrival order by one worker; deliveries without a key
or with different keys run side by side, at most ``concurrency`` at once. ``submit`` waits while
``2 * concurrency`` deliveries are already taken, so a slow handler slows fetching instead of
piling messages up in memory.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable

from eventbus.types import Delivery

__all__ = ["KeyedDispatcher"]

Handle = Callable[[Delivery], Awaitable[None]]
Abandon = Callable[[Delivery], Awaitable[None]]


class KeyedDispatcher:
    def __init__(self, handle: Handle, abandon: Abandon, concurrency: int) -> None:
        self._handle = handle
        self._abandon = abandon
        self._running = asyncio.Semaphore(concurrency)
        self._capacity = asyncio.Semaphore(2 * concurrency)
        self._backlog: dict[object, collections.deque[Delivery]] = {}
        self._workers: set[asyncio.Task[None]] = set()

    @property
    def busy(self) -> bool:
        return bool(self._workers)

    async def submit(self, delivery: Delivery) -> None:
        try:
            await self._capacity.acquire()
        except asyncio.CancelledError:
            await self._abandon(delivery)
            raise
        envelope = delivery.envelope
        key: object = envelope.partitionkey if envelope and envelope.partitionkey else None
        if key is not None and key in self._backlog:
            self._backlog[key].append(delivery)
            return
        backlog: collections.deque[Delivery] = collections.deque([delivery])
        if key is not None:
            self._backlog[key] = backlog
        task = asyncio.get_running_loop().create_task(self._work(key, backlog))
        self._workers.add(task)
        task.add_done_callback(self._workers.discard)

    async def _work(self, key: object, backlog: collections.deque[Delivery]) -> None:
        try:
            while backlog:
                delivery = backlog.popleft()
                try:
                    await self._running.acquire()
                except asyncio.CancelledError:
                    backlog.appendleft(delivery)  # never started: abandoned below
                    raise
                try:
                    await self._handle(delivery)  # settles the delivery even when cancelled
                finally:
                    self._running.release()
                    self._capacity.release()
        except asyncio.CancelledError:
            # Shutdown ran out of time: everything this worker still held goes back to the broker.
            while backlog:
                await self._abandon(backlog.popleft())
                self._capacity.release()
            raise
        finally:
            if key is not None and self._backlog.get(key) is backlog:
                del self._backlog[key]

    async def join(self, timeout: float | None) -> None:
        """Wait for every taken delivery to finish; past ``timeout`` cancel the rest."""
        if self._workers:
            _, late = await asyncio.wait(set(self._workers), timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
