"""RabbitMQ: eventbus against the raw aio-pika client and FastStream, at-least-once.

Every implementation uses the same topology and settings: a durable topic exchange named after
the trial's fresh ``channel``, one durable classic queue bound to it with routing key
``UserCreated`` (one consumer group = one queue, one consumer), persistent messages
(``delivery_mode=2``), ``mandatory`` publishes on a channel with publisher confirms (a publish
returns only once the broker confirmed it), a consumer channel with prefetch
``bench.common.PREFETCH`` and manual acks sent only after the handler validated the body into
:class:`bench.common.UserCreated` and called ``on_event``. The queue is declared and bound in
``start()``, before anything is published. ``stop()`` deletes what the trial declared.

* **eventbus** — the public API only: ``EventBus(url, service="bench", routers=[router],
  exchange=channel, prefetch=PREFETCH)``, ``@router.subscribe(UserCreated, group=channel)``,
  ``bus.publish`` / ``bus.publish_many``, the default middleware chain (retry, the consume
  policy's dead-lettering). The per-trial destination is the ``exchange=`` broker option (a
  fresh exchange per trial) and the group is the channel name, so the queue is
  ``{channel}.UserCreated`` (plus its ``.dlq``, which eventbus always declares). ``prefetch=``
  is the adapter's consumer prefetch (default ``2 * concurrency``); the handler runs inline
  (``concurrency=1``), one delivery at a time in arrival order, and while more deliveries are
  already buffered its acks are held back and sent as one ``multiple`` ack for the run, at most
  ``PREFETCH // 4`` deliveries at a time.
* **raw** — aio-pika as a competent engineer writes it for the same semantics: one robust
  connection, a publishing channel with confirms, ``exchange.publish(Message(...,
  delivery_mode=PERSISTENT), mandatory=True)`` raising on a ``Basic.Return``; batches are
  pipelined with ``asyncio.gather`` (AMQP has no batch publish: all written, then all confirms
  awaited). The consumer is a ``queue.consume`` callback that only buffers the message, and one
  worker task that handles the buffer in arrival order — ``bench.common.decode``, ``on_event``
  — and acks after handling with the same batching eventbus does: while more messages are
  buffered the ack is held, and one ``message.ack(multiple=True)`` covers the run, at most
  :data:`ACK_BATCH` messages (a failure sends the held acks, then ``nack(requeue=True)``).
  Differences that remain: aio-pika's public ``ack`` and ``publish`` wait for their frames to
  be written to the socket (eventbus writes them without waiting, which changes nothing
  RabbitMQ sees); raw declares no dead-letter queue and has no retry budget.
* **faststream** — FastStream 0.7 ``RabbitBroker`` as close to the same semantics as it
  allows: a publisher object (``broker.publisher(...)``) with ``persist=True`` and
  ``mandatory=True`` on the default channel (publisher confirms on, ``on_return_raises=True``),
  a subscriber on a channel of its own with ``prefetch_count=PREFETCH`` and
  ``ack_policy=AckPolicy.NACK_ON_ERROR``, and a handler annotated with ``UserCreated``
  (FastStream's own way to validate into a model). Where its defaults are weaker or differ:

  - messages are **not persistent** by default (``persist=False``): set here;
  - an unroutable ``mandatory`` publish is returned by the broker but **not raised** by
    default (``Channel(on_return_raises=False)``): the publish "succeeds" and the event is
    gone; set here;
  - the default ack policy is ``REJECT_ON_ERROR``: a handler exception **rejects without
    requeue**, i.e. the message is dropped (or dead-lettered only if the user configured a
    DLX); ``NACK_ON_ERROR`` (requeue) is used here, which then redelivers a poison message
    forever — FastStream has no retry budget, delayed redelivery or dead-letter queue of its
    own;
  - it has no batch publish on RabbitMQ (``publish_batch`` raises
    ``FeatureNotSupportedException``): ``batch`` mode gathers single publishes, as raw does;
  - it validates by ``json.loads`` and then validating the dict (FastStream's decoder and
    fast-depends), not ``model_validate_json`` on the bytes;
  - it acks each message on its own (no ``multiple`` acks), and runs each delivery in a task of
    its own (aio-pika's callback), so up to ``PREFETCH`` handlers run at once; raw and eventbus
    handle them one by one in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage

from bench.common import PREFETCH, EventBusWorkload, UserCreated, Workload, decode, encode

ROUTING_KEY = UserCreated.event_type
ACK_BATCH = PREFETCH // 4
"""The most deliveries one ``multiple`` ack covers: eventbus's limit for an inline consumer."""
log = logging.getLogger("bench.rabbitmq")


async def _ready(url: str, queue: str) -> int:
    """Messages in ``queue``: once its consumers are gone, what they left unacknowledged is
    back in it (RabbitMQ requeues a closed channel's unacked deliveries)."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)


async def _delete(url: str, queues: Sequence[str], exchanges: Sequence[str]) -> None:
    """Remove what a trial declared, so trials leave the shared server as they found it."""
    with contextlib.suppress(Exception):
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            for queue in queues:
                await channel.queue_delete(queue)
            for exchange in exchanges:
                await channel.exchange_delete(exchange)


class Raw(Workload):
    async def start(self) -> None:
        self.connection = await aio_pika.connect_robust(self.url)
        self.publisher = await self.connection.channel(publisher_confirms=True)
        self.exchange = await self.publisher.declare_exchange(
            self.channel, aio_pika.ExchangeType.TOPIC, durable=True
        )
        self.consumer = await self.connection.channel(publisher_confirms=False)
        await self.consumer.set_qos(prefetch_count=PREFETCH)
        queue = await self.consumer.declare_queue(self.channel, durable=True)
        await queue.bind(self.channel, routing_key=ROUTING_KEY)
        self.queue = queue
        self.inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self.worker = asyncio.get_running_loop().create_task(self.work())
        self.tag = await queue.consume(self.receive, no_ack=False)

    async def receive(self, message: AbstractIncomingMessage) -> None:
        self.inbox.put_nowait(message)

    async def work(self) -> None:
        """Handle the messages in arrival order and ack each after handling it; while more are
        buffered, hold the ack so that one ``multiple`` ack covers the run (``ACK_BATCH`` at
        most). A held ack is never left behind: the next message is already there."""
        held: AbstractIncomingMessage | None = None  # handled, its ack not yet sent
        run = 0  # messages handled since the last ack
        while True:
            message = await self.inbox.get()
            try:
                self.on_event(decode(message.body))
            except Exception:  # redelivered, as eventbus redelivers what no policy decided
                log.exception("handling failed; the message is requeued")
                if held is not None:
                    await held.ack(multiple=True)
                held, run = None, 0
                await message.nack(requeue=True)
                continue
            run += 1
            if self.inbox.qsize() and run < ACK_BATCH:
                held = message
                continue
            await message.ack(multiple=True)
            held, run = None, 0

    def message(self, event: UserCreated) -> aio_pika.Message:
        return aio_pika.Message(
            encode(event),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )

    async def publish(self, event: UserCreated) -> None:
        result = await self.exchange.publish(self.message(event), ROUTING_KEY, mandatory=True)
        if isinstance(result, aiormq.abc.DeliveredMessage):  # Basic.Return: no queue bound
            raise RuntimeError("unroutable")

    async def publish_batch(self, events: Sequence[UserCreated]) -> None:
        await asyncio.gather(*(self.publish(event) for event in events))

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.queue.cancel(self.tag)
        self.worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.worker
        await self.connection.close()

    async def unsettled(self) -> int:
        return await _ready(self.url, self.channel)

    async def cleanup(self) -> None:
        await _delete(self.url, [self.channel], [self.channel])


class EventBusRabbitMQ(EventBusWorkload):
    topic_per_trial = False  # the trial's exchange is its channel; the routing key the type

    def group(self) -> str:
        return self.channel

    def broker_options(self) -> dict[str, Any]:
        return {"exchange": self.channel, "prefetch": PREFETCH}

    async def unsettled(self) -> int:
        return await _ready(self.url, f"{self.channel}.{ROUTING_KEY}")

    async def cleanup(self) -> None:
        queue = f"{self.channel}.{ROUTING_KEY}"
        await _delete(self.url, [queue, f"{queue}.dlq"], [self.channel])


class FastStream(Workload):
    async def start(self) -> None:
        from faststream.middlewares import AckPolicy
        from faststream.rabbit import (
            Channel,
            ExchangeType,
            RabbitBroker,
            RabbitExchange,
            RabbitQueue,
        )

        self.broker = RabbitBroker(
            self.url,
            default_channel=Channel(publisher_confirms=True, on_return_raises=True),
            logger=None,
        )
        exchange = RabbitExchange(self.channel, type=ExchangeType.TOPIC, durable=True)
        queue = RabbitQueue(self.channel, durable=True, routing_key=ROUTING_KEY)
        on_event = self.on_event

        @self.broker.subscriber(
            queue,
            exchange,
            channel=Channel(prefetch_count=PREFETCH),
            ack_policy=AckPolicy.NACK_ON_ERROR,
        )
        async def handle(event: UserCreated) -> None:
            on_event(event)

        self.publisher = self.broker.publisher(
            exchange=exchange, routing_key=ROUTING_KEY, persist=True, mandatory=True
        )
        await self.broker.start()

    async def publish(self, event: UserCreated) -> None:
        await self.publisher.publish(event)

    async def publish_batch(self, events: Sequence[UserCreated]) -> None:
        await asyncio.gather(*(self.publisher.publish(event) for event in events))

    async def stop(self) -> None:
        await self.broker.stop()

    async def unsettled(self) -> int:
        return await _ready(self.url, self.channel)

    async def cleanup(self) -> None:
        await _delete(self.url, [self.channel], [self.channel])


IMPLEMENTATIONS: dict[str, type[Workload]] = {
    "eventbus": EventBusRabbitMQ,
    "raw": Raw,
    "faststream": FastStream,
}
