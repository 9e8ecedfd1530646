"""Feeding deliveries to handlers: a runner per subscription, and key-ordered concurrency.

:class:`SubscriptionRunner` owns a subscription's fetch loop and its graceful stop. Key-ordered
concurrency: parallel across partition keys, one at a time within a key.

The consume loop hands each delivery to :class:`KeyedDispatcher`. Deliveries that share a
``partitionkey`` are handled strictly in arrival order by one worker; deliveries without a key
or with different keys run side by side, at most ``concurrency`` at once. ``submit`` waits while
``2 * concurrency`` deliveries are already taken, so a slow handler slows fetching instead of
piling messages up in memory.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable

from eventbus.types import Consumer, Delivery

__all__ = ["KeyedDispatcher", "SubscriptionRunner"]

log = logging.getLogger("eventbus")

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


class SubscriptionRunner:
    """Feeds one subscription's deliveries to ``handle``: inline with ``concurrency == 1``
    (strict arrival order, no task per message), else through a :class:`KeyedDispatcher`.

    A consumer whose iteration fails is resubscribed with exponential backoff, so a broker
    outage never ends the subscription.
    """

    def __init__(
        self, name: str, consumer: Consumer, handle: Handle, abandon: Abandon, concurrency: int
    ) -> None:
        self.name = name
        self.consumer = consumer
        self._handle = handle
        self._dispatcher = (
            KeyedDispatcher(handle, abandon, concurrency) if concurrency > 1 else None
        )
        self._inline = False
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._fetch(), name=f"eventbus:{name}")

    @property
    def busy(self) -> bool:
        return self._inline or (self._dispatcher is not None and self._dispatcher.busy)

    async def _fetch(self) -> None:
        backoff = 0.1
        while not self._stopping:
            try:
                async for delivery in self.consumer:
                    backoff = 0.1
                    if self._dispatcher is not None:
                        await self._dispatcher.submit(delivery)
                        continue
                    self._inline = True
                    try:
                        await self._handle(delivery)
                    finally:
                        self._inline = False
                    if self._stopping:
                        return
            except Exception:
                log.exception("consumer for %s failed; resubscribing in %.1fs", self.name, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def stop_fetching(self, timeout: float) -> None:
        self._stopping = True
        if self._inline:  # let the running handler finish; the loop then returns by itself
            await asyncio.wait([self._task], timeout=timeout)
        self._task.cancel()
        # A driver that swallows the cancellation must not hang shutdown: wait what is left of
        # the shutdown timeout (at least a second), then leave the task behind; its unsettled
        # deliveries go back to the broker when the consumer and the broker close.
        done, _ = await asyncio.wait([self._task], timeout=max(timeout, 1.0))
        if not done:
            log.error("consumer for %s ignored cancellation; abandoning it", self.name)
        elif not self._task.cancelled() and (error := self._task.exception()) is not None:
            log.error("consumer for %s failed while stopping", self.name, exc_info=error)

    async def finish(self, timeout: float) -> None:
        if self._dispatcher is not None:
            await self._dispatcher.join(timeout)
        await self.consumer.close()
