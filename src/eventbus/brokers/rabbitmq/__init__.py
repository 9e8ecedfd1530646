"""The RabbitMQ adapter (AMQP 0-9-1, through aio-pika): ``amqp://`` and ``amqps://`` URLs.

It translates and never decides: the consume policy settles each delivery, and this package
turns that into AMQP. Its modules, each depending only on the ones below it:

* this one — :class:`RabbitMQBroker`: the connection, publishing, subscribing; ``from_url``;
* :mod:`.deadletters` — :class:`RabbitMQDeadLetters`, the ``{queue}.dlq`` store;
* :mod:`.consumer` — :class:`RabbitMQConsumer` (ack coalescing) and :class:`RabbitMQDelivery`;
* :mod:`.publisher` — the publishing channel: confirms, pipelining, riding out reconnects;
* :mod:`.messages` — the wire format, and header tables made fit to be sent again;
* :mod:`.topology` — exchanges, queue names and declarations, wait queues, driver errors.

Publishing waits for the publisher confirm; ``mandatory=True`` (default) turns a message no
queue is bound for into :class:`~eventbus.errors.PublishError` instead of a silent drop. The
connection is ``aio_pika.connect_robust``: after a broker restart channels, queues, bindings
and consumers come back by themselves, and a publish during the outage either goes through
once the connection is back or raises :class:`~eventbus.errors.BrokerUnavailable` after
``publish_timeout`` seconds. See ``docs/brokers/rabbitmq.md``.

Keyword options not listed on :class:`RabbitMQBroker` go to ``aio_pika.connect_robust``
untouched (``reconnect_interval``, ``timeout``, ``client_properties``, ``ssl_context`` …):
https://docs.aio-pika.com/apidoc.html#aio_pika.connect_robust — URL query parameters
(``?heartbeat=30``) are read by aio-pika too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustConnection

from eventbus.brokers._wire import check_max_message_bytes, hosts_of
from eventbus.brokers.rabbitmq.consumer import RabbitMQConsumer, RabbitMQDelivery
from eventbus.brokers.rabbitmq.deadletters import RabbitMQDeadLetters
from eventbus.brokers.rabbitmq.messages import foreign, outgoing
from eventbus.brokers.rabbitmq.publisher import ConfirmedPublisher
from eventbus.brokers.rabbitmq.topology import (
    ExchangeOption,
    check_exchange,
    dead_letter_queue,
    declare_group_queue,
    declare_wait_queue,
    errors,
    queue_name,
    quietly,
    wait_queue,
)
from eventbus.clock import SystemClock
from eventbus.envelope import Envelope
from eventbus.errors import BusNotStarted, ConfigurationError
from eventbus.redact import redact_url
from eventbus.types import Capabilities, SubscriptionView, WireChannel, WireFormat

__all__ = [
    "RabbitMQBroker",
    "RabbitMQConsumer",
    "RabbitMQDeadLetters",
    "RabbitMQDelivery",
    "from_url",
    "queue_name",
]

DEFAULT_MAX_MESSAGE_BYTES = 128 * 1024 * 1024
"""RabbitMQ's default ``max_message_size``."""
_NOT_STARTED = "the RabbitMQ broker is not connected; start the bus first"


class RabbitMQBroker:
    """RabbitMQ through one robust aio-pika connection; see the module documentation.

    ``exchange`` names the topic exchange, or maps a destination (or subscription pattern) to
    one. ``mandatory`` makes unroutable publishes raise. ``quorum`` declares quorum queues
    (new queues only: an existing queue keeps its type). ``publish_timeout`` bounds how long
    a publish waits for its confirm, reconnects included. ``prefetch`` is how many
    unacknowledged messages each consumer may hold (default ``2 * concurrency``, what the
    bus's dispatcher holds at most; more keeps a fast handler busy while acks travel).
    ``max_message_bytes`` is the payload limit the bus applies (RabbitMQ's own
    ``max_message_size`` default, 128 MiB). ``options`` go to ``aio_pika.connect_robust``.
    """

    system = "rabbitmq"
    """The OpenTelemetry ``messaging.system`` of this adapter."""
    capabilities = Capabilities(
        persistent=True,
        consumer_groups=True,
        ordered_per_key=True,
        delayed_redelivery=True,
        dead_letters=True,
        pattern_subscriptions=True,
        counts_crash_redeliveries=True,
    )
    clock = SystemClock()

    def __init__(
        self,
        url: str = "amqp://guest:guest@127.0.0.1:5672/",
        *,
        exchange: ExchangeOption = "eventbus",
        mandatory: bool = True,
        quorum: bool = False,
        publish_timeout: float = 10.0,
        prefetch: int | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        **options: Any,
    ) -> None:
        self.max_message_bytes = check_max_message_bytes(max_message_bytes)
        self.exchange = check_exchange(exchange)
        _check_options(publish_timeout, prefetch, mandatory=mandatory, quorum=quorum)
        self.url = url
        self.mandatory = mandatory
        self.quorum = quorum
        self.publish_timeout = float(publish_timeout)
        self.prefetch = prefetch
        self._options = options
        self._connection: AbstractRobustConnection | None = None
        self._publisher: ConfirmedPublisher | None = None
        self._dead = RabbitMQDeadLetters(self)

    # ---------------------------------------------------------------- lifecycle
    async def connect(self) -> None:
        if self._connection is not None:
            return
        with errors(f"connecting to {redact_url(self.url)}"):
            try:
                connection = await aio_pika.connect_robust(self.url, **self._options)
            except ValueError as exc:  # a port that is not a number, say
                raise ConfigurationError(
                    f"cannot connect to {redact_url(self.url)}: the URL is malformed ({exc}); "
                    "it looks like amqp://user:password@host:5672/vhost"
                ) from exc
            try:
                channel = await connection.channel(publisher_confirms=True)
            except BaseException:
                await connection.close()
                raise
        self._publisher = ConfirmedPublisher(channel, self.publish_timeout)
        self._connection = connection

    async def close(self) -> None:
        """Wait (up to ``publish_timeout``) for publishes awaiting a confirm, then disconnect."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._publisher is not None:
            await self._publisher.close()
            self._publisher = None
        # Closing a broken connection must not raise: it is gone either way.
        await quietly("closing the RabbitMQ connection", connection.close())

    @property
    def connection(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise BusNotStarted(_NOT_STARTED)
        return self._connection

    def _publishing(self) -> ConfirmedPublisher:
        if self._publisher is None:
            raise BusNotStarted(_NOT_STARTED)
        return self._publisher

    @property
    def dead_letters(self) -> RabbitMQDeadLetters:
        return self._dead

    def wire_format(self) -> WireFormat:
        """Binary mode: ``ce-*`` headers; ``content-type`` is the AMQP property."""
        scheme = "amqps" if self.url.startswith("amqps:") else "amqp"
        port = 5671 if scheme == "amqps" else 5672
        vhost = urlsplit(self.url).path or "/"
        return WireFormat(scheme, hosts_of(self.url, port), vhost, "ce-", False)

    def channel(self, destination: str) -> WireChannel:
        exchange = {"name": self.exchange_for(destination), "type": "topic", "durable": True}
        return WireChannel(
            destination,
            description=f"Routing key {destination!r} on the topic exchange {exchange['name']!r}.",
            bindings={
                "amqp": {"is": "routingKey", "exchange": exchange, "bindingVersion": "0.3.0"}
            },
        )

    def receive_bindings(self, subscription: SubscriptionView) -> dict[str, Any]:
        """Consumed with explicit acks, from the group's queue."""
        return {"amqp": {"ack": True, "bindingVersion": "0.3.0"}}

    def internal_channels(self, subscription: SubscriptionView) -> list[WireChannel]:
        group = subscription.group or subscription.name
        queue = queue_name(group, subscription.topic)

        def on_queue(name: str, role: str, description: str, **parameters: str) -> WireChannel:
            binding = {"is": "queue", "queue": {"name": name, "durable": True}}
            return WireChannel(
                name,
                role,
                description,
                parameters,
                {"amqp": {**binding, "bindingVersion": "0.3.0"}},
            )

        return [
            on_queue(
                wait_queue(queue, 0).replace(".wait.0", ".wait.{delayMs}"),
                "retry",
                f"Where a redelivery of group {group!r} waits delayMs milliseconds (its message "
                f"TTL), then dead-letters back to the queue {queue!r}.",
                delayMs="The wait in milliseconds.",
            ),
            on_queue(
                dead_letter_queue(queue),
                "dead-letter",
                f"Dead letters of group {group!r}, provenance in eventbus-dlq-* headers.",
            ),
        ]

    def pending(self) -> None:
        """Not known exactly on a network broker (``bus.drain()`` waits for idle handlers)."""
        return

    async def lag(self, subscription: SubscriptionView) -> int | None:
        """Messages ready in the subscription's group queue (a passive declare on a channel of
        its own); those its consumers hold unacknowledged (up to ``prefetch`` each) and those
        waiting in a wait queue for a delayed retry are not counted. None when the queue is
        gone."""
        if subscription.group is None:
            return None
        name = queue_name(subscription.group, subscription.topic)
        with errors(f"reading the depth of {name!r}"):
            channel = await self.connection.channel(publisher_confirms=False)
            try:
                queue = await channel.declare_queue(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return None
            finally:
                await quietly("closing the channel of a depth check", channel.close())
        return int(queue.declaration_result.message_count or 0)

    def __repr__(self) -> str:
        return f"RabbitMQBroker({redact_url(self.url)!r})"

    def exchange_for(self, destination: str) -> str:
        """The exchange a destination (or subscription pattern) is published to / bound on."""
        return self.exchange(destination) if callable(self.exchange) else self.exchange

    # ---------------------------------------------------------------- publishing
    async def publish(self, destination: str, envelope: Envelope) -> None:
        body, properties = outgoing(envelope)
        await self._publishing().send(
            self.exchange_for(destination), destination, body, properties, self.mandatory
        )

    async def publish_batch(self, messages: Sequence[tuple[str, Envelope]]) -> None:
        """Pipelined: every message is written, then every confirm awaited; raises the first
        failure (the others may have been published)."""
        results = await asyncio.gather(
            *(self.publish(d, e) for d, e in messages), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def send_raw(
        self,
        destination: str,
        body: bytes,
        headers: Mapping[str, Any] | None = None,
        key: str | None = None,
    ) -> None:
        """Put bytes on ``destination`` as a foreign producer would (``key`` has no AMQP home)."""
        await self.send(self.exchange_for(destination), destination, foreign(body, headers))

    async def send(
        self, exchange: str, routing_key: str, message: aio_pika.Message, *, mandatory: bool = True
    ) -> None:
        """Publish ``message`` and wait for the confirm, riding out a reconnect until
        ``publish_timeout``; ``mandatory`` holds only where the broker's option does too."""
        await self._publishing().send(
            exchange, routing_key, message.body, message.properties, mandatory and self.mandatory
        )

    async def declare_wait_queue(self, queue: str, delay_ms: int) -> str:
        """``{queue}.wait.{ms}``: holds messages ``delay_ms`` then dead-letters them to
        ``queue``; declared on the publishing channel before each delayed send."""
        with errors(f"declaring {wait_queue(queue, delay_ms)!r}"):
            raw = await self._publishing().underlay()
            return await declare_wait_queue(raw, queue, delay_ms)

    # ---------------------------------------------------------------- consuming
    async def subscribe(self, subscription: SubscriptionView) -> RabbitMQConsumer:
        """Declare the group's queue, its DLQ and binding, then start consuming.

        Returns once the queue is bound, so nothing published afterwards is missed. Prefetch
        is the ``prefetch`` option, by default ``2 * concurrency``: what the bus's dispatcher
        holds at most.
        """
        if subscription.group is None:
            raise ValueError("subscription has no group; include it into a bus first")
        name = queue_name(subscription.group, subscription.topic)
        prefetch = self.prefetch or 2 * subscription.concurrency
        with errors(f"subscribing {subscription.name} to {subscription.topic!r}"):
            channel = await self.connection.channel(publisher_confirms=False)
            try:
                await channel.set_qos(prefetch_count=prefetch)
                queue = await declare_group_queue(
                    channel,
                    name,
                    exchange=self.exchange_for(subscription.topic),
                    binding=subscription.topic,
                    quorum=self.quorum,
                )
                consumer = RabbitMQConsumer(self, channel, queue, subscription, prefetch)
                await consumer.start()
            except BaseException:
                await quietly("closing the channel of a failed subscribe", channel.close())
                raise
        self._dead.register(dead_letter_queue(name), subscription.group)
        return consumer

    async def remove_group(self, subscription: SubscriptionView) -> None:
        """Delete the group's queue, and its dead-letter queue if it is empty (its wait
        queues expire on their own)."""
        if subscription.group is None:
            raise ValueError("subscription has no group; include it into a bus first")
        name = queue_name(subscription.group, subscription.topic)
        with errors(f"removing the queue {name!r}"):
            channel = await self.connection.channel(publisher_confirms=False)
            try:
                await channel.queue_delete(name)
                await channel.queue_delete(dead_letter_queue(name), if_empty=True)
            finally:
                await quietly("closing the channel of a queue delete", channel.close())


def _check_options(publish_timeout: object, prefetch: object, **flags: object) -> None:
    """A :class:`ConfigurationError` saying what to pass, for the first bad option."""
    if (
        isinstance(publish_timeout, bool)
        or not isinstance(publish_timeout, (int, float))
        or not publish_timeout > 0
    ):
        raise ConfigurationError(
            f"publish_timeout must be a number of seconds > 0, not {publish_timeout!r}"
        )
    if prefetch is not None and (
        isinstance(prefetch, bool) or not isinstance(prefetch, int) or not 0 < prefetch < 65536
    ):
        raise ConfigurationError(
            f"prefetch must be a whole number of messages from 1 to 65535 (or None for "
            f"2 x concurrency), not {prefetch!r}"
        )
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ConfigurationError(f"{name} must be True or False, not {value!r}")


def from_url(url: str, **options: Any) -> RabbitMQBroker:
    """``amqp://user:password@host:port/vhost`` or ``amqps://…``; see :class:`RabbitMQBroker`."""
    return RabbitMQBroker(url, **options)
