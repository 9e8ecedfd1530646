"""The CloudEvents envelope as the broker carries it, as JSON Schema.

In binary content mode (Kafka, RabbitMQ, the memory broker) the attributes are message
headers, named with the adapter's prefix (``ce_id`` on Kafka, ``ce-id`` on RabbitMQ), and the
payload is the event's JSON: :func:`headers_schema`. In structured mode (Redis Streams) the
whole envelope is one JSON document whose ``data`` member is the event:
:func:`structured_schema`. The attributes are those :class:`eventbus.envelope.Envelope`
writes; any other extension attribute (from ``publish(..., headers=)``) is a lowercase name.
"""

from __future__ import annotations

from typing import Any

from eventbus.types import WireFormat

__all__ = ["ATTRIBUTES", "REQUIRED", "headers_schema", "structured_schema"]

_TEXT: dict[str, Any] = {"type": "string"}

ATTRIBUTES: dict[str, tuple[dict[str, Any], str]] = {
    "specversion": ({"type": "string", "const": "1.0"}, "The CloudEvents version."),
    "id": (_TEXT, "The event id: unique per source, the same on every redelivery and replay."),
    "source": (_TEXT, "The service that published the event (its `service` name)."),
    "type": (_TEXT, "The event type name."),
    "time": ({"type": "string", "format": "date-time"}, "When the event was published."),
    "subject": (_TEXT, "What the event is about, when the publisher said."),
    "dataschema": ({"type": "string", "format": "uri"}, "The payload's schema, when given."),
    "dataversion": ({"type": "string", "pattern": "^[1-9][0-9]*$"}, "The payload version."),
    "partitionkey": (_TEXT, "The ordering key: events with one key are handled in order."),
    "correlationid": (_TEXT, "The id shared by every event of one conversation."),
    "causationid": (_TEXT, "The id of the event being handled when this one was published."),
    "traceparent": (_TEXT, "W3C trace context of the publish."),
    "tracestate": (_TEXT, "W3C trace state of the publish."),
}
"""Every attribute the envelope writes: its schema (as a header value) and its meaning."""

REQUIRED = ("specversion", "id", "source", "type")


def _attribute(name: str, event_type: str | None, version: int | None) -> dict[str, Any]:
    schema, description = ATTRIBUTES[name]
    schema = {**schema, "description": description}
    if name == "type" and event_type is not None:
        schema["const"] = event_type
    if name == "dataversion" and version is not None:
        schema = {"type": "string", "const": str(version), "description": description}
    return schema


def headers_schema(
    wire: WireFormat, event_type: str | None, version: int | None, content_type: str
) -> dict[str, Any]:
    """The message headers in binary content mode, with the adapter's header names."""
    prefix = wire.header_prefix or "ce_"
    properties = {prefix + n: _attribute(n, event_type, version) for n in ATTRIBUTES}
    required = [prefix + n for n in REQUIRED]
    if wire.content_type_header:
        properties["content-type"] = {
            "type": "string",
            "const": content_type,
            "description": "The payload's media type (the datacontenttype attribute).",
        }
        required.append("content-type")
    return {
        "type": "object",
        "description": (
            f"CloudEvents 1.0 binary content mode: each attribute is a `{prefix}<name>` header. "
            f"Other `{prefix}<name>` headers are extension attributes (lowercase letters and "
            "digits); `eventbus-*` headers are the library's own."
        ),
        "properties": properties,
        "required": required,
        "patternProperties": {f"^{_escape(prefix)}[a-z0-9]{{1,64}}$": {"type": "string"}},
    }


def structured_schema(
    data: dict[str, Any], event_type: str | None, version: int | None, content_type: str
) -> dict[str, Any]:
    """The whole envelope as one JSON document (structured content mode), ``data`` the event."""
    properties: dict[str, Any] = {n: _attribute(n, event_type, version) for n in ATTRIBUTES}
    properties["dataversion"] = {
        "type": "integer",
        "minimum": 1,
        **({"const": version} if version is not None else {}),
        "description": ATTRIBUTES["dataversion"][1],
    }
    properties["datacontenttype"] = {"type": "string", "const": content_type}
    properties["data"] = data
    return {
        "type": "object",
        "description": (
            "CloudEvents 1.0 structured content mode (application/cloudevents+json): the "
            "attributes and the event, as `data`, in one JSON document."
        ),
        "properties": properties,
        "required": [*REQUIRED, "data"],
        "additionalProperties": {"type": "string"},
    }


def _escape(prefix: str) -> str:
    return "".join("\\" + c if c in ".+*?()[]{}|^$\\" else c for c in prefix)
