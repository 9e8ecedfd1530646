"""``EventBus``: lifecycle, the publish pipeline and the consume loop.

This module is the only place with delivery *policy*. For each delivery the middleware chain
and handler run, and then:

* the chain returns — ack;
* it raises :class:`~eventbus.errors.RetryLater` — the broker redelivers after the delay
  (without blocking other messages) and the original is acked;
* it raises :class:`~eventbus.errors.PermanentError` (payload validation failures included) —
  the message goes to the dead-letter queue with provenance, and is acked;
* it raises anything else — nack with requeue;
* the bytes could not be decoded — dead-lettered exactly as they arrived.

No handler failure, bad message or settle error ends a consumer loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from types import MappingProxyType, TracebackType
from typing import Any, TypeVar

import anyio.to_thread
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from eventbus.brokers import from_url
from eventbus.context import Context, current_envelope
from eventbus.deadletters import DeadLetterStore, describe_failure
from eventbus.dispatch import SubscriptionRunner
from eventbus.envelope import Envelope, new_envelope, validate_extension_name
from eventbus.errors import (
    BusNotStarted,
    ConfigurationError,
    DecodeError,
    PayloadValidationError,
    PermanentError,
    PublishError,
    RetryLater,
)
from eventbus.event import Event
from eventbus.middleware import Retry, default_middleware
from eventbus.router import Router, Subscription
from eventbus.types import (
    Broker,
    Delivery,
    Middleware,
    Next,
    PublishMiddleware,
    PublishNext,
)

__all__ = ["EventBus"]

log = logging.getLogger("eventbus")
_UTC = timezone.utc
_NO_EXTENSIONS: Mapping[str, str] = MappingProxyType({})
F = TypeVar("F", bound=Callable[..., Any])


class EventBus:
    """Publishes events and runs the subscriptions of the routers included into it.

    ``broker`` is a URL (``memory://``, ``kafka://…``, ``amqp://…``, ``redis://…``) or a ready
    adapter; ``broker_options`` go to the adapter untouched. ``service`` names this service:
    it is the CloudEvents ``source`` and the prefix of default consumer group names.
    ``middleware`` wraps every handler (first = outermost); left out, it is
    :func:`eventbus.middleware.default_middleware` (dead-letter, retry), and ``()`` means
    none. ``publish_middleware`` wraps
    every publish. ``shutdown_timeout`` bounds how long ``stop`` waits for running handlers.
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
        **broker_options: Any,
    ) -> None:
        if not service or not isinstance(service, str):
            raise ConfigurationError("service must be a non-empty name, such as 'billing'")
        self.broker: Broker = (
            from_url(broker, **broker_options) if isinstance(broker, str) else broker
        )
        self.service = service
        self.middleware = tuple(default_middleware() if middleware is None else middleware)
        self.publish_middleware = tuple(publish_middleware)
        self.shutdown_timeout = shutdown_timeout
        self.router = Router()
        self._routers: list[Router] = [self.router, *routers]
        self._runners: list[SubscriptionRunner] = []
        self._destinations: dict[str, str] = {}
        self._event_classes: dict[type[Event], tuple[str, int | None]] = {}
        self._header_names: set[str] = set()
        self._started = False
        self._send = self._build_publish_chain(self._send_to_broker)
        self._prepare = self._build_publish_chain(_passthrough)

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
                    sub = _with_group(sub, f"{self.service}.{sub.handler_name}")
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
    def dead_letters(self) -> DeadLetterStore:
        """List, inspect, replay and purge dead letters on this bus's broker."""
        return self.broker.dead_letters

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Connect to the broker and start every subscription's consumer."""
        if self._started:
            return
        subscriptions = self.subscriptions
        await self.broker.connect()
        try:
            for sub in subscriptions:
                chain = self._build_consume_chain(sub)
                consumer = await self.broker.subscribe(sub)
                handle = functools.partial(self.handle, sub, chain)
                runner = SubscriptionRunner(sub.name, consumer, handle, _abandon, sub.concurrency)
                self._runners.append(runner)
        except BaseException:
            await self._stop_runners(0)
            await self.broker.close()
            raise
        self._started = True

    async def stop(self, timeout: float | None = None) -> None:
        """Stop fetching, let running handlers finish (up to ``timeout``), then close.

        Deliveries still unfinished at the deadline are cancelled and handed back to the
        broker for redelivery: nothing is lost, some may be handled again.
        """
        if not self._started:
            return
        self._started = False
        await self._stop_runners(self.shutdown_timeout if timeout is None else timeout)
        await self.broker.close()

    async def _stop_runners(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for runner in self._runners:
            await runner.stop_fetching(max(0.0, deadline - time.monotonic()))
        for runner in self._runners:
            await runner.finish(max(0.0, deadline - time.monotonic()))
        self._runners.clear()

    async def __aenter__(self) -> EventBus:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._started

    @property
    def busy(self) -> bool:
        """True while any handler is running or any taken delivery is waiting for one."""
        return any(runner.busy for runner in self._runners)

    # ---------------------------------------------------------------- publishing
    async def publish(
        self,
        event: Event,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        subject: str | None = None,
    ) -> Envelope:
        """Publish ``event``; returns once the broker has it, with the envelope that was sent.

        ``key`` is the partition key: events with the same key are delivered in order.
        ``headers`` become CloudEvents extension attributes (lowercase letters and digits).
        Inside a handler the new envelope's ``causationid`` is the handled event's id and its
        ``correlationid`` is carried over.
        """
        return await self._send(self._envelope(event, key, headers, subject))

    async def publish_many(
        self, events: Iterable[Event | tuple[Event, str | None]]
    ) -> list[Envelope]:
        """Publish several events in one broker round trip; items are events or ``(event, key)``."""
        envelopes = []
        for item in events:
            event, key = item if isinstance(item, tuple) else (item, None)
            envelopes.append(await self._prepare(self._envelope(event, key, None, None)))
        self._require_started()
        await self.broker.publish_batch([(self._destination(e), e) for e in envelopes])
        return envelopes

    async def publish_envelope(
        self, envelope: Envelope, destination: str | None = None
    ) -> Envelope:
        """Publish a ready envelope unchanged (forwarding, replaying from an outbox)."""
        if destination is not None:
            self._destinations.setdefault(envelope.type, destination)
        return await self._send(envelope)

    def _envelope(
        self, event: Event, key: str | None, headers: Mapping[str, str] | None, subject: str | None
    ) -> Envelope:
        cls = type(event)
        known = self._event_classes.get(cls)
        if known is None:
            if not isinstance(event, Event):
                raise TypeError(f"publish() takes an Event instance, not {cls.__name__}")
            self._destinations.setdefault(cls.event_type, cls.destination())
            known = self._event_classes[cls] = (cls.event_type, cls.event_version)
        event_type, event_version = known
        try:
            data = event.__pydantic_serializer__.to_json(event)
        except PydanticSerializationError as exc:
            raise PublishError(
                f"cannot encode {cls.__name__} as JSON: {exc}; nothing was sent"
            ) from exc
        event_id = new_event_id()
        parent = current_envelope.get()
        return new_envelope(
            id=event_id,
            type=event_type,
            source=self.service,
            data=data,
            time=datetime.now(_UTC),
            subject=subject,
            partitionkey=None if key is None else str(key),
            correlationid=(parent.correlationid or parent.id) if parent else event_id,
            causationid=parent.id if parent else None,
            dataversion=event_version,
            extensions=self._check_headers(headers) if headers else _NO_EXTENSIONS,
        )

    def _check_headers(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        for name, value in headers.items():
            if name not in self._header_names:
                try:
                    self._header_names.add(validate_extension_name(name))
                except ValueError as exc:
                    raise ConfigurationError(str(exc)) from None
            if not isinstance(value, str):
                raise ConfigurationError(f"header {name!r} must be a string, got {value!r}")
        return MappingProxyType(dict(headers))

    def _destination(self, envelope: Envelope) -> str:
        return self._destinations.get(envelope.type, envelope.type)

    def _require_started(self) -> None:
        if not self._started:
            raise BusNotStarted(
                "the bus is not running: publish inside `async with bus:` (or after "
                "`await bus.start()`)"
            )

    async def _send_to_broker(self, envelope: Envelope) -> Envelope:
        self._require_started()
        await self.broker.publish(self._destination(envelope), envelope)
        return envelope

    def _build_publish_chain(self, innermost: PublishNext) -> PublishNext:
        chain = innermost
        for middleware in reversed(self.publish_middleware):
            chain = _bind(middleware, chain)
        return chain

    # ---------------------------------------------------------------- consuming
    def _build_consume_chain(self, sub: Subscription) -> Next:
        chain: Next = _handler_invoker(sub)
        for middleware in reversed((*self.middleware, *sub.middleware)):
            chain = _bind(middleware, chain)
        return chain

    async def handle(self, sub: Subscription, chain: Next, delivery: Delivery) -> None:
        """Run one delivery through the chain and settle it by the policy of this module."""
        envelope = delivery.envelope
        if envelope is None:
            error = delivery.decode_error or DecodeError("undecodable message")
            await self._dead_letter(sub, delivery, error, "undecodable")
            return
        if not sub.accepts(envelope.type):
            await _settle(delivery.ack(), delivery)  # another type sharing this destination
            return
        ctx = Context(
            envelope=envelope,
            subscription=sub,
            bus=self,
            delivery=delivery,
            attempt=delivery.attempt,
        )
        token = current_envelope.set(envelope)
        try:
            await chain(ctx)
        except RetryLater as exc:
            await _settle(delivery.retry_later(exc.delay), delivery)
        except PermanentError as exc:
            await self._dead_letter(sub, delivery, exc, "permanent failure")
        except asyncio.CancelledError:
            await _settle(delivery.nack(requeue=True), delivery)
            raise
        except Exception as exc:
            log.warning(
                "%s failed on %s (attempt %d); requeued",
                sub.name,
                envelope.id,
                delivery.attempt,
                exc_info=exc,
            )
            await _settle(delivery.nack(requeue=True), delivery)
        else:
            try:
                await delivery.ack()
            except Exception:
                _settle_failed(delivery)
        finally:
            current_envelope.reset(token)

    async def _dead_letter(
        self, sub: Subscription, delivery: Delivery, exc: BaseException, reason: str
    ) -> None:
        record = describe_failure(
            delivery, group=sub.group or "", subscription=sub.name, reason=reason, exc=exc
        )
        log.error(
            "%s: dead-lettered %s from %s: %s",
            sub.name,
            record.event_id or "message",
            delivery.destination,
            exc,
        )
        await _settle(delivery.dead_letter(record), delivery)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until every published event has been handled and settled.

        Exact on the in-process memory broker (queued, unsettled and delayed messages are all
        counted: with a fake clock, advance it past pending delays first). On network brokers
        it waits until no handler is running. Raises ``TimeoutError`` naming what is left.
        """
        deadline = time.monotonic() + timeout
        pending = getattr(self.broker, "pending", None)
        while True:
            left = pending() if pending else {}
            if not self.busy and not any(left.values()):
                await asyncio.sleep(0)  # let a just-woken consumer take what arrived
                left = pending() if pending else {}
                if not self.busy and not any(left.values()):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the bus did not become idle within {timeout}s; still pending: {left}"
                )
            await asyncio.sleep(0.001)


class _EventIds:
    """Random (version 4) UUIDs as text, from ``os.urandom`` read 4 KiB at a time.

    One system call per 128 ids instead of one per id; the buffer is dropped in a forked child
    so parent and child never hand out the same ids.
    """

    _CHUNK = 4096

    def __init__(self) -> None:
        self._hex = ""
        self._at = 0

    def reset(self) -> None:
        self._hex, self._at = "", 0

    def __call__(self) -> str:
        at = self._at
        if at == len(self._hex):
            self._hex, at = os.urandom(self._CHUNK).hex(), 0
        self._at = at + 32
        h = self._hex[at : at + 32]
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
"""The UUID variant digit (10xx in binary) for each random hex digit."""


new_event_id = _EventIds()
"""A fresh event id: a random (version 4) UUID as text."""
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=new_event_id.reset)


def _bind(middleware: Any, call_next: Any) -> Any:
    """``middleware`` with its ``call_next`` filled in (cheaper to call than a partial)."""

    def layer(arg: Any) -> Any:
        return middleware(arg, call_next)

    return layer


async def _passthrough(envelope: Envelope) -> Envelope:
    return envelope


async def _abandon(delivery: Delivery) -> None:
    """Hand a delivery that will not be handled now back to the broker."""
    await _settle(delivery.nack(requeue=True), delivery)


async def _settle(operation: Any, delivery: Delivery) -> None:
    """Await an ack/nack/…; a failure here is logged, and the broker will redeliver."""
    try:
        await operation
    except Exception:
        _settle_failed(delivery)


def _settle_failed(delivery: Delivery) -> None:
    log.exception(
        "could not settle a delivery from %s; the broker will redeliver it", delivery.destination
    )


def _handler_invoker(sub: Subscription) -> Next:
    """The innermost link of the chain: validate the payload into the handler's model, call it.

    Built once per subscription, so the per-delivery path looks nothing up.
    """
    spec = sub.handler
    func, model, wants_context = spec.func, spec.model, spec.wants_context
    validate = model.model_validate_json if model is not None else None

    def argument(ctx: Context) -> Any:
        if validate is None:
            return ctx.envelope
        try:
            ctx.event = event = validate(ctx.envelope.data)
        except ValidationError as exc:
            raise PayloadValidationError(
                f"event {ctx.envelope.id} of type {ctx.envelope.type!r} does not match "
                f"{model.__name__ if model else ''}: {exc}"
            ) from exc
        return event

    if not spec.is_async:

        async def in_thread(ctx: Context) -> None:
            args = (argument(ctx), ctx) if wants_context else (argument(ctx),)
            await anyio.to_thread.run_sync(functools.partial(func, *args))

        return in_thread
    if wants_context:

        async def with_context(ctx: Context) -> None:
            await func(argument(ctx), ctx)

        return with_context

    async def plain(ctx: Context) -> None:
        await func(argument(ctx))

    return plain


def _with_group(sub: Subscription, group: str) -> Subscription:
    return dataclasses.replace(sub, group=group)
