"""The seams between the bus and its parts: broker adapters, deliveries, middleware, clocks.

A broker adapter *translates* and never decides: it moves envelopes to and from its broker and
does what the consume policy in :mod:`eventbus.consume` tells it (ack, nack, redeliver later,
dead-letter). The contract every adapter meets is checked by
:class:`eventbus.testing.BrokerContract`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from eventbus.context import Context
    from eventbus.deadletters import DeadLetter, DeadLetterStore
    from eventbus.envelope import Envelope
    from eventbus.errors import DecodeError
    from eventbus.router import Subscription

__all__ = [
    "Broker",
    "Capabilities",
    "Clock",
    "Consumer",
    "Delivery",
    "Middleware",
    "Next",
    "PublishMiddleware",
    "PublishNext",
]


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What an adapter can do; the conformance suite skips by capability, never by adapter name."""

    persistent: bool = False
    """Published events survive a restart of the broker."""
    consumer_groups: bool = True
    """Competing consumers within a group, a copy per group."""
    ordered_per_key: bool = True
    """Events with the same ``partitionkey`` reach one consumer in publish order."""
    delayed_redelivery: bool = True
    """``Delivery.retry_later(delay)`` hands the message back without blocking the others."""
    dead_letters: bool = True
    """The adapter keeps a dead-letter queue that can be listed, replayed and purged."""
    pattern_subscriptions: bool = True
    """Subscriptions may use ``*`` and ``#`` patterns over type names."""
    uncounted_release: bool = True
    """``Delivery.release()`` hands a message back without counting a delivery attempt."""
    in_process: bool = False
    """Every producer and consumer lives in this process (the memory broker)."""


class Clock(Protocol):
    """Time as seen by delays and backoff; see :mod:`eventbus.clock`."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


@runtime_checkable
class Delivery(Protocol):
    """One message handed to a consumer, with the operations that settle it.

    Exactly one of ``ack``, ``nack``, ``retry_later``, ``dead_letter`` or ``release`` is called
    for each delivery, by the consume loop. ``headers`` and ``body`` are the message exactly as it
    arrived; ``envelope`` is ``None`` when those bytes could not be decoded, and then
    ``decode_error`` says why.

    **Carried state.** ``attempt`` and ``metadata`` travel with the message across
    redeliveries. ``metadata`` is a small mutable mapping of short lowercase keys
    (``[a-z0-9-]``) to strings that middleware writes while handling (the dead-letter
    middleware records ``first-failure-at`` there, an ISO-8601 UTC time). Whatever it holds
    when ``retry_later`` is called must arrive on the redelivery; a network adapter that
    republishes for a delayed retry writes it as headers ``eventbus-<key>`` next to
    ``eventbus-attempt`` and reads both back (stripping the prefix) on delivery. ``nack`` with
    requeue carries it too where the broker can (the memory broker does; a broker that
    requeues the original bytes may lose it, which only costs provenance). A replayed dead
    letter starts again at ``attempt == 1`` with empty ``metadata``.
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
    def attempt(self) -> int:
        """1 on first delivery; counted across redeliveries, delays and processes."""

    @property
    def destination(self) -> str: ...

    @property
    def metadata(self) -> MutableMapping[str, str]:
        """State carried to the redelivery (see the class documentation); ``{}`` when fresh."""

    async def ack(self) -> None:
        """Done: the broker forgets the message for this group."""

    async def nack(self, *, requeue: bool = True) -> None:
        """Not done: with ``requeue`` the broker delivers it again, with ``attempt + 1``
        (and ``metadata``, where the broker can carry it)."""

    async def release(self) -> None:
        """Never started: give the message back for delivery as if it had not been taken.

        Called for deliveries that were fetched but not handled when the consumer stops. The
        message keeps its ``attempt`` (where ``Capabilities.uncounted_release``) and its place
        in order, as far as the broker allows.
        """

    async def retry_later(self, delay: float) -> None:
        """Deliver again after ``delay`` seconds without blocking the others.

        The redelivery has ``attempt + 1`` and the ``metadata`` as it is now.
        """

    async def dead_letter(self, record: DeadLetter) -> None:
        """Move the message, original bytes kept, to this group's dead-letter queue."""


class Consumer(Protocol):
    """An open subscription: iterate for deliveries, ``close`` to stop fetching.

    Closing returns unsettled deliveries to the broker so no message is lost.
    """

    def __aiter__(self) -> AsyncIterator[Delivery]: ...

    async def close(self) -> None: ...


class Broker(Protocol):
    """A broker adapter.

    ``connect`` and ``close`` are idempotent; ``close`` flushes what is pending. ``publish``
    returns once the broker has the event (or raises :class:`~eventbus.errors.PublishError`).
    Driver exceptions are mapped to :mod:`eventbus.errors` at the adapter's edge.
    """

    capabilities: Capabilities
    max_message_bytes: int
    """The largest payload (``Envelope.data``) the bus lets through to this adapter."""

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, destination: str, envelope: Envelope) -> None: ...

    async def publish_batch(self, messages: Sequence[tuple[str, Envelope]]) -> None: ...

    async def subscribe(self, subscription: Subscription) -> Consumer: ...

    @property
    def dead_letters(self) -> DeadLetterStore: ...


Next = Callable[["Context"], Awaitable[None]]
"""What a consume-side middleware calls to run the rest of the chain."""

PublishNext = Callable[["Envelope"], Awaitable["Envelope"]]
"""What a publish-side middleware calls to run the rest of the chain; returns what was sent."""


class Middleware(Protocol):
    """Consume side: ``async def __call__(ctx, call_next)``; the first in the list is outermost.

    Await ``call_next(ctx)`` in the same task, so context variables (and tracing) flow through.
    """

    async def __call__(self, ctx: Context, call_next: Next) -> None: ...


class PublishMiddleware(Protocol):
    """Publish side: receives the envelope, may replace it, returns what ``call_next`` returned."""

    async def __call__(self, envelope: Envelope, call_next: PublishNext) -> Envelope: ...
