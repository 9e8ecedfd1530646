"""``WebhookTelemetry``: a span per attempt and the webhook metrics, on OpenTelemetry.

``WebhookSender(store, observer=WebhookTelemetry())`` (needs ``eventbus[otel]``):

* a ``POST`` span (CLIENT) per attempt, on the HTTP client conventions
  (``http.request.method``, ``url.full`` without credentials, ``server.address``,
  ``http.response.status_code``, ``error.type`` when it failed) plus
  ``eventbus.webhook.id``, ``eventbus.webhook.endpoint``, ``eventbus.webhook.attempt`` and
  ``eventbus.webhook.state``; it links to the context the event was published in;
* ``eventbus.webhooks.attempts`` (counter, by ``eventbus.webhook.outcome``: delivered,
  retry, dead), ``eventbus.webhooks.deliveries`` (delivered), ``eventbus.webhooks.failures``
  (attempts that did not deliver), ``eventbus.webhooks.attempt.duration`` (histogram,
  seconds), all by ``eventbus.webhook.endpoint``;
* ``eventbus.webhooks.endpoint.lag`` (gauge): per endpoint, seconds since its oldest pending
  delivery was taken in, sampled by the sender every ``lag_interval``.

Spans and metrics go to the global providers unless ``tracer_provider``/``meter_provider``
are given; with no SDK set up they cost next to nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from eventbus.redact import redact_url
from eventbus.webhooks.attempt import AttemptResult
from eventbus.webhooks.endpoints import Endpoint

__all__ = ["WebhookTelemetry"]

_W3C = TraceContextTextMapPropagator()
ENDPOINT, OUTCOME = "eventbus.webhook.endpoint", "eventbus.webhook.outcome"


class WebhookTelemetry:
    def __init__(self, *, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        self.tracer = trace.get_tracer("eventbus.webhooks", tracer_provider=tracer_provider)
        meter = metrics.get_meter("eventbus.webhooks", meter_provider=meter_provider)
        self.attempts = meter.create_counter(
            "eventbus.webhooks.attempts", unit="{attempt}", description="Webhook attempts."
        )
        self.deliveries = meter.create_counter(
            "eventbus.webhooks.deliveries", unit="{delivery}", description="Webhooks delivered."
        )
        self.failures = meter.create_counter(
            "eventbus.webhooks.failures",
            unit="{attempt}",
            description="Webhook attempts that did not deliver.",
        )
        self.duration = meter.create_histogram(
            "eventbus.webhooks.attempt.duration",
            unit="s",
            description="Duration of a webhook attempt.",
        )
        self._lags: dict[str, float] = {}
        meter.create_observable_gauge(
            "eventbus.webhooks.endpoint.lag",
            callbacks=[self._observe_lag],
            unit="s",
            description="Age of the oldest pending delivery of an endpoint.",
        )

    def started(
        self, endpoint: Endpoint, row: Any, attempt: int
    ) -> Callable[[AttemptResult, str], None]:
        parts = urlsplit(endpoint.url)
        links = []
        if row.traceparent:
            parent = trace.get_current_span(_W3C.extract({"traceparent": row.traceparent}))
            if parent.get_span_context().is_valid:
                links.append(trace.Link(parent.get_span_context()))
        span = self.tracer.start_span(
            "POST",
            context=otel_context.Context(),
            kind=trace.SpanKind.CLIENT,
            links=links,
            attributes={
                "http.request.method": "POST",
                "url.full": redact_url(endpoint.url),
                "server.address": parts.hostname or "",
                "server.port": parts.port or (443 if parts.scheme == "https" else 80),
                "eventbus.webhook.id": row.event_id,
                ENDPOINT: endpoint.id,
                "eventbus.webhook.attempt": attempt,
            },
        )

        def finished(result: AttemptResult, state: str) -> None:
            labels = {ENDPOINT: endpoint.id}
            outcome = {"pending": "retry"}.get(state, state)
            self.attempts.add(1, {**labels, OUTCOME: outcome})
            self.duration.record(result.latency, labels)
            if state == "delivered":
                self.deliveries.add(1, labels)
            else:
                self.failures.add(1, labels)
            if result.status is not None:
                span.set_attribute("http.response.status_code", result.status)
            span.set_attribute("eventbus.webhook.state", state)
            if state != "delivered":
                kind = str(result.status) if result.status is not None else "connection"
                span.set_attribute("error.type", kind)
                span.set_status(trace.Status(trace.StatusCode.ERROR, result.error or kind))
            span.end()

        return finished

    def lag(self, per_endpoint: dict[str, float]) -> None:
        self._lags = dict(per_endpoint)

    def _observe_lag(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(age, {ENDPOINT: e}) for e, age in self._lags.items()]
