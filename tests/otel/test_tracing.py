"""Tracing with the OpenTelemetry SDK's in-memory exporter: span names, kinds, attributes and
links as the messaging conventions give them, across services, failures and the outbox."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from eventbus import Context, Event, EventBus, Middleware, Router
from eventbus.brokers.memory import MemoryBroker
from eventbus.brokers.redis import RedisBroker
from eventbus.middleware import Retry, default_middleware
from eventbus.otel import Tracing
from eventbus.testing import wait_until
from eventbus.types import Broker

pytestmark = pytest.mark.anyio


class OrderPlaced(Event):
    event_type = "shop.order.placed"
    order_id: str


class PaymentTaken(Event):
    event_type = "shop.payment.taken"
    order_id: str


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def ids_of(traceparent: str | None) -> tuple[int, int]:
    """(trace id, span id) of a W3C ``traceparent``."""
    assert traceparent is not None
    version, trace_id, span_id, _flags = traceparent.split("-")
    assert version == "00"
    return int(trace_id, 16), int(span_id, 16)


def audit_router() -> tuple[Router, list[str]]:
    """A router whose group "audit" records the order id of each ``OrderPlaced`` it handles."""
    router, done = Router(), list[str]()

    @router.subscribe(OrderPlaced, group="audit")
    async def audit(event: OrderPlaced) -> None:
        done.append(event.order_id)

    return router, done


def ids(context: Any) -> tuple[int, int]:
    return context.trace_id, context.span_id


def bus_with(
    provider: TracerProvider,
    service: str,
    *,
    parent: bool = False,
    broker: Broker | None = None,
    **options: Any,
) -> EventBus:
    tracing = Tracing(tracer_provider=provider, parent=parent)
    middleware = [tracing, *default_middleware()]
    return EventBus(broker or MemoryBroker(), service=service, middleware=middleware, **options)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def brokers(request: pytest.FixtureRequest) -> tuple[str, Callable[[], Broker]]:
    """(messaging.system, a maker of the adapter each of several services gets)."""
    if request.param == "memory":
        cluster = MemoryBroker()  # services on one in-memory broker share the instance
        return "memory", lambda: cluster
    url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("prefix")
    return "redis", lambda: RedisBroker(url, prefix=prefix, block=0.2)


async def test_a_chain_of_three_services_links_every_hop(
    spans: tuple[TracerProvider, InMemorySpanExporter],
    brokers: tuple[str, Callable[[], Broker]],
) -> None:
    """A publishes, B handles and publishes, C handles: two ``send`` PRODUCER spans, two
    ``process`` CONSUMER spans, each process span linked to the send span that made its
    message, with the conventions' attributes; B's follow-up send is a child of its process
    span, so one trace runs from B's handling into C's."""
    provider, exporter = spans
    system, broker = brokers
    a = bus_with(provider, "orders", broker=broker())
    b_router, c_router = Router(), Router()
    handled: list[str] = []

    @b_router.subscribe(OrderPlaced, group="payments")
    async def take_payment(event: OrderPlaced, ctx: Context) -> None:
        await ctx.publish(PaymentTaken(order_id=event.order_id), key=event.order_id)

    @c_router.subscribe(PaymentTaken, group="shipping")
    async def ship(event: PaymentTaken) -> None:
        handled.append(event.order_id)

    b = bus_with(provider, "payments", routers=[b_router], broker=broker())
    c = bus_with(provider, "shipping", routers=[c_router], broker=broker())
    async with a, b, c:
        sent = await a.publish(OrderPlaced(order_id="o-1"), key="o-1", correlation_id="req-7")
        await wait_until(lambda: handled == ["o-1"])

    [send_order] = named(exporter, "send shop.order.placed")
    [process_order] = named(exporter, "process shop.order.placed")
    [send_payment] = named(exporter, "send shop.payment.taken")
    [process_payment] = named(exporter, "process shop.payment.taken")
    assert send_order.kind == send_payment.kind == SpanKind.PRODUCER
    assert process_order.kind == process_payment.kind == SpanKind.CONSUMER
    assert send_order.attributes is not None
    assert process_order.attributes is not None
    assert dict(send_order.attributes) == {
        "messaging.system": system,
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.destination.name": "shop.order.placed",
        "messaging.message.id": sent.id,
        "messaging.message.conversation_id": "req-7",
    }
    assert process_order.attributes["messaging.operation.type"] == "process"
    assert process_order.attributes["messaging.consumer.group.name"] == "payments"
    assert process_order.attributes["messaging.message.id"] == sent.id
    assert process_order.attributes["messaging.message.conversation_id"] == "req-7"
    # The creation context travels in the envelope; the handler's span links to it.
    context = send_order.get_span_context()
    assert context is not None
    assert ids_of(sent.traceparent) == (context.trace_id, context.span_id)
    assert [ids(link.context) for link in process_order.links] == [ids(context)]
    assert process_order.parent is None  # linked, not parented: a trace of its own
    assert send_payment.parent is not None
    assert send_payment.parent.span_id == process_order.get_span_context().span_id  # type: ignore[union-attr]
    assert [ids(link.context) for link in process_payment.links] == [ids(send_payment.context)]
    assert [e.attributes for e in process_payment.events if e.name == "settle"] == [
        {"eventbus.settle.outcome": "ack"}
    ]


async def test_parent_true_makes_the_producer_the_parent(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    router, done = audit_router()

    async with bus_with(provider, "shop", parent=True, routers=[router]) as bus:
        await bus.publish(OrderPlaced(order_id="o-2"))
        await wait_until(lambda: done == ["o-2"])
    [send] = named(exporter, "send shop.order.placed")
    [process] = named(exporter, "process shop.order.placed")
    assert process.parent is not None
    assert send.get_span_context() is not None
    assert process.parent.span_id == send.get_span_context().span_id  # type: ignore[union-attr]
    assert process.context.trace_id == send.context.trace_id
    assert process.links == ()


async def test_a_retried_then_dead_lettered_then_replayed_event_keeps_one_trace(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """Every attempt, the dead-lettering and the replay's handling link to the one creation
    context; each attempt's span says how it was settled and why."""
    provider, exporter = spans
    router = Router()
    fail = {"on": True}
    done: list[str] = []

    @router.subscribe(OrderPlaced, group="billing", retry=Retry(tries=1, delays=(0.5,)))
    async def bill(event: OrderPlaced) -> None:
        if fail["on"]:
            raise RuntimeError("ledger down")
        done.append(event.order_id)

    bus = bus_with(provider, "shop", routers=[router])
    async with bus:
        sent = await bus.publish(OrderPlaced(order_id="o-3"))
        await wait_until(lambda: len(named(exporter, "process shop.order.placed")) == 2)
        [letter] = await bus.dead_letters.list()
        fail["on"] = False
        with provider.get_tracer("operator").start_as_current_span("operator fixes billing"):
            await bus.dead_letters.replay(letter.id)
        await wait_until(lambda: done == ["o-3"])
    [send] = named(exporter, "send shop.order.placed")
    processes = named(exporter, "process shop.order.placed")
    assert len(processes) == 3
    trace_ids = {link.context.trace_id for p in processes for link in p.links}
    assert trace_ids == {send.context.trace_id}
    outcomes = [
        (e.attributes or {}).get("eventbus.settle.outcome")
        for p in processes
        for e in p.events
        if e.name == "settle"
    ]
    assert outcomes == ["retry_later", "dead_letter", "ack"]
    assert processes[0].attributes is not None
    assert processes[0].attributes["error.type"] == "RuntimeError"
    assert [p.attributes["eventbus.delivery.attempt"] for p in processes] == [1, 2, 1]  # type: ignore[index]
    assert sent.id == processes[2].attributes["messaging.message.id"]  # type: ignore[index]
    # The replay: a child of the operator's span, linked to the original creation context.
    [operator] = named(exporter, "operator fixes billing")
    [replay] = named(exporter, "replay shop.order.placed")
    assert replay.kind == SpanKind.CLIENT
    assert replay.parent is not None
    assert replay.parent.span_id == operator.context.span_id
    assert [ids(link.context) for link in replay.links] == [ids(send.context)]
    assert (replay.attributes or {})["messaging.consumer.group.name"] == "billing"


async def test_publish_many_is_one_span_for_the_batch(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    async with bus_with(provider, "shop") as bus:
        sent = await bus.publish_many([OrderPlaced(order_id=str(n)) for n in range(3)])
    [batch] = named(exporter, "send shop.order.placed")
    assert batch.attributes is not None
    assert batch.attributes["messaging.batch.message_count"] == 3
    assert "messaging.message.id" not in batch.attributes  # never on a batch span
    context = batch.get_span_context()
    assert context is not None
    assert {ids_of(e.traceparent) for e in sent} == {(context.trace_id, context.span_id)}


async def test_without_an_sdk_nothing_is_recorded_or_carried() -> None:
    """With only the API (the global providers, no SDK set up; or no-op providers) tracing
    and metrics step aside: the envelope is left as it was."""
    from eventbus.otel import Metrics

    router, done = audit_router()

    for tracing in (Tracing(), Tracing(tracer_provider=trace.NoOpTracerProvider())):
        measuring = Metrics()
        assert not tracing.live()
        assert not measuring.live()
        middleware: list[Middleware] = [tracing, measuring, *default_middleware()]
        async with EventBus("memory://", middleware=middleware, routers=[router]) as bus:
            sent = await bus.publish(OrderPlaced(order_id="o-4"))
            [batched] = await bus.publish_many([OrderPlaced(order_id="o-5")])
            await wait_until(lambda: done[-2:] == ["o-4", "o-5"])
        assert (sent.traceparent, batched.traceparent) == (None, None)


@pytest.mark.redis
async def test_on_redis_streams_the_context_crosses_the_wire(
    spans: tuple[TracerProvider, InMemorySpanExporter], redis_url: str, prefix: str
) -> None:
    provider, exporter = spans
    router, done = audit_router()

    broker = RedisBroker(redis_url, prefix=prefix, block=0.2)
    tracing = Tracing(tracer_provider=provider)
    async with EventBus(broker, service="shop", middleware=[tracing], routers=[router]) as bus:
        sent = await bus.publish(OrderPlaced(order_id="o-5"), key="o-5")
        await wait_until(lambda: done == ["o-5"])
    [send] = named(exporter, "send shop.order.placed")
    [process] = named(exporter, "process shop.order.placed")
    assert (send.attributes or {})["messaging.system"] == "redis"
    assert (process.attributes or {})["messaging.system"] == "redis"
    assert [ids(link.context) for link in process.links] == [ids(send.context)]
    assert ids_of(sent.traceparent) == ids(send.context)


async def test_an_outbox_row_keeps_its_trace_through_the_relay(
    spans: tuple[TracerProvider, InMemorySpanExporter], tmp_path: Any
) -> None:
    """Staging is a ``create`` span whose context the row keeps; the relay's ``send`` span
    links to it, and so does the handler's span."""
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    from eventbus.outbox import Outbox, OutboxRelay

    provider, exporter = spans
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.sqlite3'}")
    outbox = Outbox()
    await outbox.create_tables(engine)
    router, done = audit_router()

    bus = bus_with(provider, "shop", routers=[router], outbox=outbox)
    async with bus:
        async with AsyncSession(engine) as session, session.begin():
            staged = await bus.publish(OrderPlaced(order_id="o-6"), session=session)
        assert await OutboxRelay(engine, bus).run_once() == 1
        await wait_until(lambda: done == ["o-6"])
    await engine.dispose()
    [create] = named(exporter, "create shop.order.placed")
    [send] = named(exporter, "send shop.order.placed")
    [process] = named(exporter, "process shop.order.placed")
    assert create.kind == send.kind == SpanKind.PRODUCER
    assert ids_of(staged.traceparent) == ids(create.context)
    assert [ids(link.context) for link in send.links] == [ids(create.context)]
    assert [ids(link.context) for link in process.links] == [ids(create.context)]
    assert (send.attributes or {})["messaging.batch.message_count"] == 1


def test_an_sdk_set_up_after_the_bus_is_picked_up() -> None:
    """The global provider is looked at again (here at once: ``recheck=0``) while it records
    nothing, and never again once it records; a provider given outright is judged once."""
    from eventbus.otel.semconv import liveness

    current: list[object] = ["noop"]
    live = liveness(None, lambda: current[0], lambda p: p == "noop", recheck=0)
    assert not live()
    current[0] = "sdk"
    assert live()
    current[0] = "noop"  # cannot happen to a real global provider: it is set once
    assert live()
    assert not liveness("noop", lambda: "sdk", lambda p: p == "noop")()
    assert liveness("sdk", lambda: "noop", lambda p: p == "noop")()


@pytest.mark.redis
async def test_beside_the_redis_instrumentation_each_event_has_one_send_and_one_process(
    spans: tuple[TracerProvider, InMemorySpanExporter], redis_url: str, prefix: str
) -> None:
    """The official redis instrumentation traces commands (CLIENT spans), not messages: with
    both on, a publish is still one ``send`` span, with the ``XADD`` under it, and its
    handling one ``process`` span."""
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    provider, exporter = spans
    router, done = audit_router()

    instrumentor = RedisInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        broker = RedisBroker(redis_url, prefix=prefix, block=0.2)
        tracing = Tracing(tracer_provider=provider)
        async with EventBus(broker, service="shop", middleware=[tracing], routers=[router]) as bus:
            await bus.publish(OrderPlaced(order_id="o-7"))
            await wait_until(lambda: done == ["o-7"])
    finally:
        instrumentor.uninstrument()
    finished = exporter.get_finished_spans()
    [send] = [s for s in finished if s.kind == SpanKind.PRODUCER]
    [process] = [s for s in finished if s.kind == SpanKind.CONSUMER]
    assert (send.name, process.name) == ("send shop.order.placed", "process shop.order.placed")
    commands = [s for s in finished if s.kind == SpanKind.CLIENT]
    assert commands, "the redis instrumentation traced no command: the test proves nothing"
    under_send = [s for s in commands if s.parent and s.parent.span_id == send.context.span_id]
    assert [s.name for s in under_send] == ["XADD"], [s.name for s in under_send]


@pytest.mark.parametrize(
    ("exchange", "destination", "queue", "expected"),
    [
        ("shop", "order.placed", None, "shop:order.placed"),
        ("shop", "order.placed", "billing.order.placed", "shop:order.placed:billing.order.placed"),
        ("shop", "order.placed", "order.placed", "shop:order.placed"),
        ("", "order.placed", None, "order.placed"),
        ("", "", None, "amq.default"),
    ],
)
def test_rabbitmq_destinations_are_named_exchange_key_queue(
    exchange: str, destination: str, queue: str | None, expected: str
) -> None:
    from eventbus.brokers.rabbitmq import RabbitMQBroker
    from eventbus.otel.semconv import destination_namer

    broker = RabbitMQBroker("amqp://guest:guest@127.0.0.1:1/", exchange=lambda _: exchange)
    assert destination_namer(broker)(destination, queue) == expected
    assert destination_namer(object())(destination, queue) == destination
