"""The in-memory broker: a real adapter for unit tests and single-process applications.

It behaves like the network brokers where that matters to a handler: the payload travels as the
JSON bytes the bus encoded on publish and is validated back into the event on delivery, every
consumer
group gets its own copy of each event while consumers within a group compete for them,
unsettled deliveries come back with ``attempt + 1`` and their carried ``metadata`` (on nack or
``retry_later``; deliveries released unstarted, as when their consumer closes, keep their
attempt and go back to the front of the queue), delayed redelivery waits on an injectable
clock, and dead letters keep their original bytes (a replay starts again at attempt 1).

``memory://`` gives a private broker per bus; ``memory://NAME`` shares one broker between every
bus in the process that names it, which is how two "services" talk in one test.
Nothing survives the process: it is not persistent.

The envelope itself is immutable, so it is handed over as it is rather than round-tripped
through headers; its CloudEvents binary-mode headers are produced only when someone looks at
them (a dead letter, :attr:`MemoryDelivery.headers`). Bytes put on a destination with
:meth:`MemoryBroker.send_raw` are decoded on delivery like any foreign message.
"""

from __future__ import annotations

import asyncio
import collections
import difflib
import itertools
import logging
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from eventbus.brokers._wire import check_max_message_bytes
from eventbus.clock import SystemClock
from eventbus.deadletters import DeadLetterRecord, from_provenance, provenance
from eventbus.envelope import Envelope, decode, to_binary
from eventbus.errors import (
    BusNotStarted,
    ConfigurationError,
    DeadLetterNotFound,
    DecodeError,
    NoHandlerError,
)
from eventbus.topics import topic_matches
from eventbus.types import Capabilities, Clock, SubscriptionView

__all__ = ["MemoryBroker", "MemoryDeadLetters"]

log = logging.getLogger("eventbus.memory")
_named: weakref.WeakValueDictionary[str, MemoryBroker] = weakref.WeakValueDictionary()
_NO_METADATA: Mapping[str, str] = MappingProxyType({})
_YIELD_BACKLOG = 256
"""A publish that leaves more than this many messages waiting in a queue yields to the event
loop, so a tight publishing loop lets consumers run instead of queueing without bound."""


class _Message:
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

    def again(self, attempt: int, metadata: Mapping[str, str]) -> _Message:
        """The redelivery: same message, the next attempt, the delivery's carried metadata."""
        return _Message(
            self.destination, self.envelope, self._wire, self.key, attempt, dict(metadata)
        )


class _Queue(asyncio.Queue[_Message]):
    """A FIFO queue that takes released messages back at the front, in the order released.

    Released messages were taken from the front and never handled, so putting them back there
    (behind the ones released just before them) restores the order they were published in.
    It uses the ``_put``/``_get`` hooks ``asyncio.Queue`` offers its subclasses.
    """

    _queue: collections.deque[_Message]

    def __init__(self) -> None:
        super().__init__()
        self._front = 0  # how many released messages lead the queue
        self._to_front = False

    def put_front(self, message: _Message) -> None:
        self._to_front = True
        try:
            self.put_nowait(message)
        finally:
            self._to_front = False

    def _put(self, item: _Message) -> None:
        if self._to_front:
            self._queue.insert(self._front, item)
            self._front += 1
        else:
            self._queue.append(item)

    def _get(self) -> _Message:
        if self._front:
            self._front -= 1
        return self._queue.popleft()


class _GroupQueue:
    """One consumer group's queue for one topic (or pattern); kept while the broker lives."""

    def __init__(self, group: str, topic: str, is_pattern: bool) -> None:
        self.group = group
        self.topic = topic
        self.is_pattern = is_pattern
        self.queue = _Queue()
        self.unacked = 0

    def matches(self, destination: str) -> bool:
        return (
            topic_matches(self.topic, destination) if self.is_pattern else self.topic == destination
        )


DEFAULT_MAX_MESSAGE_BYTES = 1_000_000
"""The memory broker's payload limit: the strictest network default (Kafka's), so that a unit
test refuses what production would."""


class MemoryBroker:
    """In-process broker; see the module documentation for what it models.

    ``clock`` drives delayed redelivery (pass a :class:`~eventbus.testing.FakeClock` to move
    time by hand). ``strict`` makes publishing an event that no subscription accepts raise
    :class:`~eventbus.errors.NoHandlerError` instead of logging a warning — for the events a
    test publishes itself: follow-ups published by handlers (those with a ``causationid``) are
    recorded and never refused. ``published`` holds the last ``record`` envelopes published, in
    order (for :func:`eventbus.testing.published`). ``max_message_bytes`` is the payload limit
    the bus applies (:data:`DEFAULT_MAX_MESSAGE_BYTES`).
    """

    capabilities = Capabilities(
        consumer_groups=True,
        ordered_per_key=True,
        delayed_redelivery=True,
        dead_letters=True,
        pattern_subscriptions=True,
        uncounted_release=True,
    )

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        strict: bool = False,
        record: int = 1_000,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ):
        self.clock: Clock = clock or SystemClock()
        self.strict = strict
        self.max_message_bytes = check_max_message_bytes(max_message_bytes)
        self.published: collections.deque[Envelope] = collections.deque(maxlen=record)
        self._queues: dict[tuple[str, str], _GroupQueue] = {}
        self._routes: dict[str, list[_GroupQueue]] = {}
        self._delayed: set[asyncio.Task[None]] = set()
        self._dead = MemoryDeadLetters(self)
        self._connected = 0
        self._warned: set[str] = set()

    @classmethod
    def named(cls, name: str, **options: Any) -> MemoryBroker:
        """The process-wide broker called ``name`` (created on first use)."""
        broker = _named.get(name)
        if broker is None:
            broker = _named[name] = cls(**options)
        return broker

    async def connect(self) -> None:
        self._connected += 1

    async def close(self) -> None:
        if self._connected:
            self._connected -= 1
        if not self._connected:
            for task in list(self._delayed):
                task.cancel()

    @property
    def dead_letters(self) -> MemoryDeadLetters:
        return self._dead

    def pending(self) -> dict[str, int]:
        """Messages not yet settled: queued, delivered but unsettled, and waiting on a delay."""
        return {
            "queued": sum(q.queue.qsize() for q in self._queues.values()),
            "unsettled": sum(q.unacked for q in self._queues.values()),
            "delayed": len(self._delayed),
        }

    async def publish(self, destination: str, envelope: Envelope) -> None:
        if not self._connected:
            raise BusNotStarted("the memory broker is not connected; start the bus first")
        backlog = self._route(
            _Message(destination, envelope, None, envelope.partitionkey),
            envelope.type,
            follow_up=envelope.causationid is not None,
        )
        self.published.append(envelope)
        if backlog > _YIELD_BACKLOG:
            await asyncio.sleep(0)  # let consumers catch up, as a network round trip would

    async def publish_batch(self, messages: Sequence[tuple[str, Envelope]]) -> None:
        for destination, envelope in messages:
            await self.publish(destination, envelope)

    async def send_raw(
        self,
        destination: str,
        body: bytes,
        headers: Mapping[str, Any] | None = None,
        key: str | None = None,
    ) -> None:
        """Put bytes on a destination as a foreign producer would, without any encoding."""
        self._route(_Message(destination, None, (dict(headers or {}), body), key), destination)

    def _route(self, message: _Message, event_type: str, *, follow_up: bool = False) -> int:
        """Queue ``message`` for every group it reaches; returns the longest of their queues."""
        queues = self._routes.get(message.destination)
        if queues is None:
            queues = [q for q in self._queues.values() if q.matches(message.destination)]
            self._routes[message.destination] = queues
        if not queues:
            self._no_subscriber(message.destination, event_type, follow_up)
        backlog = 0
        for group_queue in queues:
            group_queue.queue.put_nowait(message)
            backlog = max(backlog, group_queue.queue.qsize())
        return backlog

    def _no_subscriber(self, destination: str, event_type: str, follow_up: bool) -> None:
        strict = self.strict and not follow_up
        if not strict and destination in self._warned:
            return
        known = sorted({q.topic for q in self._queues.values()})
        close = difflib.get_close_matches(destination, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        message = f"no subscription accepts event type {event_type!r} on {destination!r}{hint}"
        if strict:
            raise NoHandlerError(message + " (the event was not published)")
        if destination not in self._warned:
            self._warned.add(destination)
            log.warning("%s; the event is dropped", message)

    def _queue_for(self, group: str, topic: str, is_pattern: bool) -> _GroupQueue:
        group_queue = self._queues.get((group, topic))
        if group_queue is None:
            group_queue = self._queues[(group, topic)] = _GroupQueue(group, topic, is_pattern)
            self._routes.clear()
        return group_queue

    async def subscribe(self, subscription: SubscriptionView) -> MemoryConsumer:
        if subscription.group is None:
            raise ValueError("subscription has no group; include it into a bus first")
        group_queue = self._queue_for(
            subscription.group, subscription.topic, subscription.is_pattern
        )
        return MemoryConsumer(self, group_queue)

    def _schedule(self, group_queue: _GroupQueue, message: _Message, delay: float) -> None:
        async def later() -> None:
            await self.clock.sleep(delay)
            group_queue.queue.put_nowait(message)

        task = asyncio.get_running_loop().create_task(later())
        self._delayed.add(task)
        task.add_done_callback(self._delayed.discard)


class MemoryConsumer:
    """One consumer of a group queue; closing it puts its unsettled deliveries back."""

    def __init__(self, broker: MemoryBroker, group_queue: _GroupQueue) -> None:
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
            message = queue.get_nowait() if queue.qsize() else await queue.get()
            if message.attempt > 1 or taken % 32 == 0:
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

    def __init__(self, consumer: MemoryConsumer, tag: int, message: _Message) -> None:
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


class MemoryDeadLetters:
    """The memory broker's dead-letter store (``bus.dead_letters``).

    Records are kept as every network adapter keeps them (provenance written by
    :func:`eventbus.deadletters.provenance`, original headers and bytes) and read back the same
    way, so what a unit test sees of a dead letter is what production stores.
    """

    def __init__(self, broker: MemoryBroker) -> None:
        self._broker = broker
        self._records: dict[str, tuple[dict[str, str], Mapping[str, Any], bytes, _GroupQueue]] = {}

    def _add(self, record: DeadLetterRecord, group_queue: _GroupQueue) -> None:
        self._records[record.id] = (
            provenance(record),
            dict(record.headers),
            record.body,
            group_queue,
        )

    def _record(self, dead_letter_id: str) -> DeadLetterRecord | None:
        entry = self._records.get(dead_letter_id)
        return from_provenance(entry[0], entry[1], entry[2]) if entry else None

    async def list(self, *, group: str | None = None, limit: int = 100) -> list[DeadLetterRecord]:
        records = [
            from_provenance(values, headers, body)
            for values, headers, body, queue in self._records.values()
            if group is None or queue.group == group
        ]
        return records[:limit]

    async def get(self, dead_letter_id: str) -> DeadLetterRecord | None:
        return self._record(dead_letter_id)

    async def replay(self, dead_letter_id: str) -> None:
        entry = self._records.pop(dead_letter_id, None)
        if entry is None:
            raise DeadLetterNotFound(dead_letter_id)
        values, headers, body, group_queue = entry
        destination = from_provenance(values, headers, body).destination
        key = headers.get("ce_partitionkey")
        group_queue.queue.put_nowait(_Message(destination, None, (headers, body), key))

    async def purge(self, *, group: str | None = None) -> int:
        doomed = [i for i, e in self._records.items() if group is None or e[3].group == group]
        for dead_letter_id in doomed:
            del self._records[dead_letter_id]
        return len(doomed)


def from_url(url: str, **options: Any) -> MemoryBroker:
    """``memory://`` (a private broker) or ``memory://NAME`` (shared in this process).

    ``?strict=true`` in the URL sets ``strict``; keyword options go to :class:`MemoryBroker`.
    """
    from urllib.parse import urlsplit

    from eventbus.brokers import query_options

    for name, value in query_options(url).items():
        if name != "strict":
            raise ConfigurationError(f"unknown memory:// URL option {name!r}; known: strict")
        options.setdefault("strict", value.lower() in ("1", "true", "yes"))
    name = urlsplit(url).netloc
    return MemoryBroker.named(name, **options) if name else MemoryBroker(**options)
