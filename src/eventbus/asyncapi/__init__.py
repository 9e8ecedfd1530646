"""An AsyncAPI 3.0 document of a bus: what it receives, what it sends, and on which channels.

>>> doc = asyncapi_document(bus, title="Orders", version="2.1.0")   # doctest: +SKIP
>>> open("asyncapi.json", "w").write(to_json(doc))                  # doctest: +SKIP

Read off the bus, never off a running broker:

* **channels** — one per destination (a Kafka topic, a RabbitMQ routing key on the topic
  exchange, a Redis stream), addressed as the adapter names it; a pattern subscription's
  channel has a ``null`` address (any destination matching ``x-eventbus-pattern``); each
  subscription's retry and dead-letter queues are channels too (``x-eventbus-role``);
* **operations** — ``receive`` for every subscription (its consumer group in
  ``x-eventbus-group`` and, on Kafka, the ``groupId`` binding), ``send`` for every event class
  declared with ``publishes=`` on the bus or a router;
* **messages** — one per event class: the payload is the model's JSON Schema, its nested
  models, enums and so on in ``components/schemas``; the headers are the CloudEvents
  attributes as the adapter writes them (``ce_*`` on Kafka, ``ce-*`` on RabbitMQ); on Redis,
  which carries structured CloudEvents, the payload is the whole envelope with the event as
  ``data``;
* **servers** — the broker URL's hosts, never its user name or password (or the URLs given
  in ``servers=``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from eventbus.asyncapi.envelope import headers_schema, structured_schema
from eventbus.asyncapi.schemas import REF_PREFIX, component_schemas
from eventbus.bus import EventBus
from eventbus.envelope import STRUCTURED_CONTENT_TYPE
from eventbus.errors import ConfigurationError
from eventbus.event import Event
from eventbus.router import Subscription
from eventbus.types import DescribesWire, WireChannel, WireFormat

try:
    import yaml
except ImportError:  # pragma: no cover - depends on the installed extras
    yaml = None  # type: ignore[assignment]

__all__ = ["asyncapi_document", "to_json", "to_yaml"]

ASYNCAPI_VERSION = "3.0.0"
GENERIC_MESSAGE = "CloudEvent"
"""The message of a subscription that takes the raw envelope (a type name or a pattern)."""
CONTENT_TYPE = "application/json"
_UNSAFE = re.compile(r"[^\w.\-]")


def asyncapi_document(
    bus: EventBus,
    *,
    title: str | None = None,
    version: str = "1.0.0",
    description: str | None = None,
    servers: Mapping[str, str] | None = None,
    internal_channels: bool = True,
) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of ``bus`` (a JSON-ready ``dict``; see the module docs).

    ``title`` defaults to the bus's service name, ``version`` is the version of the API being
    described. ``servers`` maps server names to broker URLs, in place of the bus's own broker
    (credentials are dropped). ``internal_channels=False`` leaves out the retry and
    dead-letter channels.
    """
    wire = bus.broker.wire_format() if isinstance(bus.broker, DescribesWire) else WireFormat(None)
    subscriptions = bus.subscriptions
    models = [s.handler.model for s in subscriptions if s.handler.model is not None]
    names, schemas = component_schemas([*models, *bus.publishes])
    builder = _Builder(bus, wire, names)
    for sub in subscriptions:
        builder.receive(sub, internal_channels)
    for event in bus.publishes:
        builder.send(event)
    document: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": title or bus.service,
            "version": version,
            "description": description
            or f"The events the {bus.service} service receives and sends.",
        },
        "defaultContentType": CONTENT_TYPE,
    }
    server_objects = _servers(servers) if servers is not None else _own_servers(wire)
    if server_objects:
        document["servers"] = server_objects
    document["channels"] = builder.channels
    document["operations"] = builder.operations
    document["components"] = {"schemas": schemas, "messages": builder.messages}
    return document


def to_json(document: Mapping[str, Any]) -> str:
    """The document as indented JSON text."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def to_yaml(document: Mapping[str, Any]) -> str:
    """The document as YAML text (needs ``pip install "eventbus[asyncapi]"``)."""
    if yaml is None:  # pragma: no cover - depends on the installed extras
        raise ConfigurationError('to_yaml needs PyYAML: pip install "eventbus[asyncapi]"')
    text: str = yaml.safe_dump(dict(document), sort_keys=False, allow_unicode=True)
    return text


class _Builder:
    """Channels, operations and messages, added one subscription or sent event at a time."""

    def __init__(self, bus: EventBus, wire: WireFormat, names: Mapping[type[Event], str]):
        self.bus, self.wire, self.names = bus, wire, names
        broker = bus.broker
        self.describes = broker if isinstance(broker, DescribesWire) else None
        self.channels: dict[str, Any] = {}
        self.operations: dict[str, Any] = {}
        self.messages: dict[str, Any] = {}
        self._by_address: dict[tuple[str | None, str], str] = {}

    def receive(self, sub: Subscription, internal: bool) -> None:
        message = self._message(sub.handler.model, sub.target)
        if sub.is_pattern:
            channel = self._channel(None, sub.topic, WireChannel(sub.topic), message)
            self.channels[channel]["x-eventbus-pattern"] = sub.topic
            self.channels[channel]["description"] = (
                f"Every destination whose name matches the pattern {sub.topic!r} "
                "('*' one word, '#' any number)."
            )
        else:
            channel = self._channel(sub.topic, sub.topic, self._wire_channel(sub.topic), message)
        operation = self._operation("receive", _safe(sub.name), channel, message)
        operation["summary"] = f"Handled by {sub.name}."
        operation["x-eventbus-group"] = sub.group
        bindings = self.describes.receive_bindings(sub) if self.describes is not None else {}
        if bindings:
            operation["bindings"] = dict(bindings)
        if internal and self.describes is not None:
            for place in self.describes.internal_channels(sub):
                self._internal(sub, place, message)

    def send(self, event: type[Event]) -> None:
        message = self._message(event, event.event_type)
        destination = event.destination()
        channel = self._channel(destination, destination, self._wire_channel(destination), message)
        operation = self._operation("send", self.names[event], channel, message)
        operation["summary"] = f"Published by {self.bus.service}."

    def _internal(self, sub: Subscription, place: WireChannel, message: str) -> None:
        channel = self._channel(place.address, f"{sub.group}.{place.role}", place, message)
        self.channels[channel]["x-eventbus-role"] = place.role
        action, verb = ("receive", "retry") if place.role == "retry" else ("send", place.role)
        operation = self._operation(action, f"{verb}.{_safe(sub.name)}", channel, message)
        operation["summary"] = (
            f"Redeliveries of {sub.name} (the adapter sends them here, the subscription reads "
            "them back)."
            if place.role == "retry"
            else f"Where {sub.name} puts the events it gives up on (`bus.dead_letters`)."
        )

    def _wire_channel(self, destination: str) -> WireChannel:
        describes = self.describes
        return describes.channel(destination) if describes is not None else WireChannel(destination)

    def _channel(self, address: str | None, name: str, place: WireChannel, message: str) -> str:
        """The id of the channel at ``address`` (added if new), with ``message`` on it."""
        key = (place.address, "") if address is not None else (None, name)
        channel_id = self._by_address.get(key)
        if channel_id is None:
            channel_id = _unique(_safe(name), self.channels)
            self._by_address[key] = channel_id
            channel: dict[str, Any] = {"address": key[0], "messages": {}}
            if place.description:
                channel["description"] = place.description
            if place.parameters:
                channel["parameters"] = {
                    n: {"description": text} for n, text in place.parameters.items()
                }
            if place.bindings:
                channel["bindings"] = dict(place.bindings)
            self.channels[channel_id] = channel
        self.channels[channel_id]["messages"][message] = {
            "$ref": f"#/components/messages/{message}"
        }
        return channel_id

    def _operation(self, action: str, name: str, channel: str, message: str) -> dict[str, Any]:
        operation_id = _unique(f"{action}.{name}", self.operations)
        operation: dict[str, Any] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{_pointer(channel)}"},
            "messages": [{"$ref": f"#/channels/{_pointer(channel)}/messages/{_pointer(message)}"}],
        }
        self.operations[operation_id] = operation
        return operation

    def _message(self, model: type[Event] | None, event_type: str) -> str:
        """The id of the message for ``model`` (or of the generic one), added if new."""
        name = self.names[model] if model is not None else GENERIC_MESSAGE
        if name in self.messages:
            return name
        version = model.event_version if model is not None else None
        known = model.event_type if model is not None else None
        payload: dict[str, Any] = {"$ref": REF_PREFIX + name} if model is not None else {}
        message: dict[str, Any] = {"name": known or GENERIC_MESSAGE}
        if model is not None:
            message["title"] = model.__name__
            message["summary"] = _summary(model)
            message["x-eventbus-version"] = version
        else:
            message["summary"] = "Any event, taken as its envelope (a type name or pattern)."
        if self.wire.header_prefix is None and self.wire.protocol is not None:
            message["contentType"] = STRUCTURED_CONTENT_TYPE
            message["payload"] = structured_schema(payload, known, version, CONTENT_TYPE)
        else:
            message["contentType"] = CONTENT_TYPE
            message["headers"] = headers_schema(self.wire, known, version, CONTENT_TYPE)
            message["payload"] = payload
        bindings = _message_bindings(self.wire, known)
        if bindings:
            message["bindings"] = bindings
        self.messages[name] = message
        return name


def _message_bindings(wire: WireFormat, event_type: str | None) -> dict[str, Any]:
    if wire.protocol == "kafka":
        key = {"type": "string", "description": "The partition key (ordering)."}
        return {"kafka": {"key": key, "bindingVersion": "0.5.0"}}
    if wire.protocol in ("amqp", "amqps") and event_type is not None:
        return {"amqp": {"messageType": event_type, "bindingVersion": "0.3.0"}}
    return {}


def _own_servers(wire: WireFormat) -> dict[str, Any]:
    if wire.protocol is None:
        return {}
    servers = {}
    for i, host in enumerate(wire.hosts):
        server: dict[str, Any] = {"host": host, "protocol": wire.protocol}
        if wire.pathname:
            server["pathname"] = wire.pathname
        servers[wire.protocol if len(wire.hosts) == 1 else f"{wire.protocol}-{i + 1}"] = server
    return servers


def _servers(urls: Mapping[str, str]) -> dict[str, Any]:
    servers = {}
    for name, url in urls.items():
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        if not parts.scheme or not host or not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
            raise ConfigurationError(
                f"servers= maps names (letters, digits, '_', '-') to broker URLs such as "
                f"'kafka://host:9092'; got {name!r}"
            )
        server: dict[str, Any] = {"host": host, "protocol": parts.scheme}
        if parts.path.strip("/"):
            server["pathname"] = parts.path
        servers[name] = server
    return servers


def _summary(model: type[Event]) -> str:
    doc = model.__doc__ if model.__doc__ is not Event.__doc__ else None
    line = (doc or "").strip().split("\n", 1)[0].strip()
    return line or f"The {model.event_type} event (version {model.event_version})."


def _safe(name: str) -> str:
    return _UNSAFE.sub("_", name) or "_"


def _unique(name: str, taken: Mapping[str, Any]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}.{n}"
    return candidate


def _pointer(name: str) -> str:
    """``name`` as a JSON-pointer segment (RFC 6901)."""
    return name.replace("~", "~0").replace("/", "~1")
