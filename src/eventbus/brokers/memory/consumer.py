"""A consumer of one memory group queue, and the deliveries it hands out."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

from eventbus.brokers.memory.deadletters import MemoryDeadLetters
from eventbus.brokers.memory.queues import YIELD_EVERY, GroupQueue, Message
from eventbus.deadletters import DeadLetterRecord
from eventbus.envelope import Envelope, decode
from eventbus.errors import DecodeError

__all__ = ["MemoryConsumer", "MemoryDelivery"]


class _Broker(Protocol):
    """What a consumer needs of its broker: the dead-letter store and delayed redelivery."""

    @property
    def dead_letters(self) -> MemoryDeadLetters: ...

    def _schedule(self, group_queue: GroupQueue, message: Message, delay: float) -> None: ...


class MemoryConsumer:
    """One consumer of a group queue; closing it puts its unsettled deliveries back."""

    def __init__(self, broker: _Broker, group_queue: GroupQueue) -> None:
        self._broker = broker
        self._group_queue = group_queue
        self._unsettled: dict[int, MemoryDelivery] = {}
        self._tags = itertools.count()

    def __aiter__(self) -> AsyncIterator[MemoryDelivery]:
        return self._deliveries()

    async def _deliveries(self) -> AsyncIterator[MemoryDelivery]:
        taken = 0
        queue = self._group_queue.queue
        while True:
            # Taking a waiting message does not suspend; yield now and then (and on every
            # redelivery) so a busy queue or a message nacked in a loop cannot starve the other
            # tasks of the event loop.
            taken += 1
            message = queue.take() or await queue.get()
            if message.attempt > 1 or taken % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            delivery = MemoryDelivery(self, next(self._tags), message)
            self._unsettled[delivery.tag] = delivery
            self._group_queue.unacked += 1
            yield delivery

    def _settle(self, delivery: MemoryDelivery) -> bool:
        if self._unsettled.pop(delivery.tag, None) is None:
            return False
        self._group_queue.unacked -= 1
        return True

    async def close(self) -> None:
        """Give back what was taken and not settled, uncounted (see ``MemoryDelivery.release``)."""
        for delivery in list(self._unsettled.values()):
            await delivery.release()


class MemoryDelivery:
    __slots__ = (
        "_consumer",
        "_message",
        "attempt",
        "decode_error",
        "envelope",
        "metadata",
        "tag",
    )

    def __init__(self, consumer: MemoryConsumer, tag: int, message: Message) -> None:
        self._consumer = consumer
        self._message = message
        self.tag = tag
        self.attempt = message.attempt
        self.metadata: dict[str, str] = dict(message.metadata) if message.metadata else {}
        self.envelope: Envelope | None = message.envelope
        self.decode_error: DecodeError | None = None
        if self.envelope is None:
            headers, body = message.wire
            try:
                self.envelope = decode(headers, body, key=message.key)
            except DecodeError as exc:
                self.decode_error = exc

    @property
    def headers(self) -> Mapping[str, Any]:
        return self._message.wire[0]

    @property
    def body(self) -> bytes:
        return self._message.wire[1]

    @property
    def destination(self) -> str:
        return self._message.destination

    async def ack(self) -> None:
        self._consumer._settle(self)

    async def nack(self) -> None:
        if self._consumer._settle(self):
            message = self._message.again(self.attempt + 1, self.metadata)
            self._consumer._group_queue.queue.put_nowait(message)

    async def release(self) -> None:
        """Back to the front of the group's queue, with the same attempt and metadata."""
        if self._consumer._settle(self):
            message = self._message.again(self.attempt, self.metadata)
            self._consumer._group_queue.queue.put_front(message)

    async def retry_later(self, delay: float) -> None:
        if self._consumer._settle(self):
            message = self._message.again(self.attempt + 1, self.metadata)
            self._consumer._broker._schedule(self._consumer._group_queue, message, delay)

    async def dead_letter(self, record: DeadLetterRecord) -> None:
        if self._consumer._settle(self):
            self._consumer._broker.dead_letters._add(record, self._consumer._group_queue)
