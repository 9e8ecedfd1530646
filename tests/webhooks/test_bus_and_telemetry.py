"""From the bus to the receiver: events published on a bus are taken in by the webhook
router (once, however often they are delivered), sent by the sender, and each attempt is a
span linked to the publish and counted in the metrics."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from eventbus import Event, EventBus
from eventbus.clock import FakeClock
from eventbus.errors import ConfigurationError
from eventbus.otel import Tracing
from eventbus.testing import wait_until
from eventbus.webhooks import RetrySchedule, WebhookSender, WebhookStore, webhook_router
from eventbus.webhooks.telemetry import WebhookTelemetry
from tests.otel.test_metrics import points
from tests.otel.test_tracing import spans
from tests.webhooks.conftest import LOOPBACK, Receiver
from tests.webhooks.support import event

__all__ = ["spans"]

pytestmark = pytest.mark.anyio


class OrderPlaced(Event):
    event_type = "shop.order.placed"
    order_id: str


class OrderShipped(Event):
    event_type = "shop.order.shipped"
    order_id: str


async def test_published_events_are_delivered_with_a_span_per_attempt_and_metrics(
    store: WebhookStore,
    receiver: Receiver,
    clock: FakeClock,
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    reader = InMemoryMetricReader()
    telemetry = WebhookTelemetry(
        tracer_provider=provider, meter_provider=MeterProvider(metric_readers=[reader])
    )
    endpoint = await store.endpoints.add(
        "acme", receiver.script("/o", 500, 200), ["shop.order.placed"]
    )
    schedule = RetrySchedule(delays=(0, 5), jitter=0)
    sender = WebhookSender(
        store, guard=LOOPBACK, schedule=schedule, observer=telemetry, lag_interval=0
    )
    bus = EventBus("memory://", middleware=[Tracing(tracer_provider=provider)])
    bus.include_router(webhook_router(store, OrderPlaced, OrderShipped, sender=sender))
    async with bus:
        placed = await bus.publish(OrderPlaced(order_id="o-1"))
        await bus.publish(OrderShipped(order_id="o-1"))  # no endpoint takes it
        await bus.publish_envelope(placed)  # delivered to the router twice: taken in once
        await bus.drain()
    assert await sender.run_once() == 1
    await clock.advance(3)
    assert await sender.run_once() == 0
    lags = [(labels, p.value) for labels, p, _ in points(reader)["eventbus.webhooks.endpoint.lag"]]
    assert lags == [({"eventbus.webhook.endpoint": endpoint.id}, pytest.approx(3.0))]
    await clock.advance(2)
    assert await sender.run_once() == 1
    await sender.stop()

    requests = receiver.to("/o")
    assert [r.headers["webhook-id"] for r in requests] == [placed.id, placed.id]
    assert b'"data":{"order_id":"o-1"}' in requests[0].body
    attempts = [s for s in exporter.get_finished_spans() if s.name == "POST"]
    assert [s.kind for s in attempts] == [SpanKind.CLIENT, SpanKind.CLIENT]
    assert [(s.attributes or {})["http.response.status_code"] for s in attempts] == [500, 200]
    assert [(s.attributes or {})["eventbus.webhook.attempt"] for s in attempts] == [1, 2]
    assert attempts[0].status.status_code is StatusCode.ERROR
    assert placed.traceparent is not None
    published_span = int(placed.traceparent.split("-")[2], 16)
    for span in attempts:
        assert [link.context.span_id for link in span.links] == [published_span]
        assert (span.attributes or {})["eventbus.webhook.endpoint"] == endpoint.id

    found = points(reader)
    by_outcome = {
        a["eventbus.webhook.outcome"]: p.value for a, p, _ in found["eventbus.webhooks.attempts"]
    }
    assert by_outcome == {"retry": 1, "delivered": 1}
    assert [p.value for _, p, _ in found["eventbus.webhooks.deliveries"]] == [1]
    assert [p.value for _, p, _ in found["eventbus.webhooks.failures"]] == [1]
    [(_, lag, _)] = found["eventbus.webhooks.endpoint.lag"]
    assert lag.value == 0.0, "nothing waits any more"
    reader.shutdown()


class LagRecorder:
    """An observer that keeps only the lag samples."""

    def __init__(self) -> None:
        self.samples: list[dict[str, float]] = []

    def started(self, endpoint: Any, row: Any, attempt: int) -> Any:
        return lambda result, state: None

    def lag(self, per_endpoint: dict[str, float]) -> None:
        self.samples.append(per_endpoint)


async def test_run_once_ends_on_a_lag_sample_taken_after_its_last_attempt(
    store: WebhookStore, receiver: Receiver, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow lag query that an attempt finishes during: the gauge must not keep that stale
    sample once ``run_once`` has returned."""
    endpoint = await store.endpoints.add("acme", receiver.script("/s", 200), ["#"])
    await store.take(event())
    await clock.advance(7)
    query, calls = store.deliveries.lag, 0

    async def delivered() -> bool:
        return (await query())[endpoint.id] == 0.0

    async def slow_lag() -> dict[str, float]:
        nonlocal calls
        calls += 1
        sample = await query()
        if calls == 2:  # the attempt is in flight: let it finish before this sample returns
            await wait_until(delivered, message="the attempt never finished")
        return sample

    monkeypatch.setattr(store.deliveries, "lag", slow_lag)
    recorder = LagRecorder()
    sender = WebhookSender(store, guard=LOOPBACK, observer=recorder, lag_interval=0)
    assert await sender.run_once() == 1
    await sender.stop()
    assert recorder.samples[-1] == {endpoint.id: 0.0}


def test_a_webhook_router_needs_the_event_types() -> None:
    with pytest.raises(ConfigurationError, match="needs the event types"):
        webhook_router(object())  # type: ignore[arg-type]
