"""The publishing channel: publisher confirms, pipelined publishes, riding out reconnects.

Every publish of one adapter (events, requeued and delayed copies, dead letters, replays) goes
through its one :class:`ConfirmedPublisher` and returns only once RabbitMQ has confirmed the
message, or raises: :class:`~eventbus.errors.PublishError` for a message RabbitMQ returned or
refused, :class:`~eventbus.errors.BrokerUnavailable` when no confirm came within the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel

from eventbus.brokers.rabbitmq.topology import declare_exchange, errors
from eventbus.errors import BrokerUnavailable, PublishError

__all__ = ["ConfirmedPublisher"]

_RETRY_PAUSE = 0.2
"""Seconds between the tries of a publish while the connection is down."""


class ConfirmedPublisher:
    """Publishes on ``channel`` (a robust channel with publisher confirms).

    ``timeout`` bounds how long one publish may take, a reconnect included; then it raises
    :class:`~eventbus.errors.BrokerUnavailable` ("… publish it again"). After a connection
    loss a message is sent again once the connection is back: a confirm lost with the
    connection can make that a duplicate (at-least-once), never a loss.
    """

    def __init__(self, channel: AbstractChannel, timeout: float) -> None:
        self._channel = channel
        self._timeout = timeout
        self._underlay: aiormq.abc.AbstractChannel | None = None  # the channel's current one
        self._exchanges: set[str] = set()  # declared on this channel ("" is the default one)
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False

    async def close(self) -> None:
        """Stop retrying and wait (up to the timeout) for the publishes awaiting a confirm."""
        self._closing = True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self._timeout)
        self._underlay = None

    async def underlay(self) -> aiormq.abc.AbstractChannel:
        """The raw channel under the publishing channel, once it is open (for declarations)."""
        return await asyncio.wait_for(self._channel.get_underlay_channel(), self._timeout)

    async def send(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: aiormq.spec.Basic.Properties,
        mandatory: bool,
    ) -> None:
        """Publish and wait for the confirm: the publish hot path.

        Concurrent calls pipeline on the one channel: each writes its frames and then awaits
        its own confirm, so many publishes are in flight at once and each returns only once
        RabbitMQ has confirmed its message. A ``mandatory`` message no queue is bound for
        raises :class:`~eventbus.errors.PublishError`.
        """
        self._inflight += 1
        self._idle.clear()
        try:
            result = await self._publish(exchange, routing_key, body, properties, mandatory)
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

    async def _publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: aiormq.spec.Basic.Properties,
        mandatory: bool,
    ) -> Any:
        """While the raw channel is open the message goes straight to it; otherwise (first
        use of an exchange, a reconnect) through :meth:`_send_retrying`. The confirm or the
        return."""
        deadline = asyncio.get_running_loop().time() + self._timeout
        underlay = self._underlay
        if underlay is not None and not underlay.is_closed and exchange in self._exchanges:
            try:
                return await underlay.basic_publish(  # type: ignore[call-arg]
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=properties,
                    mandatory=mandatory,
                    timeout=self._timeout,
                    wait=False,  # see _send_once
                )
            except Exception as exc:
                self._retryable_or_raise(routing_key, exc, deadline)
        return await self._send_retrying(
            exchange, routing_key, body, properties, mandatory, deadline
        )

    def _retryable_or_raise(self, routing_key: str, exc: Exception, deadline: float) -> None:
        """After a failed publish attempt: return if it may be tried again (the connection is
        down and ``deadline`` not reached), else raise the eventbus error for ``exc``."""
        self._underlay = None
        error = errors.error(exc, f"publishing to {routing_key!r}")
        if not isinstance(error, BrokerUnavailable):
            if error is None:
                raise exc
            raise error from exc
        if asyncio.get_running_loop().time() >= deadline or self._closing:
            raise BrokerUnavailable(
                f"{error}; gave up after publish_timeout={self._timeout:g}s; "
                "the event may not have been published: publish it again"
            ) from exc

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
                await asyncio.sleep(min(_RETRY_PAUSE, max(0.0, deadline - loop.time())))

    async def _send_once(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: aiormq.spec.Basic.Properties,
        mandatory: bool,
    ) -> Any:
        channel = self._channel
        await channel.ready()  # type: ignore[attr-defined]  # RobustChannel: wait out a reconnect
        if exchange not in self._exchanges:
            if exchange:
                await declare_exchange(channel, exchange)
            self._exchanges.add(exchange)
        underlay = await channel.get_underlay_channel()
        self._underlay = underlay  # the fast path of _publish uses it while it stays open
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
