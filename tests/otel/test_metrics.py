"""Metrics with the OpenTelemetry SDK's in-memory reader: the conventions' names, units and
attributes, eventbus's own counters, and the sampled gauges."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from eventbus import Event, EventBus, PermanentError, Router
from eventbus.middleware import Retry, default_middleware
from eventbus.otel import Metrics
from eventbus.testing import wait_until

pytestmark = pytest.mark.anyio


class OrderPlaced(Event):
    event_type = "shop.order.placed"
    order_id: str


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    made = InMemoryMetricReader()
    yield made
    made.shutdown()


def points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], Any, str]]]:
    """Metric name -> [(attributes, point, unit)] of everything collected so far."""
    found: dict[str, list[tuple[dict[str, Any], Any, str]]] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    found.setdefault(metric.name, []).append(
                        (dict(point.attributes or {}), point, metric.unit or "")
                    )
    return found


def total(found: dict[str, list[tuple[dict[str, Any], Any, str]]], name: str) -> float:
    return float(sum(p.value for _, p, _ in found.get(name, [])))


async def test_publishing_and_handling_are_counted_and_timed(reader: InMemoryMetricReader) -> None:
    metrics = Metrics(meter_provider=MeterProvider(metric_readers=[reader]))
    router = Router()
    plans = {"ok": 0, "flaky": 1, "bad": -1}
    failures: dict[str, int] = {}
    done: list[str] = []

    @router.subscribe(OrderPlaced, group="billing", retry=Retry(tries=2, delays=()))
    async def bill(event: OrderPlaced) -> None:
        plan = plans[event.order_id]
        if plan < 0:
            raise PermanentError("card declined")
        if failures.get(event.order_id, 0) < plan:
            failures[event.order_id] = failures.get(event.order_id, 0) + 1
            raise RuntimeError("ledger busy")
        done.append(event.order_id)

    middleware = [metrics, *default_middleware()]
    async with EventBus(
        "memory://", service="shop", middleware=middleware, routers=[router]
    ) as bus:
        await bus.publish(OrderPlaced(order_id="ok"))
        await bus.publish_many([OrderPlaced(order_id="flaky"), OrderPlaced(order_id="bad")])
        await bus.drain()
    assert sorted(done) == ["flaky", "ok"]
    found = points(reader)
    send = {
        "messaging.system": "memory",
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.destination.name": "shop.order.placed",
    }
    assert [(a, p.value) for a, p, _ in found["messaging.client.sent.messages"]] == [(send, 3)]
    [(attrs, duration, unit)] = found["messaging.client.operation.duration"]
    assert (attrs, duration.count, unit) == (send, 2, "s")  # one publish, one batch
    assert list(duration.explicit_bounds)[:3] == [0.005, 0.01, 0.025]
    process = {
        "messaging.system": "memory",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": "shop.order.placed",
        "messaging.consumer.group.name": "billing",
    }
    assert total(found, "messaging.client.consumed.messages") == 3
    assert {
        tuple(sorted(a.items())) for a, _, _ in found["messaging.client.consumed.messages"]
    } == {tuple(sorted(process.items()))}
    durations = {a.get("error.type"): p.count for a, p, _ in found["messaging.process.duration"]}
    assert durations == {None: 2, "PermanentError": 1}  # the flaky one's retry ran inside
    assert total(found, "eventbus.dead_letters") == 1
    assert all(u == "s" for _, _, u in found["messaging.process.duration"])
    assert total(found, "eventbus.handlers.active") == 0


async def test_watch_samples_lag_dead_letters_and_the_outbox(
    reader: InMemoryMetricReader, tmp_path: Path
) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    from eventbus.outbox import Outbox

    metrics = Metrics(meter_provider=MeterProvider(metric_readers=[reader]))
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.sqlite3'}")
    outbox = Outbox()
    await outbox.create_tables(engine)
    router = Router()
    gate: list[str] = []

    @router.subscribe(OrderPlaced, group="billing", retry=Retry(tries=1, delays=()))
    async def bill(event: OrderPlaced) -> None:
        if event.order_id == "bad":
            raise PermanentError("card declined")
        await wait_until(lambda: bool(gate), timeout=30)

    middleware = [metrics, *default_middleware()]
    bus = EventBus(
        "memory://", service="shop", middleware=middleware, routers=[router], outbox=outbox
    )
    async with bus:
        await bus.publish(OrderPlaced(order_id="bad"))

        async def dead_lettered() -> bool:
            return len(await bus.dead_letters.list()) == 1

        await wait_until(dead_lettered)
        await bus.publish_many([OrderPlaced(order_id=str(n)) for n in range(4)])
        async with AsyncSession(engine) as session, session.begin():
            await bus.publish(OrderPlaced(order_id="later"), session=session)
        async with metrics.watch(bus, outbox=outbox, engine=engine, interval=3600):
            found = points(reader)
        gate.append("go")
        await bus.drain()
    await engine.dispose()
    [(lag_attrs, lag, _)] = found["eventbus.consumer.lag"]
    assert lag_attrs["messaging.consumer.group.name"] == "billing"
    assert lag.value == 4  # one running, three queued: four not settled
    assert [p.value for _, p, _ in found["eventbus.dead_letters.depth"]] == [1]
    assert [p.value for _, p, _ in found["eventbus.outbox.pending"]] == [1]
    [(_, age, unit)] = found["eventbus.outbox.oldest_age"]
    assert unit == "s"
    assert age.value >= 0


async def test_an_undecodable_message_is_counted_traced_and_still_dead_lettered(
    reader: InMemoryMetricReader,
) -> None:
    """It never reaches the chain, so the policy tells telemetry of it before dead-lettering:
    a process span with ``error.type`` and a dead_letter settle, the consumed and dead-letter
    counters; an observer that fails does not keep it from the dead-letter queue."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from eventbus.otel import Tracing

    class Broken:
        async def __call__(self, ctx: Any, call_next: Any) -> None:
            await call_next(ctx)

        def undecodable(self, sub: Any, delivery: Any, error: Any) -> None:
            raise RuntimeError("a telemetry bug")

    exporter, tracer = InMemorySpanExporter(), TracerProvider()
    tracer.add_span_processor(SimpleSpanProcessor(exporter))
    metrics = Metrics(meter_provider=MeterProvider(metric_readers=[reader]))
    router = Router()
    router.subscribe(OrderPlaced, group="billing")(_ignore)
    middleware: list[Any] = [
        Broken(),
        Tracing(tracer_provider=tracer),
        metrics,
        *default_middleware(),
    ]
    async with EventBus("memory://", middleware=middleware, routers=[router]) as bus:
        await bus.broker.send_raw("shop.order.placed", b"\xff not json", {})  # type: ignore[attr-defined]
        await bus.drain()
        [letter] = await bus.dead_letters.list(group="billing")
    assert letter.body == b"\xff not json"
    [span] = [s for s in exporter.get_finished_spans() if s.name == "process shop.order.placed"]
    assert (span.attributes or {})["error.type"] == "DecodeError"
    assert (span.attributes or {})["messaging.consumer.group.name"] == "billing"
    [event] = span.events
    assert (event.name, (event.attributes or {})["eventbus.settle.outcome"]) == (
        "settle",
        "dead_letter",
    )
    found = points(reader)
    assert [a.get("error.type") for a, _, _ in found["eventbus.dead_letters"]] == ["DecodeError"]
    assert total(found, "messaging.client.consumed.messages") == 1


async def _ignore(event: OrderPlaced) -> None:
    """A handler that is never called here: the message cannot be decoded."""


async def test_watch_samples_each_projections_lag(reader: InMemoryMetricReader) -> None:
    from eventbus.eventstore import Projection, ProjectionRunner
    from eventbus.testing.eventstore import InMemoryEventStore

    metrics = Metrics(meter_provider=MeterProvider(metric_readers=[reader]))
    store, projection = InMemoryEventStore(), Projection("order-totals")

    @projection.on(OrderPlaced)
    async def placed(event: OrderPlaced) -> None:
        pass

    for n in range(3):
        await store.append(f"order-{n}", [OrderPlaced(order_id=str(n))], expected_version=0)
    runner = ProjectionRunner(store, projection)
    async with EventBus("memory://") as bus:
        async with metrics.watch(bus, projections=[runner], interval=3600):
            behind = points(reader)["eventbus.projection.lag"]
        await runner.run_once()
        await metrics.sample(bus, projections=[runner])
        caught_up = points(reader)["eventbus.projection.lag"]
    assert [(a, p.value) for a, p, _ in behind] == [({"eventbus.projection": "order-totals"}, 3)]
    assert [p.value for _, p, _ in caught_up] == [0]
