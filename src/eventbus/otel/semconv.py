"""The messaging semantic conventions eventbus emits, in one module.

Attribute names come from the ``opentelemetry-semantic-conventions`` constants, not typed by
hand, so a rename upstream is one change here. ``messaging.system`` is the adapter's
``system``: ``kafka`` and ``rabbitmq`` are the spec's own values; Redis Streams and the
in-memory bus have none in the spec, and are ``redis`` and ``memory``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from opentelemetry.semconv._incubating.attributes import messaging_attributes as m
from opentelemetry.semconv.attributes import error_attributes

from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError

__all__ = [
    "BATCH_MESSAGE_COUNT",
    "CONSUMER_GROUP",
    "DESTINATION",
    "ERROR_TYPE",
    "bind_system",
    "MESSAGE_ID",
    "OPERATION_NAME",
    "OPERATION_TYPE",
    "SETTLE_OUTCOME",
    "SETTLE_REASON",
    "SYSTEM",
    "delivered_to",
    "delivery_attributes",
    "destination_attributes",
    "destination_namer",
    "liveness",
    "message_attributes",
    "process_attributes",
    "system_of",
]

SYSTEM = m.MESSAGING_SYSTEM
OPERATION_NAME = m.MESSAGING_OPERATION_NAME
OPERATION_TYPE = m.MESSAGING_OPERATION_TYPE
DESTINATION = m.MESSAGING_DESTINATION_NAME
CONSUMER_GROUP = m.MESSAGING_CONSUMER_GROUP_NAME
BATCH_MESSAGE_COUNT = m.MESSAGING_BATCH_MESSAGE_COUNT
MESSAGE_ID = m.MESSAGING_MESSAGE_ID
ERROR_TYPE = error_attributes.ERROR_TYPE
SETTLE_OUTCOME = "eventbus.settle.outcome"
"""How the delivery was settled: ``ack``, ``retry_later``, ``dead_letter`` or ``redeliver``."""
SETTLE_REASON = "eventbus.settle.reason"

CREATE = m.MessagingOperationTypeValues.CREATE.value
SEND = m.MessagingOperationTypeValues.SEND.value
PROCESS = m.MessagingOperationTypeValues.PROCESS.value


def liveness(
    provider: Any, global_provider: Any, is_noop: Any, recheck: float = 1.0
) -> Callable[[], bool]:
    """Whether an SDK records what an instrument emits, asked cheaply once per message.

    ``is_noop(provider)`` tells a provider that records nothing. A provider given outright is
    judged once. The global one is looked up again at most once a ``recheck`` seconds while it
    records nothing (an application may set its SDK up after building the bus), and never
    again once it records: a global provider is set once and stays. A closure rather than an
    object with ``__call__``: it is asked four times per event, and this halves the cost.
    """
    if provider is not None:
        judged = not is_noop(provider)
        return (lambda: True) if judged else (lambda: False)
    next_check, found = 0.0, False

    def live() -> bool:
        nonlocal next_check, found
        if found:
            return True
        now = _monotonic()
        if now < next_check:
            return False
        if is_noop(global_provider()):
            next_check = now + recheck
            return False
        found = True
        return True

    return live


_monotonic = time.monotonic


def bind_system(bound: str | None, broker: Any, instrument: str) -> str:
    """The ``messaging.system`` an instrument serves from now on: ``broker``'s, which must be
    the one it already serves, if any (``instrument`` names it in the error)."""
    system = system_of(broker)
    if bound not in (None, system):
        raise ConfigurationError(
            f"this {instrument}() already serves a {bound!r} bus; "
            f"give the {system!r} bus a {instrument}() of its own"
        )
    return system


def system_of(broker: Any) -> str:
    """The ``messaging.system`` of an adapter (its ``system``; else its class name)."""
    system = getattr(broker, "system", None)
    return system if isinstance(system, str) else type(broker).__name__.lower()


def destination_namer(broker: Any) -> Any:
    """How ``broker``'s destinations are named in spans and metrics: ``(destination, queue)``
    to the name. The destination itself, except on RabbitMQ, where the conventions name a
    send ``{exchange}:{routing key}`` and a delivery ``{exchange}:{routing key}:{queue}``
    (empty parts dropped, a queue named like its routing key given once, the default
    exchange with no key ``amq.default``)."""
    exchange_for = getattr(broker, "exchange_for", None)
    if system_of(broker) != "rabbitmq" or exchange_for is None:
        return lambda destination, queue=None: destination

    def name(destination: str, queue: str | None = None) -> str:
        parts = [exchange_for(destination), destination]
        if queue and queue != destination:
            parts.append(queue)
        return ":".join(part for part in parts if part) or "amq.default"

    return name


def delivered_to(namer: Any, sub: Any, delivery: Any) -> tuple[str, str]:
    """``(destination, name)`` of a delivery to ``sub``: where it came from (the
    subscription's topic without a delivery) and how ``namer`` names it (its queue too)."""
    destination = delivery.destination if delivery is not None else sub.topic
    return destination, namer(destination, getattr(delivery, "queue", None))


def process_attributes(system: str | None, name: str, group: str | None) -> dict[str, Any]:
    """What every ``process`` measurement and span carries: the system, the operation, the
    destination's ``name`` and the consumer group."""
    return {
        SYSTEM: system or "unknown",
        OPERATION_NAME: PROCESS,
        OPERATION_TYPE: PROCESS,
        DESTINATION: name,
        CONSUMER_GROUP: group or "",
    }


def destination_attributes(system: str, name: str, destination: str) -> dict[str, Any]:
    """``messaging.destination.name`` (``name``, from :func:`destination_namer`), and on
    RabbitMQ the routing key (the destination: the adapter routes by it)."""
    attributes: dict[str, Any] = {DESTINATION: name}
    if system == "rabbitmq":
        attributes[m.MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY] = destination
    return attributes


def delivery_attributes(system: str, delivery: Any) -> dict[str, Any]:
    """What an adapter's delivery tells of where the message was: the partition and offset on
    Kafka, the delivery tag on RabbitMQ (read where the delivery has them)."""
    attributes: dict[str, Any] = {}
    partition = getattr(delivery, "partition_id", None)
    if partition is not None:
        attributes[m.MESSAGING_DESTINATION_PARTITION_ID] = partition
    if system == "kafka" and isinstance(getattr(delivery, "offset", None), int):
        attributes[m.MESSAGING_KAFKA_OFFSET] = delivery.offset
    tag = getattr(delivery, "delivery_tag", None)
    if system == "rabbitmq" and isinstance(tag, int):
        attributes[m.MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG] = tag
    return attributes


def message_attributes(system: str, envelope: Envelope) -> dict[str, Any]:
    """The per-message attributes: id, correlation id, and Kafka's message key."""
    attributes: dict[str, Any] = {MESSAGE_ID: envelope.id}
    if envelope.correlationid:
        attributes[m.MESSAGING_MESSAGE_CONVERSATION_ID] = envelope.correlationid
    if envelope.partitionkey is not None and system == "kafka":
        attributes[m.MESSAGING_KAFKA_MESSAGE_KEY] = envelope.partitionkey
    return attributes
