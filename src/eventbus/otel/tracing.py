"""Tracing: a PRODUCER span per publish, a CONSUMER span per handled delivery.

* Publishing: ``send <destination>`` (PRODUCER), around the broker round trip; a publish
  staged in the outbox is ``create <destination>`` (it is sent later, by the relay). A batch
  (``publish_many``, the relay) is one span, with ``messaging.batch.message_count``.
* The span's context travels in the envelope's ``traceparent``/``tracestate`` (the creation
  context), injected only where the envelope has none: an envelope that already carries one
  (a replay, a forward, an outbox row the relay sends) keeps it, and the span links to it.
* Handling: ``process <destination>`` (CONSUMER), around the rest of the chain and the
  handler. It **links** to the creation context (the spec's default: it also works for
  batches and inside other spans); ``Tracing(parent=True)`` makes it the parent instead,
  with the ambient span, if any, as a link. How the delivery is settled (ack, retry later,
  dead-letter, redeliver, nack) is a ``settle`` event on the span, with the reason.

Install it first in ``middleware`` (outermost), so that retries and time-outs inside it are
part of its span.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from eventbus.consume import settle_outcome
from eventbus.context import Context, Next, staging_session
from eventbus.deadletters import DeadLetterRecord, DeadLetterStore
from eventbus.envelope import Envelope
from eventbus.errors import DecodeError, PermanentError, RetryLater
from eventbus.otel import semconv as sc
from eventbus.types import BusView, Delivery, PublishBatchNext, PublishNext, SubscriptionView

__all__ = ["Tracing", "error_type"]

_SCHEMA_URL = "https://opentelemetry.io/schemas/1.44.0"
_MAX_REASON = 200


class Tracing:
    """Spans for publishing and handling, on the current messaging conventions.

    ``tracer_provider`` defaults to the global one. ``parent=True`` makes a handler's span a
    child of the producer's span rather than linked to it (see the module documentation).
    One ``Tracing`` serves one broker kind: give each bus its own, or share it between buses
    on the same broker.
    """

    def __init__(self, *, tracer_provider: Any = None, parent: bool = False) -> None:
        self.tracer = trace.get_tracer(
            "eventbus", tracer_provider=tracer_provider, schema_url=_SCHEMA_URL
        )
        self.parent = parent
        self.system: str | None = None
        self.name_of = sc.destination_namer(None)
        self.live = sc.liveness(tracer_provider, trace.get_tracer_provider, _no_spans)
        """Whether spans are recorded at all: not with a no-op provider, nor with the global
        one while no SDK is set up (then tracing costs one cheap check per message)."""

    def publish_side(self, bus: BusView) -> _PublishSide:
        """The publish half, which the bus puts on its publish chain."""
        self.system = sc.bind_system(self.system, bus.broker, "Tracing")
        self.name_of = sc.destination_namer(bus.broker)
        return _PublishSide(self, bus, self.system)

    async def __call__(self, ctx: Context, call_next: Next) -> None:
        if not self.live():
            await call_next(ctx)
            return
        envelope, sub = ctx.envelope, ctx.subscription
        destination, name = sc.delivered_to(self.name_of, sub, ctx.delivery)
        creation = _creation_context(envelope.traceparent, envelope.tracestate)
        links, parent = self._correlate(creation)
        attributes = self._process_attributes(sub, ctx.delivery, destination, name, ctx.attempt)
        attributes.update(sc.message_attributes(self.system or "", envelope))
        with self.tracer.start_as_current_span(
            f"process {name}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            links=links,
            attributes=attributes,
        ) as span:
            try:
                await call_next(ctx)
            except BaseException as exc:
                reason = f"{type(exc).__name__}: {exc}"[:_MAX_REASON]
                span.set_attribute(sc.ERROR_TYPE, error_type(exc))
                span.add_event(
                    "settle", {sc.SETTLE_OUTCOME: settle_outcome(exc), sc.SETTLE_REASON: reason}
                )
                raise
            span.add_event("settle", {sc.SETTLE_OUTCOME: "ack"})

    def undecodable(self, sub: SubscriptionView, delivery: Delivery, error: DecodeError) -> None:
        """A message that could not be decoded: a ``process`` span of its own, ended at once,
        with ``error.type`` ``DecodeError`` and a ``dead_letter`` settle event (the consume
        policy dead-letters it next). No event, so no message id and no link."""
        if not self.live():
            return
        destination, name = sc.delivered_to(self.name_of, sub, delivery)
        attributes = self._process_attributes(sub, delivery, destination, name, delivery.attempt)
        attributes[sc.ERROR_TYPE] = type(error).__qualname__
        span = self.tracer.start_span(
            f"process {name}", kind=trace.SpanKind.CONSUMER, attributes=attributes
        )
        reason = f"{type(error).__name__}: {error}"[:_MAX_REASON]
        span.add_event("settle", {sc.SETTLE_OUTCOME: "dead_letter", sc.SETTLE_REASON: reason})
        span.end()

    def _process_attributes(
        self, sub: SubscriptionView, delivery: Any, destination: str, name: str, attempt: int
    ) -> dict[str, Any]:
        system = self.system or ""
        attributes = sc.process_attributes(self.system, name, sub.group)
        attributes.update(sc.destination_attributes(system, name, destination))
        attributes["eventbus.delivery.attempt"] = attempt
        attributes.update(sc.delivery_attributes(system, delivery))
        return attributes

    def _correlate(self, creation: Any) -> tuple[list[trace.Link], Any]:
        """(links, parent context) of a handler's span, by the link-or-parent choice."""
        producer = trace.get_current_span(creation).get_span_context() if creation else None
        if producer is None or not producer.is_valid:
            return [], None
        if not self.parent:
            return [trace.Link(producer)], None
        ambient = trace.get_current_span().get_span_context()
        return ([trace.Link(ambient)] if ambient.is_valid else []), creation


class _PublishSide:
    """The publish half of :class:`Tracing`, bound to one bus."""

    def __init__(self, tracing: Tracing, bus: BusView, system: str) -> None:
        self.tracing, self.tracer, self.bus, self.system = tracing, tracing.tracer, bus, system

    async def __call__(self, envelope: Envelope, call_next: PublishNext) -> Envelope:
        if not self.tracing.live():
            return await call_next(envelope)
        destination = self.bus.destination_of(envelope)
        operation = _operation()
        links = _links([envelope])
        with self.tracer.start_as_current_span(
            f"{operation} {self.tracing.name_of(destination)}",
            kind=trace.SpanKind.PRODUCER,
            links=links,
            attributes={
                **self._attributes(operation, destination),
                **sc.message_attributes(self.system, envelope),
            },
        ) as span:
            try:
                return await call_next(_with_context(envelope))
            except Exception as exc:
                span.set_attribute(sc.ERROR_TYPE, type(exc).__qualname__)
                raise

    async def batch(
        self, messages: Sequence[tuple[str, Envelope]], call_next: PublishBatchNext
    ) -> Sequence[tuple[str, Envelope]]:
        if not self.tracing.live():
            return await call_next(messages)
        destinations = {destination for destination, _ in messages}
        operation = _operation()
        one = len(destinations) == 1
        name = f"{operation} {self.tracing.name_of(next(iter(destinations)))}" if one else operation
        attributes = self._attributes(operation, *destinations)
        attributes[sc.BATCH_MESSAGE_COUNT] = len(messages)
        with self.tracer.start_as_current_span(
            name,
            kind=trace.SpanKind.PRODUCER,
            links=_links([envelope for _, envelope in messages]),
            attributes=attributes,
        ) as span:
            try:
                return await call_next([(d, _with_context(e)) for d, e in messages])
            except Exception as exc:
                span.set_attribute(sc.ERROR_TYPE, type(exc).__qualname__)
                raise

    def dead_letters(self, store: DeadLetterStore) -> DeadLetterStore:
        """``store``, with each replay traced (the bus's ``dead_letters`` is this)."""
        return _TracedDeadLetters(store, self.tracing, self.system)

    def _attributes(self, operation: str, *destinations: str) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            sc.SYSTEM: self.system,
            sc.OPERATION_NAME: operation,
            sc.OPERATION_TYPE: operation,
        }
        if len(destinations) == 1:
            name = self.tracing.name_of(destinations[0])
            attributes.update(sc.destination_attributes(self.system, name, destinations[0]))
        return attributes


def _no_spans(provider: Any) -> bool:
    return isinstance(provider, (trace.NoOpTracerProvider, trace.ProxyTracerProvider))


class _TracedDeadLetters:
    """A dead-letter store whose replays are spans: ``replay <destination>`` (CLIENT), a child
    of the operator's current span, linked to the event's original creation context (the
    replayed message keeps that context, so its handling links to it too)."""

    def __init__(self, store: DeadLetterStore, tracing: Tracing, system: str) -> None:
        self.store, self.tracing, self.system = store, tracing, system

    async def list(
        self, *, group: str | None = None, limit: int = 100
    ) -> Sequence[DeadLetterRecord]:
        return await self.store.list(group=group, limit=limit)

    async def get(self, dead_letter_id: str) -> DeadLetterRecord | None:
        return await self.store.get(dead_letter_id)

    async def purge(self, *, group: str | None = None) -> int:
        return await self.store.purge(group=group)

    async def replay(self, dead_letter_id: str) -> None:
        record = await self.store.get(dead_letter_id) if self.tracing.live() else None
        if record is None:  # not traced, or unknown (the store raises DeadLetterNotFound)
            await self.store.replay(dead_letter_id)
            return
        creation = _creation_context(record.traceparent)
        producer = trace.get_current_span(creation).get_span_context() if creation else None
        attributes = {
            sc.SYSTEM: self.system,
            sc.OPERATION_NAME: "replay",
            sc.OPERATION_TYPE: sc.SEND,
            sc.DESTINATION: record.destination,
            sc.CONSUMER_GROUP: record.group,
        }
        if record.event_id:
            attributes[sc.MESSAGE_ID] = record.event_id
        with self.tracing.tracer.start_as_current_span(
            f"replay {self.tracing.name_of(record.destination)}",
            kind=trace.SpanKind.CLIENT,
            links=[trace.Link(producer)] if producer is not None and producer.is_valid else [],
            attributes=attributes,
        ):
            await self.store.replay(dead_letter_id)


def error_type(exc: BaseException) -> str:
    """The failure's class; for a retry or dead-letter decision, the error behind it."""
    decided = isinstance(exc, (RetryLater, PermanentError)) and exc.__cause__ is not None
    return type(exc.__cause__ if decided else exc).__qualname__


def _operation() -> str:
    """``create`` while the publish is staged in the outbox, ``send`` when it goes out."""
    return sc.CREATE if staging_session.get() is not None else sc.SEND


_W3C = TraceContextTextMapPropagator()
"""The envelope's ``traceparent``/``tracestate`` are W3C Trace Context by definition (the
CloudEvents distributed-tracing extension), whatever propagators the application set up for
its other carriers (baggage, B3 on HTTP): they are read and written with this one."""


def _creation_context(traceparent: str | None, tracestate: str | None = None) -> Any:
    """The context a ``traceparent`` (and ``tracestate``) carries, or None."""
    if traceparent is None:
        return None
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    return _W3C.extract(carrier, context=otel_context.Context())


def _links(envelopes: Sequence[Envelope]) -> list[trace.Link]:
    """Links to the creation contexts the envelopes already carry."""
    links = []
    for envelope in envelopes:
        creation = _creation_context(envelope.traceparent, envelope.tracestate)
        if creation is None:
            continue
        producer = trace.get_current_span(creation).get_span_context()
        if producer.is_valid:
            links.append(trace.Link(producer, {sc.MESSAGE_ID: envelope.id}))
    return links


def _with_context(envelope: Envelope) -> Envelope:
    """``envelope`` carrying the current span's context, unless it carries one already."""
    if envelope.traceparent is not None:
        return envelope
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    if "traceparent" not in carrier:  # no SDK, or not sampled: nothing to carry
        return envelope
    return envelope.replace(
        traceparent=carrier["traceparent"], tracestate=carrier.get("tracestate")
    )
