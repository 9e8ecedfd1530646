"""``EventBus``: configuration, lifecycle and the publish pipeline.

What happens to each delivery once it arrives (ack, redeliver later, dead-letter) is decided
in one place, :mod:`eventbus.consume`; the runners in :mod:`eventbus.dispatch` feed it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from eventbus.brokers import from_url
from eventbus.chain import build_chain, undecodable_observers
from eventbus.clock import FakeClock
from eventbus.consume import SubscriptionHandler
from eventbus.context import Middleware, staging_session
from eventbus.deadletters import DeadLetterStore
from eventbus.dispatch import SubscriptionRunner
from eventbus.envelope import Envelope
from eventbus.errors import BusNotStarted, ConfigurationError
from eventbus.event import Event
from eventbus.health import Health, check
from eventbus.lifecycle import Lifecycle
from eventbus.middleware import Retry, default_middleware
from eventbus.publishing import EnvelopeFactory, batch_chain, passthrough, publish_chain
from eventbus.router import Router, Subscription
from eventbus.types import Broker, OutboxStage, PublishMiddleware, PublishSide
from eventbus.upcasting import Upcasters

__all__ = ["EventBus"]

F = TypeVar("F", bound=Callable[..., Any])


class EventBus(Lifecycle):
    """Publishes events and runs the subscriptions of the routers included into it.

    ``broker`` is a URL (``memory://``, ``kafka://…``, ``amqp://…``, ``redis://…``) or a ready
    adapter; ``broker_options`` go to the adapter untouched. ``service`` names this service:
    it is the CloudEvents ``source`` and the prefix of default consumer group names.
    ``middleware`` wraps every handler (first = outermost); left out, it is
    :func:`eventbus.middleware.default_middleware` (dead-letter, retry), and ``()`` means
    none. ``publish_middleware`` wraps every publish. ``shutdown_timeout`` bounds how long
    ``stop`` waits for running handlers. ``redelivery_delay`` is the first wait before a
    failure that no middleware decided about is delivered again (doubling per attempt, at
    most a minute). ``max_message_bytes`` refuses larger payloads at publish; it defaults to
    the adapter's (see ``docs/events.md``). ``outbox`` (an ``eventbus.outbox.Outbox``) lets
    ``publish(..., session=s)`` stage events in the caller's transaction. ``upcasters``
    (:class:`eventbus.upcasting.Upcasters`) turn older payloads into the handler's version.
    ``publishes`` declares the events this service sends (see :class:`Router`).
    """

    def __init__(
        self,
        broker: str | Broker = "memory://",
        *,
        service: str = "app",
        routers: Iterable[Router] = (),
        middleware: Sequence[Middleware] | None = None,
        publish_middleware: Sequence[PublishMiddleware] = (),
        shutdown_timeout: float = 30.0,
        redelivery_delay: float = 1.0,
        max_message_bytes: int | None = None,
        outbox: OutboxStage | None = None,
        upcasters: Upcasters | None = None,
        publishes: Iterable[type[Event]] = (),
        **broker_options: Any,
    ) -> None:
        if not service or not isinstance(service, str):
            raise ConfigurationError("service must be a non-empty name, such as 'billing'")
        if not redelivery_delay > 0:
            raise ConfigurationError(
                f"redelivery_delay must be > 0 seconds, got {redelivery_delay!r}: a failing "
                "handler must never be redelivered in a hot loop"
            )
        self.broker: Broker = _make_broker(broker, max_message_bytes, broker_options)
        self.service = service
        self.middleware = tuple(default_middleware() if middleware is None else middleware)
        self.publish_middleware = tuple(publish_middleware)
        self.shutdown_timeout = shutdown_timeout
        self.redelivery_delay = float(redelivery_delay)
        self.outbox = outbox
        self.upcasters = upcasters
        """Where ``publish(..., session=s)`` stages events (``eventbus.outbox.Outbox``)."""
        self.max_message_bytes: int = self.broker.max_message_bytes
        self.router = Router(publishes=publishes)
        self._routers: list[Router] = [self.router, *routers]
        self._runners: list[SubscriptionRunner] = []
        self._envelope = EnvelopeFactory(service, self.max_message_bytes)
        self._started = False
        self._locked: list[Router] = []
        self._active: set[asyncio.Task[Any]] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        """The event loop the bus runs on, while it runs (for publishing from other threads)."""
        self._sides: tuple[PublishSide, ...] = tuple(
            m.publish_side(self) for m in self.middleware if hasattr(m, "publish_side")
        )
        # The instrumenting middleware's publish halves outermost, then publish_middleware.
        self._send = publish_chain(self._send_to_broker, (*self._sides, *self.publish_middleware))
        self._send_direct = not (self._sides or self.publish_middleware)
        self._prepare = publish_chain(passthrough, self.publish_middleware)
        self._send_batch = batch_chain(self._batch_to_broker, self._sides)

    # ---------------------------------------------------------------- configuration
    def subscribe(
        self,
        target: type[Event] | str,
        *,
        group: str | None = None,
        concurrency: int = 1,
        middleware: Sequence[Middleware] = (),
        retry: Retry | None = None,
    ) -> Callable[[F], F]:
        """Subscribe a handler on the bus itself; see :meth:`Router.subscribe`."""
        if self._started:
            raise ConfigurationError("subscribe handlers before the bus starts")
        return self.router.subscribe(
            target, group=group, concurrency=concurrency, middleware=middleware, retry=retry
        )

    def include_router(self, router: Router) -> None:
        """Add a router's subscriptions; do this before the bus starts."""
        if self._started:
            raise ConfigurationError(
                "include routers before the bus starts (before `async with bus`)"
            )
        self._routers.append(router)

    @property
    def subscriptions(self) -> list[Subscription]:
        """Every subscription, with its consumer group filled in; checked for clashes."""
        bound: dict[tuple[str, str], Subscription] = {}
        for router in self._routers:
            for sub in router.subscriptions:
                if sub.group is None:
                    sub = dataclasses.replace(sub, group=f"{self.service}.{sub.handler_name}")
                clash = bound.get((sub.group or "", sub.topic))
                if clash is not None:
                    raise ConfigurationError(
                        f"{clash.name} and {sub.name} both subscribe to {sub.topic!r} in group "
                        f"{sub.group!r}, so each would get only some of the events; give one "
                        "of them its own group=..."
                    )
                bound[(sub.group or "", sub.topic)] = sub
        return list(bound.values())

    @property
    def publishes(self) -> list[type[Event]]:
        """The event classes declared with ``publishes=`` on the bus and its routers."""
        return list(dict.fromkeys(e for router in self._routers for e in router.publishes))

    @property
    def dead_letters(self) -> DeadLetterStore:
        """List, inspect, replay and purge dead letters on this bus's broker."""
        store = self.broker.dead_letters
        for side in self._sides:  # an instrumenting middleware may watch replays
            wrap = getattr(side, "dead_letters", None)
            store = wrap(store) if wrap is not None else store
        return store

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Connect to the broker and start every subscription's consumer."""
        if self._started:
            return
        subscriptions = self.subscriptions
        clock = self.broker.clock
        self._active = set() if isinstance(clock, FakeClock) else None
        await self.broker.connect()
        try:
            for sub in subscriptions:
                chain = build_chain(sub, self.middleware, self.upcasters)
                consumer = await self.broker.subscribe(sub)
                observers = undecodable_observers(sub, self.middleware)
                handle = SubscriptionHandler(
                    self, sub, chain, self.redelivery_delay, clock, self._active, observers
                )
                runner = SubscriptionRunner(sub, consumer, handle.run, handle.release_unstarted)
                self._runners.append(runner)
        except BaseException:
            await self._stop_runners(0)
            await self.broker.close()
            raise
        self.loop = asyncio.get_running_loop()
        self._locked = list(self._routers)
        for router in self._locked:
            router._lock()
        self._started = True

    async def stop(self, timeout: float | None = None) -> None:
        """Stop fetching, let running handlers finish (up to ``timeout``), then close.

        From the moment ``stop`` is called no handler starts: deliveries taken from the broker
        but not started are handed back at once, without counting an attempt. Deliveries still
        running at the deadline are cancelled and handed back for redelivery: nothing is lost,
        some may be handled again.
        """
        if not self._started:
            return
        self._started = False
        for router in self._locked:
            router._unlock()
        self._locked = []
        await self._stop_runners(self.shutdown_timeout if timeout is None else timeout)
        await self.broker.close()
        self.loop = None

    async def _stop_runners(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for runner in self._runners:  # at one instant: from here on no handler starts
            runner.request_stop()
        for runner in self._runners:
            await runner.stop_fetching(max(0.0, deadline - time.monotonic()))
        for runner in self._runners:
            await runner.finish(max(0.0, deadline - time.monotonic()))
        self._runners.clear()

    @property
    def running(self) -> bool:
        return self._started

    @property
    def busy(self) -> bool:
        """True while any handler is running or any taken delivery is waiting for one."""
        return any(runner.busy for runner in self._runners)

    async def health(self, timeout: float = 2.0) -> Health:
        """Each subscription: connected, running, its last delivery and its lag (where the
        adapter can tell); ``.live`` and ``.ready`` answer liveness and readiness probes.

        Never raises for a broker that is down: its subscriptions report ``connected=False``
        and an unknown lag. Each broker round trip is bounded by ``timeout`` seconds. See
        ``docs/observability.md``.
        """
        return await check(self.broker, self._started, self._runners, timeout)

    # ---------------------------------------------------------------- publishing
    async def publish(
        self,
        event: Event,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        subject: str | None = None,
        correlation_id: str | None = None,
        session: Any = None,
    ) -> Envelope:
        """Publish ``event``; returns once the broker has it, with the envelope that was sent.

        ``key`` is the partition key: events with the same key are delivered in order.
        ``headers`` become CloudEvents extension attributes (lowercase letters and digits).
        Inside a handler the new envelope's ``causationid`` is the handled event's id and its
        ``correlationid`` is carried over; ``correlation_id`` sets it instead (an HTTP request
        id, say), and every event published while handling this one then carries it too.
        Raises :class:`~eventbus.errors.PublishError`, with nothing sent, for a payload that
        cannot be JSON or is larger than ``max_message_bytes``.

        With ``session`` (the application's ``AsyncSession``, with the bus's ``outbox``) the
        event is *staged*: the same envelope is inserted in that transaction, and an
        ``OutboxRelay`` publishes it once the transaction commits (never, if it rolls back).
        Inside an ``Inbox`` handler every publish is staged in the handler's transaction.
        """
        envelope = self._envelope(event, key, headers, subject, correlation_id)
        if session is None:
            if self._send_direct and self._started and staging_session.get() is None:
                factory = self._envelope  # _send_to_broker written out, without its coroutine
                if len(envelope.data) <= factory.max_message_bytes:
                    await self.broker.publish(factory.destination(envelope), envelope)
                    return envelope
            return await self._send(envelope)
        token = staging_session.set(session)
        try:
            return await self._send(envelope)
        finally:
            staging_session.reset(token)

    async def publish_many(
        self,
        events: Iterable[Event | tuple[Event, str | None]],
        *,
        correlation_id: str | None = None,
        session: Any = None,
    ) -> list[Envelope]:
        """Publish several events in one broker round trip; items are events or ``(event, key)``.

        Every event is checked before any is sent: one that cannot be published fails the whole
        batch with nothing sent. ``correlation_id`` is given to all of them; ``session``
        stages them all in that transaction (see :meth:`publish`).
        """
        messages = []
        factory = self._envelope
        prepare = self._prepare if self.publish_middleware else None  # else nothing to await
        limit = factory.max_message_bytes
        for item in events:
            event, key = item if isinstance(item, tuple) else (item, None)
            envelope = factory(event, key, None, None, correlation_id)
            if prepare is not None:
                envelope = await prepare(envelope)
            if len(envelope.data) > limit:
                factory.check_size(envelope)  # raises, naming the limit
            messages.append((factory.destination(envelope), envelope))
        token = staging_session.set(session) if session is not None else None
        try:
            sent = await self._send_batch(messages)
        finally:
            if token is not None:
                staging_session.reset(token)
        return [envelope for _, envelope in sent]

    async def send_batch(self, messages: Sequence[tuple[str, Envelope]]) -> None:
        """Send ready ``(destination, envelope)`` pairs unchanged, in one broker round trip,
        through the instrumenting middleware (the outbox relay publishes this way)."""
        token = staging_session.set(None)  # already staged once: this is the real send
        try:
            await self._send_batch(messages)
        finally:
            staging_session.reset(token)

    async def publish_envelope(
        self, envelope: Envelope, destination: str | None = None
    ) -> Envelope:
        """Publish a ready envelope unchanged: same id, attributes and payload.

        For forwarding and replaying, and in tests for sending the same event twice on purpose
        (to check that a consumer is idempotent). ``destination`` defaults to the one events of
        its type go to.
        """
        if destination is not None:
            self._envelope.destinations.setdefault(envelope.type, destination)
        return await self._send(envelope)

    def _require_started(self) -> None:
        if not self._started:
            raise BusNotStarted(
                "the bus is not running: publish inside `async with bus:` (or after "
                "`await bus.start()`)"
            )

    async def _send_to_broker(self, envelope: Envelope) -> Envelope:
        """The innermost link of the publish chain: to the broker, or into the outbox
        (:meth:`publish` does the same inline in its common case: change both together)."""
        factory = self._envelope
        if len(envelope.data) > factory.max_message_bytes:
            factory.check_size(envelope)
        staging = staging_session.get()
        if staging is not None:
            await self._outbox().stage(staging, [(factory.destination(envelope), envelope)])
            return envelope
        self._require_started()
        await self.broker.publish(factory.destination(envelope), envelope)
        return envelope

    def _outbox(self) -> OutboxStage:
        if self.outbox is None:
            raise ConfigurationError(
                "publishing with a session (publish(..., session=...), or inside an Inbox "
                "handler) stages the event in the outbox, and this bus has none: create it "
                "with EventBus(..., outbox=Outbox()) (from eventbus.outbox import Outbox)"
            )
        return self.outbox

    async def _batch_to_broker(
        self, messages: Sequence[tuple[str, Envelope]]
    ) -> Sequence[tuple[str, Envelope]]:
        """The innermost link of the batch chain: to the broker, or into the outbox."""
        staging = staging_session.get()
        if staging is not None:
            await self._outbox().stage(staging, messages)
            return messages
        self._require_started()
        await self.broker.publish_batch(messages)
        return messages

    def destination_of(self, envelope: Envelope) -> str:
        """The destination events like ``envelope`` are published to."""
        return self._envelope.destination(envelope)

    # ---------------------------------------------------------------- tests
    async def drain(self, timeout: float = 10.0, *, advance_clock: bool = True) -> None:
        """Wait until every published event has been handled and settled.

        Exact on the in-process memory broker: queued, unsettled and delayed messages are all
        counted. When the memory broker runs on a :class:`~eventbus.clock.FakeClock` and all
        that is left is waiting on it (a retry backoff, a delayed redelivery), the clock is
        moved on to the next wake-up, so retries run to their end; ``advance_clock=False``
        keeps time frozen. On network brokers it waits until no handler is running. Raises
        ``TimeoutError`` after ``timeout`` real seconds, naming what is left.
        """
        deadline = time.monotonic() + timeout
        clock = self.broker.clock
        fake = clock if isinstance(clock, FakeClock) else None
        while True:
            left = self.broker.pending() or {}
            if not self.busy and not any(left.values()):
                await asyncio.sleep(0)  # let a just-woken consumer take what arrived
                left = self.broker.pending() or {}
                if not self.busy and not any(left.values()):
                    return
            if advance_clock and fake is not None and await self._only_waiting_on(fake):
                await fake.advance_to_next()
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(_drain_timeout_message(timeout, left, fake, advance_clock))
            await asyncio.sleep(0.001)

    async def _only_waiting_on(self, clock: FakeClock) -> bool:
        """True when nothing is queued and every running handler sleeps on ``clock``."""
        for _ in range(3):  # a clock that stays the only thing to wait on, across loop turns
            if not clock.sleepers or (self.broker.pending() or {}).get("queued"):
                return False
            if any(not clock.is_sleeping(task) for task in self._active or ()):
                return False
            await asyncio.sleep(0)
        return True


def _drain_timeout_message(
    timeout: float, left: Mapping[str, int], clock: FakeClock | None, advanced: bool
) -> str:
    message = f"the bus did not become idle within {timeout}s; still pending: {dict(left)}"
    if clock is not None and clock.sleepers:
        wake = clock.next_wakeup()
        due = f", the next due in {wake - clock.now():g}s" if wake is not None else ""
        message += f". {clock.sleepers} wait(s) on the broker's FakeClock{due}"
        if advanced:
            message += " (some handler is also waiting on something else)"
        else:
            message += (
                ": time is frozen; call drain() without advance_clock=False, or "
                "`await clock.advance(seconds)`"
            )
    return message


def _make_broker(
    broker: str | Broker, max_message_bytes: int | None, options: dict[str, Any]
) -> Broker:
    if max_message_bytes is not None:
        options["max_message_bytes"] = max_message_bytes
    if isinstance(broker, str):
        return from_url(broker, **options)
    if options:
        raise ConfigurationError(
            f"options {sorted(options)} go to the adapter, but a ready adapter was given: pass "
            f"them to {type(broker).__name__}(...) instead"
        )
    return broker
