"""The seams between the bus and broker adapters: brokers, consumers, deliveries, clocks.

A broker adapter *translates* and never decides: it moves envelopes to and from its broker and
does what the consume policy in :mod:`eventbus.consume` tells it (ack, redeliver now or later,
dead-letter, hand back). The contract every adapter meets is checked by
:class:`eventbus.testing.BrokerContract`. This module is part of the contract: it imports
nothing of eventbus above it, so adapters depend on nothing but the contract.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any, Protocol, runtime_checkable

from eventbus.deadletters import DeadLetterRecord, DeadLetterStore
from eventbus.envelope import Envelope
from eventbus.errors import DecodeError

__all__ = [
    "UndecodableObserver",
    "Broker",
    "DescribesWire",
    "BusView",
    "Capabilities",
    "Clock",
    "Consumer",
    "Delivery",
    "OutboxStage",
    "PublishBatchNext",
    "PublishMiddleware",
    "PublishNext",
    "PublishSide",
    "SubscriptionView",
    "WireChannel",
    "WireFormat",
]


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What an adapter claims; the conformance suite skips by capability, never by adapter name.

    Every flag is a claim the adapter opts into (all default to False), and each is read by
    the suite: a test that needs it is skipped, or checks less, without it.
    """

    persistent: bool = False
    """Events published while a group's consumer is stopped reach it when it starts again on a
    new adapter instance (and, with the broker's own persistence on, survive its restart)."""
    consumer_groups: bool = False
    """Competing consumers within a group, a copy per group."""
    ordered_per_key: bool = False
    """Events with the same ``partitionkey`` reach one consumer in publish order."""
    delayed_redelivery: bool = False
    """``Delivery.retry_later(delay)`` hands the message back without blocking the others."""
    dead_letters: bool = False
    """The adapter keeps a dead-letter queue that can be listed, replayed and purged."""
    pattern_subscriptions: bool = False
    """Subscriptions may use ``*`` and ``#`` patterns over type names."""
    uncounted_release: bool = False
    """``Delivery.release()`` hands a message back without counting a delivery attempt."""
    counts_crash_redeliveries: bool = False
    """A message whose consumer went away without settling it comes back counted as a further
    attempt. Without it, such a redelivery keeps the attempt it had (Kafka cannot know)."""


@dataclasses.dataclass(frozen=True)
class WireFormat:
    """How an adapter carries envelopes, as a document of the API describes it.

    ``protocol`` is the AsyncAPI protocol (``kafka``, ``amqp``, ``redis``; ``None`` for a broker
    that is no server); ``hosts`` are ``host:port`` with no user information; ``pathname`` is
    the rest of the address (a RabbitMQ virtual host). ``header_prefix`` is the prefix of the
    CloudEvents attribute headers in binary content mode, ``None`` in structured mode (one JSON
    document per message); ``content_type_header`` says whether ``content-type`` is one of
    those headers (Kafka) or a property of the protocol (AMQP).
    """

    protocol: str | None
    hosts: tuple[str, ...] = ()
    pathname: str | None = None
    header_prefix: str | None = "ce_"
    content_type_header: bool = True


@dataclasses.dataclass(frozen=True)
class WireChannel:
    """A place on the broker: the address of a destination, or of a subscription's retry or
    dead-letter queue. ``role`` is ``events``, ``retry`` or ``dead-letter``; ``parameters``
    name the ``{placeholders}`` of ``address``; ``bindings`` are AsyncAPI channel bindings."""

    address: str
    role: str = "events"
    description: str = ""
    parameters: Mapping[str, str] = dataclasses.field(default_factory=dict)
    bindings: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@runtime_checkable
class DescribesWire(Protocol):
    """An adapter that can say where things live on its broker (for ``eventbus.asyncapi``)."""

    def wire_format(self) -> WireFormat: ...

    def channel(self, destination: str) -> WireChannel:
        """Where events published to ``destination`` go."""

    def internal_channels(self, subscription: SubscriptionView) -> Sequence[WireChannel]:
        """The retry and dead-letter queues the adapter keeps for ``subscription``."""

    def receive_bindings(self, subscription: SubscriptionView) -> Mapping[str, Any]:
        """AsyncAPI operation bindings of ``subscription``'s consumer (its Kafka group id)."""


class Clock(Protocol):
    """Time as seen by delays and backoff; see :mod:`eventbus.clock`."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SubscriptionView(Protocol):
    """What an adapter learns of a subscription: never the user's handler or middleware."""

    @property
    def name(self) -> str:
        """The handler's qualified name, for logs and dead-letter records."""

    @property
    def group(self) -> str | None:
        """The consumer group (filled in by the bus before it subscribes)."""

    @property
    def topic(self) -> str:
        """The destination subscribed to, or a pattern over destinations."""

    @property
    def is_pattern(self) -> bool: ...

    @property
    def concurrency(self) -> int:
        """How many of its deliveries the bus handles at once."""


@runtime_checkable
class Delivery(Protocol):
    """One message handed to a consumer, with the operations that settle it.

    Exactly one of ``ack``, ``nack``, ``retry_later``, ``dead_letter`` or ``release`` completes
    each delivery, called by the consume policy. A settle that raises leaves the delivery
    unsettled, so it can be tried again (or released). ``headers`` and ``body`` are the message
    as it arrived (header values made fit to be sent again); ``envelope`` is ``None`` when
    those bytes could not be decoded, and then ``decode_error`` says why.

    **Attempts.** ``attempt`` is 1 plus the earlier deliveries of this message to this group:
    redeliveries, delayed retries and handler cancellations count; a release does not (where
    ``Capabilities.uncounted_release``), nor does a crash where the adapter cannot know of it
    (without ``Capabilities.counts_crash_redeliveries``). A replayed dead letter starts again
    at 1.

    **Where it was, for tracing (optional).** An adapter's delivery may have
    ``partition_id`` (a string) and ``offset`` (Kafka), or ``delivery_tag`` (RabbitMQ);
    telemetry reads them where they are.

    **Carried state.** ``metadata`` is a small mutable mapping of short lowercase keys
    (``[a-z0-9-]``) to strings that middleware writes while handling; whatever it holds when
    the delivery is redelivered (``nack``, ``retry_later``) arrives with the redelivery. Network
    adapters carry it, with the attempt, in ``eventbus-*`` headers
    (:mod:`eventbus.brokers._wire`).
    """

    @property
    def envelope(self) -> Envelope | None: ...

    @property
    def decode_error(self) -> DecodeError | None: ...

    @property
    def headers(self) -> Mapping[str, Any]: ...

    @property
    def body(self) -> bytes: ...

    @property
    def attempt(self) -> int: ...

    @property
    def destination(self) -> str: ...

    @property
    def metadata(self) -> MutableMapping[str, str]: ...

    async def ack(self) -> None:
        """Done: the broker forgets the message for this group."""

    async def nack(self) -> None:
        """Not done (the handler was cancelled): deliver it again, with ``attempt + 1``."""

    async def retry_later(self, delay: float) -> None:
        """Deliver again after ``delay`` seconds without blocking the others, ``attempt + 1``."""

    async def dead_letter(self, record: DeadLetterRecord) -> None:
        """Move the message, original bytes kept, to this group's dead-letter queue."""

    async def release(self) -> None:
        """Not handled here: give the message back for delivery as if it had not been taken.

        For deliveries fetched but not started when the consumer stops, and for a delivery
        whose settling kept failing. It keeps its ``attempt`` (see the class documentation) and
        its place in order, as far as the broker allows.
        """


class Consumer(Protocol):
    """An open subscription: iterate for deliveries, ``close`` to stop fetching.

    Closing hands unsettled deliveries back to the broker so no message is lost.
    """

    def __aiter__(self) -> AsyncIterator[Delivery]: ...

    async def close(self) -> None: ...


class Broker(Protocol):
    """A broker adapter.

    ``connect`` and ``close`` are idempotent; ``close`` flushes what is pending. ``publish``
    returns once the broker has the event (or raises :class:`~eventbus.errors.PublishError`);
    before ``connect`` it raises :class:`~eventbus.errors.BusNotStarted`. Driver exceptions are
    mapped to :mod:`eventbus.errors` at the adapter's edge. ``clock`` is the time its delays
    run on. ``pending()`` counts what is queued, unsettled and delayed where the adapter can
    know it exactly (the memory broker), else returns ``None``.

    **Optional:** ``async def lag(subscription: SubscriptionView) -> int | None`` — how many
    messages for the subscription's group are not settled yet, asked of the broker (``None``
    where it cannot tell), raising :class:`~eventbus.errors.BrokerUnavailable` when the broker
    does not answer. ``EventBus.health()`` looks it up with ``getattr``; every adapter of this
    package has one.

    **Optional:** ``async def remove_group(subscription: SubscriptionView) -> None`` — delete
    what the broker keeps for the subscription's group once no consumer of it runs (its
    position or queue, its private retry storage; dead letters are kept), for a consumer that
    reads for a while and goes away (``eventbus tail``). Every adapter of this package has one.
    """

    capabilities: Capabilities
    max_message_bytes: int
    """The largest payload (``Envelope.data``) the bus lets through to this adapter."""

    @property
    def clock(self) -> Clock: ...

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    def publish(self, destination: str, envelope: Envelope) -> Awaitable[None]:
        """Awaited, returns once the broker has the envelope (an ``async def`` does; an
        adapter may return a future it resolves itself, one coroutine fewer per event)."""

    async def publish_batch(self, messages: Sequence[tuple[str, Envelope]]) -> None: ...

    async def subscribe(self, subscription: SubscriptionView) -> Consumer: ...

    @property
    def dead_letters(self) -> DeadLetterStore: ...

    def pending(self) -> Mapping[str, int] | None: ...


class OutboxStage(Protocol):
    """Where ``bus.publish(..., session=s)`` puts events instead of sending them: rows in the
    caller's transaction, which a relay publishes once it has committed (``eventbus.outbox``).
    """

    async def stage(self, session: Any, messages: Sequence[tuple[str, Envelope]]) -> None:
        """Add ``(destination, envelope)`` rows in ``session``'s transaction; never commit."""


PublishNext = Callable[[Envelope], Awaitable[Envelope]]
"""What a publish-side middleware calls to run the rest of the chain; returns what was sent."""


class PublishMiddleware(Protocol):
    """Publish side: receives the envelope, may replace it, returns what ``call_next`` returned."""

    async def __call__(self, envelope: Envelope, call_next: PublishNext) -> Envelope: ...


PublishBatchNext = Callable[
    [Sequence[tuple[str, Envelope]]], Awaitable[Sequence[tuple[str, Envelope]]]
]
"""What a batch-side publish hook calls to send ``(destination, envelope)`` pairs the rest of
the way; returns the pairs as they were sent."""


class PublishSide(PublishMiddleware, Protocol):
    """The publish half of an instrumenting middleware (tracing, metrics): a publish
    middleware that also wraps batch sends (``publish_many``, the outbox relay)."""

    async def batch(
        self, messages: Sequence[tuple[str, Envelope]], call_next: PublishBatchNext
    ) -> Sequence[tuple[str, Envelope]]: ...


@runtime_checkable
class UndecodableObserver(Protocol):
    """A middleware told of each message that could not be decoded. Such a message never
    reaches the chain (there is no event to hand it), so the consume policy calls this just
    before it dead-letters the message: telemetry counts and traces it like any other."""

    def undecodable(
        self, subscription: SubscriptionView, delivery: Delivery, error: DecodeError
    ) -> None: ...


class BusView(Protocol):
    """What an instrumenting middleware learns of the bus it is installed on."""

    @property
    def service(self) -> str: ...

    @property
    def broker(self) -> Broker: ...

    def destination_of(self, envelope: Envelope) -> str:
        """The destination events like ``envelope`` are published to."""
        ...
