"""The memory broker's queues: one per (consumer group, destination or pattern)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from eventbus.envelope import Envelope, to_binary
from eventbus.topics import topic_matches

__all__ = ["YIELD_EVERY", "GroupQueue", "Message"]

YIELD_EVERY = 32
"""How many messages a busy queue's consumer takes, and how many publishes a tight loop
makes while a queue is over its backlog bound, between two yields to the event loop."""

_NO_METADATA: Mapping[str, str] = MappingProxyType({})


class Message:
    """A message on a queue: a published envelope, or foreign headers and bytes."""

    __slots__ = ("_wire", "attempt", "destination", "envelope", "key", "metadata")

    def __init__(
        self,
        destination: str,
        envelope: Envelope | None,
        wire: tuple[Mapping[str, Any], bytes] | None,
        key: str | None,
        attempt: int = 1,
        metadata: Mapping[str, str] = _NO_METADATA,
    ) -> None:
        self.destination = destination
        self.envelope = envelope
        self._wire = wire
        self.key = key
        self.attempt = attempt
        self.metadata = metadata

    @property
    def wire(self) -> tuple[Mapping[str, Any], bytes]:
        """Headers and body as a network broker would carry them (binary content mode)."""
        if self._wire is None:
            assert self.envelope is not None
            self._wire = to_binary(self.envelope)
        return self._wire

    def again(self, attempt: int, metadata: Mapping[str, str]) -> Message:
        """The redelivery: same message, the next attempt, the delivery's carried metadata."""
        return Message(
            self.destination, self.envelope, self._wire, self.key, attempt, dict(metadata)
        )


class _Queue:
    """A FIFO queue of messages that takes released ones back at the front, in the order
    released, and wakes one waiting consumer per message put.

    Released messages were taken from the front and never handled, so putting them back there
    (behind the ones released just before them) restores the order they were published in.
    It is ``asyncio.Queue``'s waiting discipline without its bounded-size and task-counting
    machinery, which this queue does not use: two calls per message put and taken, not ten.
    """

    __slots__ = ("_front", "_getters", "_items")

    def __init__(self) -> None:
        self._items: collections.deque[Message] = collections.deque()
        self._front = 0  # how many released messages lead the queue
        self._getters: collections.deque[asyncio.Future[None]] = collections.deque()

    def qsize(self) -> int:
        return len(self._items)

    def put_nowait(self, message: Message) -> int:
        """Put ``message`` at the back; returns how many the queue now holds."""
        items = self._items
        items.append(message)
        if self._getters:
            self._wake()
        return len(items)

    def put_front(self, message: Message) -> None:
        self._items.insert(self._front, message)
        self._front += 1
        if self._getters:
            self._wake()

    def take(self) -> Message | None:
        """The first message, or None when the queue is empty (never waits)."""
        if not self._items:
            return None
        if self._front:
            self._front -= 1
        return self._items.popleft()

    def get_nowait(self) -> Message:
        message = self.take()
        if message is None:
            raise asyncio.QueueEmpty
        return message

    async def get(self) -> Message:
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()  # a no-op when it was woken already
                with contextlib.suppress(ValueError):
                    self._getters.remove(getter)
                if self._items and not getter.cancelled():
                    self._wake()  # it was woken, then cancelled: the next consumer takes over
                raise
        return self.get_nowait()

    def take_over(self, old: _Queue) -> None:
        """Hold ``old``'s waiting messages, in order (see :meth:`GroupQueue.rebind`)."""
        self._items.extend(old._items)
        self._front = old._front

    def _wake(self) -> None:
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
                return


class GroupQueue:
    """One consumer group's queue for one topic (or pattern); kept while the broker lives."""

    def __init__(self, group: str, topic: str, is_pattern: bool) -> None:
        self.group = group
        self.topic = topic
        self.is_pattern = is_pattern
        self.queue = _Queue()
        self.unacked = 0

    def rebind(self) -> None:
        """Move the waiting messages to a fresh queue, in order: an ``asyncio.Queue`` belongs
        to the event loop that first waited on it, and a broker connected again (a named one
        shared by the tests of a suite, say) may be in another loop."""
        old, self.queue = self.queue, _Queue()
        self.queue.take_over(old)

    def matches(self, destination: str) -> bool:
        return (
            topic_matches(self.topic, destination) if self.is_pattern else self.topic == destination
        )
