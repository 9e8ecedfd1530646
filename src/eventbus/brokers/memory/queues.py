"""The memory broker's queues: one per (consumer group, destination or pattern)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from eventbus.envelope import Envelope, to_binary
from eventbus.topics import topic_matches

__all__ = ["GroupQueue", "Message"]

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


class _Queue(asyncio.Queue[Message]):
    """A FIFO queue that takes released messages back at the front, in the order released.

    Released messages were taken from the front and never handled, so putting them back there
    (behind the ones released just before them) restores the order they were published in.
    It uses the ``_put``/``_get`` hooks ``asyncio.Queue`` offers its subclasses.
    """

    _queue: collections.deque[Message]

    def __init__(self) -> None:
        super().__init__()
        self._front = 0  # how many released messages lead the queue
        self._to_front = False

    def put_front(self, message: Message) -> None:
        self._to_front = True
        try:
            self.put_nowait(message)
        finally:
            self._to_front = False

    def _put(self, item: Message) -> None:
        if self._to_front:
            self._queue.insert(self._front, item)
            self._front += 1
        else:
            self._queue.append(item)

    def _get(self) -> Message:
        if self._front:
            self._front -= 1
        return self._queue.popleft()


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
        self.queue._queue.extend(old._queue)
        self.queue._front = old._front

    def matches(self, destination: str) -> bool:
        return (
            topic_matches(self.topic, destination) if self.is_pattern else self.topic == destination
        )
