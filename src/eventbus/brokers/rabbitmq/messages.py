"""What the adapter writes into an AMQP message and reads out of one.

Events go out in the RabbitMQ CloudEvents binding, binary mode, as the official Python SDK
writes it: each attribute as a ``ce-<name>`` header, the payload as the body, and the AMQP
properties ``content_type`` (= ``datacontenttype``), ``message_id`` (= event id),
``correlation_id``, ``timestamp``, ``type`` (= event type) and persistent delivery mode
(:func:`outgoing`). Header tables that arrive are made fit to be sent again
(:func:`received_headers`), because a requeue, a delay or a dead letter sends a copy of the
message with every property kept (:func:`copy_of`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage

from eventbus.brokers._wire import text
from eventbus.envelope import Envelope, to_binary

__all__ = ["copy_of", "foreign", "outgoing", "received_headers"]

_PERSISTENT = 2  # AMQP delivery_mode
_NEEDS_A_LOOK = frozenset((bytes, memoryview, dict, list, tuple, float))
_FLOAT32_MAX = 3.4028234663852886e38


def outgoing(envelope: Envelope) -> tuple[bytes, aiormq.spec.Basic.Properties]:
    """The body and properties that carry ``envelope`` (built on every publish: kept lean)."""
    headers, body = to_binary(envelope, prefix="ce-")
    properties = aiormq.spec.Basic.Properties(
        content_type=headers.pop("content-type"),
        headers=cast("dict[str, Any]", headers),
        delivery_mode=_PERSISTENT,
        priority=0,
        correlation_id=envelope.correlationid,
        message_id=envelope.id,
        timestamp=envelope.time or datetime.now(timezone.utc),
        message_type=envelope.type,
    )
    return body, properties


def foreign(body: bytes, headers: Mapping[str, Any] | None) -> aio_pika.Message:
    """A persistent message with ``headers`` and no other properties, as a foreign producer
    would send it."""
    return aio_pika.Message(
        body, headers=dict(headers or {}), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
    )


def received_headers(message: AbstractIncomingMessage) -> dict[str, Any]:
    """The header table as it arrived, made fit to be sent again, with ``content_type`` in.

    The driver hands over a long string that is not UTF-8 as ``bytes``, which it cannot encode
    again: it becomes a ``bytearray`` (an AMQP byte array); and it writes every float as a
    32-bit one, so a double beyond that range becomes its text. This holds everywhere in the
    table, so a requeue or dead-lettering always republishes the message.
    """
    headers: dict[str, Any] = dict(message.headers or {})
    if any(type(v) in _NEEDS_A_LOOK or type(k) is not str for k, v in headers.items()):
        headers = {text(k): _sendable(v) for k, v in headers.items()}
    if message.content_type:
        headers["content-type"] = text(message.content_type)
    return headers


def _sendable(value: Any) -> Any:
    if isinstance(value, (bytes, memoryview)):
        return bytearray(value)
    if isinstance(value, float):
        return value if abs(value) <= _FLOAT32_MAX or value != value else repr(value)
    if isinstance(value, dict):
        return {text(k): _sendable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sendable(v) for v in value]
    return value


def copy_of(
    message: AbstractIncomingMessage, headers: Mapping[str, Any], body: bytes | None = None
) -> aio_pika.Message:
    """A persistent copy of ``message`` with ``headers`` (and ``body``, when given), every
    property kept. ``content-type`` among ``headers`` is the property folded in on arrival
    (:func:`received_headers`), so it is not written to the table."""
    table = {k: v for k, v in headers.items() if k != "content-type"}
    return aio_pika.Message(
        message.body if body is None else body,
        headers=table,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        correlation_id=message.correlation_id,
        message_id=message.message_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
        priority=message.priority,
        reply_to=message.reply_to,
    )
