"""Batched acks: the plain acks of a consumer's main-stream entries, one ``XACK`` for many.

A plain ack of a main-stream entry is a bare ``XACK`` (nothing has to happen atomically with
it), so ``ack`` only queues the entry id and returns. The task that reads sends everything
queued in one ``XACK`` before its next read, so acks handled inline (``concurrency=1``) cost
one command per batch read; an ack made while the reader reads (handlers running
concurrently while it waits in a blocking read) starts a sender task that does the same at
once. An entry is only acked after its handler, and one whose ``XACK`` does not arrive stays
pending and is delivered again, as after any failed ack: nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging

from eventbus.brokers.redis.link import Link, failure, timeout
from eventbus.errors import BrokerUnavailable, EventBusError

__all__ = ["AckBatch"]

log = logging.getLogger("eventbus.redis")


class AckBatch:
    """The acks one consumer has queued for ``stream`` and not sent yet."""

    def __init__(self, link: Link, stream: str, group: str, consumer: str) -> None:
        self._link = link
        self._stream = stream
        self._group = group
        self._consumer = consumer
        self._ids: list[str] = []
        self._sender: asyncio.Task[None] | None = None

    @property
    def busy(self) -> bool:
        """Acks are queued or on their way."""
        return bool(self._ids) or self._sender is not None

    def queued(self) -> set[str]:
        """The entries handled whose ``XACK`` has not been sent (still pending in Redis)."""
        return set(self._ids)

    def add(self, entry_id: str, *, send_now: bool) -> None:
        """Queue the ack of ``entry_id``; ``send_now`` starts a sender unless one runs
        (for an ack made while the reader may be waiting in a blocking read)."""
        self._ids.append(entry_id)
        if send_now and self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(
                self._send(), name=f"eventbus:redis-ack:{self._consumer}"
            )

    async def flush(self) -> None:
        """Send every queued ack now (raises :class:`BrokerUnavailable` if Redis is away)."""
        while self._sender is not None:
            await asyncio.wait([self._sender])
        if self._ids:
            await self._xack_queued()

    async def _send(self) -> None:
        """The sender task: ``XACK`` what is queued until nothing is left (or Redis is away)."""
        try:
            while self._ids:
                await self._xack_queued()
        except EventBusError as exc:
            log.warning("%s: %s; sending the acks again before the next read", self._consumer, exc)
        finally:
            self._sender = None

    async def _xack_queued(self) -> None:
        """``XACK`` every queued entry in one command.

        When Redis does not answer, the ids stay queued (sent again before the next read, and
        never taken for lost entries) and :class:`~eventbus.errors.BrokerUnavailable` is
        raised; when Redis refuses, they are dropped with a warning and stay pending.
        """
        ids, self._ids = self._ids, []
        what = f"acknowledge {len(ids)} entries of {self._stream!r}"
        seconds = self._link.socket_timeout
        try:
            async with timeout(seconds):
                await self._link.redis.xack(self._stream, self._group, *ids)
        except Exception as exc:
            error = failure(exc, what, seconds)
            if isinstance(error, BrokerUnavailable):
                self._ids[:0] = ids
                raise error from exc
            if error is None:
                raise
            log.warning("%s could not %s (%r); they are delivered again", self._consumer, what, exc)
