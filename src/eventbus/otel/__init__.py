"""OpenTelemetry for eventbus: tracing and metrics on the current messaging conventions.

``Tracing()`` and ``Metrics()`` go in the bus's ``middleware``; each instruments the consume
side there, and the bus puts its publish half on the publish chain. They need the ``otel`` extra
(``pip install 'eventbus[otel]'``: ``opentelemetry-api`` and the semantic-conventions
constants); the SDK and an exporter are the application's choice.
"""

from __future__ import annotations

try:
    import opentelemetry.trace  # noqa: F401
    from opentelemetry.semconv._incubating.attributes import messaging_attributes  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "eventbus.otel needs OpenTelemetry: pip install 'eventbus[otel]' "
        "(opentelemetry-api and opentelemetry-semantic-conventions)"
    ) from exc

from eventbus.otel.metrics import Metrics
from eventbus.otel.tracing import Tracing

__all__ = ["Metrics", "Tracing"]
