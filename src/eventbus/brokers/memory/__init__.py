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
import logging
import weakref
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from eventbus.brokers import query_options
from eventbus.brokers._wire import check_max_message_bytes
from eventbus.brokers.memory.consumer import MemoryConsumer, MemoryDelivery
from eventbus.brokers.memory.deadletters import MemoryDeadLetters
from eventbus.brokers.memory.queues import YIELD_EVERY, GroupQueue, Message
from eventbus.clock import SystemClock
from eventbus.envelope import Envelope
from eventbus.errors import BusNotStarted, ConfigurationError, NoHandlerError
from eventbus.types import Capabilities, Clock, SubscriptionView, WireChannel, WireFormat

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MemoryBroker",
    "MemoryConsumer",
    "MemoryDeadLetters",
    "MemoryDelivery",
    "from_url",
]

log = logging.getLogger("eventbus.memory")
_named: weakref.WeakValueDictionary[str, MemoryBroker] = weakref.WeakValueDictionary()
_YIELD_BACKLOG = 256
"""While a queue holds more than this many messages, every
:data:`~eventbus.brokers.memory.queues.YIELD_EVERY`-th publish yields to the event loop (as
often as a consumer yields while it takes waiting messages: a yield on every publish would
cost a turn of the loop per message when many tasks publish at once), so a tight publishing
loop lets consumers run instead of queueing without bound."""


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

    system = "memory"
    """The OpenTelemetry ``messaging.system`` of this adapter."""
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
        self._queues: dict[tuple[str, str], GroupQueue] = {}
        self._routes: dict[str, list[GroupQueue]] = {}
        self._delayed: set[asyncio.Task[None]] = set()
        self._dead = MemoryDeadLetters()
        self._connected = 0
        self._publishes = 0
        self._warned: set[str] = set()

    @classmethod
    def named(cls, name: str, **options: Any) -> MemoryBroker:
        """The process-wide broker called ``name`` (created on first use)."""
        broker = _named.get(name)
        if broker is None:
            broker = _named[name] = cls(**options)
        return broker

    async def connect(self) -> None:
        if not self._connected:  # the first bus since the last one closed: maybe a new loop
            for group_queue in self._queues.values():
                group_queue.rebind()
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

    def wire_format(self) -> WireFormat:
        """In this process: no server; the envelope's binary headers (``ce_*``) when looked at."""
        return WireFormat(None)

    def channel(self, destination: str) -> WireChannel:
        return WireChannel(destination, description="In this process's memory.")

    def receive_bindings(self, subscription: SubscriptionView) -> dict[str, Any]:
        return {}

    def internal_channels(self, subscription: SubscriptionView) -> list[WireChannel]:
        """None: redeliveries wait in the group's queue, dead letters in the process."""
        return []

    def pending(self) -> dict[str, int]:
        """Messages not yet settled: queued, delivered but unsettled, and waiting on a delay."""
        return {
            "queued": sum(q.queue.qsize() for q in self._queues.values()),
            "unsettled": sum(q.unacked for q in self._queues.values()),
            "delayed": len(self._delayed),
        }

    async def lag(self, subscription: SubscriptionView) -> int | None:
        """Messages of the subscription's group not settled yet: queued, and delivered but
        unsettled (redeliveries waiting for their delay are not counted). None before it has
        subscribed."""
        group_queue = self._queues.get((subscription.group or "", subscription.topic))
        if group_queue is None:
            return None
        return group_queue.queue.qsize() + group_queue.unacked

    async def publish(self, destination: str, envelope: Envelope) -> None:
        if not self._connected:
            raise BusNotStarted("the memory broker is not connected; start the bus first")
        if self._put(destination, envelope):
            await asyncio.sleep(0)  # let consumers catch up, as a network round trip would

    async def publish_batch(self, messages: Sequence[tuple[str, Envelope]]) -> None:
        """Each message as :meth:`publish` would, without a coroutine of its own."""
        if not self._connected:
            raise BusNotStarted("the memory broker is not connected; start the bus first")
        for destination, envelope in messages:
            if self._put(destination, envelope):
                await asyncio.sleep(0)

    def _put(self, destination: str, envelope: Envelope) -> bool:
        """Route a published envelope and record it; returns whether the publisher should now
        yield to the event loop (a queue it joined is over its backlog bound, see there)."""
        backlog = self._route(
            Message(destination, envelope, None, envelope.partitionkey),
            envelope.type,
            follow_up=envelope.causationid is not None,
        )
        self.published.append(envelope)
        self._publishes += 1
        return backlog > _YIELD_BACKLOG and not self._publishes % YIELD_EVERY

    async def send_raw(
        self,
        destination: str,
        body: bytes,
        headers: Mapping[str, Any] | None = None,
        key: str | None = None,
    ) -> None:
        """Put bytes on a destination as a foreign producer would, without any encoding."""
        self._route(Message(destination, None, (dict(headers or {}), body), key), destination)

    def _route(self, message: Message, event_type: str, *, follow_up: bool = False) -> int:
        """Queue ``message`` for every group it reaches; returns the longest of their queues."""
        queues = self._routes.get(message.destination)
        if queues is None:
            queues = [q for q in self._queues.values() if q.matches(message.destination)]
            self._routes[message.destination] = queues
        if not queues:
            self._no_subscriber(message.destination, event_type, follow_up)
        backlog = 0
        for group_queue in queues:
            size = group_queue.queue.put_nowait(message)
            if size > backlog:
                backlog = size
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

    def _queue_for(self, group: str, topic: str, is_pattern: bool) -> GroupQueue:
        group_queue = self._queues.get((group, topic))
        if group_queue is None:
            group_queue = self._queues[(group, topic)] = GroupQueue(group, topic, is_pattern)
            self._routes.clear()
        return group_queue

    async def subscribe(self, subscription: SubscriptionView) -> MemoryConsumer:
        if subscription.group is None:
            raise ValueError("subscription has no group; include it into a bus first")
        group_queue = self._queue_for(
            subscription.group, subscription.topic, subscription.is_pattern
        )
        return MemoryConsumer(self, group_queue)

    async def remove_group(self, subscription: SubscriptionView) -> None:
        """Forget the group's queue: events published from now on are not kept for it."""
        if self._queues.pop((subscription.group or "", subscription.topic), None) is not None:
            self._routes.clear()

    def _schedule(self, group_queue: GroupQueue, message: Message, delay: float) -> None:
        async def later() -> None:
            await self.clock.sleep(delay)
            group_queue.queue.put_nowait(message)

        task = asyncio.get_running_loop().create_task(later())
        self._delayed.add(task)
        task.add_done_callback(self._delayed.discard)


def from_url(url: str, **options: Any) -> MemoryBroker:
    """``memory://`` (a private broker) or ``memory://NAME`` (shared in this process).

    ``?strict=true`` in the URL sets ``strict``; keyword options go to :class:`MemoryBroker`.
    """
    for name, value in query_options(url).items():
        if name != "strict":
            raise ConfigurationError(f"unknown memory:// URL option {name!r}; known: strict")
        options.setdefault("strict", value.lower() in ("1", "true", "yes"))
    name = urlsplit(url).netloc
    return MemoryBroker.named(name, **options) if name else MemoryBroker(**options)
