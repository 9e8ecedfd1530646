"""Feeding deliveries to handlers: a runner per subscription, and key-ordered concurrency.

:class:`SubscriptionRunner` owns a subscription's fetch loop and its graceful stop. Key-ordered
concurrency: parallel across partition keys, one at a time within a key.

The consume loop hands each delivery to :class:`KeyedDispatcher`. Deliveries that share a
``partitionkey`` are handled strictly in arrival order by one worker; deliveries without a key
or with different keys run side by side, at most ``concurrency`` at once. ``submit`` waits while
``2 * concurrency`` deliveries are already taken, so a slow handler slows fetching instead of
piling messages up in memory.

Stopping is two steps. :meth:`SubscriptionRunner.request_stop` is synchronous, so a bus stops
every subscription at the same instant: from then on no handler starts. Deliveries taken but
not started are then *released* — handed back to the broker without counting an attempt, in
the order they arrived — and only the handlers already running are waited for.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

from eventbus.types import Consumer, Delivery, SubscriptionView

__all__ = ["KeyedDispatcher", "SubscriptionRunner"]

log = logging.getLogger("eventbus")

Handle = Callable[[Delivery], Awaitable[None]]
Release = Callable[[Delivery], Awaitable[None]]
_Backlog = collections.deque[tuple[int, Delivery]]


class KeyedDispatcher:
    def __init__(self, handle: Handle, release: Release, concurrency: int) -> None:
        self._handle = handle
        self._release = release
        self._running = asyncio.Semaphore(concurrency)
        self._capacity = asyncio.Semaphore(2 * concurrency)
        self._by_key: dict[object, _Backlog] = {}
        self._workers: dict[asyncio.Task[None], _Backlog] = {}
        self._arrival = itertools.count()
        self._unadmitted: list[Delivery] = []  # taken while the dispatcher was full
        self._stopping = False

    @property
    def busy(self) -> bool:
        return bool(self._workers)

    async def submit(self, delivery: Delivery) -> None:
        try:
            await self._capacity.acquire()
        except asyncio.CancelledError:  # stopping: handed back after those taken before it
            self._unadmitted.append(delivery)
            raise
        if self._stopping:
            await self._give_back([(0, delivery)])
            return
        envelope = delivery.envelope
        key: object = envelope.partitionkey if envelope and envelope.partitionkey else None
        item = (next(self._arrival), delivery)
        if key is not None and key in self._by_key:
            self._by_key[key].append(item)
            return
        backlog: _Backlog = collections.deque([item])
        if key is not None:
            self._by_key[key] = backlog
        task = asyncio.get_running_loop().create_task(self._work(key, backlog))
        self._workers[task] = backlog
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._workers.pop(task, None)

    async def _work(self, key: object, backlog: _Backlog) -> None:
        try:
            while backlog and not self._stopping:
                await self._running.acquire()
                try:
                    if self._stopping or not backlog:
                        return  # stop was requested while this one waited for a slot
                    _, delivery = backlog.popleft()
                    try:
                        await self._handle(delivery)  # settles the delivery even when cancelled
                    finally:
                        self._capacity.release()
                finally:
                    self._running.release()
        finally:
            if key is not None and self._by_key.get(key) is backlog:
                del self._by_key[key]
            if backlog:  # shutdown ran out of time, or stop came first: never started
                await self._give_back(list(backlog))
                backlog.clear()

    def request_stop(self) -> None:
        """Start no more handlers (those running carry on)."""
        self._stopping = True

    async def release_unstarted(self) -> None:
        """Hand every taken delivery that has not started back to the broker, oldest first."""
        self._stopping = True
        waiting = sorted(item for backlog in self._workers.values() for item in backlog)
        for backlog in self._workers.values():
            backlog.clear()
        await self._give_back(waiting)
        unadmitted, self._unadmitted = self._unadmitted, []
        for delivery in unadmitted:
            await self._release(delivery)

    async def _give_back(self, items: list[tuple[int, Delivery]]) -> None:
        for _, delivery in items:
            try:
                await self._release(delivery)
            finally:
                self._capacity.release()

    async def join(self, timeout: float | None) -> None:
        """Wait for the running handlers to finish; past ``timeout`` cancel the rest."""
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
    outage never ends the subscription. ``last_delivery_at`` is the wall-clock time (Unix
    seconds) of the latest delivery fetched, None before the first.
    """

    def __init__(
        self, subscription: SubscriptionView, consumer: Consumer, handle: Handle, release: Release
    ) -> None:
        self.subscription = subscription
        self.name = name = subscription.name
        self.consumer = consumer
        self.last_delivery_at: float | None = None
        self._handle = handle
        self._release = release
        concurrency = subscription.concurrency
        self._dispatcher = (
            KeyedDispatcher(handle, release, concurrency) if concurrency > 1 else None
        )
        self._inline = False
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._fetch(), name=f"eventbus:{name}")

    @property
    def busy(self) -> bool:
        return self._inline or (self._dispatcher is not None and self._dispatcher.busy)

    @property
    def running(self) -> bool:
        """Whether the fetch loop is alive (it ends only when the subscription stops)."""
        return not self._task.done()

    async def _fetch(self) -> None:
        backoff = 0.1
        while not self._stopping:
            try:
                async for delivery in self.consumer:
                    self.last_delivery_at = time.time()
                    backoff = 0.1
                    if self._stopping:  # taken as stop was requested: never started
                        await self._release(delivery)
                        return
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

    def request_stop(self) -> None:
        """From now on no handler of this subscription starts; synchronous, so a bus can stop
        all its subscriptions at one instant."""
        self._stopping = True
        if self._dispatcher is not None:
            self._dispatcher.request_stop()

    async def stop_fetching(self, timeout: float) -> None:
        self.request_stop()
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
        if self._dispatcher is not None:
            await self._dispatcher.release_unstarted()

    async def finish(self, timeout: float) -> None:
        if self._dispatcher is not None:
            await self._dispatcher.join(timeout)
        try:
            await self.consumer.close()
        except Exception:  # stopping must finish; what the consumer held, the broker redelivers
            log.exception(
                "consumer for %s failed to close; its unsettled messages come back", self.name
            )
