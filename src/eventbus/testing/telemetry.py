"""Checks that a bus's telemetry follows the OpenTelemetry messaging conventions.

``TelemetryCheck`` collects spans and metrics in memory (the SDK's exporter and reader: it
needs ``opentelemetry-sdk``) and asserts what one publish and its handling must show::

    check = TelemetryCheck()
    bus = EventBus(url, middleware=[check.tracing(), check.metrics(), *default_middleware()])
    ...  # publish one event, let a subscription of group "audit" handle it
    check.round_trip(sent, system="kafka", group="audit")

``TelemetryContract`` is the conformance suite's telemetry part: each adapter's test module
runs it next to ``BrokerContract`` (``class TestRedis(BrokerContract, TelemetryContract)``).
It is a module of its own so that ``eventbus.testing`` needs no OpenTelemetry.
"""

from __future__ import annotations

from typing import Any

from eventbus.envelope import Envelope
from eventbus.otel import Metrics, Tracing
from eventbus.router import Router
from eventbus.testing._contract_base import ContractBase, collect

__all__ = ["TelemetryCheck", "TelemetryContract"]

_DURATIONS = ("messaging.client.operation.duration", "messaging.process.duration")
_COUNTERS = ("messaging.client.sent.messages", "messaging.client.consumed.messages")


class TelemetryCheck:
    """An in-memory span exporter and metric reader, and the assertions over what they got."""

    def __init__(self) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.exporter, self.reader = InMemorySpanExporter(), InMemoryMetricReader()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def tracing(self) -> Tracing:
        return Tracing(tracer_provider=self.tracer_provider)

    def metrics(self) -> Metrics:
        return Metrics(meter_provider=self.meter_provider)

    def spans(self, name: str) -> list[Any]:
        return [s for s in self.exporter.get_finished_spans() if s.name == name]

    def round_trip(
        self, sent: Envelope, *, system: str, group: str, names: tuple[str, str] | None = None
    ) -> None:
        """Assert the spans and metrics of publishing ``sent`` once and handling it once.

        ``names`` are the destination names the send and the process span carry, where they
        are not the destination itself (RabbitMQ: ``exchange:key`` and ``exchange:key:queue``).
        """
        from opentelemetry.trace import SpanKind

        destination = sent.type
        send_name, process_name = names or (destination, destination)
        [send] = self.spans(f"send {send_name}")
        [process] = self.spans(f"process {process_name}")
        assert send.kind == SpanKind.PRODUCER, send.kind
        assert process.kind == SpanKind.CONSUMER, process.kind
        common = {"messaging.system": system, "messaging.message.id": sent.id}
        _has(send, {**common, "messaging.operation.name": "send",
                    "messaging.operation.type": "send",
                    "messaging.destination.name": send_name})  # fmt: skip
        _has(process, {**common, "messaging.operation.name": "process",
                       "messaging.operation.type": "process",
                       "messaging.destination.name": process_name,
                       "messaging.consumer.group.name": group})  # fmt: skip
        attributes = dict(process.attributes or {})
        if system == "kafka":
            assert {"messaging.destination.partition.id", "messaging.kafka.offset"} <= set(
                attributes
            ), attributes
        if system == "rabbitmq":
            assert "messaging.rabbitmq.message.delivery_tag" in attributes, attributes
            for span in (send, process):
                key = (span.attributes or {}).get("messaging.rabbitmq.destination.routing_key")
                assert key == destination, (span.name, key)
        linked = [(link.context.trace_id, link.context.span_id) for link in process.links]
        assert linked == [(send.context.trace_id, send.context.span_id)], linked
        self._metrics(system)

    def _metrics(self, system: str) -> None:
        data = self.reader.get_metrics_data()
        assert data is not None, "no metrics were recorded"
        found = {
            metric.name: metric
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }
        for name in (*_DURATIONS, *_COUNTERS):
            assert name in found, f"{name} was not recorded"
            for point in found[name].data.data_points:
                assert (point.attributes or {}).get("messaging.system") == system, name
                assert "messaging.operation.name" in (point.attributes or {}), name
        for name in _DURATIONS:
            assert found[name].unit == "s", (name, found[name].unit)
        assert found["messaging.client.sent.messages"].unit == "{message}"

    def undecodable(self, *, system: str, group: str) -> None:
        """Assert that one undecodable message was traced and counted as dead-lettered."""
        spans = [
            s
            for s in self.exporter.get_finished_spans()
            if (s.attributes or {}).get("error.type") == "DecodeError"
        ]
        assert len(spans) == 1, [s.name for s in spans]
        _has(spans[0], {"messaging.system": system, "messaging.consumer.group.name": group})
        outcomes = [(e.attributes or {}).get("eventbus.settle.outcome") for e in spans[0].events]
        assert outcomes == ["dead_letter"], outcomes
        data = self.reader.get_metrics_data()
        assert data is not None, "no metrics were recorded"
        dead = [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == "eventbus.dead_letters"
            for point in metric.data.data_points
        ]
        assert [(p.attributes or {}).get("error.type") for p in dead] == ["DecodeError"]
        assert sum(getattr(p, "value", 0) for p in dead) == 1


def _has(span: Any, expected: dict[str, Any]) -> None:
    attributes = dict(span.attributes or {})
    wrong = {k: (attributes.get(k), v) for k, v in expected.items() if attributes.get(k) != v}
    assert not wrong, f"{span.name}: attribute (found, expected): {wrong}"


class TelemetryContract(ContractBase):
    """The conformance suite's telemetry part: spans and metrics on the conventions."""

    def telemetry_names(self, bus: Any, sent: Envelope, group: str) -> tuple[str, str] | None:
        """The destination names of the send and process spans, where an adapter's
        conventions name them otherwise than by the destination (RabbitMQ overrides it)."""
        return None

    async def test_telemetry_follows_the_messaging_conventions(self) -> None:
        check = TelemetryCheck()
        event_cls, router, got = self.event(), Router(), list[Any]()
        router.subscribe(event_cls, group=f"{self.ns}-audit")(collect(got))
        middleware = (check.tracing(), check.metrics())
        async with self.bus(router, middleware=middleware) as bus:
            sent = await bus.publish(event_cls(n=1))
            await self.wait(lambda: len(got) == 1, "the event is handled")
            system = getattr(bus.broker, "system", "")
            names = self.telemetry_names(bus, sent, f"{self.ns}-audit")
        check.round_trip(sent, system=system, group=f"{self.ns}-audit", names=names)

    async def test_an_undecodable_message_is_traced_and_counted(self) -> None:
        check = TelemetryCheck()
        event_cls, router, got = self.event(), Router(), list[Any]()
        group = f"{self.ns}-garbled"
        router.subscribe(event_cls, group=group)(collect(got))
        async with self.bus(router, middleware=(check.tracing(), check.metrics())) as bus:
            self.capability(bus.broker, "dead_letters")
            await self.send_raw(bus.broker, event_cls.destination(), b"\xff not json", {})
            await self._dead_letters(bus, group, 1)
            system = getattr(bus.broker, "system", "")
        check.undecodable(system=system, group=group)
