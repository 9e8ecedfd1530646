"""Consuming: one consumer per subscription on a channel of its own, and its deliveries.

Settling translates what the consume policy decided into AMQP: ``ack`` is ``basic.ack``
(coalesced into ``multiple`` acks for an inline consumer); ``release`` is ``basic.reject``
with requeue; ``nack``, ``retry_later`` and ``dead_letter`` publish a copy (to the back of the
queue, a wait queue, the DLQ) with a confirm and then ack the original. A delivery never
settles on a channel that a reconnect replaced.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from eventbus.brokers._wire import carried_headers, read_carried, text, without_carried
from eventbus.brokers.rabbitmq.messages import copy_of, received_headers
from eventbus.brokers.rabbitmq.topology import dead_letter_queue, errors, quietly
from eventbus.deadletters import DLQ_PREFIX, DeadLetterRecord, provenance
from eventbus.envelope import Envelope, decode
from eventbus.errors import BrokerUnavailable, DecodeError
from eventbus.types import SubscriptionView

__all__ = ["RabbitMQConsumer", "RabbitMQDelivery", "Resender"]

log = logging.getLogger("eventbus.rabbitmq")


class Resender(Protocol):
    """What a delivery needs of its broker to send a copy of its message on."""

    async def send(
        self, exchange: str, routing_key: str, message: aio_pika.Message, *, mandatory: bool = True
    ) -> None:
        """Publish ``message`` and wait for its confirm."""

    async def declare_wait_queue(self, queue: str, delay_ms: int) -> str:
        """Declare the wait queue that returns messages to ``queue`` after ``delay_ms``."""


class RabbitMQConsumer:
    """One consumer on a group's queue, on a channel of its own (whose QoS is ``prefetch``).

    Closing sends the acks still held back (see :meth:`acknowledge`), cancels the consumer and
    closes the channel, which hands every unsettled message back to RabbitMQ (redelivered,
    counted as the next attempt).
    """

    def __init__(
        self,
        broker: Resender,
        channel: AbstractChannel,
        queue: AbstractQueue,
        subscription: SubscriptionView,
        prefetch: int,
    ) -> None:
        self.broker = broker
        self.channel = channel
        self.queue = queue
        self.subscription = subscription
        self._buffer: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._tag: str | None = None
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
        if not self._ack_batch:
            await channel.basic_ack(tag, wait=False)
            return
        if channel is not self._ack_channel:  # a new channel (reconnect): tags restart at 1
            self._reset(channel)
        if tag != self._settled_through + 1:
            await channel.basic_ack(tag, wait=False)
            return
        self._settled_through = tag
        if self._buffer.qsize() and self._held_count + 1 < self._ack_batch:
            self._held, self._held_count = tag, self._held_count + 1
            if self._flush_handle is None:
                self._flush_handle = asyncio.get_running_loop().call_soon(self._flush_soon)
            return
        self._held, self._held_count = 0, 0
        # Serialised with flush(): a lower multiple-ack written after a higher one would name
        # a tag already acked, which closes the channel.
        async with self._ack_lock:
            await channel.basic_ack(tag, multiple=True, wait=False)

    async def requeue(self, channel: aiormq.abc.AbstractChannel, tag: int) -> None:
        """``basic.reject`` with requeue, after the acks held back: RabbitMQ puts the message
        back in its place in the queue."""
        if not self._ack_batch:
            await channel.basic_reject(tag, requeue=True)
            return
        if channel is not self._ack_channel:
            self._reset(channel)
        await self.flush()
        async with self._ack_lock:
            await channel.basic_reject(tag, requeue=True)
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
        if self._tag is not None:  # a lost connection has cancelled it already
            await quietly("cancelling the consumer", self.queue.cancel(self._tag))
        await quietly("closing the consumer's channel", self.channel.close())


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
        self.headers: Mapping[str, Any] = received_headers(message)
        carried = read_carried(self.headers)
        self.attempt = _redelivered(self.headers, message) + (carried.attempt or 1)
        self.metadata: dict[str, str] = carried.metadata
        self.destination = carried.destination or text(message.routing_key or "")
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
    def delivery_tag(self) -> int | None:
        """The channel's delivery tag of this message (for tracing)."""
        return self._message.delivery_tag

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
        except Exception as exc:  # the hot path: cheaper than entering errors(...)
            error = errors.error(exc, "acknowledging")
            if error is None:
                raise
            raise error from exc
        self._settled = True

    async def nack(self) -> None:
        """A copy with ``attempt + 1`` goes to the back of this group's queue (classic queues
        count no redeliveries), then the original is acked."""
        if self._open():
            await self._resend(self.queue)

    async def release(self) -> None:
        """``basic.reject`` with requeue: back in its place in the queue, so order is kept.

        RabbitMQ flags the message ``redelivered`` and cannot tell this from a crash, so the
        next delivery counts one attempt more (``Capabilities.uncounted_release`` is False).
        """
        if not self._open():
            return
        message = self._message
        with errors("releasing"):
            await self._consumer.requeue(message.channel, message.delivery_tag or 0)
        self._settled = True

    async def retry_later(self, delay: float) -> None:
        if not self._open():
            return
        delay_ms = max(0, round(delay * 1000))
        if delay_ms == 0:
            await self._resend(self.queue)
            return
        await self._resend(await self._consumer.broker.declare_wait_queue(self.queue, delay_ms))

    async def _resend(self, queue: str) -> None:
        """A copy with the next attempt and the metadata to ``queue`` (through the default
        exchange), then ack the original. Tried again after a failure, a copy already
        confirmed is not sent twice."""
        if not self._copied:
            headers = without_carried(self.headers)
            headers.update(
                carried_headers(self.attempt + 1, self.metadata, destination=self.destination)
            )
            await self._consumer.broker.send(
                "", queue, copy_of(self._message, headers), mandatory=False
            )
            self._copied = True
        await self._ack()

    async def dead_letter(self, record: DeadLetterRecord) -> None:
        """Publish the record's message with its provenance (:func:`provenance`) as headers
        to ``{queue}.dlq``, then ack. Every other property of the message is kept."""
        if not self._open():
            return
        if not self._copied:
            # Provenance a foreign message brought along must not fill the fields this
            # record leaves empty.
            headers = {k: v for k, v in record.headers.items() if not k.startswith(DLQ_PREFIX)}
            headers.update(provenance(record))
            copy = copy_of(self._message, headers, record.body)
            dlq = dead_letter_queue(self.queue)
            await self._consumer.broker.send("", dlq, copy, mandatory=False)
            self._copied = True
        await self._ack()


def _redelivered(headers: Mapping[str, Any], message: AbstractIncomingMessage) -> int:
    """How often RabbitMQ says it delivered the message before: the quorum queue's count, else
    the redelivered flag (a classic queue counts no further)."""
    returned = headers.get("x-delivery-count")
    if isinstance(returned, int) and not isinstance(returned, bool) and returned >= 0:
        return returned
    return int(bool(message.redelivered))
