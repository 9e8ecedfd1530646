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
from typing import TYPE_CHECKING, Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from eventbus.deadletters import DeadLetter
from eventbus.envelope import Envelope, decode, to_binary
from eventbus.errors import (
    BrokerUnavailable,
    ConfigurationError,
    DecodeError,
    EventBusError,
    PublishError,
)
from eventbus.router import Subscription
from eventbus.types import Capabilities

if TYPE_CHECKING:
    from eventbus.brokers.rabbitmq_deadletters import RabbitMQDeadLetters

__all__ = ["RabbitMQBroker", "RabbitMQConsumer", "RabbitMQDelivery", "queue_name"]

log = logging.getLogger("eventbus.rabbitmq")

ATTEMPT = "eventbus-attempt"
"""Header with the delivery attempt of a republished copy (nack, retry_later)."""
DESTINATION = "eventbus-destination"
"""Header with the original routing key of a copy sent straight to one group's queue."""
PREFIX = "eventbus-"
"""``eventbus-<key>`` headers carry ``Delivery.metadata``; ``eventbus-dlq-*`` is provenance."""
DLQ = "eventbus-dlq-"
_RESERVED = (ATTEMPT, DESTINATION)
_MAX_QUEUE_NAME = 255
_ILLEGAL = re.compile(r"[^a-zA-Z0-9\-_.:@#,/+ ]")

ExchangeOption = str | Callable[[str], str]


@contextlib.asynccontextmanager
async def _driver_errors(what: str) -> AsyncIterator[None]:
    """Map aio-pika/aiormq exceptions to eventbus errors: the adapter's one edge."""
    try:
        yield
    except EventBusError:
        raise
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise ConfigurationError(
            f"{what}: RabbitMQ refused the declaration ({exc}); a queue or exchange of that name "
            "exists with other arguments (durable, quorum, dead-letter settings): delete it "
            "(rabbitmqctl delete_queue NAME) or use another group name"
        ) from exc
    except aiormq.exceptions.ChannelAccessRefused as exc:
        raise ConfigurationError(
            f"{what}: access refused ({exc}); give the user configure/write/read permissions "
            "on the virtual host (rabbitmqctl set_permissions)"
        ) from exc
    except aiormq.exceptions.DeliveryError as exc:
        raise PublishError(f"{what}: RabbitMQ did not accept the message ({exc})") from exc
    except aiormq.exceptions.AuthenticationError as exc:
        raise ConfigurationError(
            f"{what}: login refused ({exc}); check the user:password in the URL"
        ) from exc
    except (
        aiormq.exceptions.AMQPError,
        aiormq.exceptions.ChannelInvalidStateError,
        ConnectionError,
        OSError,
        asyncio.TimeoutError,
    ) as exc:
        raise BrokerUnavailable(f"{what}: RabbitMQ is not reachable ({exc!r})") from exc


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
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _received_headers(message: AbstractIncomingMessage) -> dict[str, Any]:
    """The header table as it arrived, with the ``content_type`` property folded in."""
    headers: dict[str, Any] = dict(message.headers or {})
    if message.content_type:
        headers["content-type"] = message.content_type
    return headers


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
    a publish waits for its confirm, reconnects included. ``options`` go to
    ``aio_pika.connect_robust``.
    """

    capabilities = Capabilities(persistent=True)

    def __init__(
        self,
        url: str = "amqp://guest:guest@127.0.0.1:5672/",
        *,
        exchange: ExchangeOption = "eventbus",
        mandatory: bool = True,
        quorum: bool = False,
        publish_timeout: float = 10.0,
        **options: Any,
    ) -> None:
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
        for name, value in (("mandatory", mandatory), ("quorum", quorum)):
            if not isinstance(value, bool):
                raise ConfigurationError(f"{name} must be True or False, not {value!r}")
        self.url = url
        self.exchange = exchange
        self.mandatory = mandatory
        self.quorum = quorum
        self.publish_timeout = float(publish_timeout)
        self._options = options
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None  # publishing, with confirms
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
        self._channel = None
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

    def exchange_for(self, destination: str) -> str:
        """The exchange a destination (or subscription pattern) is published to / bound on."""
        return self.exchange(destination) if callable(self.exchange) else self.exchange

    # ---------------------------------------------------------------- publishing
    async def publish(self, destination: str, envelope: Envelope) -> None:
        attributes, body = to_binary(envelope, prefix="ce-")
        content_type = attributes.pop("content-type")
        headers: dict[str, Any] = dict(attributes)
        message = aio_pika.Message(
            body,
            headers=headers,
            content_type=content_type,
            message_id=envelope.id,
            correlation_id=envelope.correlationid,
            timestamp=envelope.time or datetime.now(timezone.utc),
            type=envelope.type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await self.send(self.exchange_for(destination), destination, message)

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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout
        self._inflight += 1
        self._idle.clear()
        try:
            while True:
                try:
                    async with _driver_errors(f"publishing to {routing_key!r}"):
                        result = await asyncio.wait_for(
                            self._send_once(exchange, routing_key, message, mandatory),
                            max(0.001, deadline - loop.time()),
                        )
                    break
                except BrokerUnavailable as exc:
                    if loop.time() >= deadline or self._connection is None:
                        raise BrokerUnavailable(
                            f"{exc}; gave up after publish_timeout={self.publish_timeout:g}s; "
                            "the event may not have been published: publish it again"
                        ) from exc
                    await asyncio.sleep(min(0.2, max(0.0, deadline - loop.time())))
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

    async def _send_once(
        self, exchange: str, routing_key: str, message: aio_pika.Message, mandatory: bool
    ) -> Any:
        channel = self._channel
        if channel is None:
            raise BrokerUnavailable("the RabbitMQ broker is not connected; start the bus first")
        await channel.ready()  # type: ignore[attr-defined]  # RobustChannel: wait out a reconnect
        target = self._exchanges.get(exchange)
        if target is None:
            if exchange:
                target = await channel.declare_exchange(
                    exchange, aio_pika.ExchangeType.TOPIC, durable=True
                )
            else:
                target = channel.default_exchange
            self._exchanges[exchange] = target
        return await target.publish(message, routing_key, mandatory=mandatory and self.mandatory)

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
    async def subscribe(self, subscription: Subscription) -> RabbitMQConsumer:
        """Declare the group's queue, its DLQ and binding, then start consuming.

        Returns once the queue is bound, so nothing published afterwards is missed. Prefetch
        is ``2 * concurrency``: what the bus's dispatcher holds at most.
        """
        if subscription.group is None:
            raise ValueError("subscription has no group; include it into a bus first")
        name = queue_name(subscription.group, subscription.topic)
        queue_type = {"x-queue-type": "quorum"} if self.quorum else {}
        async with _driver_errors(f"subscribing {subscription.name} to {subscription.topic!r}"):
            channel = await self.connection.channel(publisher_confirms=False)
            try:
                await channel.set_qos(prefetch_count=2 * subscription.concurrency)
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

    Closing cancels the consumer and closes the channel, which hands every unsettled message
    back to RabbitMQ (redelivered, counted as the next attempt).
    """

    def __init__(
        self,
        broker: RabbitMQBroker,
        channel: AbstractChannel,
        queue: AbstractQueue,
        subscription: Subscription,
    ) -> None:
        self.broker = broker
        self.channel = channel
        self.queue = queue
        self.subscription = subscription
        self._buffer: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._tag: str | None = None

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

    async def close(self) -> None:
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
        self.headers: Mapping[str, Any] = _received_headers(message)
        carried = self.headers.get(ATTEMPT)
        try:
            base = max(1, int(_text(carried))) if carried is not None else 1
        except ValueError:
            base = 1
        returned = self.headers.get("x-delivery-count")
        self.attempt = base + (
            returned if isinstance(returned, int) else int(bool(message.redelivered))
        )
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

    def _take(self) -> bool:
        """Claim the one settlement; raise if the message's channel was lost to a reconnect.

        Its delivery tag means nothing on the restored channel (acking it there would settle
        another message, or close the channel with PRECONDITION_FAILED), and RabbitMQ has taken
        the message back and will deliver it again: a copy republished now (nack, retry_later,
        dead_letter) would be a duplicate of that redelivery, so nothing is sent.
        """
        if self._settled:
            return False
        self._settled = True
        try:
            self._message.channel  # noqa: B018  # raises once its channel is gone
        except aiormq.exceptions.ChannelInvalidStateError:
            raise BrokerUnavailable(
                "this message was delivered on a channel that a connection loss closed; "
                "RabbitMQ has requeued it and will deliver it again"
            ) from None
        return True

    async def ack(self) -> None:
        if self._take():
            async with _driver_errors("acknowledging"):
                await self._message.ack()

    async def nack(self, *, requeue: bool = True) -> None:
        """With ``requeue``, a copy with ``attempt + 1`` goes to the back of this group's queue
        (classic queues count no redeliveries), then the original is acked; without, RabbitMQ
        dead-letters it to ``{queue}.dlq`` (with ``x-death``)."""
        if not self._take():
            return
        if requeue:
            await self._resend("", self.queue)
        else:
            async with _driver_errors("rejecting"):
                await self._message.reject(requeue=False)

    async def retry_later(self, delay: float) -> None:
        if not self._take():
            return
        delay_ms = max(0, round(delay * 1000))
        if delay_ms == 0:
            await self._resend("", self.queue)
            return
        wait_queue = await self._consumer.broker.declare_wait_queue(self.queue, delay_ms)
        await self._resend("", wait_queue)

    async def _resend(self, exchange: str, routing_key: str) -> None:
        headers = _without_ours(self.headers)
        headers.update({PREFIX + k: v for k, v in self.metadata.items()})
        headers[ATTEMPT] = str(self.attempt + 1)
        headers[DESTINATION] = self.destination
        message = _copy(self._message, headers)
        await self._consumer.broker.send(exchange, routing_key, message, mandatory=False)
        async with _driver_errors("acknowledging"):
            await self._message.ack()

    async def dead_letter(self, record: DeadLetter) -> None:
        """Publish the original message with provenance headers to ``{queue}.dlq``, then ack."""
        if not self._take():
            return
        headers = dict(self.headers)
        headers.update(_provenance(record))
        message = _copy(self._message, headers)
        await self._consumer.broker.send("", f"{self.queue}.dlq", message, mandatory=False)
        async with _driver_errors("acknowledging"):
            await self._message.ack()


def _provenance(record: DeadLetter) -> dict[str, str]:
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
