"""The RabbitMQ adapter (AMQP 0-9-1, through aio-pika): ``amqp://`` and ``amqps://`` URLs.

Topology (see ``docs/brokers/rabbitmq.md``):

* one durable **topic exchange** (``exchange="eventbus"``; or a callable that maps a
  destination or pattern to its domain exchange, e.g. ``auth.user.created`` →
  ``auth.events``). The **routing key is the destination** — the event type, or the event's
  ``event_topic`` — so our ``*``/``#`` subscription patterns are AMQP binding keys as they are;
* a durable **queue per (group, subscription)** named ``{group}.{topic}``, bound with the
  subscription's topic or pattern, competing consumers within the group, a copy per group;
  ``quorum=True`` declares quorum queues;
* ``{queue}.dlq`` — its dead-letter queue (also the queue's ``x-dead-letter-exchange`` target,
  so a native reject lands there with RabbitMQ's ``x-death``);
* ``{queue}.wait.{ms}`` — delayed redelivery without the delayed-message plugin: a queue with
  ``x-message-ttl`` that dead-letters back to ``{queue}`` only (not to the other groups).

Wire format: CloudEvents binary mode as the RabbitMQ binding writes it — ``ce-*`` headers, the
``content_type``, ``message_id`` (= event id), ``correlation_id``, ``timestamp`` and ``type``
properties, persistent delivery mode. Any CloudEvents form is accepted on input.

Publishing waits for the publisher confirm; ``mandatory=True`` (default) turns a message no
queue is bound for into :class:`~eventbus.errors.PublishError` instead of a silent drop. The
connection is ``aio_pika.connect_robust``: after a broker restart channels, queues, bindings
and consumers come back by themselves, and a publish during the outage either goes through
once the connection is back or raises :class:`~eventbus.errors.BrokerUnavailable` after
``publish_timeout`` seconds.

Keyword options not listed on :class:`RabbitMQBroker` go to ``aio_pika.connect_robust``
untouched (``reconnect_interval``, ``timeout``, ``client_properties``, ``ssl_context`` …):
https://docs.aio-pika.com/apidoc.html#aio_pika.connect_robust — URL query parameters
(``?heartbeat=30``) are read by aio-pika too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, cast

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from eventbus.brokers._wire import check_max_message_bytes
from eventbus.clock import SystemClock
from eventbus.deadletters import DeadLetterRecord
from eventbus.envelope import Envelope, decode, to_binary
from eventbus.errors import (
    BrokerUnavailable,
    ConfigurationError,
    DecodeError,
    EventBusError,
    PublishError,
)
from eventbus.types import Capabilities, SubscriptionView

if TYPE_CHECKING:
    from eventbus.brokers.rabbitmq_deadletters import RabbitMQDeadLetters

__all__ = ["RabbitMQBroker", "RabbitMQConsumer", "RabbitMQDelivery", "queue_name"]

log = logging.getLogger("eventbus.rabbitmq")

DEFAULT_MAX_MESSAGE_BYTES = 128 * 1024 * 1024
"""RabbitMQ's default ``max_message_size``."""
ATTEMPT = "eventbus-attempt"
"""Header with the delivery attempt of a republished copy (nack, retry_later)."""
DESTINATION = "eventbus-destination"
"""Header with the original routing key of a copy sent straight to one group's queue."""
PREFIX = "eventbus-"
"""``eventbus-<key>`` headers carry ``Delivery.metadata``; ``eventbus-dlq-*`` is provenance."""
DLQ = "eventbus-dlq-"
_RESERVED = (ATTEMPT, DESTINATION)
_PERSISTENT = 2  # delivery_mode
_MAX_QUEUE_NAME = 255
_ILLEGAL = re.compile(r"[^a-zA-Z0-9\-_.:@#,/+ ]")

ExchangeOption = str | Callable[[str], str]


@contextlib.asynccontextmanager
async def _driver_errors(what: str) -> AsyncIterator[None]:
    """Map aio-pika/aiormq exceptions to eventbus errors: the adapter's one edge."""
    try:
        yield
    except Exception as exc:
        error = _map_error(what, exc)
        if error is None:
            raise
        raise error from exc


def _map_error(what: str, exc: Exception) -> EventBusError | None:
    """The eventbus error for a driver exception, or None to let it through unchanged.

    The publish and ack hot paths call this from a plain ``except`` (cheaper than entering
    :func:`_driver_errors`, and the message is only formatted when something failed).
    """
    if isinstance(exc, EventBusError):
        return None
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
    if isinstance(exc, aiormq.exceptions.AuthenticationError):
        return ConfigurationError(
            f"{what}: login refused ({exc}); check the user:password in the URL"
        )
    if isinstance(
        exc,
        (
            aiormq.exceptions.AMQPError,
            aiormq.exceptions.ChannelInvalidStateError,
            ConnectionError,
            OSError,
            asyncio.TimeoutError,
        ),
    ):
        return BrokerUnavailable(f"{what}: RabbitMQ is not reachable ({exc!r})")
    return None


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


def _text(value: Any) -> str:
    """A header value as text for the adapter's own headers (never raises)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _received_headers(message: AbstractIncomingMessage) -> dict[str, Any]:
    """The header table as it arrived, made fit to be sent again, with ``content_type`` in.

    The driver hands over a long string that is not UTF-8 as ``bytes``, which it cannot encode
    again: it becomes a ``bytearray`` (an AMQP byte array); and it writes every float as a
    32-bit one, so a double beyond that range becomes its text. This holds everywhere in the
    table, so a requeue or dead-lettering always republishes the message.
    """
    headers: dict[str, Any] = dict(message.headers or {})
    if any(type(v) in _NEEDS_A_LOOK or type(k) is not str for k, v in headers.items()):
        headers = {_text(k): _sendable(v) for k, v in headers.items()}
    if message.content_type:
        headers["content-type"] = _text(message.content_type)
    return headers


_NEEDS_A_LOOK = frozenset((bytes, memoryview, dict, list, tuple, float))
_FLOAT32_MAX = 3.4028234663852886e38


def _sendable(value: Any) -> Any:
    if isinstance(value, (bytes, memoryview)):
        return bytearray(value)
    if isinstance(value, float):
        return value if abs(value) <= _FLOAT32_MAX or value != value else repr(value)
    if isinstance(value, dict):
        return {_text(k): _sendable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sendable(v) for v in value]
    return value


def _copy(
    message: AbstractIncomingMessage, headers: Mapping[str, Any], **changes: Any
) -> aio_pika.Message:
    """A persistent copy of ``message`` with other headers, every property kept."""
    properties: dict[str, Any] = {
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "correlation_id": message.correlation_id,
        "message_id": message.message_id,
        "timestamp": message.timestamp,
        "type": message.type,
        "app_id": message.app_id,
        "priority": message.priority,
        "reply_to": message.reply_to,
    }
    properties.update(changes)
    table = {k: v for k, v in headers.items() if k != "content-type"}
    return aio_pika.Message(
        message.body, headers=table, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **properties
    )


def _without_ours(headers: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in headers.items() if not k.startswith(PREFIX)}


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
        if not (callable(exchange) or (isinstance(exchange, str) and exchange)):
            raise ConfigurationError(
                f"exchange must be a non-empty name or a function destination -> name, "
                f"not {exchange!r}; e.g. exchange='auth.events'"
            )
        if isinstance(exchange, str) and exchange.startswith("amq."):
            raise ConfigurationError(f"exchange {exchange!r}: names starting 'amq.' are reserved")
        if isinstance(publish_timeout, bool) or not publish_timeout > 0:
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
        for name, value in (("mandatory", mandatory), ("quorum", quorum)):
            if not isinstance(value, bool):
                raise ConfigurationError(f"{name} must be True or False, not {value!r}")
        self.url = url
        self.exchange = exchange
        self.mandatory = mandatory
        self.quorum = quorum
        self.publish_timeout = float(publish_timeout)
        self.prefetch = prefetch
        self._options = options
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None  # publishing, with confirms
        self._underlay: aiormq.abc.AbstractChannel | None = None  # its current aiormq channel
        self._exchanges: dict[str, AbstractExchange] = {}
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # Imported here: the store module builds on this one's helpers.
        from eventbus.brokers.rabbitmq_deadletters import RabbitMQDeadLetters

        self._dead = RabbitMQDeadLetters(self)

    # ---------------------------------------------------------------- lifecycle
    async def connect(self) -> None:
        if self._connection is not None:
            return
        async with _driver_errors(f"connecting to {self._safe_url}"):
            connection = await aio_pika.connect_robust(self.url, **self._options)
            try:
                self._channel = await connection.channel(publisher_confirms=True)
            except BaseException:
                await connection.close()
                raise
        self._connection = connection

    async def close(self) -> None:
        """Wait (up to ``publish_timeout``) for publishes awaiting a confirm, then disconnect."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self.publish_timeout)
        self._channel = self._underlay = None
        self._exchanges.clear()
        with contextlib.suppress(Exception):  # closing a broken connection must not raise
            await connection.close()

    @property
    def _safe_url(self) -> str:
        head, _, tail = self.url.rpartition("@")
        return self.url.split("//", 1)[0] + "//***@" + tail if head else self.url

    @property
    def connection(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise BrokerUnavailable("the RabbitMQ broker is not connected; start the bus first")
        return self._connection

    @property
    def dead_letters(self) -> RabbitMQDeadLetters:
        return self._dead

    def pending(self) -> None:
        """Not known exactly on a network broker (``bus.drain()`` waits for idle handlers)."""
        return

    def exchange_for(self, destination: str) -> str:
        """The exchange a destination (or subscription pattern) is published to / bound on."""
        return self.exchange(destination) if callable(self.exchange) else self.exchange

    # ---------------------------------------------------------------- publishing
    async def publish(self, destination: str, envelope: Envelope) -> None:
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
        await self._send(
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
        message = aio_pika.Message(
            body, headers=dict(headers or {}), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
        )
        await self.send(self.exchange_for(destination), destination, message)

    async def send(
        self, exchange: str, routing_key: str, message: aio_pika.Message, *, mandatory: bool = True
    ) -> None:
        """Publish and wait for the confirm, riding out a reconnect until ``publish_timeout``.

        After a connection loss the message is sent again once the connection is back: a
        confirm lost with the connection can make that a duplicate (at-least-once).
        """
        await self._send(
            exchange, routing_key, message.body, message.properties, mandatory and self.mandatory
        )

    async def _send(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: aiormq.spec.Basic.Properties,
        mandatory: bool,
    ) -> None:
        """:meth:`send` for a ready body and properties: the publish hot path.

        Concurrent calls pipeline on the one publishing channel: each writes its frames and
        then awaits its own confirm, so many publishes are in flight at once and each returns
        only once RabbitMQ has confirmed its message. While the channel is open the message
        goes straight to it; otherwise (first use of an exchange, a reconnect) through
        :meth:`_send_retrying`.
        """
        deadline = asyncio.get_running_loop().time() + self.publish_timeout
        self._inflight += 1
        self._idle.clear()
        try:
            underlay = self._underlay
            if underlay is not None and not underlay.is_closed and exchange in self._exchanges:
                try:
                    result = await underlay.basic_publish(  # type: ignore[call-arg]
                        body,
                        exchange=exchange,
                        routing_key=routing_key,
                        properties=properties,
                        mandatory=mandatory,
                        timeout=self.publish_timeout,
                        wait=False,  # see _send_once
                    )
                except Exception as exc:
                    self._retryable_or_raise(routing_key, exc, deadline)
                    result = await self._send_retrying(
                        exchange, routing_key, body, properties, mandatory, deadline
                    )
            else:
                result = await self._send_retrying(
                    exchange, routing_key, body, properties, mandatory, deadline
                )
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()
        if isinstance(result, aiormq.abc.DeliveredMessage):  # a Basic.Return: nobody bound
            raise PublishError(
                f"no queue is bound for routing key {routing_key!r} on exchange {exchange!r}, "
                "so RabbitMQ returned the event (nothing was stored); start a consumer for it "
                "first, declare a queue bound to it, or create the broker with mandatory=False"
            )

    def _retryable_or_raise(self, routing_key: str, exc: Exception, deadline: float) -> None:
        """After a failed publish attempt: return if it may be tried again (the connection is
        down and ``deadline`` not reached), else raise the eventbus error for ``exc``."""
        self._underlay = None
        error = _map_error(f"publishing to {routing_key!r}", exc)
        if not isinstance(error, BrokerUnavailable):
            if error is None:
                raise exc
            raise error from exc
        self._give_up_after(deadline, error, exc)

    async def _send_retrying(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: aiormq.spec.Basic.Properties,
        mandatory: bool,
        deadline: float,
    ) -> Any:
        """Publish, riding out a reconnect until ``deadline``; the confirm or the return."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                return await asyncio.wait_for(
                    self._send_once(exchange, routing_key, body, properties, mandatory),
                    max(0.001, deadline - loop.time()),
                )
            except Exception as exc:
                self._retryable_or_raise(routing_key, exc, deadline)
                await asyncio.sleep(min(0.2, max(0.0, deadline - loop.time())))

    def _give_up_after(self, deadline: float, error: BrokerUnavailable, exc: Exception) -> None:
        """Raise once ``deadline`` has passed (or the broker was closed) instead of retrying."""
        if asyncio.get_running_loop().time() >= deadline or self._connection is None:
            raise BrokerUnavailable(
                f"{error}; gave up after publish_timeout={self.publish_timeout:g}s; "
                "the event may not have been published: publish it again"
            ) from exc

    async def _send_once(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: aiormq.spec.Basic.Properties,
        mandatory: bool,
    ) -> Any:
        channel = self._channel
        if channel is None:
            raise BrokerUnavailable("the RabbitMQ broker is not connected; start the bus first")
        await channel.ready()  # type: ignore[attr-defined]  # RobustChannel: wait out a reconnect
        if exchange not in self._exchanges:
            if exchange:
                self._exchanges[exchange] = await channel.declare_exchange(
                    exchange, aio_pika.ExchangeType.TOPIC, durable=True
                )
            else:
                self._exchanges[exchange] = channel.default_exchange
        underlay = await channel.get_underlay_channel()
        self._underlay = underlay  # the fast path of _send uses it while it stays open
        # wait=False: do not hold the channel's lock until the frames reach the socket, so
        # concurrent publishes pipeline; the confirm awaited below is the guarantee.
        return await underlay.basic_publish(  # type: ignore[call-arg]  # aiormq's ABC lacks wait
            body,
            exchange=exchange,
            routing_key=routing_key,
            properties=properties,
            mandatory=mandatory,
            wait=False,
        )

    async def declare_wait_queue(self, queue: str, delay_ms: int) -> str:
        """``{queue}.wait.{ms}``: holds messages ``delay_ms`` then dead-letters them to ``queue``.

        Declared on the raw channel each time (not remembered for reconnects): redeclaring
        renews ``x-expires``, which removes wait queues no longer used.
        """
        name = f"{queue}.wait.{delay_ms}"
        arguments: dict[str, Any] = {
            "x-message-ttl": delay_ms,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue,
            "x-expires": delay_ms + 60_000,
        }
        channel = self._channel
        if channel is None:
            raise BrokerUnavailable("the RabbitMQ broker is not connected")
        async with _driver_errors(f"declaring {name!r}"):
            raw = await asyncio.wait_for(channel.get_underlay_channel(), self.publish_timeout)
            await raw.queue_declare(name, durable=True, arguments=arguments)
        return name

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
        queue_type = {"x-queue-type": "quorum"} if self.quorum else {}
        async with _driver_errors(f"subscribing {subscription.name} to {subscription.topic!r}"):
            channel = await self.connection.channel(publisher_confirms=False)
            try:
                await channel.set_qos(prefetch_count=self.prefetch or 2 * subscription.concurrency)
                await channel.declare_queue(f"{name}.dlq", durable=True, arguments=queue_type)
                queue = await channel.declare_queue(
                    name,
                    durable=True,
                    arguments={
                        "x-dead-letter-exchange": "",
                        "x-dead-letter-routing-key": f"{name}.dlq",
                        **queue_type,
                    },
                )
                exchange = await channel.declare_exchange(
                    self.exchange_for(subscription.topic), aio_pika.ExchangeType.TOPIC, durable=True
                )
                await queue.bind(exchange, routing_key=subscription.topic)
                consumer = RabbitMQConsumer(self, channel, queue, subscription)
                await consumer.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await channel.close()
                raise
        self._dead.register(f"{name}.dlq", subscription.group)
        return consumer


class RabbitMQConsumer:
    """One consumer on a group's queue, on a channel of its own (its prefetch).

    Closing sends the acks still held back (see :meth:`acknowledge`), cancels the consumer and
    closes the channel, which hands every unsettled message back to RabbitMQ (redelivered,
    counted as the next attempt).
    """

    def __init__(
        self,
        broker: RabbitMQBroker,
        channel: AbstractChannel,
        queue: AbstractQueue,
        subscription: SubscriptionView,
    ) -> None:
        self.broker = broker
        self.channel = channel
        self.queue = queue
        self.subscription = subscription
        self._buffer: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._tag: str | None = None
        prefetch = broker.prefetch or 2 * subscription.concurrency
        # An inline subscription (concurrency 1) settles in delivery order, so a run of acks
        # can go out as one multiple-ack: at most a quarter of the prefetch window at a time.
        self._ack_batch = prefetch // 4 if subscription.concurrency == 1 else 0
        self._ack_channel: aiormq.abc.AbstractChannel | None = None
        self._settled_through = 0  # every tag <= this one on _ack_channel is settled by us
        self._held = 0  # the highest tag whose ack is held back (0: none)
        self._held_count = 0
        self._flush_handle: asyncio.Handle | None = None
        self._flushes: set[asyncio.Task[None]] = set()
        self._ack_lock = asyncio.Lock()

    async def start(self) -> None:
        self._tag = await self.queue.consume(self._receive, no_ack=False)

    async def _receive(self, message: AbstractIncomingMessage) -> None:
        self._buffer.put_nowait(message)

    def __aiter__(self) -> AsyncIterator[RabbitMQDelivery]:
        return self._deliveries()

    async def _deliveries(self) -> AsyncIterator[RabbitMQDelivery]:
        while True:
            message = await self._buffer.get()
            try:
                message.channel  # noqa: B018  # raises once its channel is gone
            except aiormq.exceptions.ChannelInvalidStateError:
                continue  # taken before a reconnect: RabbitMQ has requeued it already
            yield RabbitMQDelivery(self, message)

    # ---------------------------------------------------------------- settling
    async def acknowledge(self, channel: aiormq.abc.AbstractChannel, tag: int) -> None:
        """``basic.ack`` for delivery ``tag``, once the handler is done with it.

        The frame is not waited for on its way to the socket: an AMQP ack has no reply, and
        one lost with the connection means a redelivery, never a loss. An inline consumer
        holds an ack back while more deliveries are already buffered, so that one
        ``multiple`` ack covers the run: only when every tag up to it on this channel has been
        settled here (a delivery whose settling failed ends the coalescing on its channel, so
        a ``multiple`` ack never covers it), for a quarter of the prefetch at most, and sent by
        the next turn of the event loop at the latest.
        """
        if self._ack_batch:
            if channel is not self._ack_channel:  # a new channel (reconnect): tags restart at 1
                self._reset(channel)
            if tag == self._settled_through + 1:
                self._settled_through = tag
                if self._buffer.qsize() and self._held_count + 1 < self._ack_batch:
                    self._held, self._held_count = tag, self._held_count + 1
                    if self._flush_handle is None:
                        self._flush_handle = asyncio.get_running_loop().call_soon(self._flush_soon)
                    return
                self._held, self._held_count = 0, 0
                # Serialised with flush(): a lower multiple-ack written after a higher one
                # would name a tag already acked, which closes the channel.
                async with self._ack_lock:
                    await channel.basic_ack(tag, multiple=True, wait=False)
                return
        await channel.basic_ack(tag, wait=False)

    async def reject(
        self, channel: aiormq.abc.AbstractChannel, tag: int, *, requeue: bool = False
    ) -> None:
        """``basic.reject`` after the held acks: RabbitMQ dead-letters the message, or with
        ``requeue`` puts it back in its place in the queue."""
        if not self._ack_batch:
            await channel.basic_reject(tag, requeue=requeue)
            return
        if channel is not self._ack_channel:
            self._reset(channel)
        await self.flush()
        async with self._ack_lock:
            await channel.basic_reject(tag, requeue=requeue)
        if tag == self._settled_through + 1:
            self._settled_through = tag

    def _reset(self, channel: aiormq.abc.AbstractChannel) -> None:
        self._ack_channel, self._settled_through = channel, 0
        self._held, self._held_count = 0, 0

    def _flush_soon(self) -> None:
        self._flush_handle = None
        if self._held:
            task = asyncio.get_running_loop().create_task(self.flush())
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def flush(self) -> None:
        """Send the acks held back; a failure means a lost channel: RabbitMQ redelivers."""
        tag, channel = self._held, self._ack_channel
        if not tag or channel is None:
            return
        self._held, self._held_count = 0, 0
        try:
            async with self._ack_lock:
                await channel.basic_ack(tag, multiple=True, wait=False)
        except Exception as exc:
            log.debug("could not send held acks (up to tag %d): %r", tag, exc)

    async def close(self) -> None:
        await self.flush()
        with contextlib.suppress(Exception):  # a dead connection has cancelled it already
            if self._tag is not None:
                await self.queue.cancel(self._tag)
        with contextlib.suppress(Exception):
            await self.channel.close()


class RabbitMQDelivery:
    """One AMQP message; see :class:`eventbus.types.Delivery` for the contract.

    ``attempt`` is the ``eventbus-attempt`` header (1 when absent) plus one when RabbitMQ
    redelivers it (``redelivered`` flag, or the quorum queue's ``x-delivery-count``).
    """

    def __init__(self, consumer: RabbitMQConsumer, message: AbstractIncomingMessage) -> None:
        self._consumer = consumer
        self._message = message
        self._settled = False
        self._copied = False  # the copy a settle sends (requeue, delay, DLQ) was confirmed
        self.headers: Mapping[str, Any] = _received_headers(message)
        carried = self.headers.get(ATTEMPT)
        try:
            base = max(1, int(_text(carried))) if carried is not None else 1
        except ValueError:
            base = 1
        returned = self.headers.get("x-delivery-count")
        if isinstance(returned, int) and not isinstance(returned, bool) and returned >= 0:
            self.attempt = base + returned
        else:
            self.attempt = base + int(bool(message.redelivered))
        self.metadata: dict[str, str] = {
            k[len(PREFIX) :]: _text(v)
            for k, v in self.headers.items()
            if k.startswith(PREFIX) and k not in _RESERVED and not k.startswith(DLQ)
        }
        self.destination = _text(self.headers.get(DESTINATION) or message.routing_key or "")
        self.envelope: Envelope | None
        self.decode_error: DecodeError | None = None
        try:
            self.envelope = decode(self.headers, message.body)
        except DecodeError as exc:
            self.envelope, self.decode_error = None, exc

    @property
    def body(self) -> bytes:
        return self._message.body

    @property
    def queue(self) -> str:
        return self._consumer.queue.name

    def _open(self) -> bool:
        """Whether this delivery still needs settling; raise if its channel was lost.

        Its delivery tag means nothing on a restored channel (acking it there would settle
        another message, or close the channel with PRECONDITION_FAILED), and RabbitMQ has taken
        the message back and will deliver it again: a copy republished now (nack, retry_later,
        dead_letter) would be a duplicate of that redelivery, so nothing is sent. A settle that
        fails leaves the delivery open, so it can be settled again (or released).
        """
        if self._settled:
            return False
        try:
            self._message.channel  # noqa: B018  # raises once its channel is gone
        except aiormq.exceptions.ChannelInvalidStateError:
            self._settled = True
            raise BrokerUnavailable(
                "this message was delivered on a channel that a connection loss closed; "
                "RabbitMQ has requeued it and will deliver it again"
            ) from None
        return True

    async def ack(self) -> None:
        if self._open():
            await self._ack()

    async def _ack(self) -> None:
        message = self._message
        try:
            await self._consumer.acknowledge(message.channel, message.delivery_tag or 0)
        except Exception as exc:
            error = _map_error("acknowledging", exc)
            if error is None:
                raise
            raise error from exc
        self._settled = True

    async def nack(self) -> None:
        """A copy with ``attempt + 1`` goes to the back of this group's queue (classic queues
        count no redeliveries), then the original is acked."""
        if self._open():
            await self._resend("", self.queue)

    async def release(self) -> None:
        """``basic.reject`` with requeue: back in its place in the queue, so order is kept.

        RabbitMQ flags the message ``redelivered`` and cannot tell this from a crash, so the
        next delivery counts one attempt more (``Capabilities.uncounted_release`` is False).
        """
        if self._open():
            await self._reject(requeue=True)

    async def _reject(self, *, requeue: bool) -> None:
        message = self._message
        async with _driver_errors("rejecting" if not requeue else "releasing"):
            await self._consumer.reject(message.channel, message.delivery_tag or 0, requeue=requeue)
        self._settled = True

    async def retry_later(self, delay: float) -> None:
        if not self._open():
            return
        delay_ms = max(0, round(delay * 1000))
        if delay_ms == 0:
            await self._resend("", self.queue)
            return
        wait_queue = await self._consumer.broker.declare_wait_queue(self.queue, delay_ms)
        await self._resend("", wait_queue)

    async def _resend(self, exchange: str, routing_key: str) -> None:
        """A copy with the next attempt to ``routing_key``, then ack the original. Tried again
        after a failure, a copy already confirmed is not sent twice."""
        if not self._copied:
            headers = _without_ours(self.headers)
            headers.update({PREFIX + k: v for k, v in self.metadata.items()})
            headers[ATTEMPT] = str(self.attempt + 1)
            headers[DESTINATION] = self.destination
            message = _copy(self._message, headers)
            await self._consumer.broker.send(exchange, routing_key, message, mandatory=False)
            self._copied = True
        await self._ack()

    async def dead_letter(self, record: DeadLetterRecord) -> None:
        """Publish the original message with provenance headers to ``{queue}.dlq``, then ack."""
        if not self._open():
            return
        if not self._copied:
            headers = dict(self.headers)
            headers.update(_provenance(record))
            message = _copy(self._message, headers)
            await self._consumer.broker.send("", f"{self.queue}.dlq", message, mandatory=False)
            self._copied = True
        await self._ack()


def _provenance(record: DeadLetterRecord) -> dict[str, str]:
    fields = {
        "id": record.id,
        "reason": record.reason,
        "error-type": record.error_type,
        "error-message": record.error_message[:4000],
        "group": record.group,
        "subscription": record.subscription,
        "attempts": str(record.attempts),
        "destination": record.destination,
        "traceback": record.traceback[-8000:],
        "first-failure-at": record.first_failure_at.isoformat() if record.first_failure_at else "",
        "last-failure-at": record.last_failure_at.isoformat() if record.last_failure_at else "",
    }
    return {DLQ + k: v for k, v in fields.items() if v}


def from_url(url: str, **options: Any) -> RabbitMQBroker:
    """``amqp://user:password@host:port/vhost`` or ``amqps://…``; see :class:`RabbitMQBroker`."""
    return RabbitMQBroker(url, **options)
