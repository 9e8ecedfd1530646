"""Where messages go on RabbitMQ, and what its failures mean: names, declarations, errors.

* one durable **topic exchange** per destination (``exchange="eventbus"``, or a function that
  maps a destination or pattern to its domain exchange); the **routing key is the
  destination**, so our ``*``/``#`` subscription patterns are AMQP binding keys as they are;
* a durable **queue per (group, subscription)**, :func:`queue_name`, bound with the
  subscription's topic or pattern: competing consumers within a group, a copy per group;
* ``{queue}.dlq``, its dead-letter queue, also the queue's ``x-dead-letter-exchange`` target,
  so whatever RabbitMQ dead-letters itself lands there with its ``x-death`` header;
* ``{queue}.wait.{ms}``, delayed redelivery without the delayed-message plugin: a queue with
  ``x-message-ttl`` that dead-letters back to ``{queue}`` only (not to the other groups).

:func:`translate` maps aio-pika/aiormq exceptions to :mod:`eventbus.errors`; :data:`errors`
applies it at the adapter's edge.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from eventbus.brokers._wire import DriverErrors
from eventbus.errors import BrokerUnavailable, ConfigurationError, EventBusError, PublishError

__all__ = [
    "ExchangeOption",
    "check_exchange",
    "dead_letter_queue",
    "declare_exchange",
    "declare_group_queue",
    "declare_wait_queue",
    "errors",
    "queue_name",
    "quietly",
    "translate",
    "wait_queue",
    "work_queue",
]

log = logging.getLogger("eventbus.rabbitmq")

ExchangeOption = str | Callable[[str], str]
"""An exchange name, or a function ``destination (or pattern) -> exchange name``."""
_DLQ = ".dlq"
_MAX_QUEUE_NAME = 255
_ILLEGAL = re.compile(r"[^a-zA-Z0-9\-_.:@#,/+ ]")
_WAIT_QUEUE_GRACE_MS = 60_000
"""An unused wait queue is removed this long after its delay (``x-expires``)."""

_LOGIN_REFUSED = (
    aiormq.exceptions.AuthenticationError,
    # RabbitMQ closes the connection during the handshake when the credentials are wrong
    aiormq.exceptions.ProbableAuthenticationError,
)
_UNREACHABLE = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


def translate(exc: Exception, what: str) -> EventBusError | None:
    """The eventbus error for a driver exception raised while doing ``what``, or None to let
    it through unchanged. The more specific AMQP errors are tested before the general ones."""
    if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed):
        return ConfigurationError(
            f"{what}: RabbitMQ refused the declaration ({exc}); a queue or exchange of that name "
            "exists with other arguments (durable, quorum, dead-letter settings): delete it "
            "(rabbitmqctl delete_queue NAME) or use another group name"
        )
    if isinstance(exc, aiormq.exceptions.ChannelAccessRefused):
        return ConfigurationError(
            f"{what}: access refused ({exc}); give the user configure/write/read permissions "
            "on the virtual host (rabbitmqctl set_permissions)"
        )
    if isinstance(exc, aiormq.exceptions.DeliveryError):
        return PublishError(f"{what}: RabbitMQ did not accept the message ({exc})")
    if isinstance(exc, _LOGIN_REFUSED):
        return ConfigurationError(
            f"{what}: login refused ({exc}); check the user:password in the URL"
        )
    if isinstance(exc, _UNREACHABLE):
        return BrokerUnavailable(f"{what}: RabbitMQ is not reachable ({exc!r})")
    return None


errors = DriverErrors(translate)
"""``with errors("doing x"):`` around driver calls; ``errors.error(exc, what)`` on hot paths."""


async def quietly(what: str, operation: Awaitable[Any]) -> None:
    """Await ``operation`` where a failure changes nothing for the caller (closing a channel
    or a consumer that a lost connection has closed already): logged, not raised."""
    try:
        await operation
    except Exception as exc:
        log.debug("%s failed; nothing is left to do: %r", what, exc)


def check_exchange(exchange: object) -> ExchangeOption:
    """``exchange`` if it is a usable option, else a :class:`ConfigurationError` saying why."""
    if callable(exchange):
        return cast("Callable[[str], str]", exchange)
    if not isinstance(exchange, str) or not exchange:
        raise ConfigurationError(
            f"exchange must be a non-empty name or a function destination -> name, "
            f"not {exchange!r}; e.g. exchange='auth.events'"
        )
    if exchange.startswith("amq."):
        raise ConfigurationError(f"exchange {exchange!r}: names starting 'amq.' are reserved")
    return exchange


def queue_name(group: str, topic: str) -> str:
    """``{group}.{topic}``, readable and legal: ``*`` (not allowed in AMQP names) becomes
    ``+`` (never in a type name), other illegal characters ``_`` with a digest appended so that
    names stay distinct; over-long names are cut and suffixed with a digest.
    """
    name = f"{group}.{topic}".replace("*", "+")
    legal = _ILLEGAL.sub("_", name)
    if name.startswith("amq."):  # reserved by the broker
        legal = "_" + legal
    digest = hashlib.sha1(f"{group}.{topic}".encode()).hexdigest()[:12]
    if legal != name:
        legal = f"{legal}-{digest}"
    if len(legal.encode()) > _MAX_QUEUE_NAME - 24:  # room for ".wait.NNNNNNNN" and ".dlq"
        legal = legal.encode()[: _MAX_QUEUE_NAME - 40].decode(errors="ignore") + "-" + digest
    return legal


def dead_letter_queue(queue: str) -> str:
    """``{queue}.dlq``."""
    return queue + _DLQ


def work_queue(dlq: str) -> str:
    """The group queue whose dead-letter queue is ``dlq``."""
    return dlq.removesuffix(_DLQ)


def wait_queue(queue: str, delay_ms: int) -> str:
    """``{queue}.wait.{ms}``: where a message waits ``delay_ms`` before it returns to ``queue``."""
    return f"{queue}.wait.{delay_ms}"


async def declare_exchange(channel: AbstractChannel, name: str) -> AbstractExchange:
    """The durable topic exchange ``name``, declared if it is new."""
    return await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)


async def declare_group_queue(
    channel: AbstractChannel, name: str, *, exchange: str, binding: str, quorum: bool
) -> AbstractQueue:
    """Declare the group queue ``name`` and its DLQ (quorum queues with ``quorum``), and bind
    the queue to ``exchange`` with the binding key ``binding`` (a topic or pattern).

    The DLQ comes first, so that the queue's dead-letter target exists from the start.
    """
    queue_type: dict[str, Any] = {"x-queue-type": "quorum"} if quorum else {}
    dlq = dead_letter_queue(name)
    await channel.declare_queue(dlq, durable=True, arguments=queue_type)
    queue = await channel.declare_queue(
        name,
        durable=True,
        arguments={
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dlq,
            **queue_type,
        },
    )
    await queue.bind(await declare_exchange(channel, exchange), routing_key=binding)
    return queue


async def declare_wait_queue(channel: aiormq.abc.AbstractChannel, queue: str, delay_ms: int) -> str:
    """Declare :func:`wait_queue` on the raw ``channel``: it holds messages ``delay_ms``, then
    dead-letters them through the default exchange to ``queue`` (that group's only).

    Declared again on every delayed send (and not remembered for reconnects): redeclaring
    renews ``x-expires``, which removes wait queues no longer used.
    """
    name = wait_queue(queue, delay_ms)
    arguments: dict[str, Any] = {
        "x-message-ttl": delay_ms,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": queue,
        "x-expires": delay_ms + _WAIT_QUEUE_GRACE_MS,
    }
    await channel.queue_declare(name, durable=True, arguments=arguments)
    return name
