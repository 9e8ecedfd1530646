"""Consuming: one consumer of a group, reading its main and retry streams, and its deliveries.

Each consumer has a name of its own (``host-pid-random``) and reads both of its streams in one
``XREADGROUP``. An entry is *unsettled* from the moment it is read until the bus settles it.
A plain ack of a main-stream entry is batched (:mod:`~eventbus.brokers.redis.acks`); every
other settle is one script (:mod:`~eventbus.brokers.redis.scripts`) that does nothing unless
its ``XACK`` took the entry off the pending list, so it is atomic and never duplicates a
message. A settle that fails leaves the delivery unsettled, so it can be tried again.

**Attempts.** ``attempt`` is the carried ``eventbus-attempt`` (1 on a fresh entry) plus Redis'
delivery count minus one, so an entry claimed from a dead consumer arrives counted; a release
requeues a copy with the attempt it had.

**Crash recovery.** Every ``claim_interval`` a consumer ``XAUTOCLAIM``s entries pending longer
than ``claim_idle`` (their consumer died). After a connection error it first re-reads the
entries pending under its own name that it holds no delivery for (a reply lost on the way).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from eventbus.brokers._wire import read_carried, text
from eventbus.brokers.redis.acks import AckBatch
from eventbus.brokers.redis.entries import (
    copy_fields,
    dead_letter_fields,
    decode_entry,
    headers_of,
    own_entry,
)
from eventbus.brokers.redis.link import Link, failure, timeout
from eventbus.brokers.redis.topology import Settings
from eventbus.deadletters import DeadLetterRecord
from eventbus.envelope import STRUCTURED_CONTENT_TYPE
from eventbus.errors import BrokerUnavailable, EventBusError
from eventbus.types import SubscriptionView

__all__ = ["RedisConsumer", "RedisDelivery"]

log = logging.getLogger("eventbus.redis")
_DONE = ("0-0", b"0-0")
"""The cursor ``XAUTOCLAIM`` returns when it has gone through the whole pending list."""


class RedisConsumer:
    """One consumer, with a name of its own, in the subscription's group; reads both streams.

    ``close`` sends the queued acks, releases every unsettled entry (requeued with the attempt
    it had) and any entry still pending under this consumer's name (a reply lost to a
    cancelled read), then removes the consumer from the group. ``wake_mover`` is called after
    a delayed retry was scheduled.
    """

    def __init__(
        self,
        link: Link,
        settings: Settings,
        subscription: SubscriptionView,
        streams: tuple[str, str],
        wake_mover: Callable[[], None],
    ) -> None:
        self.link, self.settings = link, settings
        self.subscription = subscription
        self.group: str = subscription.group or ""
        self.name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.main, self.retry = streams
        self.wake_mover = wake_mover
        self._unsettled: dict[tuple[str, str], RedisDelivery] = {}
        self._cursors = {self.main: "0-0", self.retry: "0-0"}
        self._next_claim = 0.0
        self._reread = False
        self._closed = False
        self._acks = AckBatch(link, self.main, self.group, self.name)
        self._reading = False  # inside _fetch: the reader may wait in a blocking read

    def __aiter__(self) -> AsyncIterator[RedisDelivery]:
        return self._deliveries()

    async def _deliveries(self) -> AsyncIterator[RedisDelivery]:
        backoff = 0.05
        while not self._closed:
            _raise_if_cancelled()
            try:
                batch = await self._fetch()
            except BrokerUnavailable as exc:
                # Survive the outage; afterwards re-read what Redis may have handed us unseen.
                log.warning("%s: %s; reading again in %.2fs", self.name, exc, backoff)
                self._reread = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except EventBusError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                log.warning("%s: group %r vanished (%s); recreating it", self.name, self.group, exc)
                for stream in (self.main, self.retry):  # a new stream: nothing was read from it
                    await self.link.create_group(stream, self.group, "0")
                continue
            backoff = 0.05
            for delivery in batch:
                yield delivery

    async def _fetch(self) -> list[RedisDelivery]:
        """The next deliveries: lost entries first, then abandoned ones when due, then new."""
        self._reading = True
        try:
            return await self._next_batch()
        finally:
            self._reading = False

    async def _next_batch(self) -> list[RedisDelivery]:
        if self._acks.busy:
            await self._acks.flush()
        if self._reread:
            self._reread = False
            lost = [d for stream in (self.main, self.retry) for d in await self._claim_lost(stream)]
            if lost:
                return lost
        now = asyncio.get_running_loop().time()
        if now >= self._next_claim:
            claimed = await self._claim_abandoned()
            done = all(cursor in _DONE for cursor in self._cursors.values())
            self._next_claim = now + self.settings.claim_interval if done else now
            if claimed:
                return claimed
        return await self._read()

    async def _read(self) -> list[RedisDelivery]:
        """``XREADGROUP`` new entries of both streams, blocking up to ``block`` when idle."""
        settings, seconds = self.settings, self.link.socket_timeout
        if seconds is not None:
            seconds += settings.block_ms / 1000
        try:
            async with timeout(seconds):
                response: Any = await self.link.redis.xreadgroup(
                    self.group,
                    self.name,
                    {self.main: ">", self.retry: ">"},
                    count=settings.batch_size,
                    block=settings.block_ms,
                )
        except Exception as exc:
            error = failure(exc, f"read from {self.main!r} as {self.group!r}", seconds)
            if error is None:
                raise
            raise error from exc
        items = response.items() if isinstance(response, dict) else (response or [])
        deliveries = []
        for stream, entries in items:
            name = text(stream)
            deliveries += [self._deliver(name, i, f, 1) for i, f in entries if f is not None]
        return deliveries

    async def _claim_abandoned(self) -> list[RedisDelivery]:
        """``XAUTOCLAIM`` entries idle longer than ``claim_idle`` (their consumer is gone)."""
        out: list[RedisDelivery] = []
        for stream in (self.main, self.retry):
            async with self.link.call(f"claim abandoned entries of {stream!r}"):
                claimed: Any = await self.link.redis.xautoclaim(
                    stream,
                    self.group,
                    self.name,
                    self.settings.claim_idle_ms,
                    self._cursors[stream],
                    count=self.settings.batch_size,
                )
            next_id, entries = claimed[0], claimed[1]
            self._cursors[stream] = text(next_id)
            fresh = [
                (i, f)
                for i, f in entries
                if f is not None and (stream, text(i)) not in self._unsettled
            ]
            out += await self._with_counts(stream, fresh)
        return out

    async def _claim_lost(self, stream: str) -> list[RedisDelivery]:
        """Entries pending under this consumer's name that it holds no delivery for."""
        redis = self.link.redis
        async with self.link.call(f"read the pending entries of {stream!r}"):
            pending: Any = await redis.xpending_range(
                stream,
                self.group,
                "-",
                "+",
                len(self._unsettled) + 10 * self.settings.batch_size,
                consumername=self.name,
            )
            acked = self._acks.queued() if stream == self.main else set()  # XACK not sent yet
            ids = [
                p["message_id"]
                for p in pending
                if (stream, text(p["message_id"])) not in self._unsettled
                and text(p["message_id"]) not in acked
            ]
            if not ids:
                return []
            entries: Any = await redis.xclaim(stream, self.group, self.name, 0, ids)
        return await self._with_counts(stream, [(i, f) for i, f in entries if f is not None])

    async def _with_counts(
        self, stream: str, entries: list[tuple[Any, Any]]
    ) -> list[RedisDelivery]:
        """Deliveries for claimed entries, their attempts counted from Redis' delivery counts."""
        if not entries:
            return []
        async with self.link.call(f"read delivery counts in {stream!r}"):
            pending = await self.link.redis.xpending_range(
                stream,
                self.group,
                entries[0][0],
                entries[-1][0],
                len(entries) + len(self._unsettled),
                consumername=self.name,
            )
        counts = {text(p["message_id"]): int(p["times_delivered"]) for p in pending}
        return [self._deliver(stream, i, f, counts.get(text(i), 2)) for i, f in entries]

    def _deliver(self, stream: str, entry_id: Any, fields: Any, times: int) -> RedisDelivery:
        delivery = RedisDelivery(self, stream, text(entry_id), fields, times)
        self._unsettled[(stream, delivery.entry_id)] = delivery
        return delivery

    async def settle(
        self, delivery: RedisDelivery, script: str, keys: list[str], args: list[Any]
    ) -> None:
        """Run one settle script for ``delivery``, once; a retry-stream entry is also deleted.

        (A plain ack of a main-stream entry is not a script: see :meth:`queue_ack`.) The
        delivery counts as unsettled until the script has run, so a failed settle can be
        tried again.
        """
        stream, entry_id = delivery.stream, delivery.entry_id
        if (stream, entry_id) not in self._unsettled:
            return
        drop = "1" if stream == self.retry else "0"
        async with self.link.call(f"{script} entry {entry_id} of {stream!r}"):
            await self.link.scripts[script](
                keys=[stream, *keys], args=[self.group, entry_id, drop, *args]
            )
        self._unsettled.pop((stream, entry_id), None)

    def queue_ack(self, delivery: RedisDelivery) -> None:
        """Queue a main-stream delivery's ``XACK`` (once): the reader sends the acks queued
        before its next read; one made while it reads is sent at once, as the reader may be
        waiting in a blocking read meanwhile."""
        if self._unsettled.pop((delivery.stream, delivery.entry_id), None) is not None:
            self._acks.add(delivery.entry_id, send_now=self._reading)

    def leave_pending(self, delivery: RedisDelivery) -> None:
        """Give up on settling ``delivery`` here: it stays pending in Redis and is read again
        with this consumer's other lost entries (the next read re-reads them)."""
        if self._unsettled.pop((delivery.stream, delivery.entry_id), None) is not None:
            self._reread = True

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._acks.flush()
            for delivery in list(self._unsettled.values()):
                await delivery.release()
            for stream in (self.main, self.retry):
                for delivery in await self._claim_lost(stream):
                    await delivery.release()
                async with self.link.call(f"leave group {self.group!r}"):
                    await self.link.redis.xgroup_delconsumer(stream, self.group, self.name)
        except EventBusError as exc:
            log.warning(
                "%s could not hand back its unsettled entries (%s); another consumer of %r "
                "reclaims them after claim_idle",
                self.name,
                exc,
                self.group,
            )


class RedisDelivery:
    """One stream entry: ``body`` is its ``data`` field, ``headers`` every other field."""

    __slots__ = (
        "_consumer",
        "attempt",
        "body",
        "decode_error",
        "entry_id",
        "envelope",
        "headers",
        "metadata",
        "stream",
    )

    def __init__(
        self,
        consumer: RedisConsumer,
        stream: str,
        entry_id: str,
        fields: Mapping[bytes, bytes],
        times_delivered: int,
    ) -> None:
        self._consumer = consumer
        self.stream = stream
        self.entry_id = entry_id
        self.body: bytes = fields.get(b"data", b"")
        if own_entry(fields):  # as published: its one header known, no attempt carried
            self.headers: dict[str, str | bytes] = {"content-type": STRUCTURED_CONTENT_TYPE}
            self.metadata: dict[str, str] = {}
            attempt = 1
        else:
            self.headers = headers_of(fields)
            carried = read_carried(self.headers)
            self.metadata = carried.metadata
            attempt = carried.attempt or 1
        self.attempt: int = attempt + max(0, times_delivered - 1)
        self.envelope, self.decode_error = decode_entry(self.headers, self.body)

    @property
    def destination(self) -> str:
        return self._consumer.subscription.topic

    def _carried(self, attempt: int) -> list[Any]:
        """The fields of a redelivery: the entry's own, ``attempt`` and the metadata."""
        return copy_fields(self.headers, self.body, attempt, self.metadata)

    async def ack(self) -> None:
        consumer = self._consumer
        if self.stream == consumer.main:  # a batched XACK: no script, no round trip here
            consumer.queue_ack(self)
        else:
            await consumer.settle(self, "ack", [], [])

    async def nack(self) -> None:
        """Requeued to the group's retry stream, counted (the handler was cancelled)."""
        retry = self._consumer.retry
        await self._consumer.settle(self, "requeue", [retry], self._carried(self.attempt + 1))

    async def release(self) -> None:
        """Requeued to the group's retry stream with the attempt it had: not counted.

        When Redis cannot be reached the entry stays pending, and the consumer claims it back
        on its next read (counted then, as any redelivery of a pending entry).
        """
        retry = self._consumer.retry
        try:
            await self._consumer.settle(self, "requeue", [retry], self._carried(self.attempt))
        except EventBusError as exc:
            log.warning(
                "%s: %s; %s stays pending and is read again",
                self._consumer.name,
                exc,
                self.entry_id,
            )
            self._consumer.leave_pending(self)

    async def retry_later(self, delay: float) -> None:
        consumer = self._consumer
        args = [int(delay * 1000), consumer.retry, *self._carried(self.attempt + 1)]
        await consumer.settle(self, "delay", [consumer.settings.keys.delayed], args)
        consumer.wake_mover()

    async def dead_letter(self, record: DeadLetterRecord) -> None:
        """Moved to the group's dead-letter stream with ``record``'s provenance, atomically."""
        consumer, keys = self._consumer, self._consumer.settings.keys
        await consumer.settle(
            self,
            "dead",
            [keys.dlq(consumer.group), keys.dlq_index],
            [record.id, *dead_letter_fields(record)],
        )


def _raise_if_cancelled() -> None:
    """Honour a cancellation that a blocking read swallowed.

    redis-py 8.1 on Python 3.11 sometimes lets a ``Task.cancel()`` that races with a blocking
    ``XREADGROUP`` vanish: the task is marked as cancelling but the read loop goes on, and
    shutdown would wait forever. Checking between reads bounds that to one ``block``.
    """
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)  # Python 3.11+
    if cancelling is not None and cancelling():
        raise asyncio.CancelledError
