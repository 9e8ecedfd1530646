"""In-process: eventbus's memory bus against a bare ``asyncio.Queue`` loop.

The bare loop is the practical limit of any in-process bus: it JSON-encodes the pydantic model
on publish and validates it back on consume, and does nothing else (no envelope, no ids, no
acknowledgement, no failure handling). eventbus runs its whole path on top of that with the
default middleware chain (dead-letter, retry).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from bench.common import EventBusWorkload, UserCreated, Workload, decode, encode


class BareQueue(Workload):
    async def start(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.task = asyncio.ensure_future(self.consume())

    async def consume(self) -> None:
        while True:
            self.on_event(decode(await self.queue.get()))

    async def publish(self, event: UserCreated) -> None:
        self.queue.put_nowait(encode(event))

    async def publish_batch(self, events: Sequence[UserCreated]) -> None:
        for event in events:
            self.queue.put_nowait(encode(event))

    async def stop(self) -> None:
        self.task.cancel()

    async def unsettled(self) -> int:
        return self.queue.qsize()


class EventBusMemory(EventBusWorkload):
    """The memory bus (``memory://``, private to the trial) with the default chain."""

    async def unsettled(self) -> int:
        pending = self.bus.broker.pending()
        assert pending is not None, "the memory broker counts what it holds"
        return sum(pending.values())


IMPLEMENTATIONS: dict[str, type[Workload]] = {"bare": BareQueue, "eventbus": EventBusMemory}
